//! When the served certificates stop being valid, and what to say about it: the warnings at
//! every load (expired, expiring soon, not valid yet) and `wsgate check`'s summary, with
//! their dates in RFC 3339.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;

use super::Chain;
use crate::config::{escape_controls, CertificatePaths, Config, ConfigError};

/// When a certificate chain wsgate presents stops being valid (one it serves, or a client
/// certificate it shows backends): exported as a metric and warned about, since a renewal
/// that silently failed (cert-manager, certbot) is the classic outage.
#[derive(Clone, Debug)]
pub(crate) struct Expiry {
    pub file: PathBuf,
    /// Unix seconds from which the chain is valid: the latest notBefore of its certificates.
    pub not_before: i64,
    /// Unix seconds at which the chain stops being valid: the first notAfter of its
    /// certificates, the leaf's unless an intermediate ends before it.
    pub not_after: i64,
    /// The intermediates deciding `not_before` and `not_after`, if not the leaf (for the
    /// warnings' words).
    starts_with: Option<Intermediate>,
    ends_with: Option<Intermediate>,
    /// The leaf's own notBefore and notAfter: a leaf out of its validity is refused
    /// whatever path a peer finds, and is the one to name then.
    leaf: (i64, i64),
    /// Who checks it, for the warnings' words.
    role: Chain,
}

/// A certificate of a chain after its leaf: its place (2 for the one after the leaf) and its
/// subject.
#[derive(Clone, Debug)]
struct Intermediate {
    place: usize,
    subject: String,
}

impl Expiry {
    /// The validity of `chain` as `file` has it (rustls has already parsed the leaf, so
    /// this cannot fail on a certificate it accepted; `None` keeps it that way regardless).
    /// A chain is only as valid as each certificate in it: a peer that cannot build another
    /// path refuses it when an intermediate has run out. A root sent along (self-signed, and
    /// not the leaf) is left out: peers check against their own copy.
    pub(super) fn of(file: &Path, chain: &[CertificateDer<'_>], role: Chain) -> Option<Expiry> {
        let (_, leaf) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
        let (from, until) = (leaf.validity().not_before, leaf.validity().not_after);
        let (from, until) = (from.timestamp(), until.timestamp());
        let mut expiry = Expiry {
            file: file.to_path_buf(),
            not_before: from,
            not_after: until,
            starts_with: None,
            ends_with: None,
            leaf: (from, until),
            role,
        };
        for (i, der) in chain.iter().enumerate().skip(1) {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                continue;
            };
            if cert.subject() == cert.issuer() {
                continue;
            }
            let (validity, place) = (cert.validity(), i + 1);
            let intermediate = || {
                let subject = cert.subject().to_string();
                Some(Intermediate { place, subject })
            };
            if validity.not_after.timestamp() < expiry.not_after {
                expiry.not_after = validity.not_after.timestamp();
                expiry.ends_with = intermediate();
            }
            if validity.not_before.timestamp() > expiry.not_before {
                expiry.not_before = validity.not_before.timestamp();
                expiry.starts_with = intermediate();
            }
        }
        Some(expiry)
    }
}

/// What is off about the dates of the CAs of `file` (`tls.client_ca`, a route's
/// `backend_tls.ca`), one line each: a CA that has expired, or is not valid yet. rustls
/// checks no trust anchor's dates (a trust anchor is a name and a key), so wsgate still trusts
/// it, where other TLS stacks (OpenSSL) refuse what it issued: worth a look either way.
pub(super) fn anchor_warnings(file: &Path, anchors: &[CertificateDer<'_>]) -> Vec<String> {
    let now = unix_now();
    let parsed = anchors.iter().enumerate().filter_map(|(i, der)| {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let validity = cert.validity();
        let (from, until) = (validity.not_before.timestamp(), validity.not_after.timestamp());
        let name = format!("CA certificate {} ({:?})", i + 1, cert.subject().to_string());
        let file = file.display();
        // A leaf pasted where its issuer belongs (a client's own certificate as client_ca):
        // it loads, and nothing chains to it. RFC 5280 §4.2.1.9: a version 3 certificate
        // verifies others' signatures only with basicConstraints CA:TRUE; an old version 1
        // root has no extensions at all, and is fine.
        let v3 = cert.version() == x509_parser::x509::X509Version::V3;
        let ca = (cert.basic_constraints().ok().flatten()).is_some_and(|bc| bc.value.ca);
        let no_ca = v3 && !ca;
        let said = if no_ca {
            let name = format!("certificate {} ({:?})", i + 1, cert.subject().to_string());
            format!("{file}: {name} is no CA certificate (no basicConstraints CA:TRUE): nothing chains to it, so no certificate is accepted through it; name the CA that issued it instead")
        } else if until <= now {
            let until = rfc3339(until);
            format!("{file}: {name} expired at {until}; wsgate still trusts it (rustls checks no CA's dates), other TLS stacks refuse what it issued: replace it")
        } else if from > now {
            let from = rfc3339(from);
            format!("{file}: {name} is not valid before {from}; wsgate trusts it already (rustls checks no CA's dates), other TLS stacks will not until then")
        } else {
            return None;
        };
        Some(escape_controls(&said))
    });
    parsed.collect()
}

/// The words for the certificate of a chain that decides one of its dates: the leaf's, or
/// an intermediate's by place and subject.
fn which(intermediate: &Option<Intermediate>) -> String {
    match intermediate {
        None => "certificate".to_string(),
        Some(i) => format!(
            "chain's intermediate certificate {} ({:?})",
            i.place, i.subject
        ),
    }
}

/// Certificates this close to their end get a warning at every load.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// What is wrong, or soon will be, with the validity of the certificates wsgate presents,
/// one line each naming its file and where `config` names it: expired, expiring within
/// [`EXPIRY_WARNING`], or not valid yet (a clock or an issuer ahead of this machine's).
/// Logged at every load and printed by `wsgate check`.
pub(crate) fn validity_warnings(expiry: &[Expiry], config: &Config) -> Vec<String> {
    let now = unix_now();
    let soon = EXPIRY_WARNING.as_secs() as i64;
    (expiry.iter())
        .filter_map(|cert| {
            let file = cert.file.display();
            let left = cert.not_after - now;
            let checkers = match cert.role {
                Chain::Client => "backends asking for it",
                Chain::Served | Chain::Trusted => "clients",
            };
            // The leaf, when it is out of its own validity; else the certificate deciding.
            let (from, until) = cert.leaf;
            let leaf_early = from > now;
            let starts = which(if leaf_early { &None } else { &cert.starts_with });
            let leaf_over = until <= now;
            let ends_with = if leaf_over { &None } else { &cert.ends_with };
            let ends = which(ends_with);
            // An intermediate's end is a chain to replace with the leaf, if peers cannot
            // build another path.
            let unless = match ends_with {
                Some(_) => " unless they find another path to a root they trust",
                None => "",
            };
            let message = if cert.not_before > now {
                // The date of the certificate named: the leaf's own, when it is the leaf.
                let from = rfc3339(if leaf_early { from } else { cert.not_before });
                format!("{file}: {starts} is not valid before {from}; {checkers} will refuse it until then")
            } else if left <= 0 {
                format!("{file}: {ends} has expired; {checkers} will refuse it{unless}")
            } else if left < soon {
                let when = time_left(left);
                format!("{file}: {ends} expires in {when}; is its renewal working?")
            } else {
                return None;
            };
            Some((&cert.file, message))
        })
        .map(|(file, message)| match pair_of(config, file) {
            Some(c) => ConfigError::at(&config.path, &c.cert_location, message).to_string(),
            None => escape_controls(&message),
        })
        .collect()
}

/// The entry of `config` naming the certificate `file`: served, or a route's client
/// certificate.
fn pair_of<'a>(config: &'a Config, file: &Path) -> Option<&'a CertificatePaths> {
    let clients = (config.routes.iter())
        .filter_map(|r| r.backend_tls.as_ref())
        .filter_map(|tls| tls.client.as_ref());
    (config.certificates.iter())
        .chain(clients)
        .find(|c| c.cert == file)
}

/// `wsgate check`'s words on the certificates: when the first runs out, or which one already
/// has; empty without certificates.
pub(crate) fn expiry_summary(expiry: &[Expiry]) -> String {
    let now = unix_now();
    // One not valid yet is as unserviceable as one run out, and said first (it is valid until
    // a date all the same).
    if let Some(early) = (expiry.iter())
        .filter(|e| e.not_before > now)
        .min_by_key(|e| e.not_before)
    {
        return format!(
            ", WARNING: certificate {} is not valid before {}",
            early.file.display(),
            rfc3339(early.not_before)
        );
    }
    match expiry.iter().min_by_key(|e| e.not_after) {
        None => String::new(),
        Some(first) if first.not_after > now => {
            format!(", certificates valid until {}", rfc3339(first.not_after))
        }
        Some(first) => format!(
            ", WARNING: certificate {} expired at {}",
            first.file.display(),
            rfc3339(first.not_after)
        ),
    }
}

/// `wsgate check`'s words on the revocation lists clients are checked against, whose first
/// `nextUpdate` is `due` (Unix seconds), if any.
pub(crate) fn lists_summary(due: Option<i64>) -> String {
    match due {
        None => String::new(),
        Some(due) if due > unix_now() => {
            format!(", revocation lists due to be replaced at {}", rfc3339(due))
        }
        Some(due) => format!(
            ", WARNING: a revocation list was due to be replaced at {}",
            rfc3339(due)
        ),
    }
}

/// `left` seconds in days, to the nearest: a certificate made for 5 days reads "5" for the
/// first half day of its life, not "4" a second after it was made.
fn time_left(left: i64) -> String {
    match left / 86400 {
        0 => "less than a day".to_string(),
        _ => format!("{} day(s)", (left + 43200) / 86400),
    }
}

/// Whether the leaf read from `file` has run out (past its own notAfter), as `expiry` has
/// it. Its leaf, not its chain: a chain whose cross-signing intermediate ended still serves
/// every client that finds another path, as Let's Encrypt's long chain did.
/// A certificate file whose leaf is not valid now in `next` (run out: an old certificate
/// written over a renewed one, a stale backup, a sync gone backwards; or not valid yet) while
/// the one read from the same file in `in_force` is: in words, to refuse it. Serving it would
/// fail every client that the certificate in force serves.
pub(crate) fn run_out_over_valid(in_force: &[Expiry], next: &[Expiry]) -> Option<String> {
    let now = unix_now();
    let valid_now = |(from, until): (i64, i64)| from <= now && now < until;
    next.iter().filter(|e| !valid_now(e.leaf)).find_map(|e| {
        let valid = in_force.iter().find(|f| f.file == e.file && valid_now(f.leaf))?;
        let (from, until) = e.leaf;
        let what = match from > now {
            true => format!("is not valid yet (from {})", rfc3339(from)),
            false => format!("ran out at {}", rfc3339(until)),
        };
        Some(format!(
            "{}: its certificate {what}, while the one in force from this file is valid until {}: not served, the one in force stays (write the current certificate there)",
            e.file.display(),
            rfc3339(valid.leaf.1)
        ))
    })
}

pub(crate) fn run_out(expiry: &[Expiry], file: &Path) -> bool {
    let now = unix_now();
    expiry.iter().any(|e| e.file == file && e.leaf.1 <= now)
}

/// How long until the next leaf in `expiry` runs out, if one is still to: the reloader looks
/// at the files then, so that a renewal refused while that leaf served (see `Snapshot`'s
/// `names_kept`) goes into force when it runs out, not at the next recheck.
pub(crate) fn until_a_leaf_runs_out(expiry: &[Expiry]) -> Option<std::time::Duration> {
    let now = unix_now();
    let end = expiry
        .iter()
        .map(|e| e.leaf.1)
        .filter(|&end| end > now)
        .min()?;
    // A second past it: at its notAfter a leaf is still valid.
    Some(std::time::Duration::from_secs(
        (end - now).unsigned_abs() + 1,
    ))
}

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds as an RFC 3339 time, or as the number if out of range.
pub(super) fn rfc3339(unix: i64) -> String {
    // By hand, not humantime: a certificate may end before 1970 (or after 9999), and
    // humantime formats neither.
    let (days, secs) = (unix.div_euclid(86400), unix.rem_euclid(86400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`: 400-year eras starting on 1 March, so leap days fall at the end).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{rfc3339, run_out, time_left, until_a_leaf_runs_out, Chain, Expiry};

    /// A CA certificate named `name` valid until `year`, signed by `issuer` (self-signed
    /// without), and its key.
    fn ca(
        name: &str,
        year: i32,
        issuer: Option<&(rcgen::Certificate, rcgen::KeyPair)>,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (params.distinguished_name).push(rcgen::DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = match issuer {
            Some((cert, issuer_key)) => params.signed_by(&key, cert, issuer_key),
            None => params.self_signed(&key),
        };
        (cert.unwrap(), key)
    }

    #[test]
    fn a_chain_ends_with_its_first_certificate_to_end_but_a_root_sent_along() {
        let root = ca("root", 2030, None);
        let issuing = ca("issuing", 2040, Some(&root));
        let second = ca("second", 2035, Some(&issuing));
        let leaf = ca("leaf", 2050, Some(&second));
        let chain = [&leaf, &second, &issuing, &root].map(|(cert, _)| cert.der().clone());
        let file = std::path::Path::new("a.crt");
        let expiry = Expiry::of(file, &chain, Chain::Served).unwrap();
        // The root ends first, but peers check against their own copy of it.
        assert_eq!(rfc3339(expiry.not_after), "2035-01-01T00:00:00Z");
        let ends = expiry.ends_with.unwrap();
        assert_eq!((ends.place, ends.subject.as_str()), (2, "CN=second"));
        // Alone, the leaf decides.
        let expiry = Expiry::of(file, &chain[..1], Chain::Served).unwrap();
        assert_eq!(rfc3339(expiry.not_after), "2050-01-01T00:00:00Z");
        assert!(expiry.ends_with.is_none());
    }

    /// A chain has run out when its leaf has, not when an intermediate has: a client that
    /// finds another path still takes it.
    #[test]
    fn a_chain_has_run_out_with_its_leaf_not_with_an_intermediate() {
        let root = ca("root", 2090, None);
        let cross = ca("cross", 2021, Some(&root));
        let leaf = ca("leaf", 2090, Some(&cross));
        let file = std::path::Path::new("a.crt");
        let chain = [&leaf, &cross].map(|(cert, _)| cert.der().clone());
        let expiry = [Expiry::of(file, &chain, Chain::Served).unwrap()];
        assert!(!run_out(&expiry, file));
        let gone = ca("gone", 2021, Some(&root));
        let expiry = [Expiry::of(file, &[gone.0.der().clone()], Chain::Served).unwrap()];
        assert!(run_out(&expiry, file));
        assert!(!run_out(&expiry, std::path::Path::new("b.crt")));
        assert_eq!(until_a_leaf_runs_out(&expiry), None);
    }

    #[test]
    fn the_next_leaf_to_run_out_is_the_earliest_still_valid() {
        let root = ca("root", 2200, None);
        let (early, late) = (
            ca("early", 2100, Some(&root)),
            ca("late", 2150, Some(&root)),
        );
        let gone = ca("gone", 2021, Some(&root));
        let expiry = [&late, &gone, &early]
            .map(|(cert, _)| Expiry::of(Path::new("a.crt"), &[cert.der().clone()], Chain::Served));
        let expiry = expiry.map(Option::unwrap);
        let until = until_a_leaf_runs_out(&expiry).unwrap().as_secs() as i64;
        // 2100-01-01T00:00:00Z, and a second.
        assert_eq!(super::unix_now() + until, 4_102_444_800 + 1);
    }

    #[test]
    fn time_left_is_in_days_to_the_nearest() {
        let day = 86400;
        assert_eq!(time_left(day - 1), "less than a day");
        assert_eq!(time_left(day), "1 day(s)");
        assert_eq!(time_left(5 * day - 1), "5 day(s)");
        assert_eq!(time_left(5 * day - day / 2), "5 day(s)");
        assert_eq!(time_left(5 * day - day / 2 - 1), "4 day(s)");
    }

    #[test]
    fn certificate_dates_print_as_rfc3339_before_1970_and_after_9999_too() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(2_110_940_486), "2036-11-22T04:21:26Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-599_616_000), "1951-01-01T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
    }
}
