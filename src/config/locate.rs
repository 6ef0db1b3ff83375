//! Where in the config file something is: the line and column of a byte span, and the dotted
//! key written there (`route[1].backends[0]`), from the parsed document's spans or, for a file
//! that does not parse, by reading its lines around the error.

use std::cell::Cell;
use std::collections::HashMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::Location;

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

    /// The place of `span` in `src`, as [`locate`] finds it: the line, and the column
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

pub(super) fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The key a bad byte at the end of `src` (the text before it) is on, read line by line: the
/// enclosing table and the key written on its line, unless the byte is in a comment.
pub(super) fn key_by_line(src: &str) -> String {
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
pub(super) fn path_to(table: &DeTable<'_>, prefix: &str, span: &Range<usize>) -> Option<String> {
    path_where(table, prefix, &|at| at == span)
}

/// The dotted path of the deepest key or value whose text holds `offset`.
pub(super) fn path_around(table: &DeTable<'_>, prefix: &str, offset: usize) -> Option<String> {
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
pub(super) fn opened_table(line: &str, arrays: &mut HashMap<String, usize>) -> Option<String> {
    let header = line.trim();
    if let Some(rest) = header.strip_prefix("[[") {
        let name = header_name(rest, "]]").to_string();
        let n = arrays
            .entry(name.clone())
            .and_modify(|n| *n += 1)
            .or_insert(0);
        return Some(format!("{name}[{n}]"));
    }
    let rest = header.strip_prefix('[')?;
    Some(header_name(rest, "]").to_string())
}

/// The table name of a header whose text after its opening bracket is `rest`, closed by
/// `close`: up to it, or, left open, its first word (`[limits max_connections = 5` is
/// `limits`'s, not a name with a key and its value in it). A name ends at what no name holds
/// outside its quotes (`]`, `#`, `=`, `[`): a `]` in a comment or a value behind a header left
/// open does not close it.
fn header_name<'a>(rest: &'a str, close: &str) -> &'a str {
    let mut chars = rest.char_indices();
    let mut end = rest.len();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' | '\'' => skip_string(chars.by_ref(), c),
            ']' | '#' | '=' | '[' => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let name = rest[..end].trim();
    if rest[end..].starts_with(close) {
        return name;
    }
    first_word(name)
}

/// The first word of `text`, a quoted one whole (`"my table"`).
fn first_word(text: &str) -> &str {
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' | '\'' => skip_string(chars.by_ref(), c),
            c if c.is_whitespace() => return &text[..i],
            _ => {}
        }
    }
    text
}

/// `src` with the bodies of its multi-line strings (`"""…"""`, `'''…'''`) blanked, newlines
/// kept: the same bytes at the same offsets and lines, for the scans that read the file line
/// by line for table headers and keys, which a string's line such as `[[route]]` must not
/// fool.
pub(super) fn multiline_strings_blanked(src: &str) -> std::borrow::Cow<'_, str> {
    let text = src.as_bytes();
    let mut blanked: Option<Vec<u8>> = None;
    for (start, end) in multiline_strings(text) {
        let out = blanked.get_or_insert_with(|| text.to_vec());
        for b in &mut out[start..end.unwrap_or(text.len())] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    }
    match blanked {
        // Whole characters blanked (a multi-byte one's every byte) or kept: still UTF-8.
        Some(bytes) => std::borrow::Cow::Owned(String::from_utf8(bytes).unwrap_or_default()),
        None => std::borrow::Cow::Borrowed(src),
    }
}

/// Where a multi-line string left open starts (its opening quotes), if one is: it runs to
/// the end of the file, where the parser notices it, past every line it swallowed.
pub(super) fn unclosed_multiline(src: &str) -> Option<usize> {
    let last = multiline_strings(src.as_bytes()).pop()?;
    match last {
        (start, None) => Some(start),
        _ => None,
    }
}

/// The multi-line strings (`"""…"""`, `'''…'''`) of `text`: where each starts, and where it
/// ends past its closing quotes (`None`: never closed, the last one). One-line strings and
/// comments are read past, so a `"""` inside one opens nothing.
fn multiline_strings(text: &[u8]) -> Vec<(usize, Option<usize>)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'#' => i = next_line(text, i),
            quote @ (b'"' | b'\'') if text[i..].starts_with(&[quote; 3]) => {
                let end = past_multiline(text, i + 3, quote);
                found.push((i, end));
                i = end.unwrap_or(text.len());
            }
            quote @ (b'"' | b'\'') => {
                i += 1;
                while let Some(&b) = text.get(i) {
                    match b {
                        b'\n' => break,
                        b'\\' if quote == b'"' => i += 2,
                        b if b == quote => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
            }
            _ => i += 1,
        }
    }
    found
}

/// Best-effort dotted key for a byte offset, for errors the TOML parser reports by position
/// only: the enclosing `[table]` / `[[array]]` header plus the key written on that line.
pub(super) fn key_at(src: &str, offset: usize) -> String {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let mut table = String::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    let line_begin = src[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[offset..].find('\n').map_or(src.len(), |i| offset + i);
    let line = &src[line_begin..line_end];
    // The headers before the offset's line, and its own if it is one (read whole: a
    // repeated `[proxy]` is reported inside its brackets); none inside a multi-line string.
    let before = multiline_strings_blanked(&src[..line_begin]);
    let lines = before.split_inclusive('\n');
    for header in lines.chain([line]) {
        if let Some(name) = opened_table(header, &mut arrays) {
            table = name;
        }
    }
    let upto = &src[line_begin..offset.max(line_begin)];
    // The key is the last `name =` before the offset on its line, or the name at the offset.
    let key = last_equals(upto)
        .map(|at| last_ident(&upto[..at]))
        .filter(|k| !k.is_empty())
        .or_else(|| {
            // A table header names no key of its own: the table is the place.
            let line = line.trim();
            if line.starts_with('[') {
                return None;
            }
            match line.split_once('=') {
                // Before its `=`, the parser read the key up to where it stopped making
                // sense: `min version =` is key `min` with no value, `nam$e =` the key it
                // could not read, written as it is, not the part after the mistake.
                Some((left, _)) => Some(first_word(left.trim()).to_string()),
                // No `=` at all (`name: "echo"`, `name "echo"`): the key is what the line
                // starts with, not the last word of its value.
                None => Some(first_ident(line)),
            }
            .filter(|k| !k.is_empty())
        })
        .unwrap_or_default();
    // What the parser stopped on may be no key at all (`{`, `#`, `[0]` of a line cut short):
    // the place is then the table, not a made-up key.
    let key = if plausible_key(&key) {
        key
    } else {
        String::new()
    };
    let table = if plausible_key(&table) {
        table
    } else {
        String::new()
    };
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// Whether `key` reads as a dotted key, however misspelt (`tls.certificates[0].cert`,
/// `route[0].nam$e`): each part a name, with indexes after it; not punctuation the parser
/// stopped on (`tls.{`, `proxy.#`, `[0]`).
fn plausible_key(key: &str) -> bool {
    let part = |part: &str| {
        let name = part.split('[').next().unwrap_or_default();
        let indexes = &part[name.len()..];
        !name.is_empty()
            && !name.starts_with(['{', '}', '#', ']', '=', ','])
            && (indexes.split_terminator(']')).all(|index| {
                index
                    .strip_prefix('[')
                    .is_some_and(|n| n.parse::<usize>().is_ok())
            })
    };
    key.split('.').all(part)
}

/// Where the last `=` of `text` (a line, or its start) is that is no string's or comment's,
/// nor inside a closed array or inline table: `balance = "x=y` is `balance`'s value, whether
/// its string is closed or not, and what follows `certificates = [{ cert = "a" }]` belongs
/// to `certificates`, not `cert`.
fn last_equals(text: &str) -> Option<usize> {
    let mut last = None;
    let mut depth = 0usize;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' => break,
            '"' | '\'' => skip_string(chars.by_ref(), c),
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            '=' if depth == 0 => last = Some(i),
            _ => {}
        }
    }
    last
}

/// Where the outermost array or inline table still open at `offset` starts, if one is: a
/// `[` or `{` after a `=` or inside another value, outside strings and comments.
pub(super) fn unclosed_value(src: &str, offset: usize) -> Option<usize> {
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

/// Where the closing quote belongs of the first one-line string left open on a line before
/// `offset`'s, or opened on its line at or before it (the end of that line), and whether that
/// string was meant to end at an escaped quote (`"C:\dir\"`, whose last quote is the
/// backslash's, with nothing but blanks or a comment behind it): no TOML
/// string runs past its line, but the parser reads on and may notice only further down (a
/// missing comma before the next line of an array, a `[table]` read as an element), where the
/// operator would look in vain, or say it in its own words ("invalid basic string"). A quote
/// after `offset` is not the mistake (`name = chat"` lacks its opening one).
pub(super) fn unclosed_string_before(src: &str, offset: usize) -> Option<(usize, bool)> {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    // Quotes, backslashes, `#` and newlines are ASCII: bytes are enough.
    let through = next_line(src.as_bytes(), offset);
    let text = &src.as_bytes()[..through];
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'#' => i = next_line(text, i),
            b'"' | b'\'' if i > offset => return None,
            quote @ (b'"' | b'\'') if text[i..].starts_with(&[quote; 3]) => {
                i = past_multiline(text, i + 3, quote)?;
            }
            quote @ (b'"' | b'\'') => {
                i += 1;
                // Just past the last `\"`, if there is one.
                let mut past_escaped_quote = None;
                // Whether the string was meant to end at that `\"`: nothing but blanks or a
                // comment follows it on the line.
                let meant = |end: usize, past: Option<usize>| {
                    past.is_some_and(|past: usize| {
                        let rest = text[past..end].iter().find(|b| !b" \t\r".contains(b));
                        rest.is_none_or(|&b| b == b'#')
                    })
                };
                loop {
                    match text.get(i) {
                        // The file's last line, without a newline.
                        None => return Some((text.len(), meant(text.len(), past_escaped_quote))),
                        Some(b'\n') => {
                            let crlf = i > 0 && text[i - 1] == b'\r';
                            let end = i - usize::from(crlf);
                            return Some((end, meant(end, past_escaped_quote)));
                        }
                        Some(b'\\') if quote == b'"' && text.get(i + 1) != Some(&b'\n') => {
                            if text.get(i + 1) == Some(&b'"') {
                                past_escaped_quote = Some(i + 2);
                            }
                            i += 2;
                        }
                        Some(&c) if c == quote => break i += 1,
                        Some(_) => i += 1,
                    }
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The index of the line after the one `i` is on (or the text's end).
fn next_line(text: &[u8], i: usize) -> usize {
    (text[i..].iter().position(|&b| b == b'\n')).map_or(text.len(), |n| i + n + 1)
}

/// Past the multi-line string whose body starts at `i`, up to its closing `quote` three
/// times (and the up to two more a body may end with); `None` if it is not closed.
fn past_multiline(text: &[u8], mut i: usize, quote: u8) -> Option<usize> {
    while i < text.len() {
        if quote == b'"' && text[i] == b'\\' {
            i += 2;
        } else if text[i..].starts_with(&[quote; 3]) {
            i += 3;
            while text.get(i) == Some(&quote) {
                i += 1;
            }
            return Some(i);
        } else {
            i += 1;
        }
    }
    None
}

/// Past a string whose opening `quote` was just read: to its closing quote (a basic one's
/// `\"` does not close it) or the end of its line.
pub(super) fn skip_string<T>(chars: impl Iterator<Item = (T, char)>, quote: char) {
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

/// The key `text` starts with (a dotted one whole); none where it starts with no letter (an
/// array's element on a line of its own, `8443,`, is no key).
fn first_ident(text: &str) -> String {
    if !text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        return String::new();
    }
    (text.chars())
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect()
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
    use super::{key_at, LineIndex};

    /// The index finds what [`locate`] finds by reading the text, at every offset
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

    #[test]
    fn a_key_is_what_a_line_without_its_equals_sign_starts_with_and_an_element_is_none() {
        let at = |src: &str, needle: &str| key_at(src, src.find(needle).unwrap());
        assert_eq!(at("[[route]]\nname: \"echo\"\n", "echo"), "route[0].name");
        assert_eq!(at("[proxy]\nlisten = [\n  8443,\n]\n", "8443"), "proxy");
    }

    /// Where the parser stopped inside a key, the key is the one it was reading, whole, not
    /// the word after the mistake; behind a closed inline table, the table's own key.
    #[test]
    fn a_key_is_named_as_written_not_by_a_fragment_or_a_key_inside_a_value() {
        let at = |src: &str, needle: &str| key_at(src, src.find(needle).unwrap());
        assert_eq!(at("[tls]\nmin version = \"1.2\"\n", "version"), "tls.min");
        assert_eq!(at("[[route]]\nnam$e = \"a\"\n", "$"), "route[0].nam$e");
        assert_eq!(
            at("[[route]]\nna\u{1b}me = \"a\"\n", "\u{1b}"),
            "route[0].na\u{1b}me"
        );
        let trailing = "[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }] x\n";
        assert_eq!(at(trailing, "] x"), "tls.certificates");
        assert_eq!(at("[tls]\nx = { a = 1 } = 2\n", "2"), "tls.x");
    }
}
