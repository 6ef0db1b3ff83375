//! Origin allow-lists.

use crate::support::*;

async fn proxy_with_origins(backend: &WsBackend) -> Proxy {
    start_proxy(&format!(
        "[[route]]\nname = \"chat\"\npath = \"/ws\"\norigins = [\"https://chat.example.com\", \"https://admin.example.com\"]\nbackends = [\"{}\"]\n",
        backend.addr
    ))
    .await
}

/// A tunnel opened with `origin` echoes.
async fn assert_echoes_with_origin(proxy: &Proxy, origin: &str) {
    let (mut ws, _) = ws_connect(
        proxy.addr,
        "wss://chat.example.com/ws",
        &[("Origin", origin)],
    )
    .await
    .unwrap_or_else(|e| panic!("{origin} refused: {e:?}"));
    assert_eq!(round_trip(&mut ws, "hi").await, "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origin_passes() {
    let backend = WsBackend::start("echo").await;
    let proxy = proxy_with_origins(&backend).await;
    for origin in ["https://chat.example.com", "https://admin.example.com"] {
        assert_echoes_with_origin(&proxy, origin).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_apps_own_origin_can_be_listed() {
    // Electron (electron-builder's `app://.`, electron-serve's `app://-`) and Tauri pages
    // send their scheme's origin, whose host is no DNS name.
    let backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&format!(
        "[[route]]\nname = \"app\"\npath = \"/ws\"\norigins = [\"app://.\", \"app://-\", \"tauri://localhost\"]\nbackends = [\"{}\"]\n",
        backend.addr
    ))
    .await;
    for origin in ["app://.", "app://-", "tauri://localhost"] {
        assert_echoes_with_origin(&proxy, origin).await;
    }
    let (head, _) = request(
        proxy.addr,
        Req::upgrade("chat.example.com", "/ws")
            .add("Origin", "app://evil")
            .bytes(),
    )
    .await;
    assert_eq!(head.status, 403, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_origin_is_403() {
    let backend = WsBackend::start("echo").await;
    let proxy = proxy_with_origins(&backend).await;
    for origin in [
        "https://evil.example.net",
        "http://chat.example.com",
        "https://chat.example.com:8443",
        "null",
    ] {
        let (head, body) = request(
            proxy.addr,
            Req::upgrade("chat.example.com", "/ws")
                .add("Origin", origin)
                .bytes(),
        )
        .await;
        assert_eq!(head.status, 403, "origin {origin}: {head:?}");
        assert!(body.len() < 512);
    }
}

/// The refusal's line names the refused origin, so an operator sees what a browser sent; the
/// answer's body does not repeat it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusals_line_names_the_refused_origin() {
    let backend = WsBackend::start("echo").await;
    let dir = tempfile::tempdir().unwrap();
    let route = format!(
        "[[route]]\nname = \"chat\"\npath = \"/ws\"\norigins = [\"https://chat.example.com\"]\nbackends = [\"{}\"]\n",
        backend.addr
    );
    let (_child, lines, addr) = started_wsgate(&write_config(dir.path(), &route));
    let evil = "https://evil.example.net";
    let req = Req::upgrade("chat.example.com", "/ws").add("Origin", evil);
    let (head, body) = request(addr, req.bytes()).await;
    assert_eq!(head.status, 403, "{head:?}");
    assert_eq!(body, b"origin not allowed\n");
    let line = line_containing(lines, "connection closed").await;
    assert!(
        line.contains("\"reason\":\"origin not allowed: https://evil.example.net\""),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_origin_is_403_even_if_one_is_listed() {
    // The check and the backend could read different lines.
    let backend = WsBackend::start("echo").await;
    let proxy = proxy_with_origins(&backend).await;
    let (head, _) = request(
        proxy.addr,
        Req::upgrade("chat.example.com", "/ws")
            .add("Origin", "https://chat.example.com")
            .add("Origin", "https://evil.example.net")
            .bytes(),
    )
    .await;
    assert_eq!(head.status, 403, "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_origin_header_passes() {
    let backend = WsBackend::start("echo").await;
    let proxy = proxy_with_origins(&backend).await;
    let mut ws = ws_connect_ok(proxy.addr, "wss://chat.example.com/ws").await;
    assert_eq!(round_trip(&mut ws, "hi").await, "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_a_list_accepts_any_origin() {
    let mut backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&route("chat", "/ws", &[backend.addr])).await;
    let (mut ws, _) = ws_connect(
        proxy.addr,
        "wss://chat.example.com/ws",
        &[("Origin", "https://anywhere.test")],
    )
    .await
    .expect("upgrade");
    assert_eq!(round_trip(&mut ws, "hi").await, "hi");
    // The Origin header is end-to-end: the backend sees it.
    assert_eq!(
        backend.next_request().await.get("origin"),
        Some("https://anywhere.test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_spelling_of_the_path_does_not_escape_the_list_to_a_catch_all() {
    // A backend that decodes %69, merges slashes or reads ;parameters serves these as /ws:
    // they must meet /ws's allow-list, not ride the catch-all route past it.
    let backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&format!(
        "[[route]]\nname = \"all\"\npath = \"/\"\nbackends = [\"{0}\"]\n\n\
         [[route]]\nname = \"chat\"\npath = \"/ws\"\norigins = [\"https://chat.example.com\"]\nbackends = [\"{0}\"]\n",
        backend.addr
    ))
    .await;
    // ("//ws" is refused before routing: a URL parser reads "ws" as a host.)
    assert_eq!(upgrade_status(proxy.addr, "//ws").await, 400);
    for path in ["/w%73", "/ws//room", "/ws;jsessionid=1", "/%77s/room"] {
        let req = Req::upgrade("chat.example.com", path).add("Origin", "https://evil.example.net");
        let (head, _) = request(proxy.addr, req.bytes()).await;
        assert_eq!(head.status, 403, "{path}: {head:?}");
    }
}

/// A route's Origin rule binds every spelling of its path a backend may read as its own: a
/// `\` (Node's URL parser) or an encoded `/` or `\` (servers that decode before routing) does
/// not ride past it to a catch-all without the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_spelling_of_the_separator_does_not_escape_the_routes_origins() {
    let backend = WsBackend::start("echo").await;
    let proxy = start_proxy(&format!(
        "{}[[route]]\nname = \"admin\"\npath = \"/admin\"\norigins = [\"https://admin.example.com\"]\nbackends = [\"{}\"]\n",
        route("all", "/", &[backend.addr]),
        backend.addr
    ))
    .await;
    for path in [
        "/admin/x",
        "/admin%2Fx",
        "/admin%2fx",
        "/admin\\x",
        "/admin%5Cx",
        // Fullwidth forms, which NFKC-normalising backends (and IIS's "best fit") read as
        // ASCII: "／" and "ａｄｍｉｎ".
        "/admin%EF%BC%8Fx",
        "/%EF%BD%81%EF%BD%84%EF%BD%8D%EF%BD%89%EF%BD%8E",
        // Any compatibility form NFKC reads as ASCII: a superscript "ᵃ".
        "/%E1%B5%83dmin",
    ] {
        let (head, _) = request(
            proxy.addr,
            Req::upgrade("localhost", path)
                .add("Origin", "https://evil.example.net")
                .bytes(),
        )
        .await;
        assert_eq!(head.status, 403, "{path}: {head:?}");
    }
    assert_eq!(upgrade_status(proxy.addr, "/other%2Fx").await, 101);
    // A path a URL parser reads as a host and a path ("//localhost/admin" is "/admin" to
    // Node's and Python's) is refused outright.
    for path in [
        "//localhost/admin",
        "/\\localhost/admin",
        "/%2Flocalhost/admin",
        "/%EF%BC%8Flocalhost/admin",
    ] {
        assert_eq!(upgrade_status(proxy.addr, path).await, 400, "{path}");
    }
    // Escapes backends disagree about (Jetty's "%u", a NUL, a line feed or tab a trimming
    // backend drops, the overlong "%c0%ae" for "."), and bytes outside ASCII: refused, never
    // routed.
    for path in [
        "/other/%u002e%u002e/admin",
        "/other/..%00/admin",
        "/admin%0a",
        "/admin%09",
        "/other/%c0%ae%c0%ae/admin",
        "/other/\u{e9}",
    ] {
        let (head, body) = request(proxy.addr, Req::upgrade("localhost", path).bytes()).await;
        assert_eq!(head.status, 400, "{path}: {head:?}");
        assert_eq!(body, b"malformed request path\n");
    }
    // Dots however spelled, fullwidth "．．" included: never a route.
    for path in [
        "/other/%EF%BC%8E%EF%BC%8E/admin",
        "/other/%E2%80%A5/admin",
        "/other/%EF%B8%B0/admin",
    ] {
        assert_eq!(upgrade_status(proxy.addr, path).await, 404, "{path}");
    }
}
