//! A tiny interactive wss:// client: each line typed is sent as a text message, each message
//! received is printed. Trusts `certs/dev-ca.crt` unless `--ca PATH` is given.
//!
//! `cargo run --example wsclient -- wss://localhost:8443/echo [--ca certs/dev-ca.crt]`

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<(), common::Error> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "wss://localhost:8443/echo".into());
    let ca = match (args.next().as_deref(), args.next()) {
        (Some("--ca"), Some(path)) => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs/dev-ca.crt"),
    };
    let ws = common::connect(&url, &ca).await?;
    eprintln!("connected to {url}; type lines, Ctrl-D to close");
    let (mut sink, mut stream) = ws.split();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut typing = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if typing => match line? {
                Some(line) => sink.send(Message::text(line)).await?,
                None => {
                    // End of input: close politely, then wait for the server's close.
                    typing = false;
                    sink.send(Message::Close(None)).await?;
                }
            },
            msg = stream.next() => match msg {
                // Read on to the end of the connection: dropping it with the proxy's TLS
                // close still unread would make the kernel reset it.
                Some(Ok(Message::Close(frame))) => {
                    match frame {
                        Some(frame) => eprintln!("closed by the server: code {}, reason {:?}", u16::from(frame.code), frame.reason.as_str()),
                        None => eprintln!("closed by the server"),
                    }
                    typing = false;
                }
                Some(Ok(msg)) => println!("< {msg}"),
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
        }
    }
    Ok(())
}
