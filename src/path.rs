//! A request path in the form a backend may read it: percent-escapes decoded, Unicode
//! compatibility forms normalised (NFKC), `\` and encoded separators read as `/`, empty
//! segments, `;parameters` and trailing dots and spaces cut, dot segments found however
//! spelled. Routes are matched against that form ([`crate::routes`]), route paths are held to
//! it ([`crate::config`]), and request targets checked by it (`head`), so no spelling of a
//! path slips past its route to a broader one. Pure functions, no I/O.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;

/// The path as routes are matched against it (unless it has a dot segment, however spelled:
/// see [`has_dot_segment`]): the forms a backend may read as the same path
/// are made one, so that none of them rides past a more specific route (and its `origins`
/// or `subprotocols` rules) to a catch-all: percent-escapes decoded (`/or%69g` is `/orig`),
/// a `\` or an encoded `/` or `\` read as `/` (`/orig%2Fx` is `/orig/x` to a server that
/// decodes before routing, as Go's does, and `/orig\x` to Node's URL parser), the
/// compatibility forms of ASCII that Unicode normalisation (NFKC) turns into ASCII read as
/// that (see [`canonical`]), empty segments dropped (`//orig`), `;parameters` cut from
/// each segment (`/orig;jsessionid=1`, as servlet containers read it), and trailing dots and
/// spaces cut from each segment (`/orig.`, `/orig%20`, as Windows servers read them). The
/// request goes to the backend unchanged.
pub(crate) fn read_path(path: &str) -> Read<'_> {
    // Most paths have nothing to decode, normalise, merge or cut: their segments are theirs.
    let plain = !needs_reading(path) && !path.contains("//") && !path.contains(';');
    if plain && !path.contains("./") && !path.ends_with('.') {
        return Read::Matched(Cow::Borrowed(path));
    }
    let canonical = if plain {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(canonical(path))
    };
    // Segments as a Windows backend reading through its best fit may split them too.
    let best_fit = match canonical.contains(BEST_FIT_SEPARATORS) {
        true => best_fit_written(path),
        false => Vec::new(),
    };
    let separator = |c: char| c == '/' || best_fit.contains(&c);
    // ".", "..", and what Windows reads as one of them ("...", ". .").
    if segments(&canonical, separator).any(|segment| segment.is_empty()) {
        return Read::DotSegment;
    }
    let mut out = String::with_capacity(canonical.len());
    for segment in segments(&canonical, separator) {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || canonical.ends_with('/') {
        out.push('/');
    }
    Read::Matched(Cow::Owned(out))
}

/// What [`read_path`] makes of a request path.
pub(crate) enum Read<'a> {
    /// The form it is matched in.
    Matched(Cow<'a, str>),
    /// A backend could take part of it for a `.` or `..` segment: it matches no route.
    DotSegment,
}

/// Whether `path` holds anything [`canonical`] changes.
fn needs_reading(path: &str) -> bool {
    path.bytes()
        .any(|b| matches!(b, b'%' | b'\\') || !b.is_ascii())
}

/// `path` as a backend that decodes and normalises may read it: every `%XX` escape decoded
/// (one that is not two hex digits kept as it is; bytes that decode to no UTF-8 read as
/// U+FFFD), every `\` made `/`, and the text in Unicode's NFKC form, which normalising
/// frameworks (and, mostly, Windows' "best fit") read paths in: fullwidth and other
/// compatibility forms become what they stand for (`／` is `/`, `．．` and `︰` are `..`, `ａ`
/// and `ᵃ` are `a`), and combining sequences compose (`e` + U+0301 is `é`).
pub(crate) fn canonical(path: &str) -> String {
    let decoded = percent_decode(path);
    let text = String::from_utf8_lossy(&decoded);
    if text.is_ascii() {
        // ASCII is its own NFKC form: skipping the normaliser makes `%20`-style paths ~30×
        // cheaper to read (it costs ~20 ns a character even when it changes nothing).
        return text.replace('\\', "/");
    }
    // NFKC can make a `\` (from `＼`): mapped after it.
    text.nfkc().map(as_read).collect()
}

/// `c` as a backend reads it once normalised: `/` for `\`.
fn as_read(c: char) -> char {
    if c == '\\' {
        '/'
    } else {
        c
    }
}

/// What a Windows backend reading a path through an "ANSI" code page may take for `/` or `\`
/// where NFKC does not: the division and fraction slashes and the set minus (`∕ ⁄ ∖`, code
/// page 1252's best fit), and the yen and won signs (`¥ ₩`, which code pages 932 and 949 put
/// at the byte of `\`). `/public/..∕admin` is `/public/../admin` to such a backend, and
/// `/admin∕x` is `/admin/x`: matched as separators, so that neither slips past the `/admin`
/// route's rules. (Not for [`canonical`]'s other readers: to a URL parser, `/¥100` starts with
/// no two separators.)
const BEST_FIT_SEPARATORS: [char; 5] = ['\u{2215}', '\u{2044}', '\u{2216}', '\u{A5}', '\u{20A9}'];

/// Whether `path` holds what Windows' best fit reads as a separator.
pub(crate) fn has_best_fit_separator(path: &str) -> bool {
    !best_fit_written(path).is_empty()
}

/// The best-fit separators written in `path` (once percent-decoded), not those NFKC makes
/// of something else (`½` is `1⁄2`, `￥` is `¥`): a backend reading through best fit does not
/// normalise, and one that normalises does not read them as separators.
fn best_fit_written(path: &str) -> Vec<char> {
    let decoded = percent_decode(path);
    let text = String::from_utf8_lossy(&decoded);
    (BEST_FIT_SEPARATORS.into_iter())
        .filter(|&c| text.contains(c))
        .collect()
}

/// `path`'s bytes with every `%XX` of two hex digits decoded.
pub(crate) fn percent_decode(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        let escaped = match bytes[i..] {
            [b'%', high, low, ..] => hex(high).zip(hex(low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                // Two hex digits: at most 0xFF.
                out.push(u8::try_from(high * 16 + low).unwrap_or(u8::MAX));
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// Whether every `%` in `path` starts an escape of two hex digits, none of them encodes a
/// control character (NUL, which C-based servers cut at; a tab, a line feed or DEL, which
/// backends that trim a segment, as Java's `String.trim` does, drop), and together they decode
/// to UTF-8: a path every backend decodes the same way.
pub(crate) fn escapes_sound(path: &str) -> bool {
    let bytes = path.as_bytes();
    let whole = (bytes.iter().enumerate())
        .filter(|(_, b)| **b == b'%')
        .all(|(i, _)| {
            matches!(bytes.get(i + 1..i + 3), Some([high, low])
                if high.is_ascii_hexdigit() && low.is_ascii_hexdigit())
        });
    let decoded = percent_decode(path);
    let control = decoded.iter().any(|b| b.is_ascii_control());
    whole && !control && std::str::from_utf8(&decoded).is_ok()
}

/// The segments of a [`canonical`] path as [`read_path`] reads them, split where
/// `separator`: empty ones dropped, `;parameters` cut, then trailing dots and spaces, so that
/// a dot segment reads as empty.
fn segments(canonical: &str, separator: impl Fn(char) -> bool) -> impl Iterator<Item = &str> {
    (canonical.split(separator))
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .filter(|segment| !segment.is_empty())
        .map(|segment| segment.trim_end_matches(['.', ' ']))
}

/// Whether a backend could take part of `path` for a `.` or `..` segment, however spelled:
/// percent-encoded, split off by a `\` or an encoded `/` or `\` (servers that decode before
/// resolving), with `;parameters` (servlet containers read "..;x" as ".."), or in the
/// compatibility forms NFKC reads as dots (`%EF%BC%8E` is `．`, which is `.`).
pub(crate) fn has_dot_segment(path: &str) -> bool {
    matches!(read_path(path), Read::DotSegment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The ASCII shortcut in [`canonical`] reads every path as the normaliser would.
        #[test]
        fn canonical_is_the_decoded_path_in_nfkc(path in "(%[0-9A-Fa-f]{2}|[ -~]|\\PC){0,40}") {
            let decoded = percent_decode(&path);
            let slow: String = String::from_utf8_lossy(&decoded).nfkc().map(as_read).collect();
            prop_assert_eq!(canonical(&path), slow);
        }
    }

    #[test]
    fn only_whole_control_free_utf8_escapes_are_sound() {
        for sound in [
            "/",
            "/a%20b",
            "/caf%C3%A9",
            "/%EF%BC%8E",
            "/a%2Fb",
            "/100%25",
        ] {
            assert!(escapes_sound(sound), "{sound}");
        }
        for broken in [
            "/%u002e",
            "/%",
            "/a%2",
            "/%zz",
            "/..%00/x",
            "/%c0%ae",
            "/%ff",
            "/%C3",
            "/admin%09",
            "/admin%0a",
            "/a%0Db",
            "/x%7F",
            "/%1f",
        ] {
            assert!(!escapes_sound(broken), "{broken}");
        }
    }
}
