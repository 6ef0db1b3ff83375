//! The small pieces of HTTP syntax (RFC 9110 §5.6) that the handshake rules, the headers
//! forwarded and the config's checks share: comma-separated token lists over several header
//! lines, token characters, and host-name labels.

use hyper::header::{HeaderMap, HeaderName};

/// Every comma-separated element of every `name` header line, trimmed, empty ones skipped.
/// A comma inside a `"quoted string"` separates nothing: `x="a, upgrade"` is one element (no
/// token of any list), not one that ends in `upgrade`.
pub(crate) fn tokens<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a str> {
    let lines = headers.get_all(name).iter();
    trimmed(
        lines
            .filter_map(|v| v.to_str().ok())
            .flat_map(split_outside_quotes),
    )
}

/// `elements` trimmed, the empty ones left out.
fn trimmed<'a>(elements: impl Iterator<Item = &'a str>) -> impl Iterator<Item = &'a str> {
    elements.map(str::trim).filter(|t| !t.is_empty())
}

/// `line` split at the commas outside `"quoted strings"` (with their `\` escapes).
pub(crate) fn split_outside_quotes(line: &str) -> Vec<&str> {
    let (mut parts, mut start) = (Vec::new(), 0);
    let (mut quoted, mut escaped) = (false, false);
    for (i, b) in line.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&line[start..]);
    parts
}

/// Every element of every `name` header line split at every comma (quoted or not), trimmed,
/// empty ones skipped: for lists that hold no quoted strings, where reading more elements
/// than meant is the safe side. An element with a byte outside ASCII (obs-text, which hyper
/// lets through) is left out, not its whole line: `x-secret, caf\xe9` still names
/// `x-secret`.
pub(crate) fn plain_elements<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a str> {
    let elements = (headers.get_all(name).iter()).flat_map(|v| v.as_bytes().split(|&b| b == b','));
    trimmed(elements.filter_map(|element| std::str::from_utf8(element).ok()))
        .filter(|t| t.is_ascii())
}

/// Whether any line of `name` lists `token` (case-insensitively).
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// A byte of an HTTP token (RFC 9110 §5.6.2): visible ASCII but the delimiters.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A label of a host name, as requests and routes may write it: letters, digits, '-' (not
/// first or last) and '_', not empty.
pub(crate) fn is_label(label: &str) -> bool {
    !label.is_empty()
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}
