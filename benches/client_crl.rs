//! What a revocation list (`tls.client_crl`) adds to rustls's check of a client's
//! certificate: rustls verifies the list's signature, over the whole list, in every check of a
//! chain that leads to its issuer. rustls's WebPKI client verifier alone (the aws-lc-rs
//! provider), a P-256 CA and client certificate, with no list and with lists of 10, 1,000 and
//! 30,000 entries (0.5 KB to 1 MB). wsgate spares handshakes most of it for the lists of
//! `client_ca`'s CAs, verified once at load (`src/tls/verified.rs`; measured through wsgate
//! in docs/benchmarks.md, "With revocation lists").
//!
//! `cargo bench --bench client_crl`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;

fn check(c: &mut Criterion) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "device CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["device-7".to_string()]).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf: CertificateDer = leaf
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap()
        .der()
        .clone();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let mut group = c.benchmark_group("client certificate check");
    for entries in [None, Some(10u64), Some(1_000), Some(30_000)] {
        let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        let (label, builder) = match entries {
            None => ("no list".to_string(), builder),
            Some(n) => {
                let list = revocation_list(n, &ca, &ca_key);
                let label = format!("{n} entries, {} KB", list.len() / 1000);
                (label, builder.with_crls([list]))
            }
        };
        let verifier = builder.build().unwrap();
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                let checked = verifier.verify_client_cert(black_box(&leaf), &[], UnixTime::now());
                black_box(checked.unwrap())
            })
        });
    }
    group.finish();
}

/// A list of `ca` revoking `n` certificates (none of them the client's).
fn revocation_list(
    n: u64,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> rustls::pki_types::CertificateRevocationListDer<'static> {
    let now = time::OffsetDateTime::now_utc();
    let revoked_certs = (0..n)
        .map(|i| rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&(i + (1 << 60)).to_be_bytes()),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(7),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params.signed_by(ca, ca_key).unwrap().der().clone()
}

criterion_group!(benches, check);
criterion_main!(benches);
