//! A tiny interactive wss:// client: each line typed is sent as a text message, each message
//! received is printed. Trusts `certs/dev-ca.crt` unless `--ca PATH` is given.
//!
//! `cargo run --example wsclient -- wss://localhost:8443/echo [--ca certs/dev-ca.crt]`

#[path = "common/mod.rs"]
mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const USAGE: &str = "usage: cargo run --release --locked --example wsclient -- [URL] [--ca PATH]

Connects to URL (default wss://localhost:8443/echo), sends each line typed as a text message
and prints each message received; Ctrl-D closes. --ca: the CA file to trust (default
certs/dev-ca.crt).";

#[tokio::main]
async fn main() -> ExitCode {
    let (url, ca) = match arguments() {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match chat(&url, &ca).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The URL and the CA file, `None` for `--help`.
fn arguments() -> Result<Option<(String, PathBuf)>, String> {
    let mut url = None;
    let mut ca = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--ca" => ca = Some(PathBuf::from(args.next().ok_or("--ca needs a file")?)),
            option if option.starts_with('-') => return Err(format!("unknown option {option}")),
            _ if url.is_some() => return Err(format!("one URL only, not also {arg:?}")),
            _ => url = Some(arg),
        }
    }
    let url = url.unwrap_or_else(|| "wss://localhost:8443/echo".into());
    let ca =
        ca.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs/dev-ca.crt"));
    Ok(Some((url, ca)))
}

async fn chat(url: &str, ca: &std::path::Path) -> Result<(), common::Error> {
    let ws = common::connect(url, ca).await?;
    eprintln!("connected to {url}; type lines, Ctrl-D to close");
    let (mut sink, mut stream) = ws.split();
    let mut lines = typed_lines();
    let mut closing = false;
    loop {
        tokio::select! {
            line = lines.recv(), if !closing => match line {
                Some(line) => sink.send(Message::text(line)).await?,
                None => {
                    // End of input: close politely, then wait for the server's close.
                    closing = true;
                    sink.send(Message::Close(None)).await?;
                }
            },
            msg = stream.next() => match msg {
                // Read on to the end of the connection: dropping it with the proxy's TLS
                // close still unread would make the kernel reset it.
                Some(Ok(Message::Close(frame))) => {
                    let by = if closing { "closed" } else { "closed by the server" };
                    match frame {
                        Some(frame) => eprintln!("{by}: code {}, reason {:?}", u16::from(frame.code), frame.reason.as_str()),
                        None => eprintln!("{by}"),
                    }
                    closing = true;
                }
                Some(Ok(msg)) => {
                    // A reader gone (`| head -1`) ends the program, not a panic.
                    if writeln!(std::io::stdout(), "< {msg}").is_err() {
                        return Ok(());
                    }
                }
                Some(Err(e)) => return Err(ended(&e).into()),
                None => return Ok(()),
            },
        }
    }
}

/// How the connection ended, in words: cut (no WebSocket close, no TLS close: the server
/// shutting down at once, or a network fault) rather than the libraries' own.
fn ended(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
    match e {
        Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the server cut the connection (no WebSocket close, no TLS close)".to_string()
        }
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "the server cut the connection (no WebSocket close)".to_string()
        }
        other => format!("the connection ended: {other}"),
    }
}

/// The lines typed, read on a thread of their own: a read of stdin cannot be cancelled, and
/// one left waiting in the runtime's blocking pool would keep the program from exiting when
/// the server ends the connection. (Returning from `main` ends the process, thread and all.)
fn typed_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}
