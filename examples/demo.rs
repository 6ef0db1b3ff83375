//! The newcomer's demo: a WebSocket echo backend on 127.0.0.1:9001, wsgate in front of it on
//! the default config (`config/wsgate.toml`, wss://localhost:8443 with the dev certificates),
//! and one message sent through both to prove the path works. Then it keeps serving until
//! Ctrl-C (or its terminal closing); try it with
//! `cargo run --release --locked --example wsclient`.

#[path = "common/mod.rs"]
mod common;

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const BACKEND: &str = "127.0.0.1:9001";

const USAGE: &str = "Starts a WebSocket echo backend on 127.0.0.1:9001 and wsgate in front of it
on config/wsgate.toml (wss://localhost:8443, the dev certificates in certs/), sends one message
through both, then serves until Ctrl-C. Takes no options.
";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match demo().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Words, not a `Debug` of them in quotes.
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    // No options: any argument (`--help`) gets the usage, not a demo binding ports.
    if std::env::args().len() > 1 {
        println!(
            "usage: cargo run --release --locked --example demo\n\n{}",
            USAGE.trim_end()
        );
        return Ok(());
    }
    // wsgate's own logging (text on stderr, `RUST_LOG`, `NO_COLOR`, libraries kept quiet), so
    // the demo's log reads as `wsgate run`'s does.
    let _logging = wsgate::init_logging(wsgate::config::LogFormat::Text, true);
    // As `wsgate run`: Ctrl-C drains, a second one closes every connection at once.
    let termination = wsgate::signals::Termination::register();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let backend = TcpListener::bind(BACKEND).await.map_err(|e| {
        format!(
            "cannot start the demo echo backend on {BACKEND}: {e} (is another demo still running?)"
        )
    })?;
    tokio::spawn(echo_backend(backend));
    let server = wsgate::Server::start(root.join("config/wsgate.toml"))
        .await
        .map_err(|e| format!("cannot start wsgate: {e}"))?;
    let addr = server.local_addrs()[0];

    let url = format!("wss://localhost:{}/echo", addr.port());
    let mut ws = common::connect(&url, &root.join("certs/dev-ca.crt")).await?;
    ws.send(Message::text("hello through wsgate")).await?;
    match ws.next().await {
        Some(Ok(reply)) => println!("\n  echo OK via {url}: {reply}\n"),
        other => return Err(format!("no echo: {other:?}").into()),
    }
    // The close handshake completed (the backend's close frame read, then the end of the
    // stream) and the connection dropped: a tunnel left open would linger in the log.
    ws.close(None).await?;
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    println!("  wsgate is serving {url} → ws://{BACKEND} (Ctrl-C to stop; twice to close open tunnels at once)");
    println!("  try it:  cargo run --release --locked --example wsclient -- {url}\n");
    // `wsgate run` reloads on SIGHUP; the demo, a program of a terminal, ends with it (its
    // window closed), as Ctrl-C ends it, rather than stay behind holding both ports.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        if hangup.recv().await.is_some() {
            // SAFETY: kill(2) on this very process, with a signal it handles.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        }
    });
    wsgate::signals::serve_until_terminated(server, termination, || {}).await;
    Ok(())
}

/// Echoes every text and binary message back; tungstenite answers pings and closes.
async fn echo_backend(listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors, say: the backend waits and goes on, rather than leaving
            // the demo's proxy with nothing behind it.
            Err(e) => {
                tracing::warn!(error = %e, "demo echo backend: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}
