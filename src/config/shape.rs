//! The document's shape, checked before serde reads it: every section and entry is a table,
//! no setting of a few words (`log_format`) is a table or an array, and no value is a
//! date-time. serde's derived structs also take a sequence, filling fields by position
//! (`timeouts = ["1s", "2s"]` would load), its enums a one-entry table
//! (`log_format = { json = [] }`), and toml hands a date-time over as a map with a private
//! key; all would otherwise load wrongly or be reported in serde's internal names.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::ConfigError;
use super::locate::{key_part, locate};

/// The sections, and how to write each: the message shows the fix.
const SECTIONS: [(&str, &str); 6] = [
    (
        "proxy",
        "[proxy] or proxy = { listen = [\"127.0.0.1:8443\"] }",
    ),
    (
        "tls",
        "[tls] or tls = { certificates = [{ cert = \"a.crt\", key = \"a.key\" }] }",
    ),
    (
        "timeouts",
        "[timeouts] or timeouts = { handshake = \"10s\" }",
    ),
    ("limits", "[limits] or limits = { max_connections = 10000 }"),
    (
        "admin",
        "[admin] or admin = { listen = \"127.0.0.1:9090\" }",
    ),
    ("reload", "[reload] or reload = { watch = \"poll\" }"),
];
const ROUTE: &str =
    "[[route]], or { name = \"a\", path = \"/\", backends = [\"h:1\"] } in route = [...]";
const CERTIFICATE: &str = "{ cert = \"a.crt\", key = \"a.key\" }";
const BACKEND_TLS: &str = "backend_tls = { ca = \"backend-ca.crt\" }";
/// The settings that are one of a few words (the enums in `raw`), and the words.
const WORDS: [(&str, &str, [&str; 2]); 4] = [
    ("proxy", "log_format", ["json", "text"]),
    ("tls", "min_version", ["1.2", "1.3"]),
    ("tls", "client_auth", ["optional", "required"]),
    ("reload", "watch", ["events", "poll"]),
];
/// A route's setting of a few words, and its words.
const ROUTE_WORDS: (&str, [&str; 2]) = ("balance", ["least_connections", "round_robin"]);

/// The keys a section must have, if written: serde's `missing field`, found here too so that
/// one missing, placed at its table's start, is reported before a mistake written inside the
/// table (serde finds it only after reading the table's keys, and stops at a bad one).
const REQUIRED: [(&str, &[&str]); 3] = [
    ("proxy", &["listen"]),
    ("tls", &["certificates"]),
    ("admin", &["listen"]),
];
/// The keys each entry of `[[route]]` and `tls.certificates` must have, in serde's order.
const ROUTE_REQUIRED: &[&str] = &["name", "path", "backends"];
const CERTIFICATE_REQUIRED: &[&str] = &["cert", "key"];

/// Refuses what serde would misread (a section or entry that is not a table, a date-time),
/// and what it would find late (a missing key); of several, the one written first.
/// (`root` is `src` parsed: a document that does not parse gets toml's own error first.)
pub(super) fn check(root: &DeTable<'_>, src: &str, path: &Path) -> Result<(), ConfigError> {
    let mut first: Option<ConfigError> = None;
    let mut refuse = |span: &Range<usize>, key: &str, message: String| {
        let refusal = ConfigError::at(path, &locate(src, span, key), message);
        if first
            .as_ref()
            .is_none_or(|kept| refusal.written_before(kept))
        {
            first = Some(refusal);
        }
    };
    for (name, how) in SECTIONS {
        if let Some(value) = get(root, name) {
            if let Err(m) = must_be_table(value, how) {
                refuse(&value.span(), name, m);
            }
        }
    }
    for (name, required) in REQUIRED {
        if let Some(missing) = get(root, name).and_then(|t| first_missing(t, required)) {
            let table = get(root, name).map(Spanned::span).unwrap_or_default();
            refuse(&table, name, format!("missing field `{missing}`"));
        }
    }
    for (section, name, words) in WORDS {
        let Some(value) = get(root, section).and_then(|t| field(t, name)) else {
            continue;
        };
        if let Err(m) = must_be_word(value, words) {
            refuse(&value.span(), &format!("{section}.{name}"), m);
        }
    }
    let entries = [
        ("route", get(root, "route")),
        (
            "tls.certificates",
            get(root, "tls").and_then(|tls| field(tls, "certificates")),
        ),
    ];
    for (name, list) in entries {
        // Not an array at all: serde says so ("expected an array"), or, for `[route]`, the
        // single-table hint does.
        let Some(DeValue::Array(items)) = list.map(Spanned::get_ref) else {
            continue;
        };
        let (how, required) = match name {
            "route" => (ROUTE, ROUTE_REQUIRED),
            _ => (CERTIFICATE, CERTIFICATE_REQUIRED),
        };
        for (i, item) in items.iter().enumerate() {
            let key = format!("{name}[{i}]");
            if let Err(m) = must_be_table(item, how) {
                refuse(&item.span(), &key, m);
                continue;
            }
            if let Some(missing) = first_missing(item, required) {
                refuse(&item.span(), &key, format!("missing field `{missing}`"));
            }
            // A route's one table: serde would read an array into it by position too.
            if let Some(value) = field(item, "backend_tls").filter(|_| name == "route") {
                if let Err(m) = must_be_table(value, BACKEND_TLS) {
                    refuse(&value.span(), &format!("{key}.backend_tls"), m);
                }
            }
            let (setting, words) = ROUTE_WORDS;
            if let Some(value) = field(item, setting).filter(|_| name == "route") {
                if let Err(m) = must_be_word(value, words) {
                    refuse(&value.span(), &format!("{key}.{setting}"), m);
                }
            }
        }
    }
    if let Some((span, key)) = first_datetime(root) {
        refuse(&span, &key, datetime_message(&key));
    }
    match first {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

/// The first of `required` that the table `value` lacks; none if it is no table (said
/// apart), or if the table has a key that looks like one it lacks misspelt (`lisen`, `nme`):
/// that key is the mistake to name, where it is written, and serde does (an unknown key),
/// after any mistake written before it in the table. Any other unknown key (`foo`) is a
/// mistake too, but the missing key, placed at the table's start, is written before it.
fn first_missing(value: &Spanned<DeValue<'_>>, required: &[&'static str]) -> Option<&'static str> {
    let DeValue::Table(table) = value.get_ref() else {
        return None;
    };
    let misspelt =
        |key: &str| (table.iter()).any(|(written, _)| edits(written.get_ref(), key) <= MISSPELT);
    let mut missing = (required.iter().copied()).filter(|key| get(table, key).is_none());
    match missing.clone().any(misspelt) {
        true => None,
        false => missing.next(),
    }
}

/// The most edits (a letter added, dropped or changed) that make a key written a misspelling
/// of one missing: `lisen` for `listen` is one, `nme` for `name` one, `bakends` one.
const MISSPELT: usize = 2;

/// Levenshtein's distance between `a` and `b`, by characters.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn get<'a, 'i>(table: &'a DeTable<'i>, name: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == name)
        .map(|(_, v)| v)
}

/// The value of `name` in `section`, if the section is a table and has it.
fn field<'a, 'i>(
    section: &'a Spanned<DeValue<'i>>,
    name: &str,
) -> Option<&'a Spanned<DeValue<'i>>> {
    match section.get_ref() {
        DeValue::Table(table) => get(table, name),
        _ => None,
    }
}

/// serde reads an enum from a one-entry table too, its externally tagged form, so
/// `log_format = { json = [] }` would load as JSON (and `{}` be reported as "wanted exactly 1
/// element"): a setting of a few words is written as one of them. Checked here rather than
/// left to serde for the rest too, whose messages name no type ("expected a quoted string"
/// for `min_version = 1.3`) and speak of enum variants.
fn must_be_word(value: &Spanned<DeValue<'_>>, words: [&str; 2]) -> Result<(), String> {
    let listed = format!("\"{}\" or \"{}\"", words[0], words[1]);
    match value.get_ref() {
        DeValue::String(word) if words.contains(&word.as_ref()) => Ok(()),
        DeValue::String(word) => {
            let case = match words.contains(&word.to_ascii_lowercase().as_str()) {
                true => " (in lower case)",
                false => "",
            };
            Err(format!("must be {listed}{case}, not {word:?}"))
        }
        other => Err(format!(
            "must be a quoted string ({listed}), not {}",
            kind(other)
        )),
    }
}

fn must_be_table(value: &Spanned<DeValue<'_>>, how: &str) -> Result<(), String> {
    match value.get_ref() {
        DeValue::Table(_) => Ok(()),
        // The key is named before the message already.
        other => Err(format!("must be a table ({how}), not {}", kind(other))),
    }
}

/// A value's kind in the operator's words.
fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The first date-time in the file (by position) and its dotted key: no setting takes one.
fn first_datetime(root: &DeTable<'_>) -> Option<(Range<usize>, String)> {
    let (span, path) = datetime_in_table(root)?;
    // `.key…` at the root: no dot in front of the first key.
    Some((span, path[1..].to_string()))
}

/// The first date-time in `value` and the rest of its key below `value` (`""` for `value`
/// itself, `.key`, `[i]`…). Built only for the one found: a table of thousands of routes has
/// no key to spell out while it has no date-time.
fn datetime_in(value: &Spanned<DeValue<'_>>) -> Option<(Range<usize>, String)> {
    match value.get_ref() {
        DeValue::Datetime(_) => Some((value.span(), String::new())),
        DeValue::Table(table) => datetime_in_table(table),
        DeValue::Array(items) => (items.iter().enumerate())
            .filter_map(|(i, item)| {
                let (span, rest) = datetime_in(item)?;
                Some((span, format!("[{i}]{rest}")))
            })
            .min_by_key(|(span, _)| span.start),
        _ => None,
    }
}

fn datetime_in_table(table: &DeTable<'_>) -> Option<(Range<usize>, String)> {
    (table.iter())
        .filter_map(|(key, value)| {
            let (span, rest) = datetime_in(value)?;
            Some((span, format!(".{}{rest}", key_part(key.get_ref()))))
        })
        .min_by_key(|(span, _)| span.start)
}

/// Makes every date-time in `table` an empty string, for serde to read the document past
/// them (and name an unknown key one sits under); whether there was one.
pub(super) fn datetimes_as_text(table: &mut DeTable<'_>) -> bool {
    let mut found = false;
    for (_, value) in table.iter_mut() {
        found |= datetime_as_text(value.get_mut());
    }
    found
}

fn datetime_as_text(value: &mut DeValue<'_>) -> bool {
    match value {
        DeValue::Datetime(_) => {
            *value = DeValue::String("".into());
            true
        }
        DeValue::Table(table) => datetimes_as_text(table),
        DeValue::Array(items) => (items.iter_mut()).fold(false, |found, item| {
            datetime_as_text(item.get_mut()) | found
        }),
        _ => false,
    }
}

fn datetime_message(key: &str) -> String {
    // A duration is the likeliest thing meant (`idle = 10:00:00` reads as a time of day).
    let duration =
        key.starts_with("timeouts.") || key == "reload.recheck" || key.ends_with(".idle");
    match duration {
        true => "invalid type: date-time, expected a duration string like \"10s\"".to_string(),
        false => {
            "invalid type: date-time: no setting takes one (quote it if it is text)".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_count_letters_added_dropped_or_changed() {
        assert_eq!(edits("listen", "listen"), 0);
        assert_eq!(edits("lisen", "listen"), 1);
        assert_eq!(edits("nme", "name"), 1);
        assert_eq!(edits("bakcends", "backends"), 2);
        assert_eq!(edits("host", "path"), 4);
        assert_eq!(edits("", "key"), 3);
    }
}
