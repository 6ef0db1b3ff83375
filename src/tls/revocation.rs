//! Revocation lists for client certificates (`tls.client_crl`): the file read and each list in
//! it checked before a reload can use it, and a warning for a list past its `nextUpdate`.
//!
//! The file is PEM (one or more `X509 CRL` blocks, one per CA of the clients' chains), or a
//! single list in DER, the form CAs publish at their distribution points, so that a fetched
//! `.crl` can be dropped in as it is.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateRevocationListDer;

use super::expiry::{rfc3339, unix_now};

/// The lists of a `client_crl` file, for rustls's client verifier.
pub(super) struct Lists {
    pub ders: Vec<CertificateRevocationListDer<'static>>,
    /// One line for each list past its `nextUpdate`.
    pub stale: Vec<String>,
    /// The first `nextUpdate` of the lists (Unix seconds), if any has one.
    pub due: Option<i64>,
}

/// The revocation lists in the file at `path`, each one parsed and checked as rustls will
/// check it (so a list it cannot use is an error now, naming it, not a failure of every
/// handshake later); or why not.
pub(super) fn read(path: &Path) -> Result<Lists, String> {
    let file = path.display();
    let bytes = crate::files::read(path)
        .map_err(|e| format!("cannot read revocation lists {file}: {e}"))?;
    let ders = split(&bytes).map_err(|why| format!("{file}: {why}"))?;
    let (mut stale, mut due) = (Vec::new(), None::<i64>);
    for (i, der) in ders.iter().enumerate() {
        let which = || match ders.len() {
            1 => String::new(),
            _ => format!(" {}", i + 1),
        };
        if let Err(e) = webpki::OwnedCertRevocationList::from_der(der) {
            return Err(format!(
                "revocation list{} in {file} cannot be used: {e:?}",
                which()
            ));
        }
        let Some((issuer, next)) = next_update(der) else {
            continue;
        };
        due = Some(due.map_or(next, |due| due.min(next)));
        if next <= unix_now() {
            stale.push(format!(
                "{file}: revocation list{} of {issuer} was due to be replaced at {}: \
                 certificates revoked since are not in it (is its renewal working?)",
                which(),
                rfc3339(next),
            ));
        }
    }
    Ok(Lists { ders, stale, due })
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
        return Err("holds no `-----BEGIN X509 CRL-----` block (a certificate where the revocation list was meant?)".into());
    }
    Ok(lists)
}

/// The issuer of the list `der` and its `nextUpdate` (Unix seconds), if it has one.
fn next_update(der: &[u8]) -> Option<(String, i64)> {
    let (_, list) = x509_parser::parse_x509_crl(der).ok()?;
    let next = list.next_update()?.timestamp();
    Some((list.issuer().to_string(), next))
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
        let refusals = [
            (&b""[..], "empty"),
            (b"hello", "neither PEM"),
            (certificate.as_bytes(), "a certificate where"),
        ];
        for (bytes, expected) in refusals {
            let why = split(bytes).unwrap_err();
            assert!(why.contains(expected), "{why}");
        }
    }
}
