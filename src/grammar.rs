//! The small pieces of HTTP syntax (RFC 9110 §5.6) that the handshake rules, the headers
//! forwarded and the config's checks share: comma-separated token lists over several header
//! lines, token characters, and host-name labels.

use hyper::header::{HeaderMap, HeaderName};

/// Every comma-separated token of every `name` header line, trimmed, empty ones skipped.
pub(crate) fn tokens<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
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
