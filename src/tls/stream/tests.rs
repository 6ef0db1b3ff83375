//! The TLS stream against a real rustls client on 127.0.0.1, and against what no client
//! should send.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::trickle::{finishes, pattern, piece_size, send_and_take, Trickle};

type Client = tokio_rustls::client::TlsStream<TcpStream>;

impl<IO, C> TlsStream<IO, C> {
    fn holds_a_buffer(&self) -> bool {
        [&self.incoming, &self.plain, &self.outgoing]
            .iter()
            .any(|held| held.buf.is_some())
    }
}

/// A server config for "localhost", and the roots a client trusts it with.
fn pki() -> (Arc<ServerConfig>, rustls::RootCertStore) {
    crate::tls::install_default_provider();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    (Arc::new(server), roots)
}

/// A server config for "localhost" and a client config trusting it.
fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
    let (server, roots) = pki();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, Arc::new(client))
}

/// A TCP connection on 127.0.0.1: the server's end and the client's.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap());
    let (client, accepted) = tokio::join!(client, listener.accept());
    (accepted.unwrap().0, client.unwrap())
}

async fn handshake() -> (TlsStream<TcpStream>, Client) {
    let (server_config, client_config) = configs();
    let (server, client) = tcp_pair().await;
    handshake_over(server, client, server_config, client_config).await
}

/// The server's handshake over `server` and a rustls client's over `client`, together.
async fn handshake_over<S, C>(
    server: S,
    client: C,
    server_config: Arc<ServerConfig>,
    client_config: Arc<rustls::ClientConfig>,
) -> (TlsStream<S>, tokio_rustls::client::TlsStream<C>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let connector = tokio_rustls::TlsConnector::from(client_config);
    let name = ServerName::try_from("localhost").unwrap();
    let (server, client) = tokio::join!(
        accept(server, Opening::new(), server_config),
        connector.connect(name, client)
    );
    (server.unwrap(), client.unwrap())
}

#[tokio::test]
async fn a_connection_holds_no_buffer_between_exchanges() {
    let (mut server, mut client) = handshake().await;
    assert!(!server.holds_a_buffer(), "after the handshake");
    for round in 0..3 {
        say(&mut client, &mut server, b"ping").await;
        say(&mut server, &mut client, b"pong").await;
        assert!(!server.holds_a_buffer(), "after exchange {round}");
    }
}

/// `from` writes `what`, and `to` reads exactly that.
async fn say(from: &mut (impl AsyncWrite + Unpin), to: &mut (impl AsyncRead + Unpin), what: &[u8]) {
    from.write_all(what).await.unwrap();
    from.flush().await.unwrap();
    let mut got = vec![0u8; what.len()];
    to.read_exact(&mut got).await.unwrap();
    assert_eq!(got, what);
}

#[tokio::test]
async fn what_exceeds_a_record_goes_out_a_record_at_a_time_both_ways() {
    let (mut server, mut client) = handshake().await;
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let n = server.write(&big).await.unwrap();
    assert_eq!(n, MAX_FRAGMENT, "one record's worth taken per write");
    let sent = big.clone();
    let echo = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client.flush().await.unwrap();
        let mut back = vec![0u8; MAX_FRAGMENT];
        client.read_exact(&mut back).await.unwrap();
        back
    });
    let mut got = vec![0u8; big.len()];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(got, big);
    server.flush().await.unwrap();
    assert_eq!(echo.await.unwrap(), big[..MAX_FRAGMENT]);
    assert!(!server.holds_a_buffer());
}

#[tokio::test]
async fn close_notify_reads_as_the_end_and_a_bare_close_as_cut_short() {
    let (mut server, mut client) = handshake().await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last words");
    // The other way still works after the client's half-close.
    server.write_all(b"reply").await.unwrap();
    server.shutdown().await.unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"reply");

    let (mut server, client) = handshake().await;
    let (mut tcp, _) = client.into_inner();
    tcp.shutdown().await.unwrap();
    let cut = server.fill_buf().await.unwrap_err();
    assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof);
    assert!(cut.to_string().contains("close_notify"), "{cut}");
}

/// A client that finishes its handshake and closes at once (a TLS health check): its
/// close_notify, arriving with its Finished, ends a handshake that succeeded; the first read
/// is the end of the stream, not a handshake cut short.
#[tokio::test]
async fn a_close_notify_right_behind_the_finished_is_an_end_after_the_handshake() {
    let (server_config, client_config) = configs();
    let (server, client) = tokio::io::duplex(1 << 16);
    let connector = tokio_rustls::TlsConnector::from(client_config);
    let name = ServerName::try_from("localhost").unwrap();
    let client = async {
        let mut client = connector.connect(name, client).await.unwrap();
        client.shutdown().await.unwrap();
        client
    };
    let (server, _client) = tokio::join!(accept(server, Opening::new(), server_config), client);
    let mut server = server.expect("a handshake that completed");
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_key_update_from_the_client_is_followed() {
    let (mut server, mut client) = handshake().await;
    client.get_mut().1.refresh_traffic_keys().unwrap();
    say(&mut client, &mut server, b"after the update").await;
    say(&mut server, &mut client, b"still here").await;
}

#[tokio::test]
async fn a_malformed_hello_fails_the_handshake_with_an_alert_to_the_client() {
    let (server_config, _) = configs();
    let (server, mut client) = tcp_pair().await;
    // A handshake record whose content is no ClientHello.
    client
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0xff, 0x00, 0x00, 0x00])
        .await
        .unwrap();
    let failed = accept(server, Opening::new(), server_config).await;
    let e = failed.err().expect("the handshake fails");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()));
    let mut alert = Vec::new();
    client.read_to_end(&mut alert).await.unwrap();
    assert_eq!(alert.first(), Some(&0x15), "an alert record: {alert:?}");
}

/// `accept` over what a client sends, in a task of its own: its error, or `None` for a
/// panic. The client's end stays open until it is over.
async fn handshake_error_on(bytes: &[u8]) -> Option<io::Error> {
    let (server_config, _) = configs();
    let (server, mut client) = tcp_pair().await;
    client.write_all(bytes).await.unwrap();
    let task = tokio::spawn(accept(server, Opening::new(), server_config));
    let ended = task.await;
    drop(client);
    ended.ok()?.err()
}

/// rustls keeps positions in the buffer it is given (of a handshake message being
/// joined): each of these once made it index past the end of an empty one.
#[tokio::test]
async fn a_broken_hello_is_refused_without_a_panic() {
    let cases: [&[u8]; 2] = [
        // A ClientHello's start (it says 100 bytes), then an alert record in between.
        &[0x16, 3, 1, 0, 5, 1, 0, 0, 100, 3, 0x15, 3, 1, 0, 2, 2, 40],
        // Two malformed handshake messages in one record.
        &[0x16, 3, 1, 0, 8, 0xff, 0, 0, 0, 0xff, 0, 0, 0],
    ];
    for bytes in cases {
        let e = handshake_error_on(bytes).await;
        let e = e.unwrap_or_else(|| panic!("accept panicked on {bytes:?}"));
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bytes:?}: {e}");
    }
}

/// rustls does not drop a record it fails to decrypt: asked again, it would take the
/// same record again (and, in a debug build, panic sending a second fatal alert).
#[tokio::test]
async fn a_record_that_does_not_decrypt_fails_every_later_read_and_write() {
    let (mut server, client) = handshake().await;
    let (mut tcp, _) = client.into_inner();
    let mut record = vec![0x17, 3, 3, 0, 32];
    record.extend([7u8; 32]);
    tcp.write_all(&record).await.unwrap();
    let first = server.fill_buf().await.unwrap_err();
    assert_eq!(first.kind(), io::ErrorKind::InvalidData);
    let again = server.fill_buf().await.unwrap_err();
    assert_eq!(again.to_string(), first.to_string());
    let write = server.write(b"x").await.unwrap_err();
    assert_eq!(write.to_string(), first.to_string());
    // The client was told, once: behind the session tickets, one alert record (an
    // encrypted one: TLS 1.3 hides its type), then the FIN of the shutdown.
    server.shutdown().await.unwrap();
    let mut told = Vec::new();
    tcp.read_to_end(&mut told).await.unwrap();
    let alert_len = 2 + 1 + 16;
    let (before, last) = told.split_at(told.len() - (5 + alert_len));
    assert_eq!(last[..5], [0x17, 3, 3, 0, alert_len as u8], "{told:?}");
    assert!(!before.ends_with(&last[..5]), "a second alert: {told:?}");
}

/// A client that seals its own TLS 1.3 records once the handshake is done, to send what no
/// rustls client would.
struct RawClient<IO> {
    io: IO,
    sealer: Box<dyn rustls::crypto::cipher::MessageEncrypter>,
    seq: u64,
}

impl<IO> RawClient<IO> {
    /// A record whose inner plaintext is `inner` as given: content, then its content type,
    /// then any padding (the sealer's own type byte, 0, is one more byte of padding).
    fn record(&mut self, inner: &[u8]) -> Vec<u8> {
        use rustls::crypto::cipher::{OutboundChunks, OutboundPlainMessage};
        let message = OutboundPlainMessage {
            typ: rustls::ContentType::from(0u8),
            version: rustls::ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(inner),
        };
        let record = self.sealer.encrypt(message, self.seq).unwrap().encode();
        self.seq += 1;
        record
    }
}

/// A handshake over `server` and `client` (TLS 1.3, AES-128-GCM), then the client's side as
/// a [`RawClient`].
async fn raw_client_over<IO>(server: IO, client: IO) -> (TlsStream<IO>, RawClient<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    use rustls::crypto::aws_lc_rs as provider;
    let (server_config, roots) = pki();
    let mut only_aes128 = provider::default_provider();
    only_aes128.cipher_suites = vec![provider::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut client_config = rustls::ClientConfig::builder_with_provider(only_aes128.into())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_config.enable_secret_extraction = true;
    let (server, client) =
        handshake_over(server, client, server_config, Arc::new(client_config)).await;
    let (io, conn) = client.into_inner();
    let secrets = conn.dangerous_extract_secrets().unwrap();
    let (seq, rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv }) = secrets.tx else {
        panic!("not AES-128-GCM")
    };
    let suite = provider::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let sealer = suite.tls13().unwrap().aead_alg.encrypter(key, iv);
    (server, RawClient { io, sealer, seq })
}

/// A handshake message a byte per record, each record padded to 16 KB: rustls keeps
/// every record until the message is whole, and the buffer is capped as rustls's own is.
#[tokio::test]
async fn a_handshake_message_spread_over_padded_records_cannot_grow_the_buffer_unbounded() {
    let (server, client) = tcp_pair().await;
    let (mut server, mut client) = raw_client_over(server, client).await;
    let writer = tokio::spawn(async move {
        for i in 0..200 {
            // A key update's header saying 65,535 bytes, then one byte per record; the
            // record's inner type (handshake) and 16,000 bytes of TLS 1.3 padding.
            let mut inner = if i == 0 {
                vec![24, 0, 0xff, 0xff]
            } else {
                vec![0]
            };
            inner.push(0x16);
            inner.resize(inner.len() + 16_000, 0);
            let record = client.record(&inner);
            if client.io.write_all(&record).await.is_err() {
                return;
            }
        }
    });
    // Bounded, so that a buffer taking all 200 records (3.2 MB) fails here, not hangs.
    let refused = tokio::time::timeout(Duration::from_secs(30), server.fill_buf()).await;
    writer.abort();
    let e = match refused {
        Ok(read) => read.map(|plain| plain.len()).expect_err("refused"),
        Err(_) => panic!("no refusal: incoming holds {} bytes", server.incoming.len()),
    };
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("message buffer full"), "{e}");
    assert!(
        server.incoming.len() <= MAX_HELD,
        "{}",
        server.incoming.len()
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(100))]

    /// Whatever records a client sends once the handshake is done (alerts, handshake
    /// messages, data, change-cipher-spec or no type at all, with any content and padding,
    /// some of them corrupted), then its TCP close: reading ends, in an end of stream or an
    /// error, without a panic or a hang, and a write after it neither panics; the buffer
    /// stays within its cap.
    #[test]
    fn any_records_after_the_handshake_end_the_stream_without_a_panic(
        records in proptest::collection::vec(
            (
                proptest::sample::select(vec![20u8, 21, 22, 23, 24, 0, 255]),
                proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                0usize..20,
                proptest::option::weighted(0.2, proptest::num::usize::ANY),
            ),
            1..6,
        ),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (server, client) = tokio::io::duplex(1 << 20);
            let (mut server, mut client) = raw_client_over(server, client).await;
            for (typ, content, padding, corrupt) in records {
                let mut inner = content;
                inner.push(typ);
                inner.resize(inner.len() + padding, 0);
                let mut record = client.record(&inner);
                if let Some(at) = corrupt {
                    let at = at % record.len();
                    record[at] ^= 0x55;
                }
                client.io.write_all(&record).await.unwrap();
            }
            client.io.shutdown().await.unwrap();
            let read_all = async {
                loop {
                    match server.fill_buf().await {
                        Ok([]) | Err(_) => break,
                        Ok(data) => {
                            let n = data.len();
                            Pin::new(&mut server).consume(n);
                        }
                    }
                }
            };
            // The clock is paused: a read stuck on nothing elapses this at once.
            let ended = tokio::time::timeout(Duration::from_secs(60), read_all).await;
            assert!(ended.is_ok(), "reading did not end after the client closed");
            assert!(server.incoming.len() <= MAX_HELD);
            let _ = server.write(b"after").await;
            let _ = server.shutdown().await;
        });
    }
}

/// A real ClientHello for "localhost", as its records come off the wire.
fn client_hello() -> Vec<u8> {
    let (_, client_config) = configs();
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(client_config, name).unwrap();
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    wire
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Whatever a client opens with (a real hello with bytes changed, cut short, or with
    /// records of any type behind it), the handshake ends once the client has sent it and
    /// closed, with an error, and without a panic: a stuck handshake fails here at once,
    /// as the clock is paused and the bound elapses as soon as nothing else can happen.
    #[test]
    fn any_opening_ends_the_handshake_without_a_panic(
        flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..4),
        cut in proptest::num::usize::ANY,
        trailing in proptest::collection::vec(
            (
                proptest::sample::select(vec![20u8, 21, 22, 23, 24, 0, 255]),
                proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                proptest::bool::ANY,
            ),
            0..4,
        ),
    ) {
        let mut wire = client_hello();
        for (at, byte) in flips {
            let at = at % wire.len();
            wire[at] = byte;
        }
        wire.truncate(cut % (wire.len() + 1));
        for (typ, fragment, honest_length) in trailing {
            let len = match honest_length {
                true => fragment.len() as u16,
                false => 0x4800,
            };
            wire.extend([typ, 3, 3]);
            wire.extend(len.to_be_bytes());
            wire.extend(fragment);
        }
        let (server_config, _) = configs();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let ended = runtime.block_on(async move {
            let (server, mut client) = tokio::io::duplex(1 << 20);
            client.write_all(&wire).await.unwrap();
            client.shutdown().await.unwrap();
            let handshake = accept(server, Opening::new(), server_config);
            tokio::time::timeout(Duration::from_secs(60), handshake).await
        });
        let Ok(handshake) = ended else {
            panic!("the handshake did not end after the client closed");
        };
        proptest::prop_assert!(handshake.is_err());
    }
}

/// A socket whose writes fail once told to, as a client's does once it has reset.
struct WritesFail {
    tcp: TcpStream,
    failing: bool,
}

impl AsyncRead for WritesFail {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for WritesFail {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.failing {
            true => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            false => Pin::new(&mut self.tcp).poll_write(cx, data),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The relay ends only the direction writing to a client its writes fail on: what that
/// client sent before it went must still be read, not failed with the write's error.
#[tokio::test]
async fn a_failed_write_leaves_what_the_client_sent_to_be_read() {
    let (server_config, client_config) = configs();
    let (server, client) = tcp_pair().await;
    let server = WritesFail {
        tcp: server,
        failing: false,
    };
    let (mut server, mut client) =
        handshake_over(server, client, server_config, client_config).await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    server.get_mut().failing = true;
    let failed = server.write(b"to a client gone").await.unwrap_err();
    assert_eq!(failed.kind(), io::ErrorKind::BrokenPipe);
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last words");
    let again = server.write(b"more").await.unwrap_err();
    assert_eq!(
        again.kind(),
        io::ErrorKind::BrokenPipe,
        "the failure is kept"
    );
    assert!(
        !server.holds_a_buffer(),
        "what could not be sent is dropped"
    );
}

/// A client that stalls with part of a record sent (its hello's first bytes, or a record
/// cut between segments) keeps those bytes held while it waits, not a pooled buffer.
#[tokio::test]
async fn a_record_started_and_stalled_holds_only_its_bytes() {
    let (server_config, _) = configs();
    let (mut tcp, mut client) = tcp_pair().await;
    let hello = client_hello();
    client.write_all(&hello[..7]).await.unwrap();
    let mut opening = Opening::new();
    while opening.bytes().len() < 7 {
        tcp.readable().await.unwrap();
        let _ = std::future::poll_fn(|cx| Poll::Ready(opening.poll_read(cx, &mut tcp))).await;
    }
    let waits =
        std::future::poll_fn(|cx| Poll::Ready(opening.poll_read(cx, &mut tcp).is_pending()));
    assert!(waits.await, "nothing more has been sent");
    let held = opening.0.buf.as_ref().map(|buf| buf.len());
    assert_eq!(held, Some(7), "just the bytes held");
    // The rest of the hello: the handshake goes on from the bytes kept.
    client.write_all(&hello[7..]).await.unwrap();
    let server = tokio::spawn(accept(tcp, opening, server_config));
    let mut answer = [0u8; 1];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], 0x16, "a ServerHello: the hello was read whole");
    drop(client);
    assert!(
        server.await.unwrap().is_err(),
        "the client left mid-handshake"
    );
}

/// Data a client sent before a record that fails is read first; the failure is the next
/// read's answer.
#[tokio::test]
async fn what_came_before_a_bad_record_is_read_before_the_failure() {
    let (server, client) = tokio::io::duplex(1 << 16);
    let (mut server, mut client) = raw_client_over(server, client).await;
    let good = client.record(b"hello\x17");
    let mut bad = client.record(b"world\x17");
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    client.io.write_all(&[good, bad].concat()).await.unwrap();
    let read = server.fill_buf().await.unwrap().to_vec();
    assert_eq!(read, b"hello");
    Pin::new(&mut server).consume(read.len());
    let failed = server.fill_buf().await.unwrap_err();
    assert_eq!(failed.kind(), io::ErrorKind::InvalidData);
}

/// A client whose stream ends in the middle of a record was cut off: what came before is
/// read, then the cut is an error (the other side closed at once), not the end of its data
/// (a half-close passed on, as a close between records is).
#[tokio::test]
async fn a_stream_cut_in_the_middle_of_a_record_is_an_error_not_an_end() {
    let (server, client) = tokio::io::duplex(1 << 16);
    let (mut server, mut client) = raw_client_over(server, client).await;
    let good = client.record(b"hello\x17");
    let cut = client.record(b"world\x17");
    client.io.write_all(&good).await.unwrap();
    client.io.write_all(&cut[..10]).await.unwrap();
    client.io.shutdown().await.unwrap();
    let read = server.fill_buf().await.unwrap().to_vec();
    assert_eq!(read, b"hello");
    Pin::new(&mut server).consume(read.len());
    let failed = server.fill_buf().await.unwrap_err();
    assert_eq!(failed.kind(), io::ErrorKind::ConnectionAborted, "{failed}");
}

/// Reads exactly `len` bytes from `from` in reads of at most `chunk`, by `read` or by
/// `fill_buf` and `consume` in turn.
async fn read_in_chunks<R: AsyncBufRead + Unpin>(
    from: &mut R,
    len: usize,
    chunk: usize,
) -> Vec<u8> {
    let mut got = Vec::with_capacity(len);
    let mut buffered = false;
    while got.len() < len {
        let want = chunk.min(len - got.len());
        buffered = !buffered;
        if buffered {
            let data = from.fill_buf().await.unwrap();
            assert!(
                !data.is_empty(),
                "the stream ended {} bytes short",
                len - got.len()
            );
            let n = data.len().min(want);
            got.extend_from_slice(&data[..n]);
            Pin::new(&mut *from).consume(n);
        } else {
            let mut buf = vec![0u8; want];
            let n = from.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended {} bytes short", len - got.len());
            got.extend_from_slice(&buf[..n]);
        }
    }
    got
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever sizes are written each way, and however they are split on the way (a pipe
    /// of any room, from a few hundred bytes, each side's reads and writes moving any number
    /// of bytes at a time, the stream's reads of any size), each side reads exactly the bytes
    /// the other wrote, in order; between exchanges the stream holds no buffer; and a close
    /// each way reads as the end of the stream. The client is a rustls client, or wsgate's own
    /// client side (its TLS to a backend with `backend_tls`), which holds no buffer either.
    /// (A pipe with less room than the server's session tickets, which the client reads only
    /// once asked to, stalls any TLS handshake.)
    #[test]
    fn bytes_pass_both_ways_unchanged_however_they_are_split(
        capacity in 300usize..70_000,
        (server_most, client_most) in (piece_size(), piece_size()),
        pieces in proptest::collection::vec(
            (proptest::bool::ANY, 0usize..40_000, 1usize..20_000),
            1..8,
        ),
        ours_at_both_ends in proptest::bool::ANY,
    ) {
        let exchange = async move {
            let (server_config, client_config) = configs();
            let (server, client) = tokio::io::duplex(capacity);
            let server = Trickle { io: server, most: server_most };
            let client = Trickle { io: client, most: client_most };
            if ours_at_both_ends {
                let name = ServerName::try_from("localhost").unwrap();
                let (server, client) = tokio::join!(
                    accept(server, Opening::new(), server_config),
                    connect(client, client_config, name)
                );
                let client = exchange_pieces(server.unwrap(), client.unwrap(), pieces).await;
                assert!(!client.holds_a_buffer(), "the client side, at the end");
            } else {
                let (server, client) =
                    handshake_over(server, client, server_config, client_config).await;
                exchange_pieces(server, tokio::io::BufReader::new(client), pieces).await;
            }
        };
        // A stalled exchange (a lost wake-up) fails the case rather than hanging the suite.
        proptest::prop_assert!(finishes(exchange), "the exchange stalled");
    }
}

/// Sends each of `pieces` (which way, how long, in reads of what size) between `server` and
/// `client` and checks it arrives unchanged, the server holding no buffer between them; then
/// a close each way reads as the end of the stream. Gives the client back, for more checks.
async fn exchange_pieces<S, C>(
    mut server: TlsStream<S>,
    mut client: C,
    pieces: Vec<(bool, usize, usize)>,
) -> C
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: AsyncBufRead + AsyncWrite + Unpin,
{
    for (i, (to_server, len, chunk)) in pieces.into_iter().enumerate() {
        let sent: Vec<u8> = (0..len).map(|b| (b * 31 + i) as u8).collect();
        let got = match to_server {
            true => {
                let write = async {
                    client.write_all(&sent).await.unwrap();
                    client.flush().await.unwrap();
                };
                tokio::join!(write, read_in_chunks(&mut server, len, chunk)).1
            }
            false => {
                let write = async {
                    server.write_all(&sent).await.unwrap();
                    server.flush().await.unwrap();
                };
                tokio::join!(write, read_in_chunks(&mut client, len, chunk)).1
            }
        };
        assert!(got == sent, "piece {i}: {len} bytes came out changed");
        assert!(!server.holds_a_buffer(), "after piece {i}");
    }
    // The close_notify may not fit the pipe until the other side reads.
    let mut rest = [0u8; 16];
    let (closed, read) = tokio::join!(client.shutdown(), server.read(&mut rest));
    assert_eq!((closed.unwrap(), read.unwrap()), ((), 0));
    let (closed, read) = tokio::join!(server.shutdown(), client.read(&mut rest));
    assert_eq!((closed.unwrap(), read.unwrap()), ((), 0));
    client
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// A tunnel as it runs, the TLS stream the relay's client side: whatever each side sends,
    /// however the pipes split it, each gets the other's bytes unchanged, then the end of
    /// the stream (the client's close_notify passed on as the backend's end, the backend's
    /// end as a close_notify).
    #[test]
    fn a_tunnel_relays_both_ways_unchanged_through_tls(
        (up, down) in (0usize..100_000, 0usize..100_000),
        (server_most, client_most, backend_most) in (piece_size(), piece_size(), piece_size()),
        (capacity, backend_room) in (300usize..70_000, 1usize..70_000),
    ) {
        let exchange = async move {
            let (server_config, client_config) = configs();
            let (server, client) = tokio::io::duplex(capacity);
            let server = Trickle { io: server, most: server_most };
            let client = Trickle { io: client, most: client_most };
            let (server, client) =
                handshake_over(server, client, server_config, client_config).await;
            let (backend, backend_peer) = tokio::io::duplex(backend_room);
            let backend = Trickle { io: backend, most: backend_most };
            let drain = Arc::new(crate::drain::Drain::default());
            let idle = Duration::from_secs(600);
            let relay = crate::splice::Splice::new(
                server,
                bytes::Bytes::new(),
                backend,
                bytes::Bytes::new(),
                idle,
                &drain,
            );
            let (up, down) = (pattern(up, 1), pattern(down, 2));
            let (outcome, got_down, got_up) = tokio::join!(
                relay,
                send_and_take(client, &up),
                send_and_take(backend_peer, &down),
            );
            assert!(got_up == up, "client → backend changed");
            assert!(got_down == down, "backend → client changed");
            let closed = matches!(outcome.reason, crate::splice::CloseReason::Closed(_));
            assert!(closed, "{:?}", outcome.reason);
        };
        // A stalled tunnel (a lost wake-up) fails the case rather than hanging the suite.
        proptest::prop_assert!(finishes(exchange), "the tunnel stalled");
    }
}

/// wsgate's client side (to a backend with `backend_tls`) against a rustls server (tokio-rustls):
/// both handshakes over one TCP connection.
async fn client_handshake(
    server_config: Arc<ServerConfig>,
    client_config: Arc<rustls::ClientConfig>,
) -> (
    io::Result<TlsStream<TcpStream, UnbufferedClientConnection>>,
    io::Result<tokio_rustls::server::TlsStream<TcpStream>>,
) {
    let (server, client) = tcp_pair().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let name = ServerName::try_from("localhost").unwrap();
    tokio::join!(
        connect(client, client_config, name),
        acceptor.accept(server)
    )
}

#[tokio::test]
async fn the_client_side_passes_bytes_both_ways_and_holds_no_buffer_between_them() {
    let (server_config, client_config) = configs();
    let (client, server) = client_handshake(server_config, client_config).await;
    let (mut client, mut server) = (client.unwrap(), server.unwrap());
    assert!(!client.holds_a_buffer(), "after the handshake");
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for round in 0..3 {
        say(&mut client, &mut server, b"GET / HTTP/1.1").await;
        say(&mut server, &mut client, &big).await;
        assert!(!client.holds_a_buffer(), "after exchange {round}");
    }
    // Its close_notify is the server's end of stream, and the server's is the client's.
    client.shutdown().await.unwrap();
    assert_eq!(server.read(&mut [0u8; 8]).await.unwrap(), 0);
    server.shutdown().await.unwrap();
    assert_eq!(client.read(&mut [0u8; 8]).await.unwrap(), 0);
}

#[tokio::test]
async fn the_client_side_refuses_a_certificate_it_does_not_trust() {
    let ((server_config, _), (_, other_roots)) = (pki(), pki());
    let untrusting = rustls::ClientConfig::builder()
        .with_root_certificates(other_roots)
        .with_no_client_auth();
    let (client, _) = client_handshake(server_config, Arc::new(untrusting)).await;
    let Err(e) = client else {
        panic!("a certificate from another CA was trusted");
    };
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
}

#[tokio::test]
async fn the_client_side_speaks_tls_1_2_too() {
    let (cert, key) = {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        (der, key)
    };
    crate::tls::install_default_provider();
    let server = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (client, server) = client_handshake(Arc::new(server), Arc::new(client)).await;
    let (mut client, mut server) = (client.unwrap(), server.unwrap());
    say(&mut client, &mut server, b"GET / HTTP/1.1").await;
    say(&mut server, &mut client, b"HTTP/1.1 101").await;
    client.shutdown().await.unwrap();
    assert_eq!(server.read(&mut [0u8; 8]).await.unwrap(), 0);
}
