//! The happy path: a valid upgrade is forwarded and a real WebSocket peer on each side is happy.

mod support;

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_reaches_an_echo_backend() {
    let backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    assert_eq!(round_trip(&mut ws, "hello").await, "hello");
    within("send", ws.send(Message::binary(vec![0u8, 1, 2, 255])))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
}
