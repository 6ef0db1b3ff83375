//! A config error and where it is: the file, the line and column, and the dotted key
//! (`route[1].backends[0]`), found from the TOML parser's byte spans (`locate`), because an
//! operator editing by hand (or reading a reload's log line) needs to know exactly where to
//! look; the parser's own words put in an operator's (`wording`); and text from the file
//! escaped, so that no message prints a forged line.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::locate::{
    floor_char_boundary, key_at, key_by_line, locate, path_around, path_to, unclosed_multiline,
    unclosed_string_before, unclosed_value,
};
use super::wording::{
    first_quoted, plain_types, retold, single_route_table, too_deep, written_twice,
};

/// A place in the config file: 1-based line and column, and the key written there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    pub key: String,
}

/// A config that cannot be used, and where the problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub location: Option<Location>,
    pub message: String,
    /// A file could not be read for want of the process's own resources (its open-files
    /// limit): the machine's state, not the files', so worth reading again and no mistake.
    pub(crate) for_now: bool,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = match &self.location {
            Some(l) => format!(
                "{}:{}:{}: {}: {}",
                self.file.display(),
                l.line,
                l.column,
                l.key,
                self.message
            ),
            None => format!("{}: {}", self.file.display(), self.message),
        };
        // The last step before a log line or a terminal: a key or value from the file (a
        // quoted key, serde's `unknown variant` echo) must not start a forged line, nor make
        // it megabytes long.
        f.write_str(&shortened(&escape_controls(&line)))
    }
}

/// What to write instead of a backslash escape the parser refused at `offset` in `key`'s
/// value: a path (a Windows one, mostly) as a literal string; a surrogate (`\ud800`, half of
/// a UTF-16 pair, no character on its own) as the character it stands for.
fn escape_hint(src: &str, offset: usize, key: &str) -> String {
    // The escape's neighbourhood, on character boundaries (the text may be any script).
    let from = floor_char_boundary(src, offset.saturating_sub(10));
    let near: String = src[from..].chars().take(24).collect();
    let surrogate = ["\\u", "\\U0000"].iter().any(|escape| {
        near.match_indices(escape).any(|(i, _)| {
            let hex = near
                .get(i + escape.len()..i + escape.len() + 4)
                .unwrap_or_default();
            u32::from_str_radix(hex, 16).is_ok_and(|n| (0xD800..=0xDFFF).contains(&n))
        })
    });
    if surrogate {
        return " (a \\uD800–\\uDFFF escape is half of a UTF-16 pair, no character: write the character itself, or \\U and its 8 hex digits)".to_string();
    }
    // The keys whose values are files, and the tables of them (an inline table's error is
    // named by the table's key).
    let files = [
        "cert",
        "key",
        "ca",
        "client_ca",
        "client_crl",
        "certificates",
        "backend_tls",
    ];
    let names = key
        .split('.')
        .map(|part| part.split('[').next().unwrap_or(part));
    let path = names.into_iter().any(|name| files.contains(&name));
    let what = if path { "path" } else { "value" };
    format!(" (a backslash in a \"string\" starts an escape: write it \\\\, or write the {what} as a 'literal string')")
}

/// The longest quoted value a message shows whole, in characters.
const QUOTED_MAX: usize = 120;
/// The longest message line, in characters (a key of a megabyte, say).
const LINE_MAX: usize = 2048;

/// `line` with each quoted value (`"…"`, its `\\"` escapes read as such) longer than
/// [`QUOTED_MAX`] cut to its start and `…`, and the whole, if still over [`LINE_MAX`], cut in
/// its middle, so that its end (the OS's reason, say) stays: a value of a megabyte echoed
/// into an error would be a log line no collector takes whole. A `"` that no other closes
/// (one inside a path) quotes nothing.
fn shortened(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= QUOTED_MAX {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len().min(LINE_MAX * 4));
    let mut i = 0;
    while i < chars.len() {
        let closing = (chars[i] == '"')
            .then(|| closing_quote(&chars[i + 1..]))
            .flatten();
        match closing {
            Some(len) if len > QUOTED_MAX => {
                out.extend(&chars[i..=i + QUOTED_MAX]);
                out.push_str("…\"");
                i += len + 2;
            }
            // A short string whole, so that its closing quote opens nothing.
            Some(len) => {
                out.extend(&chars[i..i + len + 2]);
                i += len + 2;
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    let count = out.chars().count();
    if count <= LINE_MAX {
        return out;
    }
    let (head, tail) = (LINE_MAX - 200, 200);
    let start: String = out.chars().take(head).collect();
    let end: String = out.chars().skip(count - tail).collect();
    format!(
        "{start}… ({} characters left out) …{end}",
        count - head - tail
    )
}

/// How many characters of `rest` come before the quote that closes a string opened just
/// before it, `\\"` read as an escaped quote; `None` if none does.
fn closing_quote(rest: &[char]) -> Option<usize> {
    let mut escaped = false;
    for (n, &c) in rest.iter().enumerate() {
        match (escaped, c) {
            (false, '"') => return Some(n),
            (false, '\\') => escaped = true,
            _ => escaped = false,
        }
    }
    None
}

/// Said of a string a `\\"` inside it ran on past where its writer meant it to end.
const ESCAPED_QUOTE: &str =
    " (a \\\" inside a string is a quote, not its end: a backslash is written \\\\)";

impl ConfigError {
    /// Whether this error is written before `other` in the file: by line, then column; one
    /// at no line (about the file as a whole) before any.
    pub(super) fn written_before(&self, other: &ConfigError) -> bool {
        let place = |e: &ConfigError| e.location.as_ref().map(|l| (l.line, l.column));
        place(self) < place(other)
    }

    /// The TOML parser's (or serde's) error about `src`, the text of the config at `path`,
    /// located: file, line and column, and the dotted key.
    pub(super) fn from_toml(e: &toml::de::Error, src: &str, path: &Path) -> ConfigError {
        if let Some(deep) = too_deep(e, src, path) {
            return deep;
        }
        let mut span = e.span().unwrap_or(0..0);
        let mut message = plain_types(e.message().trim());
        // A multi-line string left open swallows the file below it, and the parser notices
        // only at its end (or at a quote further down): it is named where it opens.
        if let Some(opened) = unclosed_multiline(src).filter(|&at| at <= span.start) {
            let quotes = src.get(opened..opened + 3).unwrap_or("\"\"\"");
            span = opened..opened;
            message = format!(
                "a multi-line string is not closed: no {quotes} closes the one opened here, so it runs to the end of the file"
            );
        } else if let Some((end, escaped_quote)) = unclosed_string_before(src, span.start) {
            span = end..end;
            message =
                "a string is not closed: its closing quote is missing at the end of this line"
                    .to_string();
            if escaped_quote {
                message.push_str(ESCAPED_QUOTE);
            }
        }
        let parsed = DeTable::parse(src);
        // The parser's words where they would mislead (see `retold`).
        if let Some((at, said)) = retold(src, &span, &message, parsed.is_err()) {
            (span, message) = (at, said);
        }
        // A document that parses is its own map of keys; one that does not is read line by
        // line around the error.
        let key = match parsed {
            Ok(root) => path_to(root.get_ref(), "", &span),
            // Inside an array or inline table left open, the mistake belongs to the key whose
            // value that is, wherever the parser noticed it (a `[table]` header further down
            // read as an element, say).
            Err(_) => {
                let at = unclosed_value(src, span.start).unwrap_or(span.start);
                Some(key_at(src, at)).filter(|k| !k.is_empty())
            }
        };
        // A top-level problem ("missing field `tls`") is reported on the whole document: the
        // field is the key, and a section is what is missing.
        let key = key.unwrap_or_else(|| {
            // (Only there: another message's first quoted word is no key, "expected
            // letters, numbers, `-`".)
            let field = first_quoted(e.message()).filter(|_| message.starts_with("missing field"));
            if let Some(field) = field {
                message = format!("missing section [{field}]");
            }
            field.unwrap_or("(top level)").to_string()
        });
        // toml's words for `\d` in "C:\dir", or `\U` in "C:\Users", say nothing of what
        // to write instead.
        let escape = message.starts_with("missing escaped value")
            || message.contains("unicode hexadecimal value");
        // "C:\temp\", key = "k": its `\t` is an escape, its `\"` a quote, and the string
        // runs on into what follows, where the parser stumbles.
        let line = src
            .get(..span.start)
            .map_or("", |before| before.rsplit('\n').next().unwrap_or(before));
        if message.starts_with("missing comma") && line.contains("\\\"") {
            message.push_str(ESCAPED_QUOTE);
        }
        if escape {
            message.push_str(&escape_hint(src, span.start, &key));
        }
        if message == "duplicate key" {
            message = written_twice(src, span.start, &key);
        }
        if single_route_table(src) {
            message.push_str(" (a route is written `[[route]]`, with two brackets)");
        }
        ConfigError {
            file: path.to_path_buf(),
            location: Some(locate(src, &span, &key)),
            message: escape_controls(&message),
            for_now: false,
        }
    }

    /// An error about the file as a whole, at no line.
    pub(crate) fn new(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            location: None,
            message: escape_controls(&message.into()),
            for_now: false,
        }
    }

    pub(crate) fn at(file: &Path, location: &Location, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            location: Some(location.clone()),
            message: escape_controls(&message.into()),
            for_now: false,
        }
    }

    /// The config file's bytes are not UTF-8 (`e`): where the first bad byte is.
    pub(super) fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> ConfigError {
        // Without a byte order mark, as the text is read when it is UTF-8: it is no
        // character an editor shows, and would make every column of the first line one off.
        let (bytes, good) = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
            Some(rest) => (rest, e.valid_up_to() - 3),
            None => (bytes, e.valid_up_to()),
        };
        // The bytes before the bad one are UTF-8 by definition; `from_utf8` cannot fail.
        let src = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        // The file read with the bad bytes replaced (the text before the first is unchanged)
        // names the key or value holding it, if the rest is TOML; else it is read line by line.
        let lossy = String::from_utf8_lossy(bytes);
        let parsed = DeTable::parse(&lossy).ok();
        let key = (parsed.as_ref())
            .and_then(|root| path_around(root.get_ref(), "", good))
            .unwrap_or_else(|| key_by_line(src));
        let byte = bytes.get(good).copied().unwrap_or_default();
        let message = format!(
            "cannot read config file: it must be UTF-8 text, and byte 0x{byte:02X} here is not \
             (was it saved as Latin-1 or UTF-16? save it as UTF-8)"
        );
        ConfigError::at(path, &locate(src, &(good..good), &key), message)
    }

    /// This error, marked as one `io` caused if that is the process running out of open
    /// files (see [`ConfigError::for_now`]).
    pub(crate) fn caused_by(mut self, io: Option<&std::io::Error>) -> ConfigError {
        self.for_now = io.is_some_and(crate::error::out_of_descriptors);
        self
    }
}

/// Characters that would end or rewrite a line on a terminal or in a log (newline, ESC,
/// NUL, bidi overrides) or hide in it (a zero-width space, a soft hyphen, tag characters),
/// written as Rust escapes (`\n`, `\u{1b}`, `\u{200b}`): those [`is_hidden`] matches. Only
/// these: the escapes are plain ASCII and a message's own `{:?}` quoting has none left, so
/// escaping twice changes nothing.
pub(crate) fn escape_controls(text: &str) -> String {
    if !text.contains(is_hidden) {
        return text.to_string();
    }
    text.chars()
        .map(|c| match is_hidden(c) {
            // `\n`, `\t`, `\0` read better than their numbers; the rest have no short form.
            true if c.is_control() => c.escape_debug().to_string(),
            true => c.escape_unicode().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// A character outside ASCII that shows as nothing, or as a plain space, where a key or a name
/// is read: one [`is_hidden`] matches (a zero-width space, a bidi mark), or a space outside
/// ASCII (a no-break space). Pasted in with a name, it is told as such, not as what the
/// character would otherwise make of the text.
pub(super) fn is_unseen(c: char) -> bool {
    !c.is_ascii() && (is_hidden(c) || c.is_whitespace())
}

/// A character that is not seen as itself where text is shown: a control (Unicode category
/// Cc), a line or paragraph separator (U+2028, U+2029: a line break to some readers), or a
/// format character (category Cf: zero-width spaces and joiners, bidi marks and overrides,
/// the soft hyphen, invisible operators, tag characters). Such a character makes a key or a
/// name read as something else, or not at all, so it is escaped in messages and refused in
/// route names. std has no category lookup: the Cf ranges are those of Unicode 16.0
/// (`DerivedGeneralCategory.txt`; unchanged from 15.0, which added U+13439–U+1343F).
pub(crate) fn is_hidden(c: char) -> bool {
    // Nearly every character of a config is ASCII: one comparison answers for it.
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // Zl, Zp
                | '\u{ad}' // soft hyphen
                | '\u{600}'..='\u{605}' // Arabic number signs
                | '\u{61c}' // Arabic letter mark (bidi)
                | '\u{6dd}' // Arabic end of ayah
                | '\u{70f}' // Syriac abbreviation mark
                | '\u{890}'..='\u{891}' // Arabic pound and piastre marks above
                | '\u{8e2}' // Arabic disputed end of ayah
                | '\u{180e}' // Mongolian vowel separator
                | '\u{200b}'..='\u{200f}' // zero-width space, (non-)joiner, LRM, RLM
                | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
                | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
                | '\u{2066}'..='\u{206f}' // bidi isolates, deprecated format characters
                | '\u{feff}' // byte order mark, zero-width no-break space
                | '\u{fff9}'..='\u{fffb}' // interlinear annotation
                | '\u{110bd}' | '\u{110cd}' // Kaithi number signs
                | '\u{13430}'..='\u{1343f}' // Egyptian hieroglyph format controls
                | '\u{1bca0}'..='\u{1bca3}' // shorthand format controls
                | '\u{1d173}'..='\u{1d17a}' // musical symbol beams and slurs
                | '\u{e0001}' | '\u{e0020}'..='\u{e007f}' // tag characters
        )
}

#[cfg(test)]
mod tests {
    use super::shortened;

    /// A quote no other closes (one inside a path) quotes nothing, and short strings stay
    /// whole, their closing quotes opening nothing.
    #[test]
    fn only_whole_quoted_values_are_shortened() {
        let path = format!(
            "cannot read certificate /a\"{}/x.crt: not found",
            "b".repeat(150)
        );
        assert_eq!(shortened(&path), path);
        let between = format!("\"a\" {} \"b\"", "c".repeat(150));
        assert_eq!(shortened(&between), between);
        let long = format!("x \"{}\" y", "d".repeat(150));
        assert_eq!(shortened(&long), format!("x \"{}…\" y", "d".repeat(120)));
    }
}
