//! Revocation lists for client certificates (`tls.client_crl`): the file read, and each list
//! in it checked against the CAs of `tls.client_ca` before a reload can put it in force, and
//! a warning for a list past its `nextUpdate`.
//!
//! The file is PEM (one or more `X509 CRL` blocks, one per CA of the clients' chains), or a
//! single list in DER, the form CAs publish at their distribution points, so that a fetched
//! `.crl` can be dropped in as it is.
//!
//! rustls checks a list only when a client's chain leads to its issuer: its signature, and
//! whether it is the list for that issuer (it takes the first one of that name). So a list
//! of the wrong CA, or a stale one appended before the new, would load and then refuse every
//! client, or let a revoked one in. What can be told at load is told here instead, with the
//! signature algorithms rustls verifies with: one list per issuer, signed with an algorithm
//! rustls verifies; every CA of `client_ca` with its list, signed by its key; none of those
//! CAs revoked itself. Lists of intermediates (not in `client_ca`) have their signatures
//! checked by rustls alone, when used.

use std::hash::{Hash, Hasher};
use std::path::Path;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::revocation_list::CertificateRevocationList;

use super::expiry::{rfc3339, unix_now};
use super::verified::Proof;

/// The lists of a `client_crl` file, for rustls's client verifier.
pub(super) struct Lists {
    pub ders: Vec<CertificateRevocationListDer<'static>>,
    /// Lists past their `nextUpdate`, and CAs of `client_ca` without a list that clients reach
    /// through another one.
    pub warnings: Vec<String>,
    /// The first `nextUpdate` of the lists (Unix seconds), if any has one.
    pub due: Option<i64>,
    /// A hash of what the lists say (issuers, partitions, revoked serial numbers), not of their
    /// bytes: a list issued again with nothing new is the same.
    pub says: u64,
}

/// One list of the file, parsed.
struct List<'a> {
    /// "revocation list 2 in FILE", or "the revocation list in FILE" if it is the only one.
    name: String,
    /// Its place in the file, from 1.
    number: usize,
    der: &'a [u8],
    parsed: CertificateRevocationList<'a>,
    /// Its issuing distribution point, if it covers only part of its issuer's certificates.
    partition: Option<Vec<u8>>,
}

/// The revocation lists in the file at `path`, each one parsed and checked against the CA
/// certificates `anchors` of `ca_file` (`tls.client_ca`) with the algorithms `algorithms`;
/// or why they cannot be used.
pub(super) fn read(
    path: &Path,
    ca_file: &Path,
    anchors: &[CertificateDer<'_>],
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<Lists, String> {
    let file = path.display().to_string();
    let bytes = crate::files::read(path)
        .map_err(|e| format!("cannot read revocation lists {file}: {e}"))?;
    let ders = split(&bytes).map_err(|why| format!("{file}: {why}"))?;
    let lists = (ders.iter().enumerate())
        .map(|(i, der)| {
            let name = match ders.len() {
                1 => format!("the revocation list in {file}"),
                _ => format!("revocation list {} in {file}", i + 1),
            };
            parse(der, name, i + 1, algorithms)
        })
        .collect::<Result<Vec<_>, _>>()?;
    one_per_issuer(&lists, &file)?;
    let anchors = (anchors.iter().enumerate())
        .map(|(i, der)| {
            let name = format!("certificate {} of {}", i + 1, ca_file.display());
            match x509_parser::parse_x509_certificate(der) {
                Ok((_, anchor)) => Ok((anchor, name)),
                Err(e) => Err(format!(
                    "{name} cannot be read to check it against {file}: {e}"
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (mut warnings, mut proofs) = (Vec::new(), Vec::new());
    for (anchor, name) in &anchors {
        let check = Anchor {
            anchor,
            name,
            all: &anchors,
        };
        let (warning, proof) = check.covered(&lists, &file, algorithms)?;
        warnings.extend(warning);
        proofs.extend(proof);
    }
    super::verified::remember(proofs);
    let (stale, due) = overdue(&lists);
    warnings.extend(stale);
    let says = says(&lists);
    Ok(Lists {
        ders,
        warnings,
        due,
        says,
    })
}

/// The lists past their `nextUpdate`, one line each, and the first `nextUpdate` of them all.
fn overdue(lists: &[List<'_>]) -> (Vec<String>, Option<i64>) {
    let (mut stale, mut due) = (Vec::new(), None::<i64>);
    for list in lists {
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
    (stale, due)
}

/// [`Lists::says`].
fn says(lists: &[List<'_>]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for list in lists {
        list.parsed.issuer().as_raw().hash(&mut hasher);
        list.partition.hash(&mut hasher);
        let mut serials: Vec<&[u8]> = (list.parsed.iter_revoked_certificates())
            .map(|r| r.raw_serial())
            .collect();
        serials.sort_unstable();
        serials.hash(&mut hasher);
    }
    hasher.finish()
}

/// The list `der`, parsed, or why rustls would not take it, in words.
fn parse<'a>(
    der: &'a [u8],
    name: String,
    number: usize,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<List<'a>, String> {
    let parsed = match x509_parser::parse_x509_crl(der) {
        Ok((_, parsed)) => parsed,
        Err(_) => return Err(format!("{name} cannot be read: {}", malformed(der))),
    };
    if parsed.version().is_none_or(|v| v.0 < 1) {
        return Err(format!("{name} is a version 1 list: wsgate takes version 2 lists, with a CRL number (`openssl ca -gencrl` writes those once its `crlnumber` file exists)"));
    }
    let Some(signed) = signed_parts(der) else {
        return Err(format!("{name} cannot be read: not DER"));
    };
    let known = (algorithms.all.iter()).any(|a| a.signature_alg_id().as_ref() == signed.algorithm);
    if !known {
        return Err(format!("{name} is signed with an algorithm rustls does not verify (SHA-1, MD5 or DSA, say): every client would be refused; have its CA sign it with SHA-256 or better"));
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
        der,
        parsed,
        partition,
    })
}

/// That no two lists are of the same issuer: rustls uses the first of that name it finds
/// that covers a certificate, so an older list left in front of a newer one lets in whatever
/// the newer one revokes. (Lists split by distribution point are refused too: whether two of
/// them overlap is more than a load can tell, and client CAs rarely split theirs.)
fn one_per_issuer(lists: &[List<'_>], file: &str) -> Result<(), String> {
    for (i, list) in lists.iter().enumerate() {
        let issuer = list.parsed.issuer().as_raw();
        let earlier = (lists[..i].iter()).find(|e| e.parsed.issuer().as_raw() == issuer);
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

/// A CA of `client_ca`, as [`Anchor::covered`] checks it.
struct Anchor<'a> {
    anchor: &'a X509Certificate<'a>,
    /// "certificate 2 of FILE".
    name: &'a str,
    /// Every CA of `client_ca`, this one among them.
    all: &'a [(X509Certificate<'a>, String)],
}

impl<'a> Anchor<'a> {
    /// That this CA has a list in `lists`, signed by its own key (not a list of another CA of
    /// the same name), and is not revoked itself by a list of its issuer; or a warning, if it
    /// has none but clients reach it only through another CA of `client_ca` it issued. With
    /// the proof of its list's signature.
    fn covered(
        &self,
        lists: &'a [List<'_>],
        file: &str,
        algorithms: &WebPkiSupportedAlgorithms,
    ) -> Result<(Option<String>, Option<Proof<'a>>), String> {
        let (anchor, name) = (self.anchor, self.name);
        let subject = anchor.subject();
        let own = (lists.iter()).find(|l| l.parsed.issuer().as_raw() == subject.as_raw());
        let (warning, proof) = match own {
            Some(list) => {
                let key = anchor.public_key().raw;
                let proof = verify(list.der, key, algorithms).map_err(|why| {
                    format!("{} names {subject} as its issuer but {why} the key of {name}: every client that CA issued would be refused; is it the list of another CA of that name (an old key)?", list.name)
                })?;
                (None, Some(proof))
            }
            None => (Some(self.without_a_list(lists, file)?), None),
        };
        self.not_revoked(lists)?;
        Ok((warning, proof))
    }

    /// This CA without a list: an error, unless it issued another CA of `client_ca` (a root
    /// beside its intermediate, where rustls stops at the intermediate and never asks for the
    /// root's list); then a warning.
    fn without_a_list(&self, lists: &[List<'_>], file: &str) -> Result<String, String> {
        let (anchor, name) = (self.anchor, self.name);
        let subject = anchor.subject();
        let issued = (self.all.iter()).find(|(other, _)| {
            other.issuer().as_raw() == subject.as_raw() && other.subject() != subject
        });
        if let Some((_, other)) = issued {
            return Ok(format!("{file} has no revocation list of {subject} ({name}): clients reaching it through {other}, also in client_ca, are checked up to that one, which does not need it; but a client certificate {subject} issued itself is refused"));
        }
        let encoded_otherwise = (lists.iter())
            .find(|l| l.parsed.issuer().to_string() == subject.to_string())
            .map(|l| format!(" ({} names it too, but encoded otherwise, and rustls compares names byte for byte)", l.name))
            .unwrap_or_default();
        Err(format!("{file} has no revocation list of {subject} ({name}){encoded_otherwise}: every certificate that CA issued would be refused, its revocation status unknown; add its list, or take it out of client_ca"))
    }

    /// That no list of this CA's issuer revokes it: as a trust anchor, nothing above it is
    /// checked.
    fn not_revoked(&self, lists: &[List<'_>]) -> Result<(), String> {
        let (anchor, name) = (self.anchor, self.name);
        let (subject, issuer) = (anchor.subject(), anchor.issuer());
        if issuer.as_raw() == subject.as_raw() {
            return Ok(()); // a root: no list above it
        }
        let serial = anchor.raw_serial();
        for list in (lists.iter()).filter(|l| l.parsed.issuer().as_raw() == issuer.as_raw()) {
            if (list.parsed.iter_revoked_certificates()).any(|r| r.raw_serial() == serial) {
                return Err(format!(
                    "{name} ({subject}) is revoked by {}: take it out of client_ca (as a trust anchor, nothing above it is checked)",
                    list.name
                ));
            }
        }
        Ok(())
    }
}

/// Whether the list `der` is signed by the key of `spki` (a DER SubjectPublicKeyInfo), with
/// the algorithms rustls verifies lists with, as webpki picks them: by the list's signature
/// algorithm and the key's algorithm; its proof, or, in words, why not.
fn verify<'a>(
    der: &'a [u8],
    spki: &'a [u8],
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<Proof<'a>, &'static str> {
    let signed = signed_parts(der).ok_or("cannot be read")?;
    let (key_algorithm, key) = spki_parts(spki).ok_or("cannot be checked against")?;
    // The first that fits, and it alone, as webpki asks.
    let algorithm = (algorithms.all.iter())
        .find(|a| {
            a.signature_alg_id().as_ref() == signed.algorithm
                && a.public_key_alg_id().as_ref() == key_algorithm
        })
        .ok_or("its signature algorithm does not fit")?;
    match algorithm.verify_signature(key, signed.data, signed.signature) {
        Ok(()) => Ok((*algorithm, key, signed.data, signed.signature)),
        Err(_) => Err("is not signed by"),
    }
}

/// The parts of a signed DER structure (a list): what is signed, the signature algorithm (the
/// contents of its AlgorithmIdentifier, as webpki compares them) and the signature.
struct Signed<'a> {
    data: &'a [u8],
    algorithm: &'a [u8],
    signature: &'a [u8],
}

fn signed_parts(der: &[u8]) -> Option<Signed<'_>> {
    let (outer, _) = element(der)?;
    let (_, after_data) = element(outer)?;
    let data = &outer[..outer.len() - after_data.len()];
    let (algorithm, after_algorithm) = element(after_data)?;
    let (bits, _) = element(after_algorithm)?;
    let signature = bits.strip_prefix(&[0])?;
    Some(Signed {
        data,
        algorithm,
        signature,
    })
}

/// A SubjectPublicKeyInfo's algorithm (the contents of its AlgorithmIdentifier) and key.
fn spki_parts(spki: &[u8]) -> Option<(&[u8], &[u8])> {
    let (inner, _) = element(spki)?;
    let (algorithm, rest) = element(inner)?;
    let (bits, _) = element(rest)?;
    Some((algorithm, bits.strip_prefix(&[0])?))
}

/// The contents of the DER element at the start of `der`, and what follows it.
fn element(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let (len, rest) = (rest.get(..n)?, &rest[n..]);
            (
                len.iter().fold(0, |len, &b| len << 8 | usize::from(b)),
                rest,
            )
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Why a list the parser refused is no list, in words (the parser's own are its internals,
/// "NomError(Eof)"): most often a file cut short, which its outer length tells.
fn malformed(der: &[u8]) -> &'static str {
    match der {
        [0x30, ..] if element(der).is_none() => {
            "it ends before the list does (is the file cut short?)"
        }
        _ => "it is not a well-formed revocation list (a damaged file, or something else encoded?)",
    }
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
        .map_err(|e| format!("is not valid PEM: {}", super::pem(e)))?;
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
    fn der_elements_are_read_with_short_and_long_lengths_and_never_past_the_end() {
        assert_eq!(element(&[0x30, 2, 1, 2, 9]), Some((&[1, 2][..], &[9][..])));
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.extend([7; 256]);
        assert_eq!(element(&long).map(|(content, _)| content.len()), Some(256));
        for short in [
            &[][..],
            &[0x30],
            &[0x30, 3, 1],
            &[0x30, 0x82, 0x01],
            &[0x30, 0x85],
        ] {
            assert_eq!(element(short), None, "{short:?}");
        }
    }

    #[test]
    fn a_list_that_does_not_parse_is_told_in_words() {
        let algorithms = &super::super::provider().signature_verification_algorithms;
        let why = |der: &[u8]| parse(der, "the list".into(), 1, algorithms).err().unwrap();
        assert!(why(&[0x30, 0x82, 0x01, 0x00, 0x30]).contains("cut short"));
        assert!(why(&[0x30, 0x03, 0x02, 0x01, 0x01]).contains("not a well-formed"));
        for refused in [why(&[0x30, 0x00]), why(&[0x30, 0x82, 0x01])] {
            assert!(!refused.contains("Nom"), "{refused}");
        }
    }

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
            (
                b"-----BEGIN X509 CRL-----\nMAA=\n",
                "no \"-----END X509 CRL-----\" line",
            ),
        ];
        for (bytes, expected) in refusals {
            let why = split(bytes).unwrap_err();
            assert!(why.contains(expected), "{why}");
        }
    }
}
