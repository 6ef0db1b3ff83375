//! Revocation lists for client certificates (`tls.client_crl`): the file read, and each list
//! in it checked against the CAs of `tls.client_ca` before a reload can put it in force, and
//! a warning for a list past its `nextUpdate`.
//!
//! The file is PEM (one or more `X509 CRL` blocks, one per CA of the clients' chains), or a
//! single list in DER, the form CAs publish at their distribution points, so that a fetched
//! `.crl` can be dropped in as it is.
//!
//! rustls checks a list only when a client's chain leads to its issuer: its signature, and
//! whether it is the one list for that issuer (it takes the first one of that name). So a list
//! of the wrong CA, or a stale one appended before the new, would load and then refuse every
//! client, or let a revoked one in. What can be told at load is told here instead: every CA of
//! `client_ca` has exactly one list, signed by its key, and none of those CAs is itself revoked.
//! Lists of intermediates (not in `client_ca`) are checked by rustls alone, when used.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::revocation_list::CertificateRevocationList;

use super::expiry::{rfc3339, unix_now};

/// The lists of a `client_crl` file, for rustls's client verifier.
pub(super) struct Lists {
    pub ders: Vec<CertificateRevocationListDer<'static>>,
    /// One line for each list past its `nextUpdate`.
    pub stale: Vec<String>,
    /// The first `nextUpdate` of the lists (Unix seconds), if any has one.
    pub due: Option<i64>,
}

/// One list of the file, parsed.
struct List<'a> {
    /// "revocation list 2 in FILE", or "the revocation list in FILE" if it is the only one.
    name: String,
    /// Its place in the file, from 1.
    number: usize,
    parsed: CertificateRevocationList<'a>,
    /// Its issuing distribution point: two lists of one issuer are for different partitions
    /// of its certificates if these differ.
    partition: Option<Vec<u8>>,
}

/// The revocation lists in the file at `path`, each one parsed and checked against the CA
/// certificates `anchors` of `ca_file` (`tls.client_ca`); or why they cannot be used.
pub(super) fn read(
    path: &Path,
    ca_file: &Path,
    anchors: &[CertificateDer<'_>],
) -> Result<Lists, String> {
    let file = path.display();
    let bytes = crate::files::read(path)
        .map_err(|e| format!("cannot read revocation lists {file}: {e}"))?;
    let ders = split(&bytes).map_err(|why| format!("{file}: {why}"))?;
    let lists = (ders.iter().enumerate())
        .map(|(i, der)| {
            let name = match ders.len() {
                1 => format!("the revocation list in {file}"),
                _ => format!("revocation list {} in {file}", i + 1),
            };
            parse(der, name, i + 1)
        })
        .collect::<Result<Vec<_>, _>>()?;
    one_per_issuer(&lists, &file.to_string())?;
    for (i, der) in anchors.iter().enumerate() {
        if let Ok((_, anchor)) = x509_parser::parse_x509_certificate(der) {
            let anchor_name = format!("certificate {} of {}", i + 1, ca_file.display());
            covers(&anchor, &anchor_name, &lists, &file.to_string())?;
        }
    }
    let (mut stale, mut due) = (Vec::new(), None::<i64>);
    for list in &lists {
        let Some(next) = list.parsed.next_update().map(|t| t.timestamp()) else {
            continue;
        };
        due = Some(due.map_or(next, |due| due.min(next)));
        if next <= unix_now() {
            stale.push(format!(
                "{} (of {}) was due to be replaced at {}: certificates revoked since are not in it (is its renewal working?)",
                list.name,
                list.parsed.issuer(),
                rfc3339(next),
            ));
        }
    }
    Ok(Lists { ders, stale, due })
}

/// The list `der`, parsed, or why rustls would not take it, in words.
fn parse(der: &[u8], name: String, number: usize) -> Result<List<'_>, String> {
    let parsed = match x509_parser::parse_x509_crl(der) {
        Ok((_, parsed)) => parsed,
        Err(e) => return Err(format!("{name} cannot be read: {e}")),
    };
    if parsed.version().is_none_or(|v| v.0 < 1) {
        return Err(format!("{name} is a version 1 list: wsgate takes version 2 lists, with a CRL number (`openssl ca -gencrl` writes those once its `crlnumber` file exists)"));
    }
    let sha1 = [
        x509_parser::oid_registry::OID_PKCS1_SHA1WITHRSA,
        x509_parser::oid_registry::OID_SHA1_WITH_RSA,
    ];
    if sha1.contains(&parsed.signature_algorithm.algorithm) {
        return Err(format!("{name} is signed with SHA-1, which rustls does not verify: every client would be refused; have the CA sign it with SHA-256"));
    }
    let owned = webpki::OwnedCertRevocationList::from_der(der).map_err(|e| {
        let why = match e {
            webpki::Error::UnsupportedDeltaCrl => {
                "is a delta list, which wsgate does not take: give it the complete list".to_string()
            }
            webpki::Error::UnsupportedIndirectCrl => {
                "is an indirect list (entries of other issuers), which wsgate does not take"
                    .to_string()
            }
            webpki::Error::UnsupportedRevocationReasonsPartitioning => {
                "covers only some revocation reasons, which wsgate does not take".to_string()
            }
            other => format!("cannot be used: {other}"),
        };
        format!("{name} {why}")
    })?;
    let partition = webpki::CertRevocationList::from(owned)
        .issuing_distribution_point()
        .map(<[u8]>::to_vec);
    Ok(List {
        name,
        number,
        parsed,
        partition,
    })
}

/// That no two lists are for the same certificates (one issuer, one partition): rustls uses
/// the first it finds, so an older list left in front of a newer one lets in whatever the
/// newer one revokes.
fn one_per_issuer(lists: &[List<'_>], file: &str) -> Result<(), String> {
    for (i, list) in lists.iter().enumerate() {
        let issuer = list.parsed.issuer().as_raw();
        let earlier = (lists[..i].iter())
            .find(|e| e.parsed.issuer().as_raw() == issuer && e.partition == list.partition);
        if let Some(earlier) = earlier {
            return Err(format!(
                "revocation lists {} and {} in {file} are both of {}: rustls would use only the first; keep the newest alone",
                earlier.number,
                list.number,
                list.parsed.issuer()
            ));
        }
    }
    Ok(())
}

/// That the CA `anchor` of `client_ca` has a list in `lists`, signed by its own key (not a
/// list of another CA of the same name), and is not revoked itself by a list of its issuer.
fn covers(
    anchor: &X509Certificate<'_>,
    anchor_name: &str,
    lists: &[List<'_>],
    file: &str,
) -> Result<(), String> {
    let subject = anchor.subject();
    let own = (lists.iter()).filter(|l| l.parsed.issuer().as_raw() == subject.as_raw());
    let mut any = false;
    for list in own {
        any = true;
        // A signature algorithm this check does not know is left to rustls.
        if let Err(X509Error::SignatureVerificationError) =
            list.parsed.verify_signature(anchor.public_key())
        {
            return Err(format!(
                "{} names {subject} as its issuer but is not signed by the key of {anchor_name}: every client that CA issued would be refused; is it the list of another CA of that name (an old key)?",
                list.name
            ));
        }
    }
    if !any {
        return Err(format!(
            "{file} has no revocation list of {subject} ({anchor_name}): every certificate that CA issued would be refused, its revocation status unknown; add its list, or take it out of client_ca"
        ));
    }
    let issuer = anchor.issuer();
    if issuer.as_raw() == subject.as_raw() {
        return Ok(()); // a root: no list above it
    }
    let serial = anchor.raw_serial();
    for list in (lists.iter()).filter(|l| l.parsed.issuer().as_raw() == issuer.as_raw()) {
        if (list.parsed.iter_revoked_certificates()).any(|r| r.raw_serial() == serial) {
            return Err(format!(
                "{anchor_name} ({subject}) is revoked by {}: take it out of client_ca (as a trust anchor, nothing above it is checked)",
                list.name
            ));
        }
    }
    Ok(())
}

/// The lists in `bytes`: every `X509 CRL` block of a PEM file, or the whole of a file without
/// PEM as one DER list.
fn split(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if !text.windows(11).any(|w| w == b"-----BEGIN ") {
        return match text {
            [] => Err("the file is empty".into()),
            // A DER SEQUENCE: anything else is neither form.
            [0x30, ..] => Ok(vec![CertificateRevocationListDer::from(text.to_vec())]),
            _ => Err(
                "holds no revocation list: neither PEM (`-----BEGIN X509 CRL-----`) nor DER".into(),
            ),
        };
    }
    let lists = CertificateRevocationListDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not valid PEM: {e}"))?;
    if lists.is_empty() {
        let why = match text.windows(19).any(|w| w == b"-----BEGIN CRL-----") {
            true => "its blocks are labelled `CRL`: label them `X509 CRL` (`-----BEGIN X509 CRL-----`)",
            false => "holds no `-----BEGIN X509 CRL-----` block (a certificate where the revocation list was meant?)",
        };
        return Err(why.into());
    }
    Ok(lists)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_pem_blocks_or_one_der_list_and_nothing_else() {
        let pem = "-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n";
        assert_eq!(split(pem.as_bytes()).unwrap().len(), 1);
        let twice = format!("\u{feff}{pem}{pem}");
        assert_eq!(split(twice.as_bytes()).unwrap().len(), 2);
        assert_eq!(split(&[0x30, 0x00]).unwrap().len(), 1);
        let certificate = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let labelled = "-----BEGIN CRL-----\nMAA=\n-----END CRL-----\n";
        let refusals = [
            (&b""[..], "empty"),
            (b"hello", "neither PEM"),
            (certificate.as_bytes(), "a certificate where"),
            (labelled.as_bytes(), "label them `X509 CRL`"),
        ];
        for (bytes, expected) in refusals {
            let why = split(bytes).unwrap_err();
            assert!(why.contains(expected), "{why}");
        }
    }
}
