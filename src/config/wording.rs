//! toml's and serde's messages in an operator's words: Rust's type names as TOML's ("an
//! integer", "a table"), a key written twice with where it was first, a table nested past
//! toml's limit found and named, a `[route]` that should be `[[route]]`.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use super::error::ConfigError;
use super::locate::{
    floor_char_boundary, key_at, locate, multiline_strings_blanked, opened_table, skip_string,
    unclosed_value,
};

/// toml's "duplicate key" for `key`, found at `offset`, as what to do about it, with the
/// line it was first written on: the table header or the `key =` line before it (in the
/// same table), if there is one to find.
pub(super) fn written_twice(src: &str, offset: usize, key: &str) -> String {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let line_begin = src[..offset].rfind('\n').map_or(0, |i| i + 1);
    let here = src[line_begin..].lines().next().unwrap_or_default();
    // A multi-line string's lines are neither headers nor keys.
    let blanked = multiline_strings_blanked(&src[..line_begin]);
    let before: Vec<&str> = blanked.lines().collect();
    match header_name(here) {
        Some(table) => {
            let first =
                (before.iter()).rposition(|line| header_name(line).as_ref() == Some(&table));
            // Set before as a value (`route = [{ … }]`, `backend_tls = { … }`), which no
            // header may add to: one way of writing it, not one header.
            let last = table.rsplit('.').next().unwrap_or(&table);
            let as_value = set_as_value(&before, &table, last);
            let header = here
                .trim()
                .split(']')
                .next()
                .unwrap_or_default()
                .to_string()
                + "]";
            let header = if header.starts_with("[[") {
                header + "]"
            } else {
                header
            };
            match (first, as_value) {
                (Some(i), _) => format!(
                    "the table [{table}] is written twice (first at line {}): put its keys under one header",
                    i + 1
                ),
                (None, Some(i)) => format!(
                    "`{last}` is set as a value at line {} and again by the header {header}: write it one way, all as a value or all under headers",
                    i + 1
                ),
                (None, None) => format!("the table [{table}] is written twice: put its keys under one header"),
            }
        }
        None => {
            let name = key_written_at(&src[offset..]);
            let name = name
                .as_deref()
                .unwrap_or_else(|| key.rsplit('.').next().unwrap_or(key));
            // The line's own key, when that is what is set twice (not a key inside its
            // inline table): a dotted one is matched whole, and against its parts.
            let own = Some(dotted_key(here)).filter(|k| k.rsplit('.').next() == Some(name));
            match first_in_table(&before, name, own.as_deref()) {
                Some(line) => format!("`{name}` is set twice (first at line {line}): keep one"),
                None => format!("`{name}` is set twice: keep one"),
            }
        }
    }
}

/// The line index among `before` (the file up to a header for `table`) where `table` was set
/// as a value (`route = [{ … }]`, `backend_tls = { … }`, `backend_tls.ca = …`), in the table
/// that holds it: the file's top before any header for a top-level table; for a table inside
/// another (`route.backend_tls`), the section of the last header, if that is its parent's.
fn set_as_value(before: &[&str], table: &str, last: &str) -> Option<usize> {
    let sets = |line: &&str| {
        let key = dotted_key(line);
        key == last || key.starts_with(&format!("{last}."))
    };
    let Some((parent, _)) = table.rsplit_once('.') else {
        let mut top = before.iter().take_while(|line| header_name(line).is_none());
        return top.position(sets);
    };
    let header = before
        .iter()
        .rposition(|line| header_name(line).is_some())?;
    if header_name(before[header]).as_deref() != Some(parent) {
        return None;
    }
    let section = &before[header + 1..];
    section.iter().rposition(sets).map(|i| header + 1 + i)
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
/// looking back no further than the table the duplicate is in. With the duplicate's own
/// dotted key `own`, a line setting a key inside it or a table around it counts too:
/// `backend_tls.ca = …` sets `backend_tls`, which `backend_tls = { … }` then sets again.
fn first_in_table(lines: &[&str], name: &str, own: Option<&str>) -> Option<usize> {
    let within = |outer: &str, inner: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('.'))
    };
    for (i, line) in lines.iter().enumerate().rev() {
        if header_name(line).is_some() {
            return None;
        }
        let written = dotted_key(line);
        let same = |own: &str| written == own || within(own, &written) || within(&written, own);
        if written == name || own.is_some_and(same) {
            return Some(i + 1);
        }
    }
    None
}

/// The key a `key = value` line sets, its dotted parts unquoted and trimmed
/// (`"a" . b` is `a.b`); empty for a line without `=`.
fn dotted_key(line: &str) -> String {
    let Some((left, _)) = line.split_once('=') else {
        return String::new();
    };
    let parts = left.split('.').map(|p| p.trim().trim_matches(['"', '\'']));
    parts.collect::<Vec<_>>().join(".")
}

/// Whether the file has a `[route]` table header, the likely cause of whatever went wrong
/// with `route`: routes are an array of tables.
pub(super) fn single_route_table(src: &str) -> bool {
    multiline_strings_blanked(src).lines().any(|line| {
        let line = line.trim();
        line.strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .is_some_and(|name| name.trim() == "route")
    })
}

/// serde names Rust types in its messages ("expected i64", "expected struct RawProxy",
/// "invalid type: map"); an operator reads "an integer", "a table".
pub(super) fn plain_types(message: &str) -> String {
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
    if let Some(plain) = beyond_i64(message) {
        return Some(plain);
    }
    let rest = message.strip_prefix("invalid type: integer `")?;
    let (number, rest) = rest.split_once('`')?;
    if !(rest.starts_with(" as i128,") || rest.starts_with(" as u128,")) {
        return None;
    }
    Some(out_of_range(number))
}

/// `number`, as written, beyond what any setting takes: too small if negative, else too large.
fn out_of_range(number: &str) -> String {
    match number.starts_with('-') {
        true => {
            format!("{number} is too small for a number here (no setting takes a negative one)")
        }
        false => format!(
            "{number} is too large for a number here (no setting takes more than {})",
            i64::MAX
        ),
    }
}

/// An integer that fits 64 bits unsigned but not signed (2^63 to 2^64 − 1), which serde reads
/// as a `u64` and refuses as "invalid value: integer `9223372036854775808`, expected i64":
/// the same plain words as a larger one.
fn beyond_i64(message: &str) -> Option<String> {
    let rest = message.strip_prefix("invalid value: integer `")?;
    let (number, rest) = rest.split_once('`')?;
    let large = number.parse::<u64>().ok()? > i64::MAX as u64;
    (large && rest.starts_with(", expected i64")).then(|| out_of_range(number))
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

/// toml stops at 80 levels of dotted key and reports it with no position ("recursion
/// limit"): found here, the deepest key or table header, named by its first part (under
/// its table, for a key).
pub(super) fn too_deep(e: &toml::de::Error, src: &str, path: &Path) -> Option<ConfigError> {
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
    let blanked = multiline_strings_blanked(src);
    for line in blanked.split_inclusive('\n') {
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

/// The first `backquoted` word of a parser message.
pub(super) fn first_quoted(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once('`')?;
    rest.split_once('`').map(|(word, _)| word)
}

/// A parser's error at `span` that its own words would send the operator the wrong way,
/// told again: where the fault is, and what it is. `None`: the parser's words stand.
///
/// - a value on the line after its key's `=` (TOML wants it on the key's line): the parser
///   stumbles on the next line ("key with no value", "expected key");
/// - a bare word where a boolean goes (`reuse_port = yes`): "string values must be quoted",
///   which, followed, gives a string where a boolean is wanted;
/// - an invisible character (a zero-width space, a no-break space pasted with the text)
///   where a key or a header starts: "invalid unquoted key", with nothing seen to be wrong;
/// - a NUL byte (a binary file, or one a crash left zero-filled);
/// - a number past 128 bits, which stops the parser itself ("integer number overflowed").
///
/// `syntax`: the file does not parse as TOML (the first three are about syntax errors only:
/// a key with an invisible character in a file that parses is named, escaped, by the error
/// about the key).
pub(super) fn retold(
    src: &str,
    span: &Range<usize>,
    message: &str,
    syntax: bool,
) -> Option<(Range<usize>, String)> {
    let at = floor_char_boundary(src, span.start.min(src.len()));
    let here = &src[at..];
    if here.starts_with('\0') {
        let said = "a NUL byte: a config is text (is this a binary file, or one a crash left zero-filled?)";
        return Some((span.clone(), said.to_string()));
    }
    if message.ends_with("number overflowed") {
        // The number as the parser spanned it (a comment or a brace may follow it closely).
        let spanned = src.get(span.clone()).filter(|n| !n.trim().is_empty());
        let number = spanned.or_else(|| here.split(|c: char| c.is_whitespace() || c == ',').next());
        let number = number.map(str::trim);
        let number = number.filter(|n| !n.is_empty()).unwrap_or("the number");
        let said = out_of_range(number);
        return Some((span.clone(), said));
    }
    if !syntax {
        return None;
    }
    if let Some(c) = here.chars().next().filter(|&c| super::error::is_unseen(c)) {
        let said = format!(
            "an invisible character (U+{:04X}) here, which TOML takes only inside a string: delete it",
            u32::from(c)
        );
        return Some((span.clone(), said));
    }
    if let Some((line_start, key)) = value_left_for_next_line(src, at) {
        let said = format!(
            "`{key} =` has no value on its line: in TOML a value starts on its key's line (an array or inline table may then run on over lines)"
        );
        let end = line_start + src[line_start..].find('=').map_or(0, |i| i + 1);
        return Some((end..end, said));
    }
    if message.starts_with("string values must be quoted") {
        // A whole bare word of the kinds people write for a switch, not the start of a longer
        // one (`on.example.com`), nor `true` or `false` (TOML's own, so not the fault here).
        let word: String = here.chars().take_while(char::is_ascii_alphabetic).collect();
        let after = here[word.len()..].chars().next();
        let whole = after.is_none_or(|c| c.is_whitespace() || matches!(c, '#' | ',' | ']' | '}'));
        let switch = ["yes", "no", "on", "off", "enabled", "disabled"];
        if whole && switch.contains(&word.to_ascii_lowercase().as_str()) {
            let said = format!("`{word}` is no TOML value: a boolean is written true or false (lower case, no quotes), a string in quotes (\"{word}\")");
            return Some((span.clone(), said));
        }
    }
    None
}

/// The `key =` line left without a value that the parser's error at `offset` comes from: the
/// error's own line, or the one before it (blank lines and comments between), ending in `=`.
/// Where that line starts, and its key.
fn value_left_for_next_line(src: &str, offset: usize) -> Option<(usize, String)> {
    let blanked = multiline_strings_blanked(src);
    let line_start = |at: usize| blanked[..at].rfind('\n').map_or(0, |i| i + 1);
    let mut start = line_start(offset.min(blanked.len()));
    for _ in 0..64 {
        let end = blanked[start..]
            .find('\n')
            .map_or(blanked.len(), |i| start + i);
        // A line a multi-line string opens, closes or runs through is blanked from the string
        // on: `path = """/` would read as a key left without a value.
        let (line, whole) = (
            &blanked[start..end],
            src.get(start..end).unwrap_or_default(),
        );
        let code = line.split('#').next().unwrap_or_default().trim();
        if let Some(key) = code.strip_suffix('=').filter(|_| line == whole) {
            let key = key.trim();
            // Bare keys only: a quote there is more likely a string's, cut open by this very
            // mistake (`"token=` in an array), than a quoted key's.
            let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ');
            return (!key.is_empty() && key.chars().all(bare)).then(|| (start, key.to_string()));
        }
        // Up past blank and comment lines only; the error's own line is looked at whatever it is.
        if start == 0 || (!code.is_empty() && start != line_start(offset.min(blanked.len()))) {
            return None;
        }
        start = line_start(start - 1);
    }
    None
}
