//! A client's TLS certificate as backends learn of it: verified by rustls in the handshake
//! (`tls.client_ca`), or again here for a resumed session, and summed up once per connection
//! into the `X-Forwarded-Client-Cert` value sent with its upgrade request, in the form Envoy,
//! Istio and Traefik's readers take:
//! `Hash=<SHA-256 of the DER, hex>;Subject="<DN, RFC 4514>";DNS="…";URI="…"` (one `DNS`/`URI`
//! per subjectAltName entry of those kinds). The header a client sends itself is never
//! forwarded (see `forwarding`): only wsgate's, and only for a certificate it verified.

use std::fmt::Write as _;
use std::sync::Arc;

use hyper::header::HeaderValue;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::asn1_rs::ToDer as _;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::X509Name;

use crate::error::ProxyError;
use crate::tls::{ClientCertVerifier, TlsStream};

/// A client's certificate (or its absence) as checked at its TLS handshake, and by whom: a
/// request routed under a later config (a reload while the client took its time to send its
/// head) is judged again by that config's verifier (see [`at_request`]).
pub(crate) struct Checked {
    /// As the client showed it, its own first; empty if it showed none.
    chain: Vec<CertificateDer<'static>>,
    verifier: Arc<dyn ClientCertVerifier>,
    /// What backends are told of it.
    told: Option<HeaderValue>,
}

/// The client of `tls` under `verifier`, the one of the config whose `ServerConfig` took the
/// handshake (`None`: that config asks clients for no certificate, and nothing is told, even
/// of one restored from a session begun under a config that asked). A full handshake was
/// verified by `verifier` already. A resumed session brings back the chain checked when the
/// session began, which rustls takes as it is: its CA may since have left `tls.client_ca`,
/// the certificate may have expired, or the session may hold none where one is now required.
/// So it is checked again, and refused as a full handshake would refuse it.
pub(crate) fn at_handshake<IO>(
    tls: &TlsStream<IO>,
    verifier: Option<&Arc<dyn ClientCertVerifier>>,
) -> Result<Option<Checked>, rustls::Error> {
    let Some(verifier) = verifier else {
        return Ok(None);
    };
    let chain = tls.client_chain().unwrap_or_default();
    if tls.resumed() {
        verify(chain, &**verifier)?;
    }
    Ok(Some(Checked {
        told: chain.first().and_then(forwarded),
        chain: chain.to_vec(),
        verifier: verifier.clone(),
    }))
}

/// What backends are told of the client, under `verifier`, the config in force as its request
/// is routed: the handshake's word if that config's verifier took the handshake, else the
/// chain checked again (a CA removed since refuses it, one added refuses a client that showed
/// none where one is now required, and without `client_ca` nothing is told). `checked` is
/// `None` where the handshake asked for no certificate.
pub(crate) fn at_request(
    checked: Option<Checked>,
    verifier: Option<&Arc<dyn ClientCertVerifier>>,
) -> Result<Option<HeaderValue>, ProxyError> {
    let Some(verifier) = verifier else {
        return Ok(None);
    };
    let Some(checked) = checked else {
        verify(&[], &**verifier).map_err(|_| ProxyError::ClientCertificateRequired)?;
        return Ok(None);
    };
    if !Arc::ptr_eq(&checked.verifier, verifier) {
        verify(&checked.chain, &**verifier).map_err(|e| match e {
            rustls::Error::NoCertificatesPresented => ProxyError::ClientCertificateRequired,
            other => ProxyError::ClientCertificateRefused(other.to_string()),
        })?;
    }
    Ok(checked.told)
}

/// Whether `verifier` takes `chain` (the client's own certificate first; empty: none shown).
pub(crate) fn verify(
    chain: &[CertificateDer<'static>],
    verifier: &dyn ClientCertVerifier,
) -> Result<(), rustls::Error> {
    match chain {
        [leaf, intermediates @ ..] => verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(drop),
        [] if verifier.client_auth_mandatory() => Err(rustls::Error::NoCertificatesPresented),
        [] => Ok(()),
    }
}

/// The value of `X-Forwarded-Client-Cert` for a client's verified certificate.
fn forwarded(der: &CertificateDer<'_>) -> Option<HeaderValue> {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut value = String::from("Hash=");
    for byte in digest.as_ref() {
        let _ = write!(value, "{byte:02x}");
    }
    // rustls verified it, so it parses; a value without the names is still the hash.
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
        // RFC 4514 has escaped its `"` and `\` already: a reader takes it as it is, as
        // Envoy's readers do.
        if let Some(subject) = rfc4514(cert.subject()) {
            let _ = write!(value, ";Subject=\"{}\"", printable(&subject));
        }
        let names = cert.subject_alternative_name().ok().flatten();
        for name in names.iter().flat_map(|san| &san.value.general_names) {
            let (key, name) = match name {
                GeneralName::URI(uri) => ("URI", *uri),
                GeneralName::DNSName(dns) => ("DNS", *dns),
                _ => continue,
            };
            let _ = write!(value, ";{key}=\"{}\"", quoted(name));
        }
    }
    HeaderValue::from_str(&value).ok()
}

/// A name as RFC 4514 writes it (as Envoy's `Subject` does): its last RDN first, `,` between
/// RDNs, `+` within one, and each value's special characters escaped, so that a CN of
/// `dev,O=Admins` cannot read as an `O` of the name. `None` for a named type's value that is
/// no string (the field is then left out rather than shown other than as written).
fn rfc4514(name: &X509Name<'_>) -> Option<String> {
    let registry = x509_parser::objects::oid_registry();
    let mut rdns = Vec::new();
    for rdn in name.iter().collect::<Vec<_>>().into_iter().rev() {
        let mut attributes = Vec::new();
        for attribute in rdn.iter() {
            let oid = attribute.attr_type();
            let dotted = oid.to_id_string();
            let key = (ATTRIBUTE_NAMES.iter())
                .find(|(known, _)| *known == dotted)
                .map(|(_, name)| *name)
                .or_else(|| x509_parser::objects::oid2abbrev(oid, registry).ok());
            let written = match key {
                Some(key) => format!("{key}={}", escaped_value(attribute.as_str().ok()?)),
                // RFC 4514 §2.4: a type written as its dotted OID has its value as `#` and
                // the hex of its BER encoding (as OpenSSL and Envoy write it), whatever type.
                None => {
                    let ber = attribute.attr_value().to_der_vec().ok()?;
                    let hex: String = ber.iter().map(|b| format!("{b:02X}")).collect();
                    format!("{dotted}=#{hex}")
                }
            };
            attributes.push(written);
        }
        rdns.push(attributes.join("+"));
    }
    Some(rdns.join(","))
}

/// Attribute types by the names Envoy writes them in (OpenSSL's short names: RFC 4514's nine,
/// `CN` to `UID`, and others' such as `emailAddress`), so a backend matching
/// `emailAddress=…` behind Envoy matches it behind wsgate. Any other by x509-parser's name for
/// it (OpenSSL's too, for those it knows: `postalAddress`, `unstructuredName`), else as its
/// dotted OID.
const ATTRIBUTE_NAMES: [(&str, &str); 29] = [
    ("2.5.4.3", "CN"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.6", "C"),
    ("2.5.4.9", "street"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("1.2.840.113549.1.9.1", "emailAddress"),
    ("2.5.4.5", "serialNumber"),
    ("2.5.4.4", "SN"),
    ("2.5.4.42", "GN"),
    ("2.5.4.43", "initials"),
    ("2.5.4.44", "generationQualifier"),
    ("2.5.4.12", "title"),
    ("2.5.4.13", "description"),
    ("2.5.4.15", "businessCategory"),
    ("2.5.4.17", "postalCode"),
    ("2.5.4.41", "name"),
    ("2.5.4.46", "dnQualifier"),
    ("2.5.4.65", "pseudonym"),
    ("2.5.4.97", "organizationIdentifier"),
    ("1.3.6.1.4.1.311.60.2.1.1", "jurisdictionL"),
    ("1.3.6.1.4.1.311.60.2.1.2", "jurisdictionST"),
    ("1.3.6.1.4.1.311.60.2.1.3", "jurisdictionC"),
    ("2.5.4.20", "telephoneNumber"),
    ("0.9.2342.19200300.100.1.3", "mail"),
    ("2.5.4.72", "role"),
];

/// An attribute value with RFC 4514 §2.4's escapes: `"+,;<>\` anywhere, `#` or a space
/// leading, a space trailing, NUL as `\00`.
fn escaped_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let edge = (i == 0 && (c == '#' || c == ' ')) || (i == last && c == ' ');
        if c == '\0' {
            out.push_str("\\00");
            continue;
        }
        if edge || matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `text` for a quoted XFCC value: `"` and `\` escaped with `\`, and [`printable`].
fn quoted(text: &str) -> String {
    printable(&text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `text` with any byte a header cannot carry (a control character, anything outside ASCII)
/// as `\HH`, RFC 4514's escape, so a name in any script reaches the backend intact and no
/// certificate can end the header or forge a line.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            0x20..=0x7e => out.push(byte as char),
            _ => {
                let _ = write!(out, "\\{byte:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_no_byte_a_header_or_a_field_could_be_forged_with() {
        assert_eq!(quoted("CN=a,O=b"), "CN=a,O=b");
        assert_eq!(quoted(r#"CN=x";DNS="y"#), r#"CN=x\";DNS=\"y"#);
        assert_eq!(quoted("CN=a\\b"), "CN=a\\\\b");
        assert_eq!(quoted("CN=\r\nX"), "CN=\\0D\\0AX");
        assert_eq!(quoted("CN=é"), "CN=\\C3\\A9");
    }

    #[test]
    fn attribute_types_are_named_as_envoy_names_them() {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        let name = &mut params.distinguished_name;
        name.push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 9]), "Main St");
        name.push(
            rcgen::DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 1]),
            "u1",
        );
        name.push(
            rcgen::DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            "a@b.c",
        );
        name.push(rcgen::DnType::CustomDnType(vec![1, 2, 3, 4]), "x");
        name.push(rcgen::DnType::CommonName, "dev");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let value = forwarded(cert.der()).unwrap();
        let subject =
            r#"Subject="1.2.3.4=#0C0178,emailAddress=a@b.c,UID=u1,street=Main St,CN=dev""#;
        assert!(value.to_str().unwrap().contains(subject), "{value:?}");
    }

    #[test]
    fn a_certificate_is_its_hash_subject_and_names() {
        let mut params =
            rcgen::CertificateParams::new(vec!["device-7.example".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example/device/7".try_into().unwrap(),
        ));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "device \"7\"");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let value = forwarded(cert.der()).unwrap();
        let value = value.to_str().unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.der());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        // The DN's own `\"` for the quote, as RFC 4514 escapes it.
        assert_eq!(
            value,
            format!(
                r#"Hash={hex};Subject="CN=device \"7\"";DNS="device-7.example";URI="spiffe://example/device/7""#
            )
        );
    }

    #[test]
    fn a_subject_is_written_as_rfc_4514_says_last_rdn_first_values_escaped() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let dn = &mut params.distinguished_name;
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Real");
        dn.push(rcgen::DnType::CommonName, "dev,O=Admins");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        // rcgen writes the subject's RDNs as CN, C, O: RFC 4514 reverses them.
        let written: Vec<String> = (parsed.subject().iter_attributes())
            .map(|a| a.attr_type().to_id_string())
            .collect();
        assert_eq!(written, ["2.5.4.3", "2.5.4.6", "2.5.4.10"]);
        assert_eq!(
            rfc4514(parsed.subject()).unwrap(),
            r"O=Real,C=DE,CN=dev\,O=Admins"
        );
        // In the header, between quotes as it is: no escaping of its own (docs say how to
        // read it).
        let header = forwarded(cert.der()).unwrap();
        let header = header.to_str().unwrap();
        assert!(
            header.ends_with(r#";Subject="O=Real,C=DE,CN=dev\,O=Admins""#),
            "{header}"
        );
        assert_eq!(escaped_value("#a b "), r"\#a b\ ");
        assert_eq!(escaped_value(" x\0"), "\\ x\\00");
        assert_eq!(escaped_value(r#"a+b;c<d>e"f\g"#), r#"a\+b\;c\<d\>e\"f\\g"#);
    }
}
