//! TLS: PEM files → a rustls `ServerConfig` whose resolver picks a certificate by SNI, and the
//! client configs of routes whose backends speak TLS (`client`).
//!
//! Everything is loaded and checked up front (chain parses, key parses, key matches the leaf),
//! so a reload either gets a complete TLS config or an error naming the config line.
//!
//! Layout: `expiry` is when each served certificate stops being valid, and the warnings and
//! summary about it; `hello` reads a connection's first bytes, enough to tell TLS from plain
//! HTTP; `revocation` reads the lists client certificates are checked against (`tls.client_crl`);
//! `verified` keeps those lists' signatures, verified at load, from being verified in every
//! handshake; `stream` is a TLS connection over rustls's unbuffered API, with buffers lent only
//! while bytes wait in them (a client's to wsgate, or wsgate's to a backend); `client` is the
//! TLS to backends of routes with `backend_tls`; this module loads the certificates and picks
//! one by SNI.

mod client;
mod expiry;
mod hello;
mod revocation;
mod stream;
mod verified;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{CertificatePaths, ClientAuth, Config, ConfigError, HostPattern, TlsVersion};
pub(crate) use client::{backend_clients, BackendTls};
pub(crate) use expiry::{
    expiry_summary, lists_summary, run_out, run_out_over_valid, until_a_leaf_runs_out,
    validity_warnings, Expiry,
};
pub(crate) use hello::{read as read_hello, tell_to_use_tls, Hello};
pub(crate) use rustls::server::danger::ClientCertVerifier;
pub(crate) use stream::{accept, TlsStream};

/// What [`server_config`] builds.
pub(crate) struct Served {
    pub tls: Arc<ServerConfig>,
    /// Who checks clients' certificates, if anyone (`tls.client_ca`): in `tls`, and again for
    /// resumed sessions (see [`crate::client_cert::at_handshake`]).
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// How clients are checked: the same for configs that check them alike (none, or the
    /// same CAs in the same mode with revocation lists that say the same).
    pub client_scope: u64,
    pub expiry: Vec<Expiry>,
    /// The `tls.client_crl` file, and when the first of its lists is due to be replaced.
    pub crl_due: Option<(PathBuf, i64)>,
    /// The DNS names of each certificate of `tls.certificates`, in its order (lowercase,
    /// without a trailing dot).
    pub names: Vec<Vec<String>>,
    /// Certificates that load but that SNI can never pick, revocation lists overdue: surely a
    /// mistake, or a renewal that stopped.
    pub warnings: Vec<ConfigError>,
    /// What the next config resumes sessions with (see [`Resumption`]).
    pub resumption: Arc<Resumption>,
}

/// Builds the TLS server config for every certificate the config names, and says when each
/// leaf expires.
pub(crate) fn server_config(
    config: &Config,
    resumption: &Arc<Resumption>,
) -> Result<Served, ConfigError> {
    let provider = Arc::new(provider());
    let (mut resolver, expiry, mut warnings) = load_certificates(config, &provider)?;
    let versions: &[&rustls::SupportedProtocolVersion] = match config.tls_min_version {
        TlsVersion::Tls12 => rustls::DEFAULT_VERSIONS,
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let clients = client_verifier(config, &provider)?;
    let names = std::mem::take(&mut resolver.names);
    let verifier = (clients.verifier.clone()).unwrap_or_else(WebPkiClientVerifier::no_client_auth);
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| match config.certificates.first() {
            Some(first) => ConfigError::at(&config.path, &first.location, e.to_string()),
            None => ConfigError::new(&config.path, e.to_string()),
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    // Pin HTTP/1.1: a WebSocket upgrade is an HTTP/1.1 affair, and a client that would pick h2
    // from a longer list must not. HTTP/1.0 is agreed to only so that a client offering
    // nothing else gets the handshake's answer to it (400), not a TLS alert it cannot read.
    tls.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    // Kept by the snapshot, for the next config to resume with: the one in force's if on,
    // a new one if off, so that turned on again it honours no ticket issued before (the
    // docs' promise: off is off, not paused).
    let resumption = match config.session_resumption {
        true => resumption.clone(),
        false => Arc::default(),
    };
    if config.session_resumption {
        let (ticketer, cache) = resumption.sessions(clients.scope);
        // Stateless tickets make a reconnect (the common case after a network blip) cheap.
        if let Some(ticketer) = ticketer {
            tls.ticketer = ticketer;
        }
        // TLS 1.2 clients without ticket support resume by session ID, from this cache.
        tls.session_storage = cache;
    } else {
        // No tickets sent (they cost ~8 % of a full handshake's CPU, for nothing where a
        // reconnect rarely lands on the same replica) and no session cache kept.
        tls.send_tls13_tickets = 0;
        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    }
    warnings.extend(clients.warnings);
    Ok(Served {
        tls: Arc::new(tls),
        client_verifier: clients.verifier,
        client_scope: clients.scope,
        expiry,
        crl_due: clients.crl_due,
        names,
        warnings,
        resumption,
    })
}

/// Whether `names` (a certificate's, as [`Served::names`] has them) covers `name`: as one of
/// them, or by a wildcard one for its parent (one label, RFC 6125 §6.4.3).
pub(crate) fn names_cover(names: &[String], name: &str) -> bool {
    let parent = name.find('.').map(|dot| format!("*{}", &name[dot..]));
    names
        .iter()
        .any(|n| n == name || parent.as_deref() == Some(n.as_str()))
}

/// Who checks clients' certificates, as [`client_verifier`] builds it: by default no one.
#[derive(Default)]
struct Clients {
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The scope of the sessions clients may resume: the same for configs that check clients
    /// alike (none, or the same CAs in the same mode with revocation lists that say the same),
    /// another when that changes; 0 for no check.
    scope: u64,
    /// What is off about the revocation lists: one overdue, a CA of `client_ca` without one
    /// that clients reach through another.
    warnings: Vec<ConfigError>,
    /// The revocation list file, and when the first of its lists is due to be replaced.
    crl_due: Option<(PathBuf, i64)>,
}

/// Who checks clients' certificates: no one, unless `tls.client_ca` names the CAs they must
/// chain to (and then a client without one is refused in the handshake unless
/// `tls.client_auth` is "optional"), and each certificate is looked up in the revocation
/// lists of `tls.client_crl` if set.
fn client_verifier(
    config: &Config,
    provider: &Arc<CryptoProvider>,
) -> Result<Clients, ConfigError> {
    let Some(auth) = &config.client_auth else {
        return Ok(Clients::default());
    };
    let at = |message: String| ConfigError::at(&config.path, &auth.ca_location, message);
    let (roots, anchors) = client::trusted(&auth.ca).map_err(at)?;
    let dated = expiry::anchor_warnings(&auth.ca, &anchors);
    let lists = match &auth.crl {
        Some((file, location)) => {
            let at = |message: String| ConfigError::at(&config.path, location, message);
            let algorithms = &provider.signature_verification_algorithms;
            let lists = revocation::read(file, &auth.ca, &anchors, algorithms).map_err(at)?;
            Some((file, location, lists))
        }
        None => None,
    };
    let says = lists.as_ref().map(|(_, _, lists)| lists.says);
    let scope = session_scope(auth.mode, &roots, says);
    let provider = match lists {
        // Lists verified at load are taken as verified in handshakes (see `verified`).
        Some(_) => Arc::new(CryptoProvider {
            signature_verification_algorithms: verified::remembering(
                &provider.signature_verification_algorithms,
            ),
            ..(**provider).clone()
        }),
        None => provider.clone(),
    };
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match auth.mode {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    // rustls's defaults: every certificate of the chain but the trust anchor is looked up in
    // the list of its issuer, and one whose issuer has no list is refused (a list left out
    // must not let everyone in), as nginx and Envoy do. Unlike them, a list past its
    // nextUpdate is still used (warned about, and exported): refusing every client because a
    // publisher is late would be an outage of its own.
    let (builder, warnings, crl_due) = match lists {
        Some((file, location, lists)) => {
            let at = |message: String| ConfigError::at(&config.path, location, message);
            let due = lists.due.map(|due| (file.clone(), due));
            let warnings = lists.warnings.into_iter().map(at).collect();
            (builder.with_crls(lists.ders), warnings, due)
        }
        None => (builder, Vec::new(), None),
    };
    let warnings = warnings
        .into_iter()
        .chain(dated.into_iter().map(at))
        .collect();
    let verifier = builder.build().map_err(|e| at(e.to_string()))?;
    Ok(Clients {
        verifier: Some(verifier),
        scope,
        warnings,
        crl_due,
    })
}

/// The scope of the sessions of clients checked in `mode` against the CAs `roots` and
/// revocation lists saying `lists` (see [`Clients::scope`]); never 0, the scope of no check.
fn session_scope(mode: ClientAuth, roots: &rustls::RootCertStore, lists: Option<u64>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (mode == ClientAuth::Required).hash(&mut hasher);
    for anchor in &roots.roots {
        anchor.subject.as_ref().hash(&mut hasher);
        anchor.subject_public_key_info.as_ref().hash(&mut hasher);
    }
    lists.hash(&mut hasher);
    hasher.finish() | 1
}

/// Every certificate the config names, read, checked and added to the SNI resolver; with when
/// each leaf expires, and a warning for each one SNI can never pick.
fn load_certificates(
    config: &Config,
    provider: &CryptoProvider,
) -> Result<(SniResolver, Vec<Expiry>, Vec<ConfigError>), ConfigError> {
    let mut resolver = SniResolver {
        suites: serving_suites(config, provider),
        ..SniResolver::default()
    };
    let mut expiry = Vec::with_capacity(config.certificates.len());
    let mut warnings = Vec::new();
    for (index, paths) in config.certificates.iter().enumerate() {
        let key = load_certified_key(paths, Chain::Served, provider)
            .map_err(|refused| refused.at(config, paths))?;
        expiry.extend(Expiry::of(&paths.cert, &key.cert, Chain::Served));
        warnings.extend(chain_warning(config, paths, &key, Chain::Served));
        if let Some(why) = key.cert.first().and_then(|leaf| not_a_servers(leaf)) {
            let message = format!("{}: {why}", paths.cert.display());
            warnings.push(ConfigError::at(&config.path, &paths.cert_location, message));
        }
        let (names, first_for) = resolver.add(key);
        // The first certificate also serves every name no other covers; a later one serves
        // only the names it is the first to cover.
        if index > 0 && first_for == 0 {
            let why = match names {
                0 => "its subjectAltName holds no DNS name an SNI name can match, and SNI picks by those alone (IP addresses, malformed names and a name only in the subject's CN count for nothing)",
                _ => "an earlier certificate with the same kind of key (RSA, ECDSA on the same curve, or Ed25519) already covers each of its names (the first one listed wins; one with another kind of key is served beside it, to clients that take that kind and not the first's)",
            };
            let message = format!("{} is never served: {why}", paths.cert.display());
            warnings.push(ConfigError::at(&config.path, &paths.location, message));
        }
    }
    warnings.extend(uncovered_hosts(config, &resolver));
    Ok((resolver, expiry, warnings))
}

/// A warning for each route whose exact `host` no certificate names: its clients get the
/// first certificate, which browsers refuse for that name (a wildcard route's hosts may each
/// have a certificate of their own, and is not judged).
fn uncovered_hosts(config: &Config, resolver: &SniResolver) -> Vec<ConfigError> {
    (config.routes.iter())
        .filter_map(|route| {
            let Some(HostPattern::Exact(host)) = &route.host else {
                return None;
            };
            if resolver.covers(host) {
                return None;
            }
            let later = host.parse().ok().and_then(|ip| resolver.naming_address(ip));
            let message = match later {
                Some(i) => format!(
                    "only tls.certificates[{i}] names {host:?}, and a client connecting to an IP address sends no name (SNI) to pick it by: it gets the first certificate, which a browser refuses for that address; list that one first"
                ),
                None => format!(
                    "no certificate in tls.certificates names {host:?}: its clients get the first one, which a browser refuses for that name"
                ),
            };
            let location = route.host_location.as_ref()?;
            Some(ConfigError::at(&config.path, location, message))
        })
        .collect()
}

/// Why every client refuses `leaf` as a server's certificate, if one does: it loads (its key
/// matches), and `wsgate check` would say ok, but no handshake with it succeeds.
fn not_a_servers(leaf: &CertificateDer<'_>) -> Option<&'static str> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    if cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca)
    {
        return Some("it is a CA certificate (basicConstraints CA:TRUE), which clients refuse as a server's: serve the certificate it issued");
    }
    let eku = cert.extended_key_usage().ok().flatten();
    if eku.is_some_and(|eku| !eku.value.server_auth && !eku.value.any) {
        return Some("its extended key usage does not include serverAuth, so clients refuse it for a server (a client certificate?)");
    }
    // A self-signed one's own signature is not checked by a client that trusts it as it is.
    let signature = cert.signature_algorithm.algorithm.to_id_string();
    if WEAK_SIGNATURES.contains(&signature.as_str()) && cert.issuer() != cert.subject() {
        return Some("it is signed with SHA-1 or an MD hash (MD2, MD4, MD5), which clients have refused for years: have it issued again");
    }
    if must_staple(&cert) {
        return Some("it requires an OCSP response stapled to every handshake (TLS feature status_request, \"must-staple\"), which wsgate does not send, so clients that enforce it (Firefox) refuse it: have it issued without must-staple");
    }
    let san = cert.subject_alternative_name().ok().flatten();
    let names_a_host = san.is_some_and(|san| {
        (san.value.general_names.iter())
            .any(|name| matches!(name, GeneralName::DNSName(_) | GeneralName::IPAddress(_)))
    });
    (!names_a_host).then_some("its subjectAltName names no host (a name only in the subject's CN): clients check the subjectAltName alone, and refuse it for every name")
}

/// Signature algorithms no client takes any more: SHA-1 with RSA, ECDSA or DSA (also under
/// their old OIW numbers), and MD2, MD4 or MD5 with RSA.
const WEAK_SIGNATURES: [&str; 8] = [
    "1.2.840.113549.1.1.5",
    "1.2.840.10045.4.1",
    "1.2.840.10040.4.3",
    "1.3.14.3.2.29",
    "1.3.14.3.2.27",
    "1.2.840.113549.1.1.2",
    "1.2.840.113549.1.1.3",
    "1.2.840.113549.1.1.4",
];

/// Whether `cert` has the TLS feature extension (RFC 7633) asking for `status_request` (5):
/// its value is a SEQUENCE OF INTEGER (TLS extension numbers).
fn must_staple(cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    use x509_parser::asn1_rs::FromDer;
    const TLS_FEATURE: &str = "1.3.6.1.5.5.7.1.24";
    const STATUS_REQUEST: u64 = 5;
    (cert.extensions().iter())
        .filter(|ext| ext.oid.to_id_string() == TLS_FEATURE)
        .any(|ext| {
            <Vec<u64>>::from_der(ext.value)
                .is_ok_and(|(_, features)| features.contains(&STATUS_REQUEST))
        })
}

/// [`chain_problem`] of the pair `paths` as a warning at its `cert`.
fn chain_warning(
    config: &Config,
    paths: &CertificatePaths,
    key: &CertifiedKey,
    role: Chain,
) -> Option<ConfigError> {
    let why = chain_problem(&key.cert, role)?;
    let message = format!("{}: {why}", paths.cert.display());
    Some(ConfigError::at(&config.path, &paths.cert_location, message))
}

/// What is off about a chain that still works with lenient peers: intermediates out of
/// order (each certificate must be signed by the one after it), one that is no part of the
/// path from the first certificate (a duplicate, another chain's), or the root sent along
/// (peers have it already: bytes in every handshake for nothing). By names, as a peer builds
/// a path: each certificate's issuer is the next one's subject.
fn chain_problem(chain: &[CertificateDer<'_>], role: Chain) -> Option<String> {
    let parsed: Vec<_> = (chain.iter())
        .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, cert)| cert)
        .collect();
    if parsed.len() < 2 {
        return None;
    }
    let (own, peers) = (role.own(), role.peers());
    // The path a peer builds from the first certificate with what was sent: each step the
    // first certificate not on it yet whose subject is the last one's issuer.
    let mut path = vec![0];
    while let Some(&last) = path.last() {
        let cert = &parsed[last];
        let self_signed = cert.subject() == cert.issuer();
        let next =
            (0..parsed.len()).find(|i| !path.contains(i) && parsed[*i].subject() == cert.issuer());
        match next {
            Some(i) if !self_signed => path.push(i),
            _ => break,
        }
    }
    if let Some(stray) = (0..parsed.len()).find(|i| !path.contains(i)) {
        // Nothing in the file signed the first certificate, yet more are sent: its issuer, an
        // intermediate, left out (the stray likely the one above it, or its root). Leaving
        // the stray out would not mend that. (A path that goes on and stops at an
        // intermediate is the usual one: the root left out.)
        let alone = (path.len() == 1).then(|| &parsed[0]);
        if let Some(first) = alone.filter(|c| c.subject() != c.issuer()) {
            return Some(format!(
                "certificate {} of the chain is no part of the path from {own}, whose issuer ({:?}) is not in the file: an intermediate left out? Put its certificate right after {own} ({peers} may refuse the chain as it is)",
                stray + 1,
                first.issuer().to_string()
            ));
        }
        return Some(format!(
            "certificate {} of the chain is no part of the path from {own} (a duplicate, or another chain's certificate): {peers} may refuse the chain; leave it out",
            stray + 1
        ));
    }
    if path.iter().enumerate().any(|(place, i)| place != *i) {
        return Some(format!("the chain is out of order: put {own} first, then the intermediate that signed it, then the one that signed that ({peers} that build the path in the order sent refuse it as it is)"));
    }
    let last = parsed.last()?;
    (last.subject() == last.issuer()).then(|| format!(
        "the chain ends with its root (a self-signed certificate): {peers} have their roots already, so it only adds bytes to every handshake; leave it out",
    ))
}

/// The crypto wsgate serves with: aws-lc-rs for the handshake, and on x86-64 ring for the
/// record layer.
///
/// Measured on the benchmark machine (AMD EPYC, 2 vCPU): ring's AES-128-GCM seals 16 KiB
/// records at 5.3 GB/s against aws-lc-rs's 2.7 GB/s, because ring uses the VAES/VPCLMULQDQ
/// AVX2 code where the CPU has it (and the same AES-NI code as aws-lc-rs where it does not),
/// while aws-lc-rs's X25519 takes 54 µs against ring's 105 µs. Record encryption is most of a
/// busy tunnel's cost and key exchange most of a handshake's, so each side gets the faster
/// library. Elsewhere (aarch64) aws-lc-rs keeps the record layer: its ARMv8 GCM is the one
/// tuned for those cores.
fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if cfg!(target_arch = "x86_64") {
        provider.cipher_suites = rustls::crypto::ring::DEFAULT_CIPHER_SUITES.to_vec();
    }
    provider
}

/// Makes [`provider`] the process default. Both rustls backends are compiled in, so rustls
/// cannot pick one itself, and any config built without naming a provider (a future client
/// config, a crate that uses the process default) would panic. A second call keeps the first.
pub(crate) fn install_default_provider() {
    let _ = CryptoProvider::install_default(provider());
}

/// The ticket keys and TLS 1.2 session caches a server resumes sessions with: one per
/// client-check scope (see [`client_verifier`]), carried from the config in force to the
/// next, so a reload does not forget clients' sessions, but a change in how clients are
/// checked does, and so does a config with `session_resumption` off. One per server, not
/// per process: servers in one process (tests) do not share keys.
#[derive(Default)]
pub(crate) struct Resumption(std::sync::Mutex<Vec<(u64, Sessions)>>);

/// The ticket key and TLS 1.2 session cache of a scope (see [`Resumption`]). Why a scope of
/// their own: rustls restores a resumed session's client certificate as it was checked when
/// the session began, and keeps issuing tickets that carry it: under a new `client_ca` or
/// revocation list, such sessions cannot be resumed at all (a full handshake, checked by the
/// new CAs and lists, a refusal told in a TLS alert), rather than resumed and refused again
/// with every new ticket (see [`crate::client_cert::at_handshake`], which checks what is
/// resumed within a scope).
type Sessions = (
    Option<Arc<dyn rustls::server::ProducesTickets>>,
    Arc<dyn rustls::server::StoresServerSessions>,
);

impl Resumption {
    /// The sessions of `scope`, made if this keeps none for it.
    fn sessions(&self, scope: u64) -> Sessions {
        let mut kept = crate::sync::lock(&self.0);
        let entry = match kept.iter().position(|(kept, _)| *kept == scope) {
            Some(i) => kept.remove(i),
            None => {
                let cache: Arc<dyn rustls::server::StoresServerSessions> =
                    rustls::server::ServerSessionMemoryCache::new(256);
                (
                    scope,
                    (rustls::crypto::aws_lc_rs::Ticketer::new().ok(), cache),
                )
            }
        };
        let sessions = entry.1.clone();
        // Most recent last; the oldest goes, with its sessions (each cache holds up to 256,
        // with their clients' chains): a list renewed hourly must not grow the process for
        // ever.
        kept.push(entry);
        if kept.len() > SCOPES_KEPT {
            kept.remove(0);
        }
        sessions
    }
}

/// How many scopes' sessions a [`Resumption`] keeps: the one in force and a few before it, which
/// a reload may come back to (a change reverted).
const SCOPES_KEPT: usize = 4;

/// Which part of a certificate entry an error is about, so it can point at that value.
enum Part {
    Cert,
    Key,
    Pair,
}

/// Why a certificate entry cannot be served: where, in words, and the I/O error behind it.
struct Refused {
    part: Part,
    message: String,
    io: Option<std::io::Error>,
}

impl Refused {
    fn new(part: Part, message: String) -> Refused {
        Refused {
            part,
            message,
            io: None,
        }
    }

    /// The refusal of the pair `paths` of `config`, at the line of the part it is about.
    fn at(self, config: &Config, paths: &CertificatePaths) -> ConfigError {
        let location = match self.part {
            Part::Cert => &paths.cert_location,
            Part::Key => &paths.key_location,
            Part::Pair => &paths.location,
        };
        let error = ConfigError::at(&config.path, location, self.message);
        error.caused_by(self.io.as_ref())
    }
}

/// A certificate chain and its private key (a `[[tls.certificates]]` entry, or a route's
/// client certificate for its backends), read, parsed and checked to belong together.
fn load_certified_key(
    paths: &CertificatePaths,
    role: Chain,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Refused> {
    let chain = read_chain(&paths.cert, role)?;
    let key = read_key(&paths.key, provider)?;
    pair_up(chain, key, paths, role, provider)
}

/// A file's bytes, or a refusal naming the file, what it was for and why.
fn read_file(path: &Path, part: Part, what: &str) -> Result<Vec<u8>, Refused> {
    crate::files::read(path)
        .map(without_bom)
        .map_err(|e| Refused {
            message: format!("cannot read {what} {}: {e}", path.display()),
            io: Some(e),
            ..Refused::new(part, String::new())
        })
}

/// The bytes without a leading UTF-8 byte-order mark: Windows editors write one, and the
/// PEM reader would otherwise see no BEGIN line.
fn without_bom(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    bytes
}

/// What a PEM file of certificates is for, for the words of its errors and warnings.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Chain {
    /// A chain to serve, the server's own certificate first (beside its key).
    Served,
    /// A chain shown to backends that ask for a client certificate (a route's
    /// `backend_tls.cert`), wsgate's own certificate first (beside its key).
    Client,
    /// Certificates to trust (a route's `backend_tls.ca`).
    Trusted,
}

impl Chain {
    /// Its first certificate, the one its key belongs to (a CA file has no key, and is
    /// never asked).
    fn own(self) -> &'static str {
        match self {
            Chain::Client => "the client certificate",
            Chain::Served | Chain::Trusted => "the server's own certificate",
        }
    }

    /// Who checks it.
    fn peers(self) -> &'static str {
        match self {
            Chain::Client => "backends",
            Chain::Served | Chain::Trusted => "clients",
        }
    }
}

fn read_chain(path: &Path, role: Chain) -> Result<Vec<CertificateDer<'static>>, Refused> {
    let cert_pem = read_file(path, Part::Cert, "certificate")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            let msg = format!("cannot read certificate {}: {}", path.display(), pem(e));
            Refused::new(Part::Cert, msg)
        })?;
    if chain.is_empty() {
        let msg = match holds_private_key(&cert_pem) {
            true if role != Chain::Trusted => format!(
                "no certificate in {}: it holds a private key (are `cert` and `key` swapped?)",
                path.display()
            ),
            true => format!(
                "no certificate in {}: it holds a private key, not the CA's certificate",
                path.display()
            ),
            false => match holds_instead(&cert_pem) {
                Some(instead) => format!("no certificate in {}: {instead}", path.display()),
                None => format!(
                    "no certificate in {}: wsgate reads PEM (-----BEGIN CERTIFICATE-----); convert DER with `openssl x509 -inform der -in CERT -out CERT.pem`",
                    path.display()
                ),
            },
        };
        return Err(Refused::new(Part::Cert, msg));
    }
    // rustls parses only the first certificate; the others go to clients as they are, so a
    // broken intermediate (a line lost in a copy) would load, reload, and then fail every
    // handshake. Each one is parsed here.
    for (i, der) in chain.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(der) {
            let which = match (role, i) {
                (Chain::Served, 0) => "the server's certificate (the first)".to_string(),
                (Chain::Client, 0) => "the client certificate (the first)".to_string(),
                (Chain::Served | Chain::Client, i) => {
                    format!("certificate {} of the chain", i + 1)
                }
                (Chain::Trusted, i) => format!("certificate {}", i + 1),
            };
            let msg = format!(
                "{which} in {} is not a valid X.509 certificate: {e}",
                path.display()
            );
            return Err(Refused::new(Part::Cert, msg));
        }
    }
    Ok(chain)
}

/// Whether a PEM file holds a private key of any kind.
fn holds_private_key(pem: &[u8]) -> bool {
    pem.windows(11).any(|w| w == b"PRIVATE KEY")
}

/// What a file lacking the PEM block it should hold has instead, where that is not DER (for
/// which the advice is to convert it): nothing, or other PEM blocks (a certificate request,
/// a public key).
fn holds_instead(pem: &[u8]) -> Option<String> {
    if pem.iter().all(u8::is_ascii_whitespace) {
        return Some("the file is empty".to_string());
    }
    let text = String::from_utf8_lossy(pem);
    let label = text.split("-----BEGIN ").nth(1)?.split("-----").next()?;
    let label: String = label.chars().take(40).collect();
    Some(format!("it holds a PEM {label:?} block instead"))
}

/// The private key, parsed and accepted by the provider for signing.
fn read_key(path: &Path, provider: &CryptoProvider) -> Result<PrivateKeyDer<'static>, Refused> {
    let key_pem = read_file(path, Part::Key, "private key")?;
    // Before parsing: an old-style encrypted key (`Proc-Type: 4,ENCRYPTED` headers) fails as
    // bad base64, which would hide what is wrong.
    if encrypted(&key_pem) {
        let msg = format!(
            "cannot read private key {}: the key is encrypted; wsgate needs it decrypted (openssl pkey -in KEY -out PLAIN)",
            path.display()
        );
        return Err(Refused::new(Part::Key, msg));
    }
    let keys = PrivateKeyDer::pem_slice_iter(&key_pem)
        .filter(Result::is_ok)
        .count();
    if keys > 1 {
        let msg = format!(
            "{} holds {keys} private keys: keep only the one of the certificate",
            path.display()
        );
        return Err(Refused::new(Part::Key, msg));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let why = match e {
            rustls_pki_types::pem::Error::NoItemsFound => match holds_instead(&key_pem) {
                Some(instead) => format!("no private key in it: {instead}"),
                None => "no private key in it (PKCS#8, SEC1 or PKCS#1 PEM; convert DER with `openssl pkey -inform der -in KEY -out KEY.pem`)".to_string(),
            },
            other => pem(other),
        };
        let msg = format!("cannot read private key {}: {why}", path.display());
        Refused::new(Part::Key, msg)
    })?;
    if let Err(e) = provider.key_provider.load_private_key(key.clone_key()) {
        let msg = format!(
            "cannot use private key {}: not a key wsgate can sign with (RSA of 2048 bits or more as rsaEncryption, not RSA-PSS; ECDSA on P-256, P-384 or P-521; Ed25519): {}",
            path.display(),
            e.to_string().trim_start_matches("unexpected error: ")
        );
        return Err(Refused::new(Part::Key, msg));
    }
    Ok(key)
}

/// The chain and key as one `CertifiedKey`, if the key is the chain's first certificate's.
fn pair_up(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    paths: &CertificatePaths,
    role: Chain,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Refused> {
    let pair = |msg| Refused::new(Part::Pair, msg);
    match CertifiedKey::from_der(chain.clone(), key.clone_key(), provider) {
        Ok(certified) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) if key_fits_later(&chain, &key, provider) => {
            Err(pair(format!(
                "the certificate matching private key {} is not the first in {}: put {} first, then its intermediates",
                paths.key.display(),
                paths.cert.display(),
                role.own(),
            )))
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(pair(format!(
            "private key {} does not match certificate {}",
            paths.key.display(),
            paths.cert.display()
        ))),
        Err(other) => Err(pair(format!(
            "certificate {} and private key {} cannot be used together: {other}",
            paths.cert.display(),
            paths.key.display()
        ))),
    }
}

/// A PEM reading error in words: the library's own print a missing end marker as bytes.
fn pem(e: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "no \"-----END {}-----\" line after its BEGIN line (is the file cut short?)",
            String::from_utf8_lossy(&end_marker)
        ),
        Error::IllegalSectionStart { line } => {
            format!("malformed PEM line {:?}", String::from_utf8_lossy(&line))
        }
        Error::Base64Decode(what) => format!("bad base64 in a PEM section: {what}"),
        Error::NoItemsFound => "no PEM section of the expected kind in it".to_string(),
        other => other.to_string(),
    }
}

/// Whether a key file's PEM holds an encrypted private key (which needs a passphrase wsgate
/// does not take).
fn encrypted(pem: &[u8]) -> bool {
    pem.windows(30)
        .any(|w| w == b"-----BEGIN ENCRYPTED PRIVATE K")
        || pem.windows(16).any(|w| w == b"Proc-Type: 4,ENC")
}

/// Whether `key` belongs to a certificate of `chain` other than the first: the chain is in
/// the wrong order (a CA bundle put ahead of the server's certificate), not a wrong key.
fn key_fits_later(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> bool {
    (chain.iter().skip(1))
        .any(|cert| CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), provider).is_ok())
}

/// Picks, among the certificates whose names cover the SNI name (the first certificate's
/// otherwise), the first the client can take: one of each kind of key per name (RSA, ECDSA
/// on each curve, Ed25519), so an RSA certificate beside an ECDSA one for the same names
/// serves the clients that take only RSA, as nginx and HAProxy do with such a pair.
#[derive(Debug, Default)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
    /// Lowercased DNS name → the certificates naming it, in file order, one of each kind of
    /// key (a later one of a kind already there is never picked).
    exact: HashMap<String, Vec<usize>>,
    /// Wildcard suffix (".example.com" for "*.example.com") → its certificates, alike.
    wildcard: HashMap<String, Vec<usize>>,
    /// Each certificate's DNS names, in the order added, as SNI compares them (taken for
    /// [`Served::names`] before the resolver goes into the rustls config).
    names: Vec<Vec<String>>,
    /// The cipher suites served with, at the versions the config allows: over TLS 1.2 a key
    /// is usable only with a suite of its kind.
    suites: Vec<rustls::SupportedCipherSuite>,
    /// Each certificate's kind of key (see [`kind_of`]), in the order added.
    kinds: Vec<Vec<rustls::SignatureScheme>>,
    /// The first certificate's first DNS name: its certificates are served to a client that
    /// names none (kept apart from `names`, which the config takes).
    fallback: Option<String>,
}

/// What a client's hello offers that decides which kind of key it takes.
struct Offered<'a> {
    schemes: &'a [rustls::SignatureScheme],
    suites: &'a [rustls::CipherSuite],
}

/// The cipher suites `config` serves with: the provider's, at the TLS versions it allows.
fn serving_suites(config: &Config, provider: &CryptoProvider) -> Vec<rustls::SupportedCipherSuite> {
    (provider.cipher_suites.iter())
        .filter(|suite| match config.tls_min_version {
            TlsVersion::Tls12 => true,
            TlsVersion::Tls13 => matches!(suite, rustls::SupportedCipherSuite::Tls13(_)),
        })
        .copied()
        .collect()
}

/// Whether TLS 1.3 allows a certificate's signature with `scheme` (RFC 8446 §4.2.3): not
/// RSA PKCS#1 v1.5, nor a hash older than SHA-256 (none, MD5, SHA-1, SHA-224), as rustls
/// holds it (its own test is not public).
fn allowed_in_tls13(scheme: rustls::SignatureScheme) -> bool {
    let [hash, sign] = u16::from(scheme).to_be_bytes();
    hash > 3 && sign != 1
}

/// The key's kind as clients take it: the signature schemes it signs with (RSA keys all
/// alike; an ECDSA key with its curve's alone, so P-256 and P-384 are two kinds).
fn kind_of(key: &CertifiedKey) -> Vec<rustls::SignatureScheme> {
    use rustls::SignatureScheme as S;
    const ALL: [S; 13] = [
        S::RSA_PKCS1_SHA1,
        S::ECDSA_SHA1_Legacy,
        S::RSA_PKCS1_SHA256,
        S::ECDSA_NISTP256_SHA256,
        S::RSA_PKCS1_SHA384,
        S::ECDSA_NISTP384_SHA384,
        S::RSA_PKCS1_SHA512,
        S::ECDSA_NISTP521_SHA512,
        S::RSA_PSS_SHA256,
        S::RSA_PSS_SHA384,
        S::RSA_PSS_SHA512,
        S::ED25519,
        S::ED448,
    ];
    (ALL.into_iter())
        .filter(|scheme| key.key.choose_scheme(&[*scheme]).is_some())
        .collect()
}

/// Whether a client takes a key over TLS 1.3 and over TLS 1.2; `None` for a version none of
/// whose suites it offers (see [`SniResolver::takes`]).
type Takes = (Option<bool>, Option<bool>);

/// The first certificate, when no name picks one.
const FIRST: &[usize] = &[0];

impl SniResolver {
    /// Adds a certificate; returns how many DNS names it has, and for how many of them it is
    /// the first of its kind of key.
    fn add(&mut self, key: CertifiedKey) -> (usize, usize) {
        let index = self.keys.len();
        let kind = kind_of(&key);
        let names: Vec<String> = dns_names(&key).iter().map(|n| normalized(n)).collect();
        let mut first_for = 0;
        for name in &names {
            let owners = match name.strip_prefix('*') {
                Some(suffix) => self.wildcard.entry(suffix.to_string()).or_default(),
                None => self.exact.entry(name.clone()).or_default(),
            };
            if !(owners.iter()).any(|&owner| self.kinds[owner] == kind) {
                owners.push(index);
                first_for += 1;
            }
        }
        let count = names.len();
        if index == 0 {
            self.fallback = names.first().cloned();
        }
        self.names.push(names);
        self.kinds.push(kind);
        self.keys.push(Arc::new(key));
        (count, first_for)
    }

    /// The certificate for a client that asked for `sni` and `offered` these.
    fn pick(&self, sni: Option<&str>, offered: &Offered<'_>) -> Option<&Arc<CertifiedKey>> {
        let candidates = (sni.and_then(|name| self.named(name))).unwrap_or_else(|| self.first());
        // The common case, one certificate for the name: nothing to choose.
        if let [only] = candidates {
            return self.keys.get(*only);
        }
        // Each candidate judged once, against the schemes TLS 1.3 allows filtered once.
        let tls13_schemes: Vec<_> = (offered.schemes.iter().copied())
            .filter(|scheme| allowed_in_tls13(*scheme))
            .collect();
        let verdicts: Vec<(usize, Takes)> = (candidates.iter())
            .filter_map(|&i| Some((i, self.takes(offered, &tls13_schemes, self.keys.get(i)?))))
            .collect();
        // One the client takes whichever version it ends up speaking, else one it takes at
        // one of them (a hello that offers TLS 1.3 suites but speaks 1.2 is unusual).
        let both =
            |(_, (tls13, tls12)): &&(usize, _)| *tls13 != Some(false) && *tls12 != Some(false);
        let either =
            |(_, (tls13, tls12)): &&(usize, _)| *tls13 == Some(true) || *tls12 == Some(true);
        let fits = (verdicts.iter().find(both)).or_else(|| verdicts.iter().find(either));
        // None the client takes: the first, for rustls to refuse in its own words.
        let chosen = fits.map(|(i, _)| *i).or(candidates.first().copied())?;
        self.keys.get(chosen)
    }

    /// The certificates served to a client that names none of theirs: the first, and those
    /// beside it for its first name, of other kinds of key.
    fn first(&self) -> &[usize] {
        let owners = (self.fallback.as_deref()).and_then(|name| match name.strip_prefix('*') {
            Some(suffix) => self.wildcard.get(suffix),
            None => self.exact.get(name),
        });
        match owners {
            Some(owners) if owners.first() == Some(&0) => owners,
            _ => FIRST,
        }
    }

    /// Whether a client that `offered` these can take `key` over TLS 1.3 and over TLS 1.2
    /// (`None`: it offers none of the suites of that version served here). Over TLS 1.3, the
    /// key signs with one of `tls13_schemes`, those offered that TLS 1.3 allows (no RSA
    /// PKCS#1, SHA-1 or SHA-224: rustls drops those after the choice, and an RSA key that signs
    /// only with them would fail the handshake); over TLS 1.2, with any scheme offered, and a
    /// suite of its kind is offered (ECDHE-ECDSA for ECDSA and Ed25519, ECDHE-RSA for RSA).
    fn takes(
        &self,
        offered: &Offered<'_>,
        tls13_schemes: &[rustls::SignatureScheme],
        key: &CertifiedKey,
    ) -> Takes {
        use rustls::SupportedCipherSuite::{Tls12, Tls13};
        let ours = || (self.suites.iter()).filter(|suite| offered.suites.contains(&suite.suite()));
        let kind = key.key.algorithm();
        let tls13 = (ours().any(|suite| matches!(suite, Tls13(_))))
            .then(|| key.key.choose_scheme(tls13_schemes).is_some());
        let tls12 = (ours().any(|suite| matches!(suite, Tls12(_)))).then(|| {
            ours().any(|suite| {
                matches!(suite, Tls12(_)) && suite.usable_for_signature_algorithm(kind)
            }) && key.key.choose_scheme(offered.schemes).is_some()
        });
        (tls13, tls12)
    }

    /// Whether a certificate names `host` (not merely the first, served for any name). A
    /// client asking for an IP address sends no name (RFC 6066 §3): it gets the first
    /// certificate, which must name the address itself.
    fn covers(&self, host: &str) -> bool {
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => self.naming_address(ip) == Some(0),
            Err(_) => self.named(host.trim_end_matches('.')).is_some(),
        }
    }

    /// The first certificate whose leaf names the address `ip`, if one does.
    fn naming_address(&self, ip: std::net::IpAddr) -> Option<usize> {
        let name = rustls_pki_types::ServerName::IpAddress(ip.into());
        self.keys.iter().position(|key| {
            let leaf = key.cert.first();
            let leaf = leaf.and_then(|leaf| webpki::EndEntityCert::try_from(leaf).ok());
            leaf.is_some_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
        })
    }

    /// The certificates that name `name`, if one does.
    fn named(&self, name: &str) -> Option<&[usize]> {
        let name = name.to_ascii_lowercase();
        let by_name = self.exact.get(&name).or_else(|| {
            // A certificate wildcard covers exactly one label (RFC 6125 §6.4.3).
            let dot = name.find('.')?;
            self.wildcard.get(&name[dot..])
        });
        by_name.map(Vec::as_slice)
    }
}

/// A certificate's DNS name as SNI is compared with it: lowercase, without a trailing dot.
fn normalized(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn dns_names(key: &CertifiedKey) -> Vec<String> {
    let Some(leaf) = key.cert.first() else {
        return Vec::new();
    };
    match webpki::EndEntityCert::try_from(leaf) {
        Ok(cert) => cert.valid_dns_names().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered = Offered {
            schemes: hello.signature_schemes(),
            suites: hello.cipher_suites(),
        };
        self.pick(hello.server_name(), &offered).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schemes a TLS 1.3 CertificateVerify may use, as rustls allows them after a
    /// certificate is chosen: an RSA key offered only PKCS#1 schemes cannot sign there.
    #[test]
    fn tls_1_3_allows_no_rsa_pkcs1_nor_old_hashes() {
        use rustls::SignatureScheme as S;
        for (scheme, allowed) in [
            (S::RSA_PKCS1_SHA256, false),
            (S::RSA_PKCS1_SHA1, false),
            (S::ECDSA_SHA1_Legacy, false),
            (S::RSA_PSS_SHA256, true),
            (S::ECDSA_NISTP256_SHA256, true),
            (S::ECDSA_NISTP384_SHA384, true),
            (S::ED25519, true),
        ] {
            assert_eq!(allowed_in_tls13(scheme), allowed, "{scheme:?}");
        }
    }

    #[test]
    fn names_cover_a_name_as_it_or_by_a_wildcard_for_its_parent() {
        let names = ["chat.example.com".to_string(), "*.example.org".to_string()];
        assert!(names_cover(&names, "chat.example.com"));
        assert!(names_cover(&names, "a.example.org"));
        assert!(names_cover(&names, "*.example.org"));
        assert!(!names_cover(&names, "a.b.example.org"), "one label only");
        assert!(!names_cover(&names, "example.org"));
        assert!(!names_cover(&names, "other.example.com"));
    }

    /// Certificates that load but that every client refuses for a server are said: a CA's,
    /// a client's (extended key usage without serverAuth), one naming its host in the CN only.
    #[test]
    fn a_certificate_no_client_takes_from_a_server_is_said() {
        let key = rcgen::KeyPair::generate().unwrap();
        let made = |edit: &dyn Fn(&mut rcgen::CertificateParams)| {
            let mut params = rcgen::CertificateParams::new(vec!["a.example.com".into()]).unwrap();
            edit(&mut params);
            let cert = params.self_signed(&key).unwrap();
            not_a_servers(cert.der())
        };
        assert_eq!(made(&|_| {}), None, "a server's certificate");
        let server_auth = |p: &mut rcgen::CertificateParams| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        };
        assert_eq!(made(&server_auth), None);
        let ip_only = |p: &mut rcgen::CertificateParams| {
            p.subject_alt_names = vec![rcgen::SanType::IpAddress([10, 0, 0, 7].into())];
        };
        assert_eq!(made(&ip_only), None, "an address is a host");
        let ca = |p: &mut rcgen::CertificateParams| {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        };
        assert!(made(&ca).is_some_and(|why| why.contains("CA certificate")));
        let client = |p: &mut rcgen::CertificateParams| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        };
        assert!(made(&client).is_some_and(|why| why.contains("serverAuth")));
        let cn_only = |p: &mut rcgen::CertificateParams| {
            p.subject_alt_names.clear();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "a.example.com");
        };
        assert!(made(&cn_only).is_some_and(|why| why.contains("CN")));
        // TLS features as DER: a SEQUENCE OF INTEGER.
        let features = |der: &[u8]| {
            let der = der.to_vec();
            move |p: &mut rcgen::CertificateParams| {
                let tls_feature = [1, 3, 6, 1, 5, 5, 7, 1, 24];
                (p.custom_extensions).push(rcgen::CustomExtension::from_oid_content(
                    &tls_feature,
                    der.clone(),
                ));
            }
        };
        // [5]; [65281, 5] (an integer of three bytes before it); [5, 17].
        for staple in [
            &[0x30, 0x03, 0x02, 0x01, 0x05][..],
            &[0x30, 0x08, 0x02, 0x03, 0x00, 0xff, 0x01, 0x02, 0x01, 0x05],
            &[0x30, 0x06, 0x02, 0x01, 0x05, 0x02, 0x01, 0x11],
        ] {
            let said = made(&features(staple));
            assert!(
                said.is_some_and(|why| why.contains("must-staple")),
                "{staple:x?}"
            );
        }
        // [200] (two bytes), and one INTEGER whose bytes look like a feature list's.
        for other in [
            &[0x30, 0x04, 0x02, 0x02, 0x00, 0xc8][..],
            &[0x30, 0x06, 0x02, 0x04, 0x01, 0x02, 0x01, 0x05],
        ] {
            assert_eq!(made(&features(other)), None, "{other:x?}");
        }
    }

    /// A certificate signed with SHA-1 (ecdsa-with-SHA1, by another key: made with `openssl
    /// x509 -req -sha1`, which rcgen cannot sign with).
    #[test]
    fn a_certificate_signed_with_sha1_is_said() {
        const SHA1_SIGNED: &str = "\
-----BEGIN CERTIFICATE-----
MIIBiDCCAS6gAwIBAgIUHXO80Bt1vtYt2YvMPxA86uyrK5YwCQYHKoZIzj0EATAR
MQ8wDQYDVQQDDAZvbGQgQ0EwIBcNMjYxMjA3MTIzMDEwWhgPMjEyNjExMTMxMjMw
MTBaMBgxFjAUBgNVBAMMDWEuZXhhbXBsZS5jb20wWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQ1aqkUa63bFcAYY2zYlkyRTc/b3wc6iPPfArrEHfkHmtQhd1KJfQ5L
0QO8J7wvXd+gi3++p4ABjmYYEf2DL2dwo1wwWjAYBgNVHREEETAPgg1hLmV4YW1w
bGUuY29tMB0GA1UdDgQWBBR1eABgt24RqLXpeGXibVtu9S+hTDAfBgNVHSMEGDAW
gBSC1SnxdzC/cyMux4gdxf0qKTjUPzAJBgcqhkjOPQQBA0kAMEYCIQDpipRBRG/g
92bXNbT+m/nZcfRMQ0zzI2/tEW60dQtJHwIhAMQ/Rf0/iS28nxA0zYctrKGeCDXf
FvgUF0GQO46WMFwX
-----END CERTIFICATE-----
";
        let der = rustls::pki_types::CertificateDer::pem_slice_iter(SHA1_SIGNED.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert!(not_a_servers(&der).is_some_and(|why| why.contains("SHA-1")));
    }

    #[test]
    fn sessions_are_kept_for_the_last_few_scopes_only() {
        let resumption = Resumption::default();
        let scope = |i: u64| 0x5e55_1000 + i;
        let cache = |i: u64| resumption.sessions(scope(i)).1;
        let first = cache(0);
        assert!(
            Arc::ptr_eq(&first, &cache(0)),
            "the same scope, the same sessions"
        );
        for i in 1..=SCOPES_KEPT as u64 {
            cache(i);
        }
        assert!(
            !Arc::ptr_eq(&first, &cache(0)),
            "pushed out by as many newer"
        );
    }

    /// Taking the record layer from ring must not change which suites are offered, or in
    /// which order: the same list as aws-lc-rs's defaults, suite for suite.
    #[test]
    fn the_process_default_is_the_mixed_provider() {
        install_default_provider();
        install_default_provider();
        let installed = CryptoProvider::get_default().map(|p| p.cipher_suites.len());
        assert_eq!(installed, Some(provider().cipher_suites.len()));
        // What rustls would otherwise refuse to build without naming a provider.
        let config = ServerConfig::builder().with_no_client_auth();
        assert!(config
            .with_single_cert(
                vec![],
                rustls_pki_types::PrivateKeyDer::Pkcs8(vec![].into())
            )
            .is_err());
    }

    /// Windows editors start a UTF-8 file with a byte-order mark; the PEM is still read.
    #[test]
    fn a_pem_file_starting_with_a_byte_order_mark_is_read() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let with_bom = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, [&b"\xEF\xBB\xBF"[..], pem.as_bytes()].concat()).unwrap();
            path
        };
        let cert_path = with_bom("c.pem", cert.cert.pem());
        let key_path = with_bom("k.pem", cert.key_pair.serialize_pem());
        assert_eq!(
            read_chain(&cert_path, Chain::Served).map(|c| c.len()).ok(),
            Some(1)
        );
        assert!(read_key(&key_path, &provider()).is_ok());
        // Only at the start: the mark is not stripped from the middle of a file.
        assert_eq!(without_bom(b"a\xEF\xBB\xBF".to_vec()), b"a\xEF\xBB\xBF");
    }

    /// What rustls would take without a word and then fail every handshake on, or report in
    /// words that hide the mistake, is refused here in words that name it.
    #[test]
    fn chain_and_key_mistakes_are_named() {
        let leaf = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        fn message<T>(r: Result<T, Refused>) -> String {
            r.err().map(|e| e.message).unwrap_or_default()
        }
        // An intermediate with a line lost in a copy, and a block that is no certificate.
        let intermediate = other.cert.pem();
        let mut lines: Vec<&str> = intermediate.lines().collect();
        lines.remove(3);
        let broken = write(
            "broken.pem",
            &format!("{}{}\n", leaf.cert.pem(), lines.join("\n")),
        );
        let error = message(read_chain(&broken, Chain::Served));
        assert!(error.contains("certificate 2 of the chain in"), "{error}");
        assert!(
            error.contains("is not a valid X.509 certificate"),
            "{error}"
        );
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let junk = write("junk.pem", &format!("{}{junk}", leaf.cert.pem()));
        assert!(message(read_chain(&junk, Chain::Served)).contains("certificate 2 of the chain"));
        // Nothing, or another PEM block, is not DER to convert.
        let empty = message(read_chain(&write("empty.pem", "\n"), Chain::Served));
        assert!(empty.ends_with("the file is empty"), "{empty}");
        let csr = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        let csr = message(read_chain(&write("csr.pem", csr), Chain::Trusted));
        assert!(
            csr.ends_with("a PEM \"CERTIFICATE REQUEST\" block instead"),
            "{csr}"
        );
        let public = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        let public = message(read_key(&write("pub.pem", public), &provider()));
        assert!(
            public.ends_with("no private key in it: it holds a PEM \"PUBLIC KEY\" block instead"),
            "{public}"
        );
        let der = message(read_chain(&write("der.crt", "0\u{82}\u{1}"), Chain::Served));
        assert!(der.contains("convert DER"), "{der}");
        // The key where the certificate belongs.
        let swapped = write("swapped.pem", &leaf.key_pair.serialize_pem());
        let error = message(read_chain(&swapped, Chain::Served));
        assert!(error.contains("are `cert` and `key` swapped?"), "{error}");
        // An old-style encrypted key, which fails as bad base64 when parsed.
        let old_style = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                         DEK-Info: AES-256-CBC,0123456789ABCDEF0123456789ABCDEF\n\nAAAA\n\
                         -----END RSA PRIVATE KEY-----\n";
        let old_style = write("enc.pem", old_style);
        let error = message(read_key(&old_style, &provider()));
        assert!(error.contains("the key is encrypted"), "{error}");
        // Two keys in one file: which one is meant is not wsgate's guess.
        let two = format!(
            "{}{}",
            leaf.key_pair.serialize_pem(),
            other.key_pair.serialize_pem()
        );
        let two = write("two.pem", &two);
        let error = message(read_key(&two, &provider()));
        assert!(error.contains("holds 2 private keys"), "{error}");
    }

    /// A leaf with its issuer's certificate behind it, and the leaf's key, in PEM.
    fn chain_and_key() -> &'static (String, String) {
        static PEMS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
        PEMS.get_or_init(|| {
            let leaf = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
            let chain = format!("{}{}", leaf.cert.pem(), other.cert.pem());
            (chain, leaf.key_pair.serialize_pem())
        })
    }

    /// `text` with each edit applied: at a place (a fraction of the text), a byte replaced
    /// by one of base64's or PEM's own (or any), or a few bytes cut.
    fn damaged(text: &str, edits: &[(f64, u8, bool)]) -> Vec<u8> {
        let mut bytes = text.as_bytes().to_vec();
        for &(at, byte, cut) in edits {
            let i = ((bytes.len() as f64 * at) as usize).min(bytes.len().saturating_sub(1));
            match cut {
                true => drop(bytes.drain(i..(i + usize::from(byte % 8)).min(bytes.len()))),
                false if i < bytes.len() => bytes[i] = byte,
                false => bytes.push(byte),
            }
        }
        bytes
    }

    fn edits() -> impl proptest::strategy::Strategy<Value = Vec<(f64, u8, bool)>> {
        let byte = proptest::prop_oneof![
            4 => proptest::sample::select(b"AQgw/+=-\n".to_vec()),
            1 => proptest::num::u8::ANY,
        ];
        proptest::collection::vec((0.0..1.0f64, byte, proptest::bool::ANY), 0..4)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// However a certificate file or key file is damaged (a byte changed in a copy, lines
        /// lost), loading the pair panics on nothing, and a refusal names the file it is about.
        #[test]
        fn a_damaged_chain_or_key_is_refused_in_words_never_a_panic(
            chain_edits in edits(),
            key_edits in edits(),
        ) {
            let (chain, key) = chain_and_key();
            let dir = tempfile::tempdir().unwrap();
            let at = |name: &str| dir.path().join(name);
            std::fs::write(at("c.pem"), damaged(chain, &chain_edits)).unwrap();
            std::fs::write(at("k.pem"), damaged(key, &key_edits)).unwrap();
            let location = crate::config::Location {
                line: 1,
                column: 1,
                key: "tls.certificates[0]".into(),
            };
            let paths = CertificatePaths {
                cert: at("c.pem"),
                key: at("k.pem"),
                location: location.clone(),
                cert_location: location.clone(),
                key_location: location,
            };
            match load_certified_key(&paths, Chain::Served, &provider()) {
                Ok(certified) => {
                    let _ = chain_problem(&certified.cert, Chain::Served);
                }
                // A refusal names the file damaged, when only one was (a mismatch names both).
                Err(refused) => {
                    let said = &refused.message;
                    let (chain_named, key_named) = (said.contains("c.pem"), said.contains("k.pem"));
                    proptest::prop_assert!(chain_named || key_named, "{}", said);
                    proptest::prop_assert!(!key_edits.is_empty() || chain_named, "{}", said);
                    proptest::prop_assert!(!chain_edits.is_empty() || key_named, "{}", said);
                }
            }
        }
    }

    /// A chain out of order, or with its root, is served with a warning that says so.
    #[test]
    fn a_chain_out_of_order_or_with_its_root_is_warned_about() {
        let ca = |name: &str| {
            let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            (params, rcgen::KeyPair::generate().unwrap())
        };
        let (root_params, root_key) = ca("root");
        let root = root_params.self_signed(&root_key).unwrap();
        let (int_params, int_key) = ca("intermediate");
        let int = int_params.signed_by(&int_key, &root, &root_key).unwrap();
        let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &int, &int_key).unwrap();
        let der = |c: &rcgen::Certificate| c.der().clone();
        assert_eq!(chain_problem(&[der(&leaf), der(&int)], Chain::Served), None);
        assert_eq!(chain_problem(&[der(&leaf)], Chain::Served), None);
        let with_root = chain_problem(&[der(&leaf), der(&int), der(&root)], Chain::Served);
        assert!(with_root.is_some_and(|w| w.contains("ends with its root")));
        let shuffled = chain_problem(&[der(&leaf), der(&root), der(&int)], Chain::Served);
        assert!(shuffled.is_some_and(|w| w.contains("out of order")));
        // Certificates no part of the leaf's path: another chain's intermediate, a
        // duplicate, beside a path that builds (the root left out, as it should be).
        let (other_params, other_key) = ca("another intermediate");
        let other = other_params
            .signed_by(&other_key, &root, &root_key)
            .unwrap();
        let root_alone = [der(&leaf), der(&root)];
        for (chain, stray) in [
            (&[der(&leaf), der(&int), der(&other)][..], "certificate 3"),
            (&[der(&leaf), der(&int), der(&int)], "certificate 3"),
            (&[der(&leaf), der(&other)], "certificate 2"),
            // The root, not the leaf's issuer: its intermediate is missing.
            (&root_alone, "certificate 2"),
        ] {
            let said = chain_problem(chain, Chain::Served);
            let stray_said = |w: &String| w.contains(stray) && w.contains("no part of the path");
            assert!(said.as_ref().is_some_and(stray_said), "{said:?}");
            // Nothing signed the leaf: that issuer is named, and no stray is to be left out.
            let missing =
                |w: &String| w.contains("issuer (\"CN=intermediate\") is not in the file");
            let leaf_alone = chain.len() == 2 && chain[1] != der(&int);
            assert_eq!(said.as_ref().is_some_and(missing), leaf_alone, "{said:?}");
            assert_eq!(
                said.as_ref().is_some_and(|w| w.contains("leave it out")),
                !leaf_alone
            );
        }
        let shuffled = chain_problem(&[der(&leaf), der(&root), der(&int)], Chain::Served);
        assert!(shuffled.is_some_and(|w| w.contains("out of order")));
        // A client certificate's chain, in a backend's words.
        let with_root = chain_problem(&[der(&leaf), der(&int), der(&root)], Chain::Client);
        assert!(with_root.is_some_and(|w| w.contains("backends have their roots already")));
    }

    #[test]
    fn the_mixed_provider_offers_the_default_suites() {
        let ids = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        let default = rustls::crypto::aws_lc_rs::default_provider();
        assert_eq!(ids(&provider()), ids(&default));
        assert!(!ids(&default).is_empty());
        let kx = |p: &CryptoProvider| p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>();
        assert_eq!(
            kx(&provider()),
            kx(&default),
            "key exchange stays aws-lc-rs's"
        );
    }
}
