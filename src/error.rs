//! Why a request was refused, which side caused it, and what the client is told: the one
//! place that decides each refusal's status, body and headers (`proxy` builds the response
//! from them); and why a connection ended before any answer at all.
//!
//! Every refusal in the request path is a [`ProxyError`]. [`ProxyError::status`] is an exhaustive
//! `match` with no `_` arm, so a new variant cannot slip out as a 500 by accident. Bodies are
//! short fixed text: never a backend address or an error chain.
//!
//! Connections that end before a request are [`Unanswered`], whose status and body (the 400
//! for plain HTTP at the TLS port) are decided here too. Two statuses are decided elsewhere,
//! on purpose: the admin endpoint's own answers (`admin`: its plain-HTTP port serves probes
//! and metrics, not the request path), and the access log's 499 for a client that left before
//! its answer (a status logged and counted, never sent).

use std::io;

use hyper::header::{
    HeaderName, HeaderValue, CONNECTION, RETRY_AFTER, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::StatusCode;

use crate::metrics::EarlyClose;
use crate::proxy_protocol::HeaderError;

/// Who is to blame for a refusal; decides the log level of its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
    Internal,
}

/// What is wrong with a request's `Host`: said in the log line, so an operator can tell a
/// client that left it out from one whose target names another host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostFault {
    #[error("missing")]
    Missing,
    #[error("repeated")]
    Repeated,
    #[error("malformed (not one host name or IP literal, with or without a port)")]
    Malformed,
    #[error("not the host the request target names")]
    NotTarget,
}

/// Every way the request path can end without a tunnel.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("not a websocket upgrade")]
    NotUpgrade,
    #[error("method is not GET")]
    MethodNotGet,
    #[error("HTTP version older than 1.1")]
    HttpTooOld,
    /// A request line naming HTTP/2 or later: a client speaking HTTP/2 without ALPN.
    #[error(
        "HTTP version 2 or later in an HTTP/1 request line (an HTTP/2 client that skipped ALPN?)"
    )]
    HttpVersionNotSupported,
    #[error("Connection header has no upgrade token")]
    NoConnectionUpgrade,
    #[error("Sec-WebSocket-Key missing or not base64 of 16 bytes")]
    BadKey,
    #[error("Sec-WebSocket-Version is not 13")]
    UnsupportedVersion,
    /// Version 13 said more than once (two lines, or a list): a 426 naming 13 would tell
    /// the client to send what it sent.
    #[error("Sec-WebSocket-Version repeated")]
    RepeatedVersion,
    #[error("Host header {0}")]
    BadHost(HostFault),
    #[error("malformed request head")]
    MalformedRequest,
    /// A target backends may read in more ways than one: see `head::check`.
    #[error("request target with bytes outside ASCII, or a path with a broken or control-character escape or escapes that are no UTF-8")]
    BadPath,
    /// A path that starts with two separators however spelled (`//x`, `/%2Fx`): see
    /// `head::check`.
    #[error("path starts with two separators (URL parsers read what follows as a host)")]
    PathReadsAsHost,
    /// A request pipelined behind the connection's first: one request per connection.
    #[error("a second request on the connection")]
    SecondRequest,
    #[error("upgrade request carries a body")]
    UnexpectedBody,
    /// A request target longer than the HTTP library takes (64 KiB).
    #[error("request target too long")]
    UriTooLong,
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request head has more than 100 header fields")]
    TooManyFields,
    /// A header name of 64 KiB or more, which the HTTP library refuses (only possible with
    /// `max_request_header_bytes` raised past it).
    #[error("a header field name of 64 KiB or more")]
    FieldNameTooLong,
    /// The refused `Origin`, as `websocket::origin_in_words` shows it: in the log
    /// line, so an operator sees what to add to the list; never in the answer's body.
    #[error("origin not allowed: {0}")]
    OriginDenied(String),
    /// A route with `require_client_certificate`, and a client that showed none (or a
    /// `client_auth = "required"` reloaded in since its handshake).
    #[error("client certificate required")]
    ClientCertificateRequired,
    /// The client's certificate, checked at its handshake, is not taken by the `client_ca`
    /// reloaded in since (its words say why).
    #[error("client certificate not accepted: {0}")]
    ClientCertificateRefused(String),
    #[error("no offered subprotocol is allowed")]
    NoSubprotocol,
    /// An offer browsers could not have sent (RFC 6455 §4.1: distinct tokens), which a
    /// backend might read in a way of its own.
    #[error("Sec-WebSocket-Protocol is not a list of distinct tokens")]
    BadProtocolOffer,
    #[error("connection limit reached")]
    Overloaded,
    #[error("per-client connection limit reached")]
    ClientOverLimit,
    /// A request that arrived after shutdown began: a tunnel would be cut at the grace's end.
    #[error("shutting down")]
    ShuttingDown,
    /// No backend could be connected to: the last one's connect error, in the OS's words
    /// (refused, no route, name not resolved).
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),
    #[error("backend timed out")]
    BackendTimeout,
    /// Out of time before the backend's name was looked up: the resolver's stall, said so
    /// that an operator checks DNS, not the backend.
    #[error("backend timed out: its name lookup did not answer (check the DNS resolver)")]
    BackendLookupTimeout,
    #[error("backend sent an invalid upgrade response: {0}")]
    BadBackendUpgrade(&'static str),
    /// A backend connection that failed after the connect: the words say how (see
    /// `ProxyError::backend_failed`).
    #[error("{0}")]
    BackendFailed(String),
    /// The TLS handshake with a backend of a route with `backend_tls` failed (its
    /// certificate not trusted, or not for the name; a backend not speaking TLS; the backend
    /// refusing wsgate's client certificate, or its absence, which over TLS 1.3 it says only
    /// once the handshake is over on wsgate's side).
    #[error("backend TLS handshake failed: {0}")]
    BackendTls(String),
    /// A non-101 answer that cannot be passed on as it is.
    #[error("backend answer cannot be relayed: {0}")]
    BadBackendAnswer(String),
    /// wsgate's own open-files limit reached while connecting to a backend: no backend's
    /// fault, and no other backend would fare better.
    #[error(
        "cannot open a backend connection: wsgate has reached its open-files limit (ulimit -n)"
    )]
    OutOfDescriptors,
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// The rustls error an I/O error of a TLS stream carries, if TLS failed it.
pub(crate) fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The TLS error under a backend connection's failure, if TLS failed it.
fn rustls_error(e: &hyper::Error) -> Option<&rustls::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(tls) = (cause.downcast_ref::<std::io::Error>()).and_then(tls_error) {
            return Some(tls);
        }
        source = cause.source();
    }
    None
}

impl ProxyError {
    /// A backend connection's failure, in words down to its root cause: hyper's own words
    /// name only the top of it ("connection error"), not the reset that caused it.
    pub(crate) fn backend_failed(e: &hyper::Error) -> ProxyError {
        // hyper says the same for a head over its size and one over its count of fields.
        if e.is_parse_too_large() {
            return ProxyError::BackendFailed(
                "backend sent a malformed answer: head too large (over 64 KiB or 100 header fields)"
                    .to_string(),
            );
        }
        // Not the connection's failure: what came over it was no HTTP answer.
        if e.is_parse() || e.is_parse_status() {
            return ProxyError::BackendFailed(format!("backend sent a malformed answer: {e}"));
        }
        if e.is_incomplete_message() {
            return ProxyError::BackendFailed(
                "backend closed the connection before completing its answer".to_string(),
            );
        }
        // Cut before a head was complete, which is at most 64 KiB: interim answers, endless.
        if crate::upstream::past_answer_most(e) {
            return ProxyError::BackendFailed(
                "backend sent a malformed answer: over 16 MiB of interim (1xx) answers and no final one"
                    .to_string(),
            );
        }
        let mut source = std::error::Error::source(e);
        // Over a socket's failure hyper's words are only "connection error": the OS's say it.
        let mut text = match source {
            Some(io) if io.is::<std::io::Error>() => {
                source = io.source();
                io.to_string()
            }
            _ => e.to_string(),
        };
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        ProxyError::BackendFailed(format!("backend connection failed: {text}"))
    }

    /// A backend connection that failed before a byte of answer came: a clean close is the
    /// backend closing without answering (not an answer cut short).
    pub(crate) fn backend_gone(e: &hyper::Error) -> ProxyError {
        // A TLS backend refusing the session after the handshake as the client saw it: over
        // TLS 1.3 a server checks a client certificate (or its absence) only then, and says
        // so with an alert. A TLS failure, not a close.
        if let Some(tls) = rustls_error(e) {
            return ProxyError::BackendTls(tls.to_string());
        }
        if e.is_incomplete_message() {
            return ProxyError::BackendFailed(
                "backend closed the connection without answering".to_string(),
            );
        }
        ProxyError::backend_failed(e)
    }

    /// The status a client sees, and the side the refusal is blamed on.
    pub fn status(&self) -> (StatusCode, Side) {
        use ProxyError::*;
        match self {
            NoRoute => (StatusCode::NOT_FOUND, Side::Client),
            NotUpgrade | UnsupportedVersion => (StatusCode::UPGRADE_REQUIRED, Side::Client),
            MethodNotGet | HttpTooOld | NoConnectionUpgrade | BadKey | RepeatedVersion
            | BadHost(_) | MalformedRequest | BadPath | PathReadsAsHost | SecondRequest
            | UnexpectedBody | NoSubprotocol | BadProtocolOffer => {
                (StatusCode::BAD_REQUEST, Side::Client)
            }
            HeadTooLarge | TooManyFields | FieldNameTooLong => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Side::Client)
            }
            UriTooLong => (StatusCode::URI_TOO_LONG, Side::Client),
            HttpVersionNotSupported => (StatusCode::HTTP_VERSION_NOT_SUPPORTED, Side::Client),
            OriginDenied(_) | ClientCertificateRequired | ClientCertificateRefused(_) => {
                (StatusCode::FORBIDDEN, Side::Client)
            }
            // Load, not a fault: logged like a client refusal so overload does not flood error logs.
            Overloaded | ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, Side::Client),
            ClientOverLimit => (StatusCode::TOO_MANY_REQUESTS, Side::Client),
            BackendUnavailable(_)
            | BadBackendUpgrade(_)
            | BackendFailed(_)
            | BackendTls(_)
            | BadBackendAnswer(_) => (StatusCode::BAD_GATEWAY, Side::Backend),
            BackendTimeout | BackendLookupTimeout => (StatusCode::GATEWAY_TIMEOUT, Side::Backend),
            // Another replica may have descriptors to spare: 503 with Retry-After, not 502.
            OutOfDescriptors => (StatusCode::SERVICE_UNAVAILABLE, Side::Internal),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, Side::Internal),
        }
    }

    /// The fixed plain-text body. Backend details stay in the log, never in the body.
    pub fn body(&self) -> &'static str {
        use ProxyError::*;
        match self {
            NoRoute => "no route\n",
            NotUpgrade => "websocket upgrade required\n",
            MethodNotGet => "websocket upgrade must use GET\n",
            HttpTooOld => "websocket upgrade needs HTTP/1.1\n",
            HttpVersionNotSupported => "HTTP version not supported: this server speaks HTTP/1.1\n",
            NoConnectionUpgrade => "Connection header must contain upgrade\n",
            BadKey => "invalid Sec-WebSocket-Key\n",
            UnsupportedVersion => "unsupported Sec-WebSocket-Version\n",
            RepeatedVersion => "invalid Sec-WebSocket-Version\n",
            BadHost(_) => "invalid Host header, or not the host the request target names\n",
            MalformedRequest => "malformed request\n",
            BadPath | PathReadsAsHost => "malformed request path\n",
            SecondRequest => "one request per connection\n",
            UnexpectedBody => "upgrade request must not have a body\n",
            HeadTooLarge | TooManyFields | FieldNameTooLong => "request header fields too large\n",
            UriTooLong => "request target too long\n",
            OriginDenied(_) => "origin not allowed\n",
            ClientCertificateRequired => "client certificate required\n",
            ClientCertificateRefused(_) => "client certificate not accepted\n",
            NoSubprotocol => "no acceptable subprotocol\n",
            BadProtocolOffer => "invalid Sec-WebSocket-Protocol\n",
            Overloaded | OutOfDescriptors => "server busy, retry later\n",
            ClientOverLimit => "too many connections from your address\n",
            ShuttingDown => "server shutting down, retry\n",
            BackendUnavailable(_) => "backend unavailable\n",
            BackendTimeout | BackendLookupTimeout => "backend timeout\n",
            BadBackendUpgrade(_) => "backend sent an invalid upgrade response\n",
            BackendFailed(_) | BackendTls(_) | BadBackendAnswer(_) => "backend error\n",
            Internal(_) => "internal error\n",
        }
    }

    /// Headers a client needs to act on the refusal (RFC 6455 §4.2.2, RFC 9110 §15.5.22).
    /// Constants, so a bad name or value fails the build rather than the serving path.
    pub fn extra_headers(&self) -> &'static [(HeaderName, HeaderValue)] {
        use ProxyError::*;
        // Every variant named: a new load refusal must not go out without its Retry-After.
        match self {
            // A 426 names the protocol to upgrade to (RFC 9110 §15.5.22); the connection is
            // closed after it all the same (see `proxy::FixedBody`).
            NotUpgrade => &UPGRADE_TO_WEBSOCKET,
            UnsupportedVersion => &UPGRADE_TO_VERSION_13,
            Overloaded | ClientOverLimit | ShuttingDown | OutOfDescriptors => &RETRY_SOON,
            NoRoute
            | MethodNotGet
            | HttpTooOld
            | HttpVersionNotSupported
            | NoConnectionUpgrade
            | BadKey
            | RepeatedVersion
            | BadHost(_)
            | MalformedRequest
            | BadPath
            | PathReadsAsHost
            | SecondRequest
            | UnexpectedBody
            | HeadTooLarge
            | TooManyFields
            | FieldNameTooLong
            | UriTooLong
            | OriginDenied(_)
            | ClientCertificateRequired
            | ClientCertificateRefused(_)
            | NoSubprotocol
            | BadProtocolOffer
            | BackendUnavailable(_)
            | BackendTimeout
            | BackendLookupTimeout
            | BadBackendUpgrade(_)
            | BackendFailed(_)
            | BackendTls(_)
            | BadBackendAnswer(_)
            | Internal(_) => &[],
        }
    }
}

// Statics, not consts: a header holds `Bytes`, which has a destructor, so a reference to a
// const of it would not be promoted to `'static`.
// A 426's `Connection` is `Upgrade`, as the contract spells it, without the `close` every other
// refusal says (RFC 9112 §9.6): hyper writes a second value on the same line (`Upgrade,
// close`), which a client comparing the field with `Upgrade` would refuse, while one that
// reuses the connection only finds it closed, as it may find any connection.
static UPGRADE_TO_WEBSOCKET: [(HeaderName, HeaderValue); 2] = [
    (UPGRADE, HeaderValue::from_static("websocket")),
    (CONNECTION, HeaderValue::from_static("Upgrade")),
];
static UPGRADE_TO_VERSION_13: [(HeaderName, HeaderValue); 3] = [
    (SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13")),
    (UPGRADE, HeaderValue::from_static("websocket")),
    (CONNECTION, HeaderValue::from_static("Upgrade")),
];
static RETRY_SOON: [(HeaderName, HeaderValue); 1] = [(RETRY_AFTER, HeaderValue::from_static("1"))];

/// Why a connection ended before any request on it was served: the reason its line gives, its
/// status (0: no answer, but for the two answered without a request: see [`Self::status`])
/// and its `wsgate_connections_closed_early_total` label, in one place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unanswered {
    #[error("{0}")]
    BadProxyHeader(HeaderError),
    #[error("handshake timeout (PROXY header)")]
    ProxyHeaderLate,
    /// A TCP connect and close (a load balancer's health check), or a client dropping out.
    #[error("closed during the TLS handshake: {}", gone_words(.0))]
    GoneDuringTls(io::Error),
    #[error("TLS handshake failed: {}", tls_words(.0))]
    TlsFailed(io::Error),
    /// A `ws://` or `http://` client at the TLS port; it was answered 400 in plain HTTP.
    #[error("not TLS: a plain HTTP request on the TLS port; told to use wss://")]
    PlainHttp,
    /// A load balancer sends the PROXY protocol; wsgate was not told to expect it.
    #[error("not TLS: a PROXY protocol header, but proxy_protocol is off (turn it on, or off at the load balancer)")]
    UnexpectedProxyHeader,
    /// A PROXY header behind the one `proxy_protocol` took: two proxies in front each add one.
    #[error("not TLS: a second PROXY protocol header (two proxies in front each send one: turn it off on the inner one)")]
    SecondProxyHeader,
    #[error("closed before sending a request")]
    NoRequest,
    #[error("closed in the middle of the request head")]
    ClosedMidHead,
    #[error("closed before completing a request: {}", words(.0))]
    GoneMidHead(io::Error),
    #[error("reading the request failed: {}", words(.0))]
    ReadFailed(io::Error),
    /// `timeouts.handshake` ran out during the named step.
    #[error("handshake timeout ({0})")]
    Late(&'static str),
    #[error("shutdown during {0}")]
    ShutdownDuring(&'static str),
    #[error("request head too large (431)")]
    HeadTooLarge,
    #[error("bad request: {0}")]
    BadRequest(hyper::Error),
    #[error("answer not delivered in time; connection dropped")]
    AnswerLate,
    #[error("shutdown before a request was answered")]
    Shutdown,
}

/// An I/O error's message without the documentation link rustls appends to some ("peer
/// closed connection without sending TLS close_notify: `https://docs.rs/…`"): a log line says
/// what happened, not where to read about it.
fn words(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.split_once(": https://") {
        Some((words, _)) => words.to_string(),
        None => text,
    };
    match text.char_indices().nth(MOST_WORDS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The most characters of an error's words in a log line: rustls's may carry what a client
/// sent (every purpose its certificate's extended key usage lists, tens of thousands for a
/// certificate built for it), and a client must not choose how long a line is.
const MOST_WORDS: usize = 512;

/// A client gone, in words: an end of file is said one way, whichever step of the handshake
/// met it (the handshake says "tls handshake eof" past the hello's first bytes, the hello's
/// read "unexpected end of file"), so log searches find them all.
fn gone_words(e: &io::Error) -> String {
    match (e.kind(), leaving_alert(e)) {
        (_, Some(rustls::AlertDescription::CloseNotify)) => "the client sent close_notify".into(),
        (_, Some(_)) => "the client sent user_canceled".into(),
        (io::ErrorKind::UnexpectedEof, None) => {
            io::Error::from(io::ErrorKind::UnexpectedEof).to_string()
        }
        _ => words(e),
    }
}

/// The alert of a client that ended its handshake by choice: `close_notify` (a scanner or a
/// client closing before it is done) or `user_canceled`. rustls reports either (over TLS 1.3,
/// or sent at the fatal level; over TLS 1.2 it ignores a warning one) as "received fatal
/// alert", though neither says anything is wrong with the TLS. (rustls reports an alert of
/// a level that does not exist alike, by its description: rare, and taken alike.)
pub(crate) fn leaving_alert(e: &io::Error) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription::{CloseNotify, UserCanceled};
    match tls_error(e)? {
        rustls::Error::AlertReceived(alert @ (CloseNotify | UserCanceled)) => Some(*alert),
        _ => None,
    }
}

/// rustls's "InvalidContentType" on a connection that opened with a TLS handshake record:
/// the client spoke TLS, then sent a record of no TLS type (or a hello field of a type that
/// does not exist, which rustls reports alike). On a connection's first record it means the
/// bytes were never TLS, and is said so.
#[derive(Debug, thiserror::Error)]
#[error("malformed TLS after a TLS start: a content type TLS does not have, in a record after the hello or in the hello itself (a garbled stream)")]
pub(crate) struct NoTlsRecordAfterHello;

/// A failed TLS handshake in words: rustls names a client it shares nothing with only by the
/// missing piece (`SignatureAlgorithmsExtensionRequired` for a TLS 1.0 client), which does not
/// say "too old" to an operator.
fn tls_words(e: &io::Error) -> String {
    match tls_error(e) {
        Some(rustls::Error::PeerIncompatible(why)) => {
            // What each piece missing most often means, where rustls's name does not say it.
            let likely = match why {
                rustls::PeerIncompatible::SignatureAlgorithmsExtensionRequired => {
                    " (a TLS 1.1 or older client: wsgate speaks TLS 1.2 and 1.3)"
                }
                rustls::PeerIncompatible::NoKxGroupsInCommon => {
                    " (or a client offering only RSA key exchange suites, which wsgate does not serve)"
                }
                _ => "",
            };
            format!(
                "client incompatible (an old TLS version, or no cipher suite, group or signature \
                 scheme in common): {why:?}{likely}"
            )
        }
        // rustls: "peer doesn't support any known protocol", which does not say which.
        Some(rustls::Error::NoApplicationProtocol) => {
            "client's ALPN offers no protocol wsgate speaks (http/1.1 or http/1.0, in lower \
             case), as an HTTP/2-only client's (h2 alone) does"
                .to_string()
        }
        // rustls: "received corrupt message of type InvalidContentType" (plain HTTP is told
        // apart before rustls sees it: `tls::read_hello`).
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            "not TLS: the client sent bytes that are no TLS record (or an SSLv2-format hello, \
             from a client too old for any TLS wsgate speaks)"
                .to_string()
        }
        // rustls: "received corrupt message of type HandshakePayloadTooLarge", which reads as
        // if the client sent much; it declared much, usually garbage read as a length.
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::HandshakePayloadTooLarge)) => {
            "malformed handshake: a handshake message declaring 64 KiB or more (garbage read \
             as its length?)"
                .to_string()
        }
        // rustls words the checks of rustls-webpki it has no name for by their debug form,
        // "Other(OtherError(CaUsedAsEndEntity))": the check's own name is enough.
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            let hint = match other.0.downcast_ref::<webpki::Error>() {
                Some(webpki::Error::CaUsedAsEndEntity) => {
                    " (the client showed a CA's certificate as its own, as a self-signed one \
                     made with CA:TRUE is)"
                }
                _ => "",
            };
            words(&io::Error::other(format!(
                "invalid peer certificate: {other}{hint}"
            )))
        }
        _ => words(e),
    }
}

/// What a plain-HTTP client at the TLS port is told, in the protocol it spoke, with
/// [`Unanswered::PlainHttp`]'s status.
pub(crate) const USE_TLS: &str = "this port speaks TLS: connect with wss:// (or https://)\n";

/// The status of [`USE_TLS`]'s answer.
pub(crate) const USE_TLS_STATUS: StatusCode = StatusCode::BAD_REQUEST;

impl Unanswered {
    /// The status its line gives: the answer's, for the two that got one without a request
    /// being read; 0, no answer, for the rest.
    pub(crate) fn status(&self) -> u16 {
        use Unanswered::*;
        match self {
            // hyper answers a head over its buffer itself.
            HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.as_u16(),
            PlainHttp => USE_TLS_STATUS.as_u16(),
            // hyper answers a head it cannot parse too, but which answer it wrote is its own:
            // `head::check` refuses, with a status of its own line, what it could tell apart.
            BadRequest(_) => 0,
            BadProxyHeader(_)
            | ProxyHeaderLate
            | GoneDuringTls(_)
            | TlsFailed(_)
            | UnexpectedProxyHeader
            | SecondProxyHeader
            | NoRequest
            | ClosedMidHead
            | GoneMidHead(_)
            | ReadFailed(_)
            | Late(_)
            | ShutdownDuring(_)
            | AnswerLate
            | Shutdown => 0,
        }
    }

    /// Its label in `wsgate_connections_closed_early_total`.
    pub(crate) fn kind(&self) -> EarlyClose {
        use Unanswered::*;
        match self {
            // A health check's connect and close is no bad header: it sent none at all.
            BadProxyHeader(HeaderError::Nothing) => EarlyClose::NoRequest,
            BadProxyHeader(_) | ProxyHeaderLate => EarlyClose::BadProxyHeader,
            // A client gone before its request was complete, however it closed.
            GoneDuringTls(_) | NoRequest | GoneMidHead(_) | ClosedMidHead => EarlyClose::NoRequest,
            TlsFailed(_)
            | ReadFailed(_)
            | PlainHttp
            | UnexpectedProxyHeader
            | SecondProxyHeader => EarlyClose::TlsFailed,
            BadRequest(_) => EarlyClose::BadRequest,
            Late(_) => EarlyClose::HandshakeTimeout,
            HeadTooLarge => EarlyClose::HeadTooLarge,
            AnswerLate => EarlyClose::AnswerLate,
            ShutdownDuring(_) | Shutdown => EarlyClose::Shutdown,
        }
    }
}

/// EMFILE or ENFILE: this process (or the system) cannot open another file or socket.
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENFILE | libc::EMFILE))
}

/// Lists refusals with their documented statuses, and makes the build fail unless every
/// variant is among them: the list and a `match` with no `_` arm come from the same words.
#[cfg(test)]
macro_rules! listing_every {
    ($($variant:ident $(($arg:expr))? => $code:literal,)*) => {{
        let _every_variant_listed = |err: &ProxyError| match err {
            $(ProxyError::$variant { .. } => {})*
        };
        vec![$((ProxyError::$variant $(($arg))?, $code),)*]
    }};
}

/// Every refusal, with its documented status: for tests here and where answers are built.
#[cfg(test)]
pub(crate) fn every_refusal() -> Vec<(ProxyError, u16)> {
    listing_every! {
        NoRoute => 404,
        NotUpgrade => 426,
        UnsupportedVersion => 426,
        MethodNotGet => 400,
        HttpTooOld => 400,
        HttpVersionNotSupported => 505,
        NoConnectionUpgrade => 400,
        BadKey => 400,
        RepeatedVersion => 400,
        BadHost(HostFault::Missing) => 400,
        UnexpectedBody => 400,
        MalformedRequest => 400,
        BadPath => 400,
        PathReadsAsHost => 400,
        SecondRequest => 400,
        NoSubprotocol => 400,
        BadProtocolOffer => 400,
        OriginDenied("x".into()) => 403,
        ClientCertificateRequired => 403,
        ClientCertificateRefused("x".into()) => 403,
        HeadTooLarge => 431,
        TooManyFields => 431,
        FieldNameTooLong => 431,
        UriTooLong => 414,
        Overloaded => 503,
        ShuttingDown => 503,
        ClientOverLimit => 429,
        BackendUnavailable("x".into()) => 502,
        BadBackendUpgrade("x") => 502,
        BadBackendAnswer("x".into()) => 502,
        BackendFailed("x".into()) => 502,
        BackendTls("x".into()) => 502,
        BackendTimeout => 504,
        BackendLookupTimeout => 504,
        OutOfDescriptors => 503,
        Internal("x") => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client cannot make a line as long as it likes through the error's words (rustls
    /// lists every purpose of a certificate's extended key usage).
    #[test]
    fn an_errors_words_are_cut_to_a_bound() {
        let listed = format!("allows {}", "1, 3, 6, 1, ".repeat(5000));
        let said = words(&io::Error::other(listed));
        assert_eq!(said.chars().count(), MOST_WORDS + 1);
        assert!(
            said.starts_with("allows 1, 3") && said.ends_with('…'),
            "{said}"
        );
        assert_eq!(words(&io::Error::other("short")), "short");
    }

    #[test]
    fn refusals_map_to_the_documented_statuses() {
        for (err, code) in every_refusal() {
            assert_eq!(err.status().0.as_u16(), code, "{err}");
            // Load refusals say when to come back; the others do not invite a retry.
            let retry = err
                .extra_headers()
                .iter()
                .any(|(name, _)| *name == RETRY_AFTER);
            assert_eq!(retry, matches!(code, 503 | 429), "{err}");
        }
    }

    #[test]
    fn unanswered_connections_are_labelled_and_worded_in_one_place() {
        let gone = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let cases = [
            (
                Unanswered::ProxyHeaderLate,
                EarlyClose::BadProxyHeader,
                "handshake timeout (PROXY header)",
            ),
            (
                Unanswered::Late("TLS"),
                EarlyClose::HandshakeTimeout,
                "handshake timeout (TLS)",
            ),
            (
                Unanswered::GoneDuringTls(gone()),
                EarlyClose::NoRequest,
                "closed during the TLS handshake: unexpected end of file",
            ),
            (
                Unanswered::GoneDuringTls(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                )),
                EarlyClose::NoRequest,
                "closed during the TLS handshake: unexpected end of file",
            ),
            (
                Unanswered::ReadFailed(gone()),
                EarlyClose::TlsFailed,
                "reading the request failed: unexpected end of file",
            ),
            (
                Unanswered::GoneMidHead(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify: \
                     https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
                )),
                EarlyClose::NoRequest,
                "closed before completing a request: peer closed connection without sending TLS close_notify",
            ),
            (
                Unanswered::ClosedMidHead,
                EarlyClose::NoRequest,
                "closed in the middle of the request head",
            ),
            (
                Unanswered::ShutdownDuring("request head"),
                EarlyClose::Shutdown,
                "shutdown during request head",
            ),
        ];
        for (why, kind, text) in cases {
            assert_eq!(why.kind(), kind, "{why}");
            assert_eq!(why.to_string(), text);
        }
    }

    #[test]
    fn a_client_too_old_for_tls_is_said_to_be_incompatible() {
        let why = rustls::PeerIncompatible::SignatureAlgorithmsExtensionRequired;
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::PeerIncompatible(why),
        );
        assert_eq!(
            Unanswered::TlsFailed(e).to_string(),
            "TLS handshake failed: client incompatible (an old TLS version, or no cipher suite, \
             group or signature scheme in common): SignatureAlgorithmsExtensionRequired (a TLS \
             1.1 or older client: wsgate speaks TLS 1.2 and 1.3)"
        );
        let tls_failed = |e: rustls::Error| {
            Unanswered::TlsFailed(io::Error::new(io::ErrorKind::InvalidData, e)).to_string()
        };
        assert_eq!(
            tls_failed(rustls::Error::NoApplicationProtocol),
            "TLS handshake failed: client's ALPN offers no protocol wsgate speaks (http/1.1 or \
             http/1.0, in lower case), as an HTTP/2-only client's (h2 alone) does"
        );
        let not_tls = rustls::InvalidMessage::InvalidContentType;
        assert_eq!(
            tls_failed(rustls::Error::InvalidMessage(not_tls)),
            "TLS handshake failed: not TLS: the client sent bytes that are no TLS record (or an \
             SSLv2-format hello, from a client too old for any TLS wsgate speaks)"
        );
        let huge = rustls::InvalidMessage::HandshakePayloadTooLarge;
        assert_eq!(
            tls_failed(rustls::Error::InvalidMessage(huge)),
            "TLS handshake failed: malformed handshake: a handshake message declaring 64 KiB or \
             more (garbage read as its length?)"
        );
        let other = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(
            Unanswered::TlsFailed(other).to_string(),
            "TLS handshake failed: cannot decrypt peer's message"
        );
    }

    /// A client ending its own handshake is a client gone (counted as no request), in words
    /// that do not call its alert fatal; a client certificate check rustls has no name for is
    /// said by the check's.
    #[test]
    fn alerts_and_certificate_checks_are_said_in_plain_words() {
        let alert = |a| io::Error::new(io::ErrorKind::InvalidData, rustls::Error::AlertReceived(a));
        let left = Unanswered::GoneDuringTls(alert(rustls::AlertDescription::CloseNotify));
        assert_eq!(left.kind(), EarlyClose::NoRequest);
        assert_eq!(
            left.to_string(),
            "closed during the TLS handshake: the client sent close_notify"
        );
        assert!(leaving_alert(&alert(rustls::AlertDescription::UserCanceled)).is_some());
        assert!(leaving_alert(&alert(rustls::AlertDescription::BadCertificate)).is_none());
        let ca = rustls::OtherError(std::sync::Arc::new(webpki::Error::CaUsedAsEndEntity));
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(ca));
        let said = Unanswered::TlsFailed(io::Error::new(io::ErrorKind::InvalidData, refused));
        assert_eq!(
            said.to_string(),
            "TLS handshake failed: invalid peer certificate: CaUsedAsEndEntity (the client \
             showed a CA's certificate as its own, as a self-signed one made with CA:TRUE is)"
        );
    }

    #[test]
    fn bodies_never_name_the_backend() {
        let err =
            ProxyError::BackendFailed("backend connection failed: 10.0.0.7:9001 reset".into());
        assert!(!err.body().contains("10.0.0.7"));
    }

    #[test]
    fn a_client_gone_before_a_complete_request_is_no_request_however_it_went() {
        let reset = || io::Error::from(io::ErrorKind::ConnectionReset);
        for gone in [
            Unanswered::ClosedMidHead,
            Unanswered::GoneMidHead(reset()),
            Unanswered::GoneDuringTls(reset()),
            Unanswered::BadProxyHeader(HeaderError::Nothing),
        ] {
            assert_eq!(gone.kind(), EarlyClose::NoRequest, "{gone}");
        }
        let cut = Unanswered::BadProxyHeader(HeaderError::Closed);
        assert_eq!(cut.kind(), EarlyClose::BadProxyHeader);
    }

    #[test]
    fn only_the_processs_own_descriptor_limits_are_out_of_descriptors() {
        let os = std::io::Error::from_raw_os_error;
        assert!(out_of_descriptors(&os(libc::EMFILE)) && out_of_descriptors(&os(libc::ENFILE)));
        assert!(!out_of_descriptors(&os(libc::ECONNREFUSED)));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!out_of_descriptors(&refused));
    }
}
