//! A config error and where it is: the file, the line and column, and the dotted key
//! (`route[1].backends[0]`), found from the TOML parser's byte spans, because an operator
//! editing by hand (or reading a reload's log line) needs to know exactly where to look.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

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
        // quoted key, serde's `unknown variant` echo) must not start a forged line.
        f.write_str(&escape_controls(&line))
    }
}

impl ConfigError {
    /// The TOML parser's (or serde's) error about `src`, the text of the config at `path`,
    /// located: file, line and column, and the dotted key.
    pub(super) fn from_toml(e: &toml::de::Error, src: &str, path: &Path) -> ConfigError {
        if let Some(deep) = too_deep(e, src, path) {
            return deep;
        }
        let span = e.span().unwrap_or(0..0);
        // A document that parses is its own map of keys; one that does not is read line by
        // line around the error.
        let key = match DeTable::parse(src) {
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
        let mut message = plain_types(e.message().trim());
        let key = key.unwrap_or_else(|| {
            let field = first_quoted(e.message());
            if let Some(field) = field.filter(|_| message.starts_with("missing field")) {
                message = format!("missing section [{field}]");
            }
            field.unwrap_or("(top level)").to_string()
        });
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
        let good = e.valid_up_to();
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

/// toml's "duplicate key" for `key`, found at `offset`, as what to do about it, with the
/// line it was first written on: the table header or the `key =` line before it (in the
/// same table), if there is one to find.
fn written_twice(src: &str, offset: usize, key: &str) -> String {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let line_begin = src[..offset].rfind('\n').map_or(0, |i| i + 1);
    let here = src[line_begin..].lines().next().unwrap_or_default();
    let before: Vec<&str> = src[..line_begin].lines().collect();
    match header_name(here) {
        Some(table) => {
            let first =
                (before.iter()).rposition(|line| header_name(line).as_ref() == Some(&table));
            match first {
                Some(i) => format!(
                    "the table [{table}] is written twice (first at line {}): put its keys under one header",
                    i + 1
                ),
                None => format!("the table [{table}] is written twice: put its keys under one header"),
            }
        }
        None => {
            let name = key_written_at(&src[offset..]);
            let name = name
                .as_deref()
                .unwrap_or_else(|| key.rsplit('.').next().unwrap_or(key));
            match first_in_table(&before, name) {
                Some(line) => format!("`{name}` is set twice (first at line {line}): keep one"),
                None => format!("`{name}` is set twice: keep one"),
            }
        }
    }
}

/// The name of the table `line` is the header of, if it is one (`[a.b]`, `[[route]]`).
fn header_name(line: &str) -> Option<String> {
    let name = line.trim().strip_prefix('[')?.trim_start_matches('[');
    Some(name.split(']').next()?.trim().to_string())
}

/// The key written at the start of `text`, bare or quoted: inside an inline table the dotted
/// key toml reports names the table, not the key set twice.
fn key_written_at(text: &str) -> Option<String> {
    let key = match text.strip_prefix('"').or_else(|| text.strip_prefix('\'')) {
        Some(quoted) => quoted.split(['"', '\'']).next()?.to_string(),
        None => (text.chars())
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            .collect(),
    };
    Some(key).filter(|k| !k.is_empty())
}

/// The 1-based line among `lines` (the file up to the duplicate) where `name` was first set,
/// looking back no further than the table the duplicate is in.
fn first_in_table(lines: &[&str], name: &str) -> Option<usize> {
    for (i, line) in lines.iter().enumerate().rev() {
        if header_name(line).is_some() {
            return None;
        }
        let written = line.split('=').next().map(str::trim);
        let written = written.map(|k| k.trim_matches(['"', '\'']));
        if written == Some(name) {
            return Some(i + 1);
        }
    }
    None
}

/// Whether the file has a `[route]` table header, the likely cause of whatever went wrong
/// with `route`: routes are an array of tables.
fn single_route_table(src: &str) -> bool {
    src.lines().any(|line| {
        let line = line.trim();
        line.strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .is_some_and(|name| name.trim() == "route")
    })
}

/// serde names Rust types in its messages ("expected i64", "expected struct RawProxy",
/// "invalid type: map"); an operator reads "an integer", "a table".
fn plain_types(message: &str) -> String {
    if let Some(plain) = beyond_64_bits(message) {
        return plain;
    }
    let message = short_floats(message)
        // toml's words for a number or a bool where one of a few words belongs (`min_version
        // = 1.3`): the fix is the quotes.
        .replace("wanted string or table", "expected a quoted string")
        // TOML's names for serde's: date-times, the other "map", are refused before serde
        // reads the file (`shape`), so a map here is a table.
        .replace("invalid type: map", "invalid type: table")
        .replace("invalid type: sequence", "invalid type: array")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table");
    let message = without_struct_names(message);
    ["i64", "u64", "u32", "u16", "usize"]
        .iter()
        .fold(message, |m, t| {
            m.replace(&format!("expected {t}"), "expected an integer")
        })
}

/// An integer beyond 64 bits, which serde reads as a 128-bit one and names so ("invalid
/// type: integer `99999999999999999999` as i128, expected i64"), in plain words: no setting
/// takes a number that large, whatever its type.
fn beyond_64_bits(message: &str) -> Option<String> {
    let rest = message.strip_prefix("invalid type: integer `")?;
    let (number, rest) = rest.split_once('`')?;
    if !(rest.starts_with(" as i128,") || rest.starts_with(" as u128,")) {
        return None;
    }
    Some(match number.starts_with('-') {
        true => {
            format!("{number} is too small for a number here (no setting takes a negative one)")
        }
        false => format!(
            "{number} is too large for a number here (no setting takes more than {})",
            i64::MAX
        ),
    })
}

/// serde's "floating point `1.5`" as TOML's "float `1.5`", and a float of many digits (it
/// prints `1e308` as 309 of them) in exponent form.
fn short_floats(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some((before, after)) = rest.split_once("floating point `") {
        let Some((number, after)) = after.split_once('`') else {
            break;
        };
        // Past 17 digits a float's digits are no longer its own: they are noise.
        let number = match number.parse::<f64>() {
            Ok(value) if number.len() > 20 => format!("{value:e}"),
            _ => number.to_string(),
        };
        out.push_str(&format!("{before}float `{number}`"));
        rest = after;
    }
    out + rest
}

/// "expected struct RawProxy" as "expected a table": the Rust name means nothing in the file.
fn without_struct_names(mut message: String) -> String {
    while let Some(at) = message.find("struct Raw") {
        let name_end = message[at + "struct ".len()..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(message.len(), |i| at + "struct ".len() + i);
        message.replace_range(at..name_end, "a table");
    }
    message
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

/// A character that is not seen as itself where text is shown: a control (Unicode category
/// Cc), a line or paragraph separator (U+2028, U+2029: a line break to some readers), or a
/// format character (category Cf: zero-width spaces and joiners, bidi marks and overrides,
/// the soft hyphen, invisible operators, tag characters). Such a character makes a key or a
/// name read as something else, or not at all, so it is escaped in messages and refused in
/// route names. std has no category lookup: the Cf ranges are those of Unicode 16.0
/// (`DerivedGeneralCategory.txt`; unchanged from 15.0, which added U+13439–U+1343F).
pub(crate) fn is_hidden(c: char) -> bool {
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

/// toml stops at 80 levels of dotted key and reports it with no position ("recursion
/// limit"): found here, the deepest key or table header, named by its first part (under
/// its table, for a key).
fn too_deep(e: &toml::de::Error, src: &str, path: &Path) -> Option<ConfigError> {
    if let Some(span) = e.span() {
        return values_too_deep(e, src, &span, path);
    }
    if !e.message().contains("recursion limit") {
        return None;
    }
    let (offset, first, depth) = deepest_key(src)?;
    let message = format!(
        "nested too deep: {depth} levels, more than the TOML reader takes (no setting has more than three)"
    );
    Some(ConfigError::at(
        path,
        &locate(src, &(offset..offset), &first),
        message,
    ))
}

/// toml stops at 80 levels of arrays and inline tables too ("cannot recurse further; max
/// recursion depth met", at the bracket one too deep): told as for keys, at the value's
/// start, with how deep it goes.
fn values_too_deep(
    e: &toml::de::Error,
    src: &str,
    span: &Range<usize>,
    path: &Path,
) -> Option<ConfigError> {
    if !e.message().contains("max recursion depth") {
        return None;
    }
    // Clamped like any span from the parser before it slices the text.
    let start = unclosed_value(src, span.start)
        .unwrap_or_else(|| floor_char_boundary(src, span.start.min(src.len())));
    let depth = nesting(&src[start..]);
    let message = format!(
        "nested too deep: {depth} levels of arrays and inline tables, more than the TOML reader takes (no setting has more than three)"
    );
    let key = Some(key_at(src, start)).filter(|k| !k.is_empty());
    let key = key.unwrap_or_else(|| "(top level)".to_string());
    Some(ConfigError::at(
        path,
        &locate(src, &(start..start), &key),
        message,
    ))
}

/// How deep the arrays and inline tables at the start of `value` go, outside strings and
/// comments, up to where the outermost one closes (or the text ends: the value may be left
/// open).
fn nesting(value: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0);
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            '"' | '\'' => skip_string(chars.by_ref().map(|c| ((), c)), c),
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
    }
    deepest
}

/// The first of the keys or table headers with the most dotted parts: where it starts, its
/// name (its first part; a key's under its table), and how many parts it has.
fn deepest_key(src: &str) -> Option<(usize, String, usize)> {
    let mut deepest: Option<(usize, String, usize)> = None;
    let mut line_start = 0;
    let (mut table, mut arrays) = (String::new(), HashMap::new());
    for line in src.split_inclusive('\n') {
        let begin = line_start;
        line_start += line.len();
        // A header's name, or what stands before a line's `=`: a suffix of the line, so its
        // offset is where the key starts.
        let body = line.trim_start().trim_start_matches('[').trim_start();
        let header = line.trim_start().starts_with('[');
        let key = match header {
            true => body.split(']').next(),
            false => body.split_once('=').map(|(key, _)| key),
        };
        let Some(key) = key else { continue };
        let parts = key.split('.').count();
        if !matches!(&deepest, Some(d) if d.2 >= parts) {
            let first = key.split('.').next().unwrap_or_default();
            let first = first.trim().trim_matches('"');
            // A key is named under its table, a header on its own.
            let name = match table.is_empty() || header {
                true => first.to_string(),
                false => format!("{table}.{first}"),
            };
            let at = begin + line.len() - body.len();
            deepest = Some((at, name, parts));
        }
        if let Some(name) = opened_table(line, &mut arrays) {
            table = name;
        }
    }
    deepest
}

/// Where each line of the source starts, so that locating a span is a binary search: a
/// config with a warning per route (thousands of shadowed routes, say) would otherwise read
/// the file from its start once per warning, which is quadratic.
pub(super) struct LineIndex {
    /// Byte offsets of the first byte of each line; the first is 0.
    starts: Vec<usize>,
    /// The last place located: its byte offset and its column. Spans are located mostly in
    /// file order, so the next one on the same line counts characters from there, not from
    /// the line's start: thousands of inline tables on one line (`certificates = [{…}, …]`)
    /// would make counting from the start quadratic again.
    last: Cell<(usize, usize)>,
}

impl LineIndex {
    pub(super) fn new(src: &str) -> LineIndex {
        let after_newlines = src.match_indices('\n').map(|(at, _)| at + 1);
        LineIndex {
            starts: std::iter::once(0).chain(after_newlines).collect(),
            last: Cell::new((0, 1)),
        }
    }

    /// The place of `span` in `src`, as `error::locate` finds it: the line, and the column
    /// counted in characters, of the span's start (clamped to the text, and moved back to a
    /// character boundary).
    pub(super) fn locate(&self, src: &str, span: &Range<usize>, key: &str) -> Location {
        let start = floor_char_boundary(src, span.start.min(src.len()));
        // The last line starting at or before `start`; there is always one (offset 0).
        let line = self.starts.partition_point(|&s| s <= start).max(1);
        let line_start = self.starts[line - 1];
        let (last, last_column) = self.last.get();
        let column = if (line_start..=start).contains(&last) {
            last_column + src[last..start].chars().count()
        } else {
            src[line_start..start].chars().count() + 1
        };
        self.last.set((start, column));
        Location {
            line,
            column,
            key: key.to_string(),
        }
    }
}

/// Line and column (1-based, in characters) of `span.start`, and the key to name.
pub(super) fn locate(src: &str, span: &Range<usize>, key: &str) -> Location {
    let start = span.start.min(src.len());
    let before = &src[..floor_char_boundary(src, start)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Location {
        line,
        column,
        key: key.to_string(),
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The key a bad byte at the end of `src` (the text before it) is on, read line by line: the
/// enclosing table and the key written on its line, unless the byte is in a comment.
fn key_by_line(src: &str) -> String {
    let line_begin = src.rfind('\n').map_or(0, |i| i + 1);
    let table = key_at(&src[..line_begin], line_begin);
    let upto = &src[line_begin..];
    let key = (upto.rsplit_once('=').filter(|_| !upto.contains('#')))
        .map(|(left, _)| last_ident(left))
        .filter(|k| !k.is_empty());
    match (table.is_empty(), key) {
        (true, None) => "(top level)".to_string(),
        (false, None) => table,
        (true, Some(key)) => key,
        (false, Some(key)) => format!("{table}.{key}"),
    }
}

/// The dotted path (`route[1]`, `tls.certificates[0].pass`) of the deepest key or value
/// written exactly at `span`: serde's errors point at the key for an unknown field, at the
/// value for a wrong type, and at the table (its header, or its braces) for a missing field.
fn path_to(table: &DeTable<'_>, prefix: &str, span: &Range<usize>) -> Option<String> {
    path_where(table, prefix, &|at| at == span)
}

/// The dotted path of the deepest key or value whose text holds `offset`.
fn path_around(table: &DeTable<'_>, prefix: &str, offset: usize) -> Option<String> {
    path_where(table, prefix, &|at| at.contains(&offset))
}

/// The dotted path of the deepest key or value whose span `hit` picks.
fn path_where(
    table: &DeTable<'_>,
    prefix: &str,
    hit: &dyn Fn(&Range<usize>) -> bool,
) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let path = match prefix {
            "" => key_part(key.get_ref()).into_owned(),
            _ => format!("{prefix}.{}", key_part(key.get_ref())),
        };
        if hit(&key.span()) {
            return Some(path);
        }
        value_path(value, path, hit)
    })
}

/// One part of a dotted key as TOML writes it: bare where it can be, quoted where the key is
/// empty or holds anything but letters, digits, `_` and `-` (`timeouts."a.b"`, `"".x`), so a
/// message names no key other than the one meant.
pub(super) fn key_part(key: &str) -> std::borrow::Cow<'_, str> {
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    match !key.is_empty() && key.chars().all(bare) {
        true => key.into(),
        // Controls are left to the message's own escaping (`escape_controls`).
        false => format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\"")).into(),
    }
}

fn value_path(
    value: &Spanned<DeValue<'_>>,
    path: String,
    hit: &dyn Fn(&Range<usize>) -> bool,
) -> Option<String> {
    // Inner first: the `[[route]]` array and its element share the header's span.
    let inner = match value.get_ref() {
        DeValue::Table(table) => path_where(table, &path, hit),
        DeValue::Array(array) => array
            .iter()
            .enumerate()
            .find_map(|(i, item)| value_path(item, format!("{path}[{i}]"), hit)),
        _ => None,
    };
    inner.or_else(|| hit(&value.span()).then_some(path))
}

/// The table a line opens if it is a header, as errors name it (`route[2]` for the third
/// `[[route]]`, counted in `arrays`).
fn opened_table(line: &str, arrays: &mut HashMap<String, usize>) -> Option<String> {
    let header = line.trim();
    if let Some(name) = header.strip_prefix("[[").and_then(|t| t.split("]]").next()) {
        let name = name.trim().trim_end_matches(']').to_string();
        let n = arrays
            .entry(name.clone())
            .and_modify(|n| *n += 1)
            .or_insert(0);
        return Some(format!("{name}[{n}]"));
    }
    let name = header.strip_prefix('[').and_then(|t| t.split(']').next())?;
    Some(name.trim().to_string())
}

/// Best-effort dotted key for a byte offset, for errors the TOML parser reports by position
/// only: the enclosing `[table]` / `[[array]]` header plus the key written on that line.
fn key_at(src: &str, offset: usize) -> String {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let mut table = String::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    let line_begin = src[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[offset..].find('\n').map_or(src.len(), |i| offset + i);
    let line = &src[line_begin..line_end];
    // The headers before the offset's line, and its own if it is one (read whole: a
    // repeated `[proxy]` is reported inside its brackets).
    let lines = src[..line_begin].split_inclusive('\n');
    for header in lines.chain([line]) {
        if let Some(name) = opened_table(header, &mut arrays) {
            table = name;
        }
    }
    let upto = &src[line_begin..offset.max(line_begin)];
    // The key is the last `name =` before the offset on its line, or the name at the offset.
    let key = upto
        .rsplit_once('=')
        .map(|(left, _)| last_ident(left))
        .filter(|k| !k.is_empty())
        .or_else(|| {
            // A table header names no key of its own: the table is the place.
            let line = line.trim();
            if line.starts_with('[') {
                return None;
            }
            line.split('=')
                .next()
                .map(|k| last_ident(k.trim()))
                .filter(|k| !k.is_empty())
        })
        .unwrap_or_default();
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// Where the outermost array or inline table still open at `offset` starts, if one is: a
/// `[` or `{` after a `=` or inside another value, outside strings and comments.
fn unclosed_value(src: &str, offset: usize) -> Option<usize> {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let mut open: Vec<usize> = Vec::new();
    let mut after_equals = false;
    let mut chars = src[..offset].char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' => {
                // A comment runs to the end of its line.
                while chars.next_if(|&(_, c)| c != '\n').is_some() {}
            }
            '"' | '\'' => {
                skip_string(chars.by_ref(), c);
                after_equals = false;
            }
            '=' => after_equals = true,
            '[' | '{' if after_equals || !open.is_empty() => {
                open.push(i);
                after_equals = false;
            }
            ']' | '}' => {
                open.pop();
            }
            c if !c.is_whitespace() => after_equals = false,
            _ => {}
        }
    }
    open.first().copied()
}

/// Past a string whose opening `quote` was just read: to its closing quote (a basic one's
/// `\"` does not close it) or the end of its line.
fn skip_string<T>(chars: impl Iterator<Item = (T, char)>, quote: char) {
    let mut escaped = false;
    for (_, c) in chars {
        match c {
            '\\' if quote == '"' && !escaped => escaped = true,
            '\n' => break,
            c if c == quote && !escaped => break,
            _ => escaped = false,
        }
    }
}

/// The first `backquoted` word of a parser message.
fn first_quoted(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once('`')?;
    rest.split_once('`').map(|(word, _)| word)
}

fn last_ident(text: &str) -> String {
    let ident: String = text
        .trim_end()
        .chars()
        .rev()
        // A dotted key (`tls.certificates = …`) whole.
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '"' | '.'))
        .collect();
    ident.chars().rev().filter(|c| *c != '"').collect()
}

#[cfg(test)]
mod tests {
    use super::LineIndex;

    /// The index finds what `error::locate` finds by reading the text, at every offset
    /// (inside a character, past the end, on a newline, in a CRLF file).
    #[test]
    fn the_line_index_locates_as_reading_the_text_does() {
        let src = "a = 1\r\n\nname = \"é✓\" # ü\n\n[x]\ny = \"z\"";
        let lines = LineIndex::new(src);
        for start in 0..src.len() + 3 {
            let span = start..start + 1;
            assert_eq!(
                lines.locate(src, &span, "k"),
                super::locate(src, &span, "k"),
                "at {start}"
            );
        }
        // Out of order too: backwards, and jumping between lines.
        for start in (0..src.len() + 3).rev().chain([30, 3, 31, 9, 2]) {
            let span = start..start;
            assert_eq!(
                lines.locate(src, &span, "k"),
                super::locate(src, &span, "k"),
                "at {start}, backwards"
            );
        }
        assert_eq!(LineIndex::new("").locate("", &(0..0), "k").line, 1);
    }
}
