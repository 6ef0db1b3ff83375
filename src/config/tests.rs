//! The config's unit tests: what loads, what is refused, and how each refusal is worded and
//! located.

use super::*;

const HEAD: &str = r#"[proxy]
listen = ["127.0.0.1:8443"]

[tls]
certificates = [{ cert = "a.crt", key = "a.key" }]
"#;

fn parse(body: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(
        &format!("{HEAD}{body}"),
        Path::new("/etc/wsgate/wsgate.toml"),
    )
}

fn error(body: &str) -> String {
    match parse(body) {
        Ok(_) => panic!("expected an error for {body:?}"),
        Err(e) => e.to_string(),
    }
}

/// Each `(body, expected)`: the config of [`HEAD`] and `body` is refused with an error
/// containing `expected`.
fn each_error_contains(cases: &[(&str, &str)]) {
    for (body, expected) in cases {
        let message = error(body);
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
}

#[test]
fn a_minimal_config_gets_the_documented_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.timeouts.handshake, Duration::from_secs(10));
    assert_eq!(config.timeouts.connect, Duration::from_secs(5));
    assert_eq!(config.timeouts.idle, Duration::from_secs(300));
    assert_eq!(config.timeouts.shutdown_grace, Duration::from_secs(30));
    assert_eq!(config.timeouts.backend_cooldown, Duration::from_secs(1));
    assert_eq!(config.timeouts.attempt_delay, Duration::from_millis(250));
    assert_eq!(config.limits.max_request_header_bytes, 16384);
    assert_eq!(config.limits.max_connections, 10000);
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.admin, None);
    assert!(!config.proxy_protocol);
    assert!(!config.reuse_port);
    assert_eq!(config.coalesce, Duration::from_micros(50));
    assert_eq!(config.watch, WatchMode::Events);
    assert_eq!(config.recheck, Duration::from_secs(60));
    assert_eq!(config.tls_min_version, TlsVersion::Tls12);
    assert!(config.session_resumption);
    assert!(config.routes.is_empty());
}

#[test]
fn reuse_port_is_a_bool_of_the_proxy_section() {
    let with = |value: &str| {
        let text = HEAD.replace("[proxy]\n", &format!("[proxy]\nreuse_port = {value}\n"));
        Config::from_toml_str(&text, Path::new("w.toml"))
    };
    assert!(with("true").unwrap().reuse_port);
    assert!(!with("false").unwrap().reuse_port);
    let refused = with("\"yes\"").unwrap_err().to_string();
    assert!(
        refused.contains("w.toml:2:14: proxy.reuse_port"),
        "{refused}"
    );
}

#[test]
fn coalesce_is_a_pause_of_tens_of_microseconds_or_off() {
    let with = |value: &str| {
        let text = HEAD.replace("[proxy]\n", &format!("[proxy]\ncoalesce = \"{value}\"\n"));
        Config::from_toml_str(&text, Path::new("w.toml"))
    };
    assert_eq!(with("0s").unwrap().coalesce, Duration::ZERO, "off");
    assert_eq!(with("20us").unwrap().coalesce, Duration::from_micros(20));
    assert_eq!(with("100us").unwrap().coalesce, Duration::from_micros(100));
    // The micro sign, and the Greek mu keyboards give for it.
    assert_eq!(
        with("50\u{b5}s").unwrap().coalesce,
        Duration::from_micros(50)
    );
    assert_eq!(
        with("50\u{3bc}s").unwrap().coalesce,
        Duration::from_micros(50)
    );
    let hint = with("50 micros").unwrap_err().to_string();
    assert!(hint.contains("write it like \"50us\", \"500ms\""), "{hint}");
    for slip in ["1ms", "101us", "5us", "50ns"] {
        let refused = with(slip).unwrap_err().to_string();
        let said = "w.toml:2:12: proxy.coalesce: must be from 10us to 100us, or 0s to never wait";
        assert!(refused.starts_with(said), "{slip}: {refused}");
    }
}

#[test]
fn the_backend_cooldown_may_be_zero_but_not_beyond_a_timeout() {
    let with = |value: &str| format!("[timeouts]\nbackend_cooldown = \"{value}\"\n");
    let config = parse(&with("0s")).unwrap();
    assert_eq!(config.timeouts.backend_cooldown, Duration::ZERO, "off");
    let config = parse(&with("10s")).unwrap();
    assert_eq!(config.timeouts.backend_cooldown, Duration::from_secs(10));
    let refused = error(&with("31d"));
    assert!(
        refused.contains(":7:20: timeouts.backend_cooldown: must be from 1ms to 30 days, or 0s"),
        "{refused}"
    );
}

#[test]
fn the_attempt_delay_is_250ms_by_default_and_may_be_zero() {
    assert_eq!(
        parse("").unwrap().timeouts.attempt_delay,
        Duration::from_millis(250)
    );
    let with = |value: &str| format!("[timeouts]\nattempt_delay = \"{value}\"\n");
    let config = parse(&with("0s")).unwrap();
    assert_eq!(config.timeouts.attempt_delay, Duration::ZERO, "off");
    let config = parse(&with("1s")).unwrap();
    assert_eq!(config.timeouts.attempt_delay, Duration::from_secs(1));
    let refused = error(&with("31d"));
    assert!(
        refused.contains(":7:17: timeouts.attempt_delay: must be from 1ms to 30 days, or 0s"),
        "{refused}"
    );
}

#[test]
fn a_route_may_set_its_own_idle_timeout_within_the_same_bounds() {
    let route = |idle: &str| {
        format!("[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"b:1\"]\nidle = \"{idle}\"\n")
    };
    let config = parse(&route("1h")).unwrap();
    assert_eq!(config.routes[0].idle, Some(Duration::from_secs(3600)));
    let zero = error(&route("0s"));
    assert!(
        zero.contains("route[0].idle: must be at least 1ms"),
        "{zero}"
    );
    assert!(error(&route("soon")).contains("invalid duration"));
    // Too long is said in days; the months hint only where an `M` was written.
    let days = error(&route("31d"));
    assert!(
        days.ends_with("at most 30 days (read as 31 days)"),
        "{days}"
    );
    let months = error(&route("5M"));
    assert!(
        months.ends_with("(read as 152.2 days; `M` is months, minutes are `m`)"),
        "{months}"
    );
    let case = error(&route("10S"));
    assert!(case.ends_with("(units are case-sensitive)"), "{case}");
}

#[test]
fn client_ca_asks_clients_for_certificates_required_unless_said_optional() {
    let route = "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"app:9\"]\n";
    let plain = parse(route).unwrap();
    assert!(plain.client_auth.is_none() && !plain.routes[0].require_client_certificate);
    let asked = parse(&format!("client_ca = \"ca/clients.pem\"\n\n{route}")).unwrap();
    let auth = asked.client_auth.as_ref().unwrap();
    assert_eq!(auth.ca, Path::new("/etc/wsgate/ca/clients.pem"));
    assert_eq!(auth.mode, ClientAuth::Required);
    assert!(asked.watched_files().contains(&auth.ca));
    let optional = format!(
        "client_ca = \"/ca.pem\"\nclient_auth = \"optional\"\n\n{route}require_client_certificate = true\n"
    );
    let optional = parse(&optional).unwrap();
    assert_eq!(optional.client_auth.unwrap().mode, ClientAuth::Optional);
    assert!(optional.routes[0].require_client_certificate);
    let refused = [
        ("client_ca = \"\"\n", "tls.client_ca: must name a file"),
        (
            "client_ca = \"/ca.pem\"\nclient_auth = \"maybe\"\n",
            "tls.client_auth: must be \"optional\" or \"required\", not \"maybe\"",
        ),
    ];
    for (keys, expected) in refused {
        let message = error(&format!("{keys}\n{route}"));
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn a_route_balances_round_robin_unless_it_says_least_connections() {
    let route = |keys: &str| {
        format!("[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"app:9\"]\n{keys}")
    };
    assert_eq!(
        parse(&route("")).unwrap().routes[0].balance,
        Balance::RoundRobin
    );
    let least = parse(&route("balance = \"least_connections\"\n")).unwrap();
    assert_eq!(least.routes[0].balance, Balance::LeastConnections);
    let warned = |config: &Config| {
        (config.warnings.iter()).any(|w| {
            w.location
                .as_ref()
                .is_some_and(|l| l.key == "route[0].balance")
        })
    };
    assert!(!warned(&least), "the cool-down is on");
    let off = parse(&format!(
        "[timeouts]\nbackend_cooldown = \"0s\"\n\n{}",
        route("balance = \"least_connections\"\n")
    ))
    .unwrap();
    assert!(warned(&off), "one name, which may have several addresses");
    let one = "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"10.0.0.1:9\"]\nbalance = \"least_connections\"\n";
    let off = parse(&format!("[timeouts]\nbackend_cooldown = \"0s\"\n\n{one}")).unwrap();
    assert!(!warned(&off), "one address: nothing to balance");
    let two = "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"app:9\", \"app2:9\"]\nbalance = \"least_connections\"\n";
    let off = parse(&format!("[timeouts]\nbackend_cooldown = \"0s\"\n\n{two}")).unwrap();
    assert!(warned(&off), "{:?}", off.warnings);
    let message = error(&route("balance = \"leastconn\"\n"));
    let expected =
        "route[0].balance: must be \"least_connections\" or \"round_robin\", not \"leastconn\"";
    assert!(message.contains(expected), "{message}");
    for table in ["{ least_connections = [] }", "{}"] {
        let message = error(&route(&format!("balance = {table}\n")));
        let expected = "route[0].balance: must be a quoted string (\"least_connections\" or \"round_robin\"), not a table";
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn backend_tls_names_a_ca_file_and_may_name_the_server() {
    let route = |tls: &str| {
        format!("[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"app:9443\", \"app2:9443\"]\nbackend_tls = {tls}\n")
    };
    let config = parse(&route(r#"{ ca = "ca/backends.pem" }"#)).unwrap();
    let tls = config.routes[0].backend_tls.as_ref().unwrap();
    assert_eq!(tls.ca, Path::new("/etc/wsgate/ca/backends.pem"));
    assert_eq!(tls.server_name, None);
    // Watched, so that a renewed CA file is applied.
    assert!(config.watched_files().contains(&tls.ca));
    let named = parse(&route(
        r#"{ ca = "/ca.pem", server_name = "app.internal" }"#,
    ))
    .unwrap();
    let tls = named.routes[0].backend_tls.as_ref().unwrap();
    assert_eq!(tls.server_name.as_deref(), Some("app.internal"));
    assert!(tls.client.is_none());
    // A client certificate: its files resolved and watched as the CA file is.
    let showing = parse(&route(
        r#"{ ca = "/ca.pem", cert = "tls/client.crt", key = "/keys/client.key" }"#,
    ))
    .unwrap();
    let tls = showing.routes[0].backend_tls.as_ref().unwrap();
    let client = tls.client.as_ref().unwrap();
    assert_eq!(client.cert, Path::new("/etc/wsgate/tls/client.crt"));
    assert_eq!(client.key, Path::new("/keys/client.key"));
    let watched = showing.watched_files();
    assert!(watched.contains(&client.cert) && watched.contains(&client.key));
    for ip in ["10.0.0.7", "::1", "[::1]"] {
        let written = format!(r#"{{ ca = "/ca.pem", server_name = "{ip}" }}"#);
        assert!(parse(&route(&written)).is_ok(), "{ip}");
    }
    let refused = [
        (
            r#"{ ca = "" }"#,
            "route[0].backend_tls.ca: must name a file",
        ),
        (r#"{ }"#, "route[0].backend_tls: missing field `ca`"),
        (
            r#"{ ca = "/ca.pem", verify = false }"#,
            "unknown field `verify`",
        ),
        (
            r#"{ ca = "/ca.pem", server_name = "app:9443" }"#,
            "route[0].backend_tls.server_name: \"app:9443\" has a port: write the name alone",
        ),
        (
            r#"{ ca = "/ca.pem", server_name = "https://app.internal/" }"#,
            "route[0].backend_tls.server_name: \"https://app.internal/\" is a URL: write the name alone (\"app.internal\")",
        ),
        (
            r#"{ ca = "/ca.pem", server_name = "a b" }"#,
            "route[0].backend_tls.server_name: \"a b\" is not a server name",
        ),
        (
            r#"{ ca = "/ca.pem", server_name = "*.example.com" }"#,
            "route[0].backend_tls.server_name: \"*.example.com\" is not a server name",
        ),
        (
            r#"{ ca = "/ca.pem", cert = "c.pem" }"#,
            "route[0].backend_tls.cert: a client certificate needs both `cert` and `key`: add `key` beside `cert`",
        ),
        (
            r#"{ ca = "/ca.pem", key = "k.pem" }"#,
            "route[0].backend_tls.key: a client certificate needs both `cert` and `key`: add `cert` beside `key`",
        ),
        (
            r#"{ ca = "/ca.pem", cert = "c.pem", key = " " }"#,
            "route[0].backend_tls.key: must name a file",
        ),
    ];
    for (written, expected) in refused {
        let message = error(&route(written));
        assert!(message.contains(expected), "{written}: {message}");
        assert!(message.contains("wsgate.toml:10:"), "{written}: {message}");
    }
    // A name no certificate can hold (a label over 63 bytes): refused where it is written,
    // as `server_name`, or as a backend's host the certificate is checked for.
    let long = format!("{}.internal", "a".repeat(64));
    let named = error(&route(&format!(
        r#"{{ ca = "/ca.pem", server_name = "{long}" }}"#
    )));
    assert!(
        named.contains("route[0].backend_tls.server_name: ")
            && named.contains("cannot be checked against a certificate"),
        "{named}"
    );
    let host = format!("[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"app:1\", \"{long}:9443\"]\nbackend_tls = {{ ca = \"/ca.pem\" }}\n");
    let message = error(&host);
    assert!(
        message.contains("route[0].backends[1]: ")
            && message.ends_with("give the route's backend_tls a server_name"),
        "{message}"
    );
    let with_name = host.replace(
        r#"ca = "/ca.pem""#,
        r#"ca = "/ca.pem", server_name = "app""#,
    );
    assert!(parse(&with_name).is_ok());
}

#[test]
fn tls_min_version_is_1_2_or_1_3() {
    let head_with = |v: &str| HEAD.replace("[tls]\n", &format!("[tls]\nmin_version = \"{v}\"\n"));
    let load = |v: &str| Config::from_toml_str(&head_with(v), Path::new("/w.toml"));
    assert_eq!(load("1.3").unwrap().tls_min_version, TlsVersion::Tls13);
    let old = load("1.1").unwrap_err().to_string();
    assert!(
        old.contains("tls.min_version") && old.contains("1.3"),
        "{old}"
    );
    // Unquoted, it is a number: the message says what to write, not toml's "wanted
    // string or table".
    let unquoted = HEAD.replace("[tls]\n", "[tls]\nmin_version = 1.3\n");
    let error = Config::from_toml_str(&unquoted, Path::new("/w.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            ":5:15: tls.min_version: must be a quoted string (\"1.2\" or \"1.3\"), not a float"
        ),
        "{error}"
    );
    // A word in the wrong case is told apart from a wrong word.
    let upper = HEAD.replace("[tls]\n", "log_format = \"JSON\"\n[tls]\n");
    let error = error_in(&upper);
    assert!(
        error.contains(
            "proxy.log_format: must be \"json\" or \"text\" (in lower case), not \"JSON\""
        ),
        "{error}"
    );
    let other = error_in(&HEAD.replace("[tls]\n", "[tls]\nmin_version = \"1.1\"\n"));
    assert!(
        other.contains("tls.min_version: must be \"1.2\" or \"1.3\", not \"1.1\""),
        "{other}"
    );
}

#[test]
fn the_admin_listener_is_checked_and_may_not_share_a_proxy_address() {
    let config = parse("[admin]\nlisten = \"127.0.0.1:9090\"\n").unwrap();
    assert_eq!(config.admin, Some("127.0.0.1:9090".parse().unwrap()));
    let bad = error("[admin]\nlisten = \"localhost:9090\"\n");
    assert!(
        bad.contains(":7:10: admin.listen: \"localhost:9090\" is not an IP:port"),
        "{bad}"
    );
    let overlapping = error("[admin]\nlisten = \"0.0.0.0:8443\"\n");
    assert!(
        overlapping.contains("admin.listen: 0.0.0.0:8443 overlaps 127.0.0.1:8443"),
        "{overlapping}"
    );
    assert!(parse("[admin]\nlisten = \"[::]:8443\"\n").is_ok());
    let shared = error("[admin]\nlisten = \"127.0.0.1:8443\"\n");
    assert!(
        shared.contains("admin.listen: 127.0.0.1:8443 is also in proxy.listen"),
        "{shared}"
    );
    let unknown = error("[admin]\nlisten = \"127.0.0.1:9090\"\npath = \"/m\"\n");
    assert!(unknown.contains("admin"), "{unknown}");
}

#[test]
fn relative_certificate_paths_resolve_against_the_config_folder() {
    let config = parse("").unwrap();
    assert_eq!(config.certificates[0].cert, Path::new("/etc/wsgate/a.crt"));
    assert_eq!(config.watched_files().len(), 3);
}

#[test]
fn a_file_is_parsed_again_when_its_bytes_change_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    let idle = |path: &Path| Config::load(path).map(|c| c.timeouts.idle.as_secs());
    let with_idle = |secs: u64| format!("{HEAD}[timeouts]\nidle = \"{secs}s\"\n");
    std::fs::write(&a, with_idle(7)).unwrap();
    std::fs::write(&b, with_idle(7)).unwrap();
    assert_eq!(idle(&a), Ok(7));
    // Same bytes at another path: a path of its own (relative files resolve against it).
    assert_eq!(Config::load(&b).unwrap().path, b);
    std::fs::write(&a, with_idle(8)).unwrap();
    assert_eq!(idle(&a), Ok(8));
    std::fs::write(&a, "[proxy\n").unwrap();
    assert!(idle(&a).is_err());
    std::fs::write(&a, with_idle(7)).unwrap();
    assert_eq!(idle(&a), Ok(7));
}

#[test]
fn a_full_route_is_normalized() {
    let config = parse(
        r#"
[timeouts]
idle = "500ms"
[[route]]
name = "chat"
host = "*.Example.COM"
path = "/ws/"
subprotocols = ["chat.v2"]
origins = ["HTTPS://Chat.Example.com/"]
backends = ["127.0.0.1:9001", "[::1]:9002", "app:80"]
"#,
    )
    .unwrap();
    let route = &config.routes[0];
    assert_eq!(
        route.host,
        Some(HostPattern::Wildcard(".example.com".into()))
    );
    assert_eq!(route.path, "/ws");
    assert_eq!(
        route.origins.as_deref(),
        Some(&["https://chat.example.com".to_string()][..])
    );
    assert_eq!(config.timeouts.idle, Duration::from_millis(500));
}

#[test]
fn errors_name_file_line_column_and_key() {
    let cases = [
        ("[limits]\nmax_connectionz = 5\n", ":7:1: limits.max_connectionz:"),
        ("[proxy]\nlog_format = \"json\"\n", ":6:2: proxy: the table [proxy] is written twice (first at line 1): put its keys under one header"),
        ("[[route]]\nname = \"a\"\nname = \"b\"\n", ":8:1: route[0].name: `name` is set twice (first at line 7): keep one"),
        // A key written YAML's way, or without its `=`: named as the key, not its value.
        ("[[route]]\nname: \"echo\"\n", ": route[0].name: "),
        ("[[route]]\npath \"/ws\"\n", ": route[0].path: "),
        ("timeouts = { idle = \"1s\", idle = \"2s\" }\n", "`idle` is set twice: keep one"),
        // Set once by a dotted key, once whole: the first is the dotted line.
        (
            "[[route]]\nname = \"a\"\nbackend_tls.ca = \"a.pem\"\nbackend_tls = { ca = \"b.pem\" }\n",
            ":9:1: route[0].backend_tls: `backend_tls` is set twice (first at line 8): keep one",
        ),
        (
            "[[route]]\nname = \"a\"\nbackend_tls.ca = \"a.pem\"\nbackend_tls . ca = \"b.pem\"\n",
            "`ca` is set twice (first at line 8): keep one",
        ),
        ("[timeouts]\nidle = \"soon\"\n", ":7:8: timeouts.idle:"),
        ("[limits]\nmax_connections = 0\n", ":7:19: limits.max_connections: 0 is out of range: must be from 1 to 10000000"),
        ("[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"nope\"]\n", ":9:13: route[0].backends[0]:"),
        (
            "[[route]]\nname = \"a\"\npath = \"/\"\nsubprotocols = [\"ok\", \"bad token\"]\nbackends = [\"h:1\"]\n",
            ":9:23: route[0].subprotocols[1]: \"bad token\" is not a valid subprotocol",
        ),
        (
            "[[route]]\nname = \"a\"\npath = \"/\"\norigins = [\"https://a.com\", \"nope\"]\nbackends = [\"h:1\"]\n",
            ":9:29: route[0].origins[1]: \"nope\" is not an origin",
        ),
        ("[[route]]\nname = \"a\"\npath = \"/a/../b\"\nbackends = [\"h:1\"]\n", "route[0].path: \"/a/../b\" has a '.' or '..' segment"),
        ("[[route]]\nname = \"a\"\npath = \"/v1./b\"\nbackends = [\"h:1\"]\n", "route[0].path: \"/v1./b\" has a segment ending in '.'"),
        ("[[route]]\nname = \"a\"\npath = \"/a%20\"\nbackends = [\"h:1\"]\n", "route[0].path: \"/a%20\" has a segment ending in '.' or a space"),
        ("[[route]]\nname = \"a\"\npath = \"/a/%2E\"\nbackends = [\"h:1\"]\n", "route[0].path:"),
        ("[[route]]\nname = \"a\"\npath = \"/a%2\"\nbackends = [\"h:1\"]\n", "route[0].path: \"/a%2\" has a '%' that does not start an escape"),
        ("[[route]]\nname = \"a\"\npath = \"/a%zz\"\nbackends = [\"h:1\"]\n", "route[0].path:"),
        ("[reload]\nrecheck = \"10ms\"\n", "reload.recheck: must be at least 1s and at most 30 days"),
        ("[reload]\nrecheck = \"0s\"\n", "reload.recheck: must be at least 1s and at most 30 days"),
        ("[reload]\nrecheck = \"31d\"\n", "reload.recheck: must be at least 1s and at most 30 days (read as 31 days)"),
        ("[reload]\nrecheck = \"5M\"\n", "reload.recheck: must be at least 1s and at most 30 days (read as 152.2 days; `M` is months, minutes are `m`)"),
        ("[timeouts]\nidle = \"30d 1s\"\n", "timeouts.idle: must be at least 1ms and at most 30 days (read as 30days 1s)"),
        ("[timeouts]\nhandshake = \"500us\"\n", "timeouts.handshake: must be at least 1ms and at most 30 days (read as 500us)"),
        ("[timeouts]\nattempt_delay = \"1ns\"\n", "timeouts.attempt_delay: must be from 1ms to 30 days, or 0s"),
        ("[limits]\nmax_connections = 99999999999999999999\n", "limits.max_connections: 99999999999999999999 is too large for a number here"),
        ("[limits]\nmax_connections = 9223372036854775808\n", "limits.max_connections: 9223372036854775808 is too large for a number here (no setting takes more than 9223372036854775807)"),
        ("[limits]\nmax_connections_per_client = 18446744073709551615\n", "limits.max_connections_per_client: 18446744073709551615 is too large for a number here"),
        ("[limits]\nmax_connections = 340282366920938463463374607431768211456\n", "limits.max_connections: 340282366920938463463374607431768211456 is too large for a number here (no setting takes more than 9223372036854775807)"),
        ("[limits]\nmax_connections = 1e400\n", "limits.max_connections: 1e400 is too large for a number here"),
        ("[limits]\nmax_connections = -340282366920938463463374607431768211457\n", "is too small for a number here (no setting takes a negative one)"),
        ("[timeouts]\nidle = \"1 0s\"\n", "timeouts.idle: invalid duration \"1 0s\": a space inside a number"),
        ("[timeouts]\nidle = \"3\t0s\"\n", "a space inside a number"),
        ("[reload]\nrecheck = \"25\u{a0}0ms\"\n", "a space inside a number"),
        ("[timeouts]\nidle = \"99999999999999999999s\"\n", "timeouts.idle: invalid duration \"99999999999999999999s\": too long (no setting takes more than 30 days)"),
        ("[reload]\nrecheck = \"999ms\"\n", "reload.recheck: must be at least 1s and at most 30 days (read as 999ms)"),
        ("[[route]]\nname = \"a\"\npath = \"/a%2fb\"\nbackends = [\"h:1\"]\n", "route[0].path: \"/a%2fb\" has a '\\' or an encoded '/'"),
        ("[[route]]\nname = \"a\"\npath = '/a\\b'\nbackends = [\"h:1\"]\n", "route[0].path:"),
        (
            "[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n",
            ":11:8: route[1].name: duplicate route name \"a\" (first at line 7)",
        ),
        ("[[route]]\nname = \"a\"\npath = \"ws\"\nbackends = [\"h:1\"]\n", "route[0].path:"),
        ("[[route]]\nname = \"a\"\npath = \"/;v1\"\nbackends = [\"h:1\"]\n", "route[0].path:"),
        ("[[route]]\nname = \"a\"\npath = \"/a//b\"\nbackends = [\"h:1\"]\n", "route[0].path:"),
        ("[[route]]\nname = \"a\"\npath = \"/ws//\"\nbackends = [\"h:1\"]\n", "has an empty segment ('//')"),
        ("[[route]]\nname = \"a\"\npath = \"//\"\nbackends = [\"h:1\"]\n", "has an empty segment ('//')"),
        ("[[route]]\nname = \"a\"\npath = \"/e%3Bx\"\nbackends = [\"h:1\"]\n", "route[0].path: \"/e%3Bx\" has a ';parameter'"),
        ("[[route]]\nname = \"a\"\npath = \"/e\u{FF1B}x\"\nbackends = [\"h:1\"]\n", "has a ';parameter'"),
        ("[[route]]\nname = \"a\"\npath = \"/a\u{FF0F}b\"\nbackends = [\"h:1\"]\n", "is matched in its Unicode normal form (NFKC), as normalising backends read it: write \"/a/b\""),
        ("[[route]]\nname = \"a\"\npath = \"/\u{1D43}dmin\"\nbackends = [\"h:1\"]\n", "write \"/admin\""),
        ("[[route]]\nname = \"a\"\npath = \"/x/\u{FE30}\"\nbackends = [\"h:1\"]\n", "is read as \"/x/..\" in its Unicode normal form (NFKC), as normalising backends read it, and that cannot be a route path"),
        ("[[route]]\nname = \"a\"\nhost = \"a.com:443\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host:"),
        ("[[route]]\nname = \"a\"\nhost = \"a-.example.com\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host:"),
        ("[[route]]\nname = \"a\"\nhost = \"*.-x.example.com\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host:"),
        ("[[route]]\nname = \"a\"\nhost = \"a..com\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host:"),
        ("[[route]]\nname = \"a\"\nhost = \"a.com:443\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host: \"a.com:443\" has a port, which a route's host leaves out: write \"a.com\""),
        ("[[route]]\nname = \"a\"\nhost = \"\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host: must not be empty: leave `host` out"),
        ("[[route]]\nname = \"a\"\nhost = \"wss://chat.example.com:443/ws\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host: \"wss://chat.example.com:443/ws\" is a URL: write the host name alone (\"chat.example.com\")"),
        ("[[route]]\nname = \"a\"\nhost = \"[::1]\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "is an IPv6 address, which a route's host cannot be"),
        // Addresses: no wildcard over one, and written plainly.
        ("[[route]]\nname = \"a\"\nhost = \"*.0.0.1\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host: \"*.0.0.1\" is a wildcard over an IPv4 address"),
        ("[[route]]\nname = \"a\"\nhost = \"*.1\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "is a wildcard over an IPv4 address"),
        ("[[route]]\nname = \"a\"\nhost = \"127.1\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "route[0].host: \"127.1\" ends in a number but is not an IPv4 address"),
        ("[[route]]\nname = \"a\"\nhost = \"010.0.0.1\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "ends in a number"),
        ("[[route]]\nname = \"a\"\nhost = \"0x7f.0.0.1\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "ends in a number"),
        ("[[route]]\nname = \"a\"\nhost = \"bücher.example\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "write the name in its punycode form"),
        ("[[route]]\nname = \"a\"\nhost = \"chat.example.com\u{200b}\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "has an invisible character (U+200B): delete it"),
        ("[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h\u{200b}:1\"]\n", "invisible character (U+200B): delete it"),
        ("[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"a\u{a0}.b:1\"]\n", "invisible character (U+00A0): delete it"),
        ("[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"[fe80::1]:1\"]\n", "\"[fe80::1]:1\" is a link-local address, reachable only through the interface"),
        ("[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"[::ffff:0.0.0.0]:1\"]\n", "is the unspecified address, which names no server"),
        ("[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"[::ffff:224.0.0.1]:1\"]\n", "is a multicast address"),
        ("[[route]]\nname = \"a\"\nhost = \"fe80::1%eth0\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "is an IPv6 address, which a route's host cannot be"),
        ("[[route]]\nname = \"a\"\nhost = \"*.::1\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "is an IPv6 address, which a route's host cannot be"),
        ("[[route]]\nname = \"a\"\nhost = \"*.*.com\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "has a wildcard other than one leading \"*.\" before a name"),
        ("[[route]]\nname = \"a\"\nhost = \"-a.com\"\npath = \"/\"\nbackends = [\"h:1\"]\n", "is not a host name (dot-separated labels"),
        ("[[route]]\nname = \"a\"\npath = \"/\"\nbackends = []\n", "route[0].backends: needs at least one"),
        ("[[route]]\nname = \"a\"\npath = \"/\"\norigins = []\nbackends = [\"h:1\"]\n", "route[0].origins:"),
    ];
    for (body, expected) in cases {
        let message = error(body);
        assert!(message.starts_with("/etc/wsgate/wsgate.toml:"), "{message}");
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
}

/// A byte order mark before the first line is not counted in its columns: editors do not show
/// it.
/// Of several values out of bounds, the one written first is reported, whatever order the
/// sections and keys are checked in.
#[test]
fn of_several_mistakes_the_one_written_first_is_reported() {
    let cases = [
        (
            "[timeouts]\nconnect = \"0s\"\nhandshake = \"0s\"\n",
            ":7:11: timeouts.connect:",
        ),
        (
            "[limits]\nmax_connections = 0\n[timeouts]\nidle = \"0s\"\n",
            ":7:19: limits.max_connections:",
        ),
        (
            "[limits]\nmax_connections_per_client = 0\nmax_connections = 0\n",
            ":7:30: limits.max_connections_per_client:",
        ),
        (
            "[reload]\nrecheck = \"0s\"\n[timeouts]\nidle = \"0s\"\n",
            ":7:11: reload.recheck:",
        ),
        (
            "[timeouts]\nidle = \"0s\"\n[reload]\nrecheck = \"0s\"\n",
            ":7:8: timeouts.idle:",
        ),
        // Mistakes the parse into types finds (a value of the wrong kind, an unknown key)
        // come in file order too, not in the order of the sections' names.
        (
            "[timeouts]\nidle = \"5x\"\n[limits]\nmax_connections = \"many\"\n",
            ":7:8: timeouts.idle:",
        ),
        (
            "[zzz]\nfoo = 1\n[limits]\nmax_connections = \"many\"\n",
            ":6:2: zzz:",
        ),
        (
            "[timeouts]\nidle = \"5x\"\nconnect = \"5y\"\n",
            ":7:8: timeouts.idle:",
        ),
        // Within a route, whatever order its keys are checked in (the host before the
        // backends, the name before all).
        (
            "[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"app\"]\nhost = \"a.com:443\"\n",
            ":9:13: route[0].backends[0]:",
        ),
        (
            "[[route]]\npath = \"ws\"\nname = \"a b\"\nbackends = [\"127.0.0.1:1\"]\n",
            ":7:8: route[0].path:",
        ),
        (
            "[[route]]\nidle = \"0s\"\nname = \"a\"\npath = \"/x y\"\nbackends = [\"127.0.0.1:1\"]\n",
            ":7:8: route[0].idle:",
        ),
        // An unknown key above a word misspelt, and the other way round.
        (
            "[reload]\nbogus = 1\nwatch = \"Poll\"\n",
            ":7:1: reload.bogus: unknown field",
        ),
        (
            "[reload]\nwatch = \"Poll\"\nbogus = 1\n",
            ":7:9: reload.watch:",
        ),
        // Settings that need tls.client_ca, in file order (still in HEAD's [tls]).
        (
            "client_crl = \"c.pem\"\nclient_auth = \"optional\"\n",
            ":6:14: tls.client_crl:",
        ),
        (
            "recheck_tunnels = true\nclient_auth = \"optional\"\n",
            ":6:19: tls.recheck_tunnels:",
        ),
    ];
    each_error_contains(&cases);
}

/// A key missing from a table is placed at the table's start, and reported before a value of
/// the wrong type written inside it (serde finds it only after reading the table, and stops
/// at the bad value); a misspelt key is still named as written, not as the key it misses.
#[test]
fn a_missing_key_comes_before_a_bad_value_below_it() {
    let cases = [
        (
            "[[route]]\npath = \"/\"\nbackends = \"127.0.0.1:1\"\n",
            ":6:1: route[0]: missing field `name`",
        ),
        (
            "[[route]]\nnme = \"a\"\npath = \"/\"\nbackends = [\"127.0.0.1:1\"]\n",
            ":7:1: route[0].nme: unknown field",
        ),
        // Misspelt, with another key missing too: still the misspelt key.
        (
            "[[route]]\nnme = \"a\"\npath = \"/\"\n",
            ":7:1: route[0].nme: unknown field",
        ),
        // An unknown key like no missing one: a mistake of its own, after the missing key.
        (
            "[[route]]\nname = \"a\"\nfoo = 1\npath = \"/\"\n",
            ":6:1: route[0]: missing field `backends`",
        ),
        // A misspelt key with a mistake above it in its table: that mistake first (then the
        // misspelt key, once it is mended), not the key it misspelt as missing.
        (
            "[[route]]\nbalance = \"rr\"\nnme = \"x\"\npath = \"/\"\nbackends = [\"127.0.0.1:1\"]\n",
            ":7:11: route[0].balance:",
        ),
        (
            "[[route]]\nname = 5\npth = \"/\"\nbackends = [\"127.0.0.1:1\"]\n",
            ":7:8: route[0].name:",
        ),
        // The first route's bad value, above the second's missing name.
        (
            "[[route]]\nname = \"a\"\npath = \"/\"\nbackends = \"x\"\n[[route]]\npath = \"/b\"\nbackends = [\"127.0.0.1:1\"]\n",
            ":9:12: route[0].backends:",
        ),
    ];
    each_error_contains(&cases);
    let src = "[proxy]\nlog_format = \"jsn\"\nlisen = [\"127.0.0.1:8443\"]\n[tls]\n\
               certificates = [{ cert = \"a.crt\", key = \"a.key\" }]\n";
    let message = Config::from_toml_str(src, Path::new("w.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("w.toml:2:14: proxy.log_format:"),
        "{message}"
    );
    let mended = src.replace("\"jsn\"", "\"json\"");
    let message = Config::from_toml_str(&mended, Path::new("w.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("w.toml:3:1: proxy.lisen: unknown field"),
        "{message}"
    );
    let src = "[proxy]\nlisten = [\"127.0.0.1:8443\"]\n[tls]\ncertificates = [{ cert = 5 }]\n";
    let message = Config::from_toml_str(src, Path::new("w.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("w.toml:4:17: tls.certificates[0]: missing field `key`"),
        "{message}"
    );
}

/// `[admin] listen` written above a bad `proxy.listen` is reported first: checked on its own,
/// not only once the proxy's addresses are valid.
#[test]
fn an_admin_address_above_a_bad_proxy_address_is_reported_first() {
    let src = "[admin]\nlisten = \"localhost:9090\"\n\n[proxy]\nlisten = [\"127.0.0.1:99999\"]\n\n\
               [tls]\ncertificates = [{ cert = \"a.crt\", key = \"a.key\" }]\n";
    let message = Config::from_toml_str(src, Path::new("w.toml"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("w.toml:2:10: admin.listen:"), "{message}");
}

/// A multi-line string's lines are no table headers: a `[[route]]` or `[tls]` written inside
/// one does not move the key an error names, nor the line a duplicate was first set on.
#[test]
fn lines_of_a_multiline_string_are_not_headers() {
    let cases = [
        (
            "[[route]]\nname = \"a\"\npath = \"\"\"/\n[[route]]\n\"\"\"\nbackends = [\"127.0.0.1:1\" \"127.0.0.1:2\"]\n",
            ": route[0].backends",
        ),
        (
            "[[route]]\nname = \"a\"\npath = '''/\n[tls]\n'''\nbackends = [\"127.0.0.1:1\"] junk\n",
            ": route[0].backends",
        ),
        (
            "[[route]]\nname = \"a\"\nidle = '''\n[timeouts]\n'''\npath = \"/\"\nidle = \"5s\"\nbackends = [\"127.0.0.1:1\"]\n",
            "`idle` is set twice (first at line 8)",
        ),
    ];
    each_error_contains(&cases);
    // No `[route]` header, only a string's line: no hint about writing one.
    let body =
        "[[route]]\nname = \"\"\"\n[route]\n\"\"\"\npath = 5\nbackends = [\"127.0.0.1:1\"]\n";
    let message = error(body);
    assert!(message.contains("route[0].path"), "{message}");
    assert!(!message.contains("[[route]]"), "{message}");
}

#[test]
fn a_byte_order_mark_is_not_a_column() {
    let path = Path::new("/etc/wsgate/wsgate.toml");
    for (src, expected) in [
        ("\u{feff}[proxyx]\n", ":1:2: proxyx: unknown field"),
        ("\u{feff}x = 1\n", ":1:1: x: unknown field"),
        (
            "\u{feff}[proxy]\nlisen = 1\n",
            ":2:1: proxy.lisen: unknown field",
        ),
    ] {
        let message = match Config::from_toml_str(src, path) {
            Ok(_) => panic!("expected an error for {src:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    } // Nor for a byte that is not UTF-8: column 9 with the mark as without it.
    for bytes in [&b"\xEF\xBB\xBFname = \"\xE9\"\n"[..], b"name = \"\xE9\"\n"] {
        let e = std::str::from_utf8(bytes).unwrap_err();
        let message = ConfigError::not_utf8(path, bytes, e).to_string();
        assert!(message.contains(":1:9: name:"), "{message}");
    }
}

/// A route behind an earlier one with the same host and path, whose subprotocol rule fits
/// every request it would take, could never be chosen: a warning (file order among equal
/// routes is the documented rule, so such a config still loads).
#[test]
fn a_route_that_could_never_be_chosen_is_warned_about() {
    let route = |name: &str, host: &str, path: &str, protocols: &str| {
        format!("[[route]]\nname = \"{name}\"\n{host}path = \"{path}\"\n{protocols}backends = [\"h:1\"]\n")
    };
    let host = "host = \"a.com\"\n";
    let list = |p: &str| format!("subprotocols = [{p}]\n");
    let shadowed = [
        route("a", "", "/x", "") + &route("b", "", "/x/", ""),
        route("a", host, "/x", "") + &route("b", "host = \"A.com.\"\n", "/%78", &list("\"v1\"")),
        route("a", "", "/x", &list("\"v1\", \"v2\"")) + &route("b", "", "/x", &list("\"v2\"")),
        // Wildcards rank as one class: the wider one, first, takes the narrower's hosts.
        route("a", "host = \"*.a.com\"\n", "/x", "")
            + &route("b", "host = \"*.eu.a.com\"\n", "/x", ""),
    ];
    for body in &shadowed {
        let config = parse(body).unwrap();
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.warnings.len(), 1, "{body}");
        let message = config.warnings[0].to_string();
        assert!(
            message.contains(
                ":8: route[1].path: route \"b\" can never be chosen: route \"a\" (line 7)"
            ),
            "{message}\n{body}"
        );
    }
    let reachable = [
        // Different host, different path, or a rule that fits requests the first refuses.
        route("a", host, "/x", "") + &route("b", "", "/x", ""),
        route("a", "", "/x", "") + &route("b", "", "/x/y", ""),
        route("a", "", "/x", &list("\"v1\"")) + &route("b", "", "/x", ""),
        route("a", "", "/x", &list("\"v1\"")) + &route("b", "", "/x", &list("\"v1\", \"v2\"")),
        // The narrower wildcard first: each gets its own hosts.
        route("a", "host = \"*.eu.a.com\"\n", "/x", "")
            + &route("b", "host = \"*.a.com\"\n", "/x", ""),
    ];
    for body in &reachable {
        let config = parse(body).unwrap();
        assert_eq!(config.routes.len(), 2);
        assert!(config.warnings.is_empty(), "{body}: {:?}", config.warnings);
    }
    // Of several routes taking all of a later one's requests, the first is named.
    let body = route("a", "", "/x", &list("\"v1\", \"v2\""))
        + &route("b", "", "/x", "")
        + &route("c", "", "/x", &list("\"v3\""))
        + &route("d", "", "/x", &list("\"v2\", \"v1\""));
    let config = parse(&body).unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("route \"c\" can never be chosen: route \"b\""));
    assert!(warnings[1].contains("route \"d\" can never be chosen: route \"a\""));
    // Several earlier routes that together allow each of a later one's subprotocols, at its
    // host or a wildcard covering it: named together.
    let together = [
        route("a", "", "/x", &list("\"v1\""))
            + &route("b", "", "/x", &list("\"v2\""))
            + &route("c", "", "/x", &list("\"v1\", \"v2\"")),
        route("a", "host = \"*.a.com\"\n", "/x", &list("\"v1\""))
            + &route("b", "host = \"*.eu.a.com\"\n", "/x", &list("\"v2\""))
            + &route(
                "c",
                "host = \"*.x.eu.a.com\"\n",
                "/x",
                &list("\"v2\", \"v1\""),
            ),
    ];
    for body in &together {
        let config = parse(body).unwrap();
        let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("route \"c\" can never be chosen: each of its subprotocols")
                && warnings[0].ends_with("(routes \"a\", \"b\")"),
            "{warnings:?}"
        );
    }
    // One of its protocols allowed by none before it: reachable.
    let body = route("a", "", "/x", &list("\"v1\""))
        + &route("b", "", "/x", &list("\"v2\""))
        + &route("c", "", "/x", &list("\"v1\", \"v3\""));
    assert!(parse(&body).unwrap().warnings.is_empty());
}

#[test]
fn a_config_without_routes_loads_with_a_warning() {
    let config = parse("").unwrap();
    assert_eq!(config.warnings.len(), 1);
    let warning = config.warnings[0].to_string();
    assert!(
        warning.contains("route: no [[route]]: every request gets 404"),
        "{warning}"
    );
}

/// An origin listed twice (once normalised) or a subprotocol listed twice: a warning at the
/// second entry naming the first.
#[test]
fn an_entry_listed_twice_is_warned_about() {
    let body = "[[route]]\nname = \"a\"\npath = \"/\"\norigins = [\"https://a.com\", \"https://b.com\", \"HTTPS://A.com/\"]\nsubprotocols = [\"v1\", \"v1\", \"V1\", \"v1\"]\nbackends = [\"h:1\"]\n";
    let config = parse(body).unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    // A third names the first too.
    assert!(
        warnings[2].contains(
            "route[0].subprotocols[3]: \"v1\" is listed twice (first as route[0].subprotocols[0])"
        ),
        "{warnings:?}"
    );
    assert!(
        warnings[0].contains(":9:46: route[0].origins[2]: \"https://a.com\" is listed twice (first as route[0].origins[0])"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains(":10:23: route[0].subprotocols[1]: \"v1\" is listed twice (first as route[0].subprotocols[0])"),
        "{warnings:?}"
    );
}

#[test]
fn an_origin_with_its_default_port_is_warned_about() {
    let route = |origins: &str| {
        format!(
            "[[route]]\nname = \"a\"\npath = \"/\"\norigins = [{origins}]\nbackends = [\"h:1\"]\n"
        )
    };
    let config = parse(&route("\"https://a.com\", \"HTTPS://b.com:443/\"")).unwrap();
    assert_eq!(config.warnings.len(), 1);
    let warning = config.warnings[0].to_string();
    assert!(
        warning.contains("route[0].origins[1]: browsers leave"),
        "{warning}"
    );
    assert!(warning.contains("write \"https://b.com\""), "{warning}");
    for fine in [
        "\"https://a.com:8443\"",
        "\"http://a.com:443\"",
        "\"https://a.com\"",
    ] {
        assert!(parse(&route(fine)).unwrap().warnings.is_empty(), "{fine}");
    }
}

#[test]
fn a_route_written_as_a_single_table_is_pointed_at_its_brackets() {
    let one = "[route]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n";
    let two = format!("{one}{one}");
    for body in [one.to_string(), two] {
        let error = parse(&body).unwrap_err().to_string();
        assert!(error.contains("written `[[route]]`"), "{error}");
    }
    let fine = parse("[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n");
    assert!(fine.is_ok());
}

#[test]
fn a_fully_qualified_route_host_is_the_host_without_its_dot() {
    let body = "[[route]]\nname = \"a\"\nhost = \"Chat.Example.com.\"\npath = \"/\"\nbackends = [\"h:1\"]\n";
    let config = parse(body).unwrap();
    assert_eq!(
        config.routes[0].host,
        Some(HostPattern::Exact("chat.example.com".into()))
    );
}

#[test]
fn serde_errors_name_the_key_they_are_about() {
    let head = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }]\n";
    let route = "[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n";
    let cases = [
        // A missing field names its table: the header, or the inline table's braces.
        (format!("{head}[[route]]\npath = \"/\"\nbackends = [\"h:1\"]\n"), "w.toml:5:1: route[0]: missing field `name`"),
        (format!("{head}{route}[[route]]\npath = \"/\"\nbackends = [\"h:1\"]\n"), "w.toml:9:1: route[1]: missing field `name`"),
        (format!("{head}[[route]]\nname = \"a\"\npath = \"/\"\n[limits]\n"), "w.toml:5:1: route[0]: missing field `backends`"),
        ("[proxy]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }]\n".into(), "w.toml:1:1: proxy: missing field `listen`"),
        ("[proxy]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }, { cert = \"c\" }]\n".into(), "w.toml:4:44: tls.certificates[1]: missing field `key`"),
        // An unknown field names itself, however deep.
        ("[proxy]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\", pass = \"x\" }]\n".into(), "w.toml:4:42: tls.certificates[0].pass: unknown field `pass`"),
        // A wrong type names the value.
        ("[proxy]\nlisten = \"127.0.0.1:1\"\n".into(), "w.toml:2:10: proxy.listen: invalid type"),
        (format!("{head}[limits]\nmax_connections = \"10\"\n"), "w.toml:6:19: limits.max_connections: invalid type: string \"10\", expected an integer"),
        // Nothing to point at: the field is the key.
        ("[proxy]\nlisten = [\"127.0.0.1:1\"]\n".into(), "w.toml:1:1: tls: missing section [tls]"),
    ];
    for (body, expected) in cases {
        let err = error_in(&body);
        assert!(
            err.starts_with(expected),
            "{err:?} should start with {expected:?}"
        );
    }
}

#[test]
fn bad_listen_addresses_are_named() {
    let err = Config::from_toml_str(
        "[proxy]\nlisten = [\"localhost:8443\"]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }]\n",
        Path::new("w.toml"),
    )
    .unwrap_err();
    assert_eq!(
        err.location.as_ref().map(|l| (l.line, l.key.as_str())),
        Some((2, "proxy.listen[0]"))
    );
    let err = Config::from_toml_str(
        "[proxy]\nlisten = [\"127.0.0.1:8443\", \"0.0.0.0:8443\", \"[::]:8443\"]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }]\n",
        Path::new("w.toml"),
    )
    .unwrap_err();
    assert_eq!(
        err.location.as_ref().map(|l| (l.line, l.key.as_str())),
        Some((2, "proxy.listen[1]"))
    );
    assert!(err.message.contains("overlaps 127.0.0.1:8443"), "{err}");
    let err = Config::from_toml_str(
        "[proxy]\nlisten = [\"[::ffff:127.0.0.1]:8443\"]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }]\n",
        Path::new("w.toml"),
    )
    .unwrap_err();
    assert!(err.message.contains("write it as 127.0.0.1:8443"), "{err}");
    let err = Config::from_toml_str(
        "[proxy]\nlisten = [\"[fe80::1%eth0]:8443\"]\n[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }]\n",
        Path::new("w.toml"),
    )
    .unwrap_err();
    assert!(err.message.contains("interface's number"), "{err}");
}

#[test]
fn broken_toml_points_at_the_line() {
    let err = error("[[route]\nname = 1\n");
    assert!(err.contains(":6:"), "{err}");
    // An unclosed table header names the table, not a key made of it.
    let err = Config::from_toml_str("[proxy\n", Path::new("w.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("w.toml:1:7: proxy: "), "{err}");
    // Left open with a key, its value and a comment behind it on the same line: the table.
    for (header, key) in [
        ("[limits max_connections = 5  # \"q\"", "limits"),
        ("[[route] = \"billing\"", "route[0]"),
        ("[[route]", "route[0]"),
        ("[limits # see [docs]", "limits"),
        ("[[route] # was [[x]]", "route[0]"),
        ("[limits x = \"a]\"", "limits"),
        ("[ \"my table\"", "\"my table\""),
    ] {
        let src = format!("[proxy]\nlisten = [\"127.0.0.1:1\"]\n{header}\nname = \"x\"\n");
        let err = Config::from_toml_str(&src, Path::new("w.toml")).unwrap_err();
        let at = err.location.expect("located");
        assert_eq!((at.line, at.key.as_str()), (3, key), "{header}");
    }
}

/// An array or inline table left open is the mistake of the key whose value it is, not of
/// the header or key the parser stumbled on further down.
#[test]
fn an_unclosed_value_names_its_own_key() {
    let key_of = |src: &str| {
        let err = Config::from_toml_str(src, Path::new("w.toml")).unwrap_err();
        err.location.map(|l| l.key).unwrap_or_default()
    };
    let unclosed_array = "[proxy]\nlisten = [\"127.0.0.1:1\"\n\n[tls]\ncertificates = []\n";
    assert_eq!(key_of(unclosed_array), "proxy.listen");
    let unclosed_table = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ncertificates = [{ cert = \"a]\", key = \"b\" ]\n";
    assert_eq!(key_of(unclosed_table), "tls.certificates");
    let dotted = "[proxy]\ntls.certificates = [\"a\"\n[x]\n";
    assert_eq!(key_of(dotted), "proxy.tls.certificates");
    let in_a_route = "[[route]]\nname = \"a\" # [\nbackends = [\"h:1\"\n[[route]]\nname = \"b\"\n";
    assert_eq!(key_of(in_a_route), "route[0].backends");
    // An `=` inside a string left open, or in a comment, is no key's.
    let in_a_string = "[[route]]\nname = \"a\"\nbalance = \"x=y\n";
    assert_eq!(key_of(in_a_string), "route[0].balance");
    let in_a_comment = "[[route]]\nname = \"a\"\nidle = \"5m    # was = 10m\n[limits]\n";
    assert_eq!(key_of(in_a_comment), "route[0].idle");
}

/// A one-line string left open is named on its own line, where the quote is missing, though
/// the parser reads on and stumbles further down.
#[test]
fn an_unclosed_string_is_named_on_its_line() {
    let place = |src: &str| {
        let err = Config::from_toml_str(src, Path::new("w.toml")).unwrap_err();
        let at = err.location.clone().expect("located");
        (at.line, at.column, at.key, err.message)
    };
    let missing = "a string is not closed: its closing quote is missing at the end of this line";
    let in_array = "[proxy]\nlisten = [\n  \"127.0.0.1:1,\n  \"127.0.0.1:2\",\n]\n";
    assert_eq!(
        place(in_array),
        (3, 16, "proxy.listen".into(), missing.into())
    );
    let before_table = "[proxy]\nlisten = [\"127.0.0.1:1]\r\n[tls]\n";
    assert_eq!(
        place(before_table),
        (2, 24, "proxy.listen".into(), missing.into())
    );
    // Left open on the very line the parser stopped at, the last line too, or closed by what
    // is an escaped quote.
    let last_line = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[[route]]\nname = \"r";
    assert_eq!(
        place(last_line),
        (4, 10, "route[0].name".into(), missing.into())
    );
    let escaped = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[[route]]\nname = \"r\\\"\npath = \"/\"\n";
    let (line, column, key, message) = place(escaped);
    assert_eq!((line, column, key.as_str()), (4, 12, "route[0].name"));
    assert!(message.starts_with(missing), "{message}");
    assert!(
        message.ends_with("a backslash is written \\\\)"),
        "{message}"
    );
    // A quote past where the parser stopped is not the mistake: an opening one is missing, or
    // something stands between two strings. A literal string has no escapes.
    for line in [
        "name = chat\"",
        "name = 'it's'",
        "name = \"a\" x \"",
        "n = [\"a\", b\"]",
    ] {
        let src = format!("[proxy]\nlisten = [\"127.0.0.1:1\"]\n[[route]]\n{line}\n");
        let (_, _, _, message) = place(&src);
        assert!(!message.starts_with(missing), "{line}: {message}");
    }
    let literal = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[[route]]\nname = 'C:\\d\\\"\n";
    assert_eq!(place(literal).3, missing);
    let commented = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[[route]]\nname = \"C:\\d\\\" # x\n";
    assert!(place(commented).3.ends_with("written \\\\)"));
    // A Windows path in an inline table: its bad escape is the mistake, not the missing comma
    // the parser finds first, further on, where `\"` leads it.
    let inline = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ncertificates = [{ cert = \"C:\\dir\\\", key = \"k\" }]\n";
    let (line, column, key, message) = place(inline);
    assert_eq!(
        (line, column, key.as_str()),
        (4, 30, "tls.certificates"),
        "{message}"
    );
    assert!(
        message.ends_with("write it \\\\, or write the path as a 'literal string')"),
        "{message}"
    );
    // `\U` and `\t` are escapes too: the first a broken one, the second a good one, with the
    // string run on past the `\"` meant to close it.
    let users = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ncertificates = [{ cert = \"C:\\Users\\a.crt\", key = \"k\" }]\n";
    assert!(place(users)
        .3
        .ends_with("or write the path as a 'literal string')"));
    let temp = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ncertificates = [{ cert = \"C:\\temp\\\", key = \"k\" }]\n";
    assert!(
        place(temp).3.ends_with("a backslash is written \\\\)"),
        "{}",
        place(temp).3
    );
    // A multi-line string left open swallows the lines below: a backslash there is not the
    // mistake, the string is.
    let open = "[proxy]\nlisten = [\"127.0.0.1:1\"]\nlog_format = \"\"\"json\n[tls]\ncertificates = [{ cert = 'C:\\dir\\a.crt', key = 'k' }]\n";
    let (line, column, key, message) = place(open);
    assert_eq!(
        (line, column, key.as_str()),
        (3, 14, "proxy.log_format"),
        "{message}"
    );
    assert!(
        message.starts_with("a multi-line string is not closed: no \"\"\" closes"),
        "{message}"
    );
    // In an inline table, and a literal one: named where it opens too, not as the table.
    let inline = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ncertificates = [{ cert = \'\'\'a.crt, key = \"k\" }]\n[[route]]\nname = \"a\"\n";
    let (line, column, key, message) = place(inline);
    assert_eq!(
        (line, column, key.as_str()),
        (4, 26, "tls.certificates"),
        "{message}"
    );
    assert!(message.contains("no \'\'\' closes"), "{message}");
    // Quotes escaped inside, the closing one forgotten: no word on escapes.
    let inside = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[[route]]\nname = \"say \\\"hi\\\" and\n";
    assert_eq!(place(inside).3, missing);
    // Strings closed, multi-line ones and comments included, are read past.
    let closed = "[proxy] # \"\nlisten = [\"\"\"a\n\"b\" \\\"\"\"\", 'c']\nx = [\"a\"\n[tls]\n";
    let (line, _, key, message) = place(closed);
    assert_ne!(message, missing, "{closed:?} at {line}: {key}");
}

#[test]
fn missing_sections_are_reported() {
    let err = Config::from_toml_str("[proxy]\nlisten = [\"127.0.0.1:1\"]\n", Path::new("w.toml"))
        .unwrap_err();
    assert!(err.message.contains("tls"), "{err}");
    assert_eq!(err.location.as_ref().map(|l| l.key.as_str()), Some("tls"));
    let err = error("[tls2]\nx = 1\n");
    assert!(err.contains(": tls2: unknown field `tls2`"), "{err}");
}

/// The whole-file error for `src`, a config at "w.toml".
fn error_in(src: &str) -> String {
    match Config::from_toml_str(src, Path::new("w.toml")) {
        Ok(_) => panic!("expected an error for {src:?}"),
        Err(e) => e.to_string(),
    }
}

/// serde's derived structs would take an array and fill their fields by position
/// (`timeouts = ["1s", "2s"]` loaded): every section and entry must be a table.
#[test]
fn sections_and_entries_written_as_arrays_are_refused() {
    let tls = "[tls]\ncertificates = [{ cert = \"a\", key = \"b\" }]\n";
    let cases = [
        (format!("timeouts = [\"1s\", \"2s\", \"3s\"]\n{HEAD}"), "w.toml:1:12: timeouts: must be a table ([timeouts] or timeouts = { handshake = \"10s\" }), not an array"),
        (format!("limits = [2000]\n{HEAD}"), "w.toml:1:10: limits: must be a table ([limits] or"),
        (format!("admin = [\"127.0.0.1:9090\"]\n{HEAD}"), "w.toml:1:9: admin: must be a table ("),
        (format!("reload = [\"poll\"]\n{HEAD}"), "w.toml:1:10: reload: must be a table ("),
        (format!("proxy = [[\"127.0.0.1:8443\"], \"text\", false]\n{tls}"), "w.toml:1:9: proxy: must be a table ("),
        ("proxy = { listen = [\"127.0.0.1:1\"] }\ntls = [[[\"a\", \"b\"]], \"1.3\"]\n".into(), "w.toml:2:7: tls: must be a table ("),
        (format!("route = [[\"a\", \"/\", [\"h:1\"]]]\n{HEAD}"), "w.toml:1:10: route[0]: must be a table ([[route]]"),
        (HEAD.replace("[{ cert = \"a.crt\", key = \"a.key\" }]", "[[\"a.crt\", \"a.key\"]]"), "w.toml:5:17: tls.certificates[0]: must be a table ({ cert = "),
        (format!("{HEAD}[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\nbackend_tls = [\"ca.crt\", \"x\", \"c.crt\", \"c.key\", 5]\n"), "w.toml:10:15: route[0].backend_tls: must be a table (backend_tls = { ca = "),
        (format!("{HEAD}[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n[[route.backend_tls]]\nca = \"ca.crt\"\n"), "w.toml:10:1: route[0].backend_tls: must be a table ("),
        // Any other kind, too, in the operator's words rather than serde's `struct RawProxy`.
        (format!("proxy = 5\n{tls}"), "w.toml:1:9: proxy: must be a table ([proxy] or proxy = { listen = [\"127.0.0.1:8443\"] }), not an integer"),
        (format!("timeouts = \"10s\"\n{HEAD}"), "w.toml:1:12: timeouts: must be a table ([timeouts] or timeouts = { handshake = \"10s\" }), not a string"),
    ];
    for (src, expected) in cases {
        let message = error_in(&src);
        assert!(
            message.starts_with(expected),
            "{message:?} should start with {expected:?}"
        );
        assert!(!message.contains("Raw"), "{message}");
    }
    // Inline tables are tables.
    let inline = format!("timeouts = {{ idle = \"1m\" }}\nroute = [{{ name = \"a\", path = \"/\", backends = [\"h:1\"] }}]\n{HEAD}");
    let config = Config::from_toml_str(&inline, Path::new("w.toml")).unwrap();
    assert_eq!(config.timeouts.idle, Duration::from_secs(60));
    assert_eq!(config.routes.len(), 1);
}

/// TOML date-times reach serde as a map with a private key; no setting takes one, and the
/// message says what belongs there instead.
#[test]
fn a_date_time_or_a_wrong_kind_is_named_in_the_operators_words() {
    let route = "[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n";
    let cases = [
        ("[timeouts]\nidle = 1979-05-27T07:32:00Z\n".into(), ":7:8: timeouts.idle: invalid type: date-time, expected a duration string like \"10s\""),
        (format!("{route}idle = 07:32:00\n"), ":10:8: route[0].idle: invalid type: date-time, expected a duration string like \"10s\""),
        ("[[route]]\nname = 1979-05-27\npath = \"/\"\nbackends = [\"h:1\"]\n".into(), ":7:8: route[0].name: invalid type: date-time: no setting takes one"),
        // Under a key no setting has, the key is what is wrong.
        ("[timeouts]\nwhen = 1979-05-27T07:32:00Z\n".into(), ":7:1: timeouts.when: unknown field `when`"),
        (format!("{route}expires = 1979-05-27\n"), ":10:1: route[0].expires: unknown field `expires`"),
        // A key that is not bare is named quoted, as TOML writes it.
        ("[timeouts]\n\"\" = { a = 1979-05-27 }\n".into(), ":7:1: timeouts.\"\": unknown field ``"),
        ("[timeouts]\n\"a.b\" = 1\n".into(), ":7:1: timeouts.\"a.b\": unknown field `a.b`"),
        ("[timeouts]\nidle = 10\n".into(), ":7:8: timeouts.idle: invalid type: integer `10`, expected a duration string like \"10s\""),
        ("[[route]]\nname = { a = 1 }\npath = \"/\"\nbackends = [\"h:1\"]\n".into(), ":7:8: route[0].name: invalid type: table, expected a string"),
        ("[[route]]\nname = \"a\"\npath = \"/\"\nbackends = \"h:1\"\n".into(), "route[0].backends: invalid type: string \"h:1\", expected an array"),
    ];
    for (body, expected) in cases {
        let message = error(&body);
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
        for internal in ["$__toml", "map", "sequence", "struct", "Raw"] {
            assert!(!message.contains(internal), "{message}");
        }
    }
    let message = error_in(&format!("\"\" = {{ a = 1979-05-27 }}\n{HEAD}"));
    assert!(
        message.starts_with("w.toml:1:1: \"\": unknown field ``"),
        "{message}"
    );
    let message = error_in(&format!("timeouts = 1979-05-27\n{HEAD}"));
    assert!(
        message.starts_with("w.toml:1:12: timeouts: must be a table ("),
        "{message}"
    );
    assert!(message.ends_with("not a date-time"), "{message}");
}

/// toml stops at 80 levels of dotted key with no position of its own: the error points
/// at the deep header or key, not at the top of the file.
#[test]
fn a_key_nested_too_deep_is_pointed_at() {
    let deep = vec!["a"; 100].join(".");
    let header = error(&format!("[{deep}]\n"));
    assert!(
        header.contains(":6:2: a: nested too deep: 100 levels, more than"),
        "{header}"
    );
    let key = error(&format!("[x]\n  {} = 1\n", deep.replace('a', "b")));
    assert!(key.contains(":7:3: x.b: nested too deep"), "{key}");
    let routed = error(&format!("[[route]]\n[[route]]\n{deep} = 1\n"));
    assert!(
        routed.contains(":8:1: route[1].a: nested too deep"),
        "{routed}"
    );
    // Below the limit, the usual unknown field.
    let shallow = error_in(&format!("{HEAD}[{}]\n", ["a"; 10].join(".")));
    assert!(shallow.contains(":6:2: a: unknown field `a`"), "{shallow}");
}

/// A config in Latin-1 (or UTF-16) is refused where its first non-UTF-8 byte is.
#[test]
fn a_file_that_is_not_utf8_is_refused_at_its_first_bad_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    // The error for HEAD with `line` added before `[tls]`, its `\u{1}` made `bad`.
    let refused = |line: &str, bad: u8| {
        let text = HEAD.replace("[tls]\n", &format!("{line}\n[tls]\n"));
        let bytes: Vec<u8> = (text.bytes())
            .map(|b| if b == 1 { bad } else { b })
            .collect();
        std::fs::write(&path, bytes).unwrap();
        Config::load(&path).unwrap_err().to_string()
    };
    let message = refused("# caf\u{1}", 0xE9);
    assert!(message.contains("w.toml:4:6: proxy: "), "{message}");
    assert!(
        message.contains("must be UTF-8 text, and byte 0xE9 here is not"),
        "{message}"
    );
    std::fs::write(&path, b"\xFF\xFE[\x00").unwrap();
    let message = Config::load(&path).unwrap_err().to_string();
    assert!(message.contains("w.toml:1:1: (top level): "), "{message}");
    // In a value, named by its key, whatever the value holds before the byte.
    let message = refused("log_format = \"a=b#c\u{1}\"", 0xFF);
    assert!(message.contains(":4:20: proxy.log_format: "), "{message}");
    // In a bare key: its table, not a piece of the key.
    let message = refused("na\u{1}ve = 1", 0xEF);
    assert!(message.contains(":4:3: proxy: "), "{message}");
}

/// A value or key from the file is echoed escaped, so an error logged at reload cannot
/// forge a log line or drive a terminal; values we quote with `{:?}` are not escaped twice.
#[test]
fn control_characters_from_the_file_are_escaped_in_messages() {
    let controls = r#"\nERROR forged\t\u001b[31m\u0000"#;
    let escaped = r"\nERROR forged\t\u{1b}[31m\0";
    let variant = error_in(&HEAD.replace(
        "[tls]\n",
        &format!("log_format = \"json{controls}\"\n[tls]\n"),
    ));
    assert!(
        variant.contains(&format!("not \"json{escaped}\"")),
        "{variant}"
    );
    let field = error(&format!("\"x{controls}\" = 1\n"));
    assert!(
        field.contains(&format!(": tls.\"x{escaped}\": unknown field `x{escaped}`")),
        "{field}"
    );
    let ours = error(&format!(
        "[[route]]\nname = \"a\"\npath = \"/a{controls}\"\nbackends = [\"h:1\"]\n"
    ));
    assert!(
        ours.contains(&format!("route[0].path: \"/a{escaped}")),
        "{ours}"
    );
    for message in [variant, field, ours] {
        assert!(!message.contains(char::is_control), "{message:?}");
        assert!(!message.contains(r"\\"), "escaped twice: {message}");
    }
    let once = error::escape_controls("a\u{202e}b\n");
    assert_eq!(once, r"a\u{202e}b\n");
    assert_eq!(error::escape_controls(&once), once);
}

/// A route named `name` (a TOML value: quotes included).
fn named_route(name: &str) -> String {
    format!("[[route]]\nname = {name}\npath = \"/\"\nbackends = [\"h:1\"]\n")
}

/// A route with `field = value` (TOML) added, for the value rules below.
fn route_with(field: &str) -> String {
    format!("[[route]]\nname = \"a\"\npath = \"/\"\n{field}\nbackends = [\"h:1\"]\n")
}

/// An `origins` entry that no browser could send is refused, each with its reason.
#[test]
fn origins_are_origins_as_browsers_send_them() {
    let cases = [
        (
            "\"https://*.example.com\"",
            "origins do not support: list each origin",
        ),
        ("\"https://a b.com\"", "does not name a host"),
        ("\"https://a.com?x\"", "path, query, fragment or user name"),
        ("\"https://a.com#x\"", "path, query, fragment or user name"),
        (
            "\"https://user@a.com\"",
            "path, query, fragment or user name",
        ),
        ("\"https://a.com/x\"", "path, query, fragment or user name"),
        ("\"https://a.com:99999\"", "not a number from 1 to 65535"),
        ("\"https://a.com:\"", "not a number from 1 to 65535"),
        (
            "\"https://a.com:08443\"",
            "has a port with a leading zero: write \"https://a.com:8443\"",
        ),
        (
            "\"https://a.com:08443/\"",
            "has a port with a leading zero: write \"https://a.com:8443\"",
        ),
        // The scheme's default port, which browsers leave out.
        (
            "\"https://a.com:0443\"",
            "has a port with a leading zero: write \"https://a.com\"",
        ),
        (
            "\"http://a.com:080\"",
            "has a port with a leading zero: write \"http://a.com\"",
        ),
        ("\"https://a..com\"", "does not name a host"),
        (
            "\"https://a.com\\n\"",
            "has whitespace around it: write \"https://a.com\"",
        ),
        ("\"https://é.com\"", "punycode"),
        ("\"https://[0::1]\"", "write the IPv6 address as [::1]"),
        (
            "\"https://::1\"",
            "an IPv6 address is written in brackets in an origin",
        ),
        (
            "\"https://[::1\"",
            "an IPv6 address is written in brackets in an origin",
        ),
        (
            "\"https://::1]:8443\"",
            "an IPv6 address is written in brackets in an origin",
        ),
        // Browsers write an IPv4-mapped address in hex, never dotted.
        (
            "\"http://[::ffff:127.0.0.1]\"",
            "write the IPv6 address as [::ffff:7f00:1]",
        ),
        ("\"https://127.1\"", "is not an IPv4 address"),
        ("\"http://0x7f000001\"", "is not an IPv4 address"),
        ("\"1https://a.com\"", "no valid scheme"),
        ("\"null\"", "allowing it would allow everyone"),
        ("\"a.com\"", "is not an origin"),
        ("\"app://a%b\"", "an app's own scheme takes letters"),
        ("\"app://a b\"", "an app's own scheme takes letters"),
        ("\"app://[::1]\"", "an app's own scheme takes letters"),
        ("\"https://-\"", "does not name a host as browsers"),
    ];
    for (entry, expected) in cases {
        let message = error(&route_with(&format!("origins = [{entry}]")));
        assert!(
            message.contains("route[0].origins[0]: ") && message.contains(expected),
            "{entry}: {message:?} should contain {expected:?}"
        );
    }
    let fine = "origins = [\"HTTPS://Chat.Example.com/\", \"http://127.0.0.1:8080\", \"https://[::1]:8443\", \"chrome-extension://abc\", \"https://a_b.example.com.\", \"http://[::ffff:7f00:1]\", \"app://.\", \"app://-\", \"tauri://localhost\", \"capacitor://localhost:8080\"]";
    let config = parse(&route_with(fine)).unwrap();
    assert_eq!(
        config.routes[0].origins.as_deref().unwrap_or_default(),
        [
            "https://chat.example.com",
            "http://127.0.0.1:8080",
            "https://[::1]:8443",
            "chrome-extension://abc",
            "https://a_b.example.com.",
            "http://[::ffff:7f00:1]",
            "app://.",
            "app://-",
            "tauri://localhost",
            "capacitor://localhost:8080",
        ]
    );
}

/// A backend is a name, an IPv4 address or a bracketed IPv6 address, and a plain port:
/// nothing a resolver would read otherwise or not at all.
#[test]
fn backends_are_names_or_addresses_with_a_port() {
    let backends =
        |list: &str| format!("[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [{list}]\n");
    let cases = [
        ("\"user@app:80\"", "is not a host name"),
        ("\"*:80\"", "is not a host name"),
        ("\"app,b:80\"", "is not a host name"),
        ("\"-app:80\"", "is not a host name"),
        ("\".app:80\"", "is not a host name"),
        ("\"a..b:80\"", "is not a host name"),
        ("\"a b:80\"", "is not a host name"),
        ("\"%61pp:80\"", "is not a host name"),
        ("\"é.com:80\"", "punycode form (\"xn--"),
        ("\"a\\u0000b:80\"", "control character '\\0'"),
        ("\"a\\tb:80\"", "control character '\\t'"),
        ("\"app\\n:80\"", "control character '\\n'"),
        ("\" app:80\"", "has whitespace around it"),
        ("\"app:+80\"", "not a number from 1 to 65535"),
        ("\"app:0\"", "not a number from 1 to 65535"),
        ("\"app:65536\"", "not a number from 1 to 65535"),
        (
            "\"app:09001\"",
            "\"app:09001\" has a port with a leading zero: write \"app:9001\"",
        ),
        (
            "\"ws://app\"",
            "is a URL: write the backend's host:port alone (\"app:80\")",
        ),
        (
            "\"wss://app:8443\"",
            "is a URL: write the backend's host:port alone (\"app:8443\"), and give the route `backend_tls = { ca = \"…\" }` for TLS to it",
        ),
        (
            "\"wss://app\"",
            "is a URL: write the backend's host:port alone (\"app:443\")",
        ),
        (
            "\"ws://app:9001/chat\"",
            "\"ws://app:9001/chat\" is a URL: write the backend's host:port alone (\"app:9001\")",
        ),
        (
            "\"0.0.0.0:9001\"",
            "is the unspecified address, which names no server",
        ),
        (
            "\"[::]:9001\"",
            "is the unspecified address, which names no server",
        ),
        (
            "\"224.0.0.1:9001\"",
            "is a multicast address, which names no server",
        ),
        (
            "\"255.255.255.255:9001\"",
            "is the broadcast address, which names no server",
        ),
        ("\"app\"", "is not host:port (e.g."),
        ("\"[::1]\"", "is not host:port (e.g."),
        ("\"[fe80::1%2]:80\"", "without a scope id"),
        ("\"127.1:80\"", "is not an IPv4 address"),
        ("\"010.0.0.1:80\"", "is not an IPv4 address"),
        ("\"0x7f000001:80\"", "is not an IPv4 address"),
        ("\"127.0.0.0x1:80\"", "is not an IPv4 address"),
        ("\"app.0X:80\"", "is not an IPv4 address"),
        ("\"10.0.0.7.:80\"", "is not an IPv4 address"),
    ];
    for (entry, expected) in cases {
        let message = error(&backends(entry));
        assert!(
            message.contains("route[0].backends[0]: ") && message.contains(expected),
            "{entry}: {message:?} should contain {expected:?}"
        );
    }
    let fine = [
        "app:80",
        "echo:9001",
        "localhost:1",
        "my-svc.ns.svc.cluster.local:8080",
        "my-svc.ns.svc.cluster.local.:8080",
        "my_service:80",
        "10.0.0.7:65535",
        "[::1]:9001",
    ];
    let list: Vec<String> = fine.iter().map(|b| format!("\"{b}\"")).collect();
    let config = parse(&backends(&list.join(", "))).unwrap();
    assert_eq!(config.routes[0].backends, fine);
}

/// Whitespace around an address, a host or a name was trimmed away: it is refused now,
/// as it is surely a pasting mistake (a newline, say), not part of the value.
#[test]
fn whitespace_around_a_value_is_refused() {
    let config = |listen: &str, admin: &str| {
        format!("[proxy]\nlisten = [{listen}]\n[admin]\nlisten = {admin}\n[tls]\ncertificates = [{{ cert = \"a\", key = \"b\" }}]\n")
    };
    let cases = [
        (config("\" 127.0.0.1:8443\\n\"", "\"127.0.0.1:9090\""), "proxy.listen[0]: \" 127.0.0.1:8443\\n\" has whitespace around it: write \"127.0.0.1:8443\""),
        (config("\"127.0.0.1:8443\"", "\"\\t127.0.0.1:9090 \""), "admin.listen: \"\\t127.0.0.1:9090 \" has whitespace around it"),
        (
            "[proxy]\nlisten = [\"127.0.0.1:8443\"]\n[tls]\ncertificates = [{ cert = \"tls.crt \", key = \"b\" }]\n".to_string(),
            "tls.certificates[0].cert: \"tls.crt \" has whitespace around it: write \"tls.crt\"",
        ),
    ];
    for (body, expected) in cases {
        let message = error_in(&body);
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
    let message = error(&route_with("host = \" chat.example.com\\n\""));
    assert!(
        message.contains("route[0].host: \" chat.example.com\\n\" has whitespace around it"),
        "{message}"
    );
    let message = error(&named_route("\"chat \""));
    assert!(
        message.contains("route[0].name: \"chat \" has whitespace around it"),
        "{message}"
    );
    let message = error(&named_route("\"  \""));
    assert!(
        message.contains("route[0].name: must not be empty"),
        "{message}"
    );
}

/// A route name labels log lines and metrics: no control character, and not the `-`
/// they show for a request no route took.
#[test]
fn a_route_name_reads_the_same_in_logs_and_metrics() {
    let message = error(&named_route("\"-\""));
    assert!(
        message.contains("route[0].name: \"-\" is what log lines and metrics show"),
        "{message}"
    );
    let message = error(&named_route("\"a\\nb\""));
    assert!(
        message.contains("route[0].name: \"a\\nb\" has a control character"),
        "{message}"
    );
    assert!(parse(&named_route("\"chat \\\"eu\\\" -1\"")).is_ok());
}

#[test]
fn a_route_path_with_a_control_character_is_refused_as_such() {
    let message = error(&route_with("").replace("path = \"/\"", "path = \"/a\\u0000b\""));
    assert!(
        message.contains("route[0].path: \"/a\\0b\" has a control character"),
        "{message}"
    );
}

/// Addresses a TCP listener cannot be bound to, or not as they read, are refused before
/// serving: multicast and broadcast, and a scope id where the kernel ignores it (which
/// made `[::1%1]:P` beside `[::1]:P` pass `check` and fail to bind).
#[test]
fn listen_addresses_a_listener_cannot_take_are_refused() {
    let config = |listen: &str, admin: &str| {
        format!("[proxy]\nlisten = [{listen}]\n{admin}[tls]\ncertificates = [{{ cert = \"a\", key = \"b\" }}]\n")
    };
    let admin = |a: &str| format!("[admin]\nlisten = \"{a}\"\n");
    let cases = [
        (config("\"224.0.0.1:8443\"", ""), "proxy.listen[0]: \"224.0.0.1:8443\" is a multicast address"),
        (config("\"[ff02::1]:8443\"", ""), "proxy.listen[0]: \"[ff02::1]:8443\" is a multicast address"),
        (config("\"255.255.255.255:8443\"", ""), "is a broadcast address"),
        (config("\"127.0.0.1:8443\"", &admin("239.1.1.1:9090")), "admin.listen: \"239.1.1.1:9090\" is a multicast address"),
        (config("\"[::1%1]:8443\", \"[::1]:8443\"", ""), "proxy.listen[0]: \"[::1%1]:8443\" has a scope id, which only a link-local address (fe80::/10) uses: write it as [::1]:8443"),
        (config("\"[::%2]:8443\"", ""), "has a scope id"),
        (config("\"[fe80::1]:8443\"", ""), "proxy.listen[0]: \"[fe80::1]:8443\" is a link-local address without a scope id: add the interface's number"),
        (config("\"127.0.0.1:65536\"", ""), "proxy.listen[0]: \"127.0.0.1:65536\" has a port that is not a number from 0 to 65535"),
        (config("\"::1\"", ""), "proxy.listen[0]: \"::1\" is not an IP:port address"),
        (config("\"127.0.0.1:08443\"", ""), "proxy.listen[0]: \"127.0.0.1:08443\" has a port with a leading zero: write \"127.0.0.1:8443\""),
        (config("\"127.0.0.1:021444\"", ""), "has a port with a leading zero: write \"127.0.0.1:21444\""),
        (config("\"127.0.0.1:0000080\"", ""), "has a port with a leading zero: write \"127.0.0.1:80\""),
        (config("\"127.0.0.1:00\"", ""), "has a port with a leading zero: write \"127.0.0.1:0\""),
        (config("\"127.0.0.1:099999\"", ""), "has a port that is not a number from 0 to 65535"),
    ];
    for (body, expected) in cases {
        let message = error_in(&body);
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
    let link_local = config("\"[fe80::1%1]:8443\", \"[fe80::1%2]:8443\"", "");
    assert!(Config::from_toml_str(&link_local, Path::new("w.toml")).is_ok());
}

/// Every invisible character (Unicode category Cf, the line and paragraph separators, the
/// controls) is escaped in messages, once: a key holding one reads as it is written.
#[test]
fn invisible_characters_from_the_file_are_escaped_in_messages() {
    let hidden = [
        '\u{ad}',
        '\u{600}',
        '\u{605}',
        '\u{61c}',
        '\u{6dd}',
        '\u{70f}',
        '\u{890}',
        '\u{891}',
        '\u{8e2}',
        '\u{180e}',
        '\u{200b}',
        '\u{200f}',
        '\u{2028}',
        '\u{2029}',
        '\u{202a}',
        '\u{202e}',
        '\u{2060}',
        '\u{2064}',
        '\u{2066}',
        '\u{206f}',
        '\u{feff}',
        '\u{fff9}',
        '\u{fffb}',
        '\u{110bd}',
        '\u{110cd}',
        '\u{13430}',
        '\u{1343f}',
        '\u{1bca0}',
        '\u{1bca3}',
        '\u{1d173}',
        '\u{1d17a}',
        '\u{e0001}',
        '\u{e0020}',
        '\u{e007f}',
        '\u{85}',
        '\u{7f}',
    ];
    for c in hidden {
        let code = u32::from(c);
        let once = error::escape_controls(&format!("a{c}b"));
        assert_eq!(once, format!("a\\u{{{code:x}}}b"), "U+{code:04X}");
        assert_eq!(error::escape_controls(&once), once, "U+{code:04X} twice");
        // Written as TOML escapes: a raw DEL or C1 control is not allowed in a string.
        let field = error(&format!("\"a\\U{code:08X}b\" = 1\n"));
        assert!(
            field.contains(&format!("unknown field `a\\u{{{code:x}}}b`")),
            "U+{code:04X}: {field}"
        );
    }
    // Their neighbours, and visible text outside ASCII, are shown as they are.
    let visible = "\u{ac}\u{606}\u{2030}\u{13440}\u{e0000}\u{e0080}é✓チャット";
    assert_eq!(error::escape_controls(visible), visible);
}

/// A route name with an invisible character would read differently in the log and the
/// metrics, which carry it raw: refused, with what the name is for.
#[test]
fn a_route_name_must_be_visible_text() {
    let named = |name: &str| named_route(&format!("\"{name}\""));
    let cases = [
        (
            "a\\u202Eb",
            "\"a\\u{202e}b\" has an invisible character (U+202E)",
        ),
        (
            "\\u200b",
            "\"\\u{200b}\" has an invisible character (U+200B)",
        ),
        ("chat\\u00ADeu", "(U+00AD)"),
        ("a\\u2060b", "(U+2060)"),
        ("chat\\U000E0041", "(U+E0041)"),
    ];
    for (name, expected) in cases {
        let message = error(&named(name));
        assert!(
            message.contains("route[0].name: \"")
                && message.contains(expected)
                && message
                    .contains("a name labels log lines and metrics, so it must be visible text"),
            "{name}: {message}"
        );
        assert!(!message.contains(error::is_hidden), "{message:?}");
    }
    assert!(parse(&named("chat-café-チャット")).is_ok());
}

/// serde would read an enum from a one-entry table (`{ json = [] }` as "json"): a setting
/// of a few words must be one of them, quoted.
#[test]
fn a_setting_of_a_few_words_is_not_a_table() {
    let cases = [
        (
            HEAD.replace("[tls]\n", "log_format = { json = [] }\n[tls]\n"),
            ":4:14: proxy.log_format: must be a quoted string (\"json\" or \"text\"), not a table",
        ),
        (
            HEAD.replace("[tls]\n", "log_format = [\"json\"]\n[tls]\n"),
            "proxy.log_format: must be a quoted string (\"json\" or \"text\"), not an array",
        ),
        (
            format!("{HEAD}min_version = {{ \"1.3\" = {{}} }}\n"),
            "tls.min_version: must be a quoted string (\"1.2\" or \"1.3\"), not a table",
        ),
        (
            format!("{HEAD}[reload]\nwatch = {{ poll = [] }}\n"),
            ":7:9: reload.watch: must be a quoted string (\"events\" or \"poll\"), not a table",
        ),
        (
            format!("{HEAD}[reload]\nwatch = {{}}\n"),
            "reload.watch: must be a quoted string (\"events\" or \"poll\"), not a table",
        ),
    ];
    for (src, expected) in cases {
        let message = Config::from_toml_str(&src, Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
    let words = format!("{HEAD}[reload]\nwatch = \"poll\"\n").replace(
        "[tls]\n",
        "log_format = \"json\"\n[tls]\nmin_version = \"1.3\"\n",
    );
    let config = Config::from_toml_str(&words, Path::new("w.toml")).unwrap();
    assert_eq!(config.watch, WatchMode::Poll);
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.tls_min_version, TlsVersion::Tls13);
}

/// Numbers TOML reads but no setting takes, and values nested past what the reader
/// takes, in the file's words and at a readable length.
#[test]
fn numbers_and_nesting_beyond_the_readers_are_told_plainly() {
    let limit = |value: &str| error(&format!("[limits]\nmax_connections = {value}\n"));
    let float = limit("1.5");
    assert!(
        float.contains("limits.max_connections: invalid type: float `1.5`, expected an integer"),
        "{float}"
    );
    let huge = limit("1e308");
    assert!(huge.contains("invalid type: float `1e308`"), "{huge}");
    assert!(huge.len() < 200, "{huge}");
    let tiny = limit("1e-300");
    assert!(tiny.contains("invalid type: float `1e-300`"), "{tiny}");
    let large = limit("99999999999999999999");
    assert!(
        large.contains("limits.max_connections: 99999999999999999999 is too large for a number here (no setting takes more than 9223372036854775807)"),
        "{large}"
    );
    let small = limit("-99999999999999999999");
    assert!(
        small.contains("-99999999999999999999 is too small for a number here"),
        "{small}"
    );
    for message in [float, huge, large, small] {
        assert!(
            !message.contains("floating point") && !message.contains("128"),
            "{message}"
        );
    }
    let arrays = format!("[limits]\nx = {}{}\n", "[".repeat(100), "]".repeat(100));
    let message = error(&arrays);
    assert!(
        message.contains(":7:5: limits.x: nested too deep: 100 levels of arrays and inline tables"),
        "{message}"
    );
    let tables = format!("[limits]\nx = {}{}\n", "{ a = ".repeat(90), " }".repeat(90))
        .replace("{ a =  }", "{ a = 1 }");
    let message = error(&tables);
    assert!(
        message.contains("limits.x: nested too deep: 90 levels of arrays and inline tables"),
        "{message}"
    );
}

/// Pieces a hand edit, a bad merge or a stray paste leaves in a config: TOML's own syntax, values
/// of every type, and text that has tripped parsers (escapes, controls, direction overrides).
const EDITS: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ",",
    ".",
    "#",
    "\n",
    "\r\n",
    "\t",
    " ",
    "'''",
    "\"\"\"",
    "\\",
    "\\u{0}",
    "\\uD800",
    "0",
    "-1",
    "1e400",
    "99999999999999999999",
    "0x1F",
    "inf",
    "nan",
    "true",
    "1979-05-27T07:32:00Z",
    "\"1s\"",
    "\"0s\"",
    "\"5M\"",
    "\"*.a\"",
    "\"[::]:0\"",
    "\"a:99999\"",
    "\"/\"",
    "\"ws://a:1\"",
    "[[route]]",
    "[proxy]",
    "[tls]",
    "[limits]",
    "[admin]",
    "[reload]",
    "[timeouts]",
    "name = \"chat\"",
    "listen",
    "backends",
    "host",
    "path",
    "origins",
    "subprotocols",
    "\u{202e}",
    "\u{feff}",
    "é",
    "\0",
    "\u{1b}[2J",
];

/// One edit: at a place (a fraction of the text), cut this many bytes, or put a piece in.
fn edit() -> impl proptest::strategy::Strategy<Value = (f64, usize, Option<usize>)> {
    (
        0.0..1.0f64,
        0usize..40,
        proptest::option::of(0..EDITS.len()),
    )
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Whatever an edit does to a full config, loading it panics on nothing, and a refusal is
    /// one line that names the file, and a line and column inside it.
    #[test]
    fn no_edit_of_a_config_panics_and_every_refusal_is_located(
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let mut text = include_str!("../../config/example.toml").to_string();
        for (at, cut, piece) in edits {
            let mut start = (text.len() as f64 * at) as usize;
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            match piece {
                Some(piece) => text.insert_str(start, EDITS[piece]),
                None => {
                    let mut end = (start + cut).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(start..end, "");
                }
            }
        }
        let path = Path::new("/etc/wsgate/wsgate.toml");
        if let Err(e) = Config::from_toml_str(&text, path) {
            let said = e.to_string();
            proptest::prop_assert!(said.starts_with("/etc/wsgate/wsgate.toml:"), "{said}");
            proptest::prop_assert!(!said.contains('\n') && !said.contains('\r'), "{said}");
            if let Some(place) = &e.location {
                let lines = text.split('\n').count();
                proptest::prop_assert!(place.line >= 1 && place.line <= lines, "{said}");
                proptest::prop_assert!(place.column >= 1, "{said}");
            }
        }
    }
}

/// One setting of a config as the model below writes it: its section, key and right values,
/// then wrong ones.
struct Setting {
    section: &'static str,
    key: &'static str,
    right: &'static [&'static str],
    wrong: &'static [&'static str],
}

/// A config of every setting, each right or wrong in several ways (`""` for a right one: left
/// out).
const SETTINGS: &[Setting] = &[
    Setting {
        section: "proxy",
        key: "listen",
        right: &[
            r#"["127.0.0.1:8443"]"#,
            r#"["[::1]:8443", "127.0.0.1:9443"]"#,
        ],
        wrong: &[
            r#"["127.0.0.1"]"#,
            r#"["127.0.0.1:99999"]"#,
            "[]",
            r#""127.0.0.1:8443""#,
        ],
    },
    Setting {
        section: "proxy",
        key: "log_format",
        right: &["", r#""json""#],
        wrong: &[r#""JSON""#, "1"],
    },
    Setting {
        section: "tls",
        key: "certificates",
        right: &[r#"[{ cert = "a.crt", key = "a.key" }]"#],
        wrong: &["[]", r#"[{ cert = "a.crt" }]"#],
    },
    Setting {
        section: "timeouts",
        key: "handshake",
        right: &["", r#""10s""#, r#""1m 30s""#],
        wrong: &[r#""10""#, r#""0s""#, r#""10S""#],
    },
    Setting {
        section: "timeouts",
        key: "connect",
        right: &["", r#""500ms""#],
        wrong: &[r#""forever""#, "5"],
    },
    Setting {
        section: "limits",
        key: "max_connections",
        right: &["", "10000"],
        wrong: &["0", "-1", r#""10""#],
    },
    Setting {
        section: "route",
        key: "name",
        right: &[r#""chat""#],
        wrong: &[r#""""#],
    },
    Setting {
        section: "route",
        key: "host",
        right: &["", r#""chat.example.com""#, r#""*.example.com""#],
        wrong: &[r#""chat.example.com:8443""#, r#""a..b""#, r#""*.*.com""#],
    },
    Setting {
        section: "route",
        key: "path",
        right: &[r#""/ws""#, r#""/""#],
        wrong: &[r#""ws""#, r#""/ws?x=1""#],
    },
    Setting {
        section: "route",
        key: "backends",
        right: &[
            r#"["127.0.0.1:9001"]"#,
            r#"["app.internal:9001", "[::1]:9001"]"#,
        ],
        wrong: &[r#"["127.0.0.1"]"#, r#"["ws://app:9001"]"#, "[]"],
    },
    Setting {
        section: "route",
        key: "origins",
        right: &["", r#"["https://chat.example.com"]"#],
        wrong: &[r#"["chat.example.com"]"#],
    },
    Setting {
        section: "route",
        key: "subprotocols",
        right: &["", r#"["chat.v1"]"#],
        wrong: &[r#"["chat v1"]"#],
    },
    Setting {
        section: "route",
        key: "colour",
        right: &[""],
        wrong: &[r#""blue""#],
    },
];

/// The config text of one value per setting (`(wrong, index)`), and for each wrong one the
/// dotted key an error about it names and the line it is on.
fn config_of(choice: &[(bool, usize)]) -> (String, Vec<(String, usize)>) {
    let mut text = String::new();
    let mut section = "";
    let mut wrong = Vec::new();
    for (setting, &(is_wrong, index)) in SETTINGS.iter().zip(choice) {
        if setting.section != section {
            section = setting.section;
            let header = match section {
                "route" => "[[route]]".to_string(),
                other => format!("[{other}]"),
            };
            text.push_str(&format!("{header}\n"));
        }
        let values = if is_wrong {
            setting.wrong
        } else {
            setting.right
        };
        let value = values[index % values.len()];
        if value.is_empty() {
            continue;
        }
        text.push_str(&format!("{} = {value}\n", setting.key));
        if is_wrong {
            let key = match section {
                "route" => format!("route[0].{}", setting.key),
                other => format!("{other}.{}", setting.key),
            };
            wrong.push((key, text.lines().count()));
        }
    }
    (text, wrong)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// A config with any of its settings wrong, in any of several ways, is refused at one of
    /// them: the error names its key and its line. With none wrong, it loads.
    #[test]
    fn a_config_is_refused_at_one_of_its_wrong_settings_and_only_then(
        choice in proptest::collection::vec(
            (proptest::bool::weighted(0.15), 0usize..4),
            SETTINGS.len(),
        ),
    ) {
        let (text, wrong) = config_of(&choice);
        match Config::from_toml_str(&text, Path::new("/etc/wsgate/wsgate.toml")) {
            Ok(_) => proptest::prop_assert!(wrong.is_empty(), "loaded:\n{}", text),
            Err(e) => {
                let place = e.location.clone();
                let at = place.map(|p| (p.key, p.line));
                let named = at.as_ref().is_some_and(|(key, line)| {
                    wrong.iter().any(|(k, l)| key.starts_with(k.as_str()) && line == l)
                });
                proptest::prop_assert!(named, "{} for {:?} in\n{}", e, wrong, text);
            }
        }
    }
}

/// Every ```toml example in the docs loads: a part of a config (one section) with the
/// sections it leaves out taken from a minimal one.
#[test]
fn every_config_example_in_the_docs_loads() {
    let base = [
        ("[proxy]", "[proxy]\nlisten = [\"127.0.0.1:8443\"]\n"),
        (
            "[tls]",
            "[tls]\ncertificates = [{ cert = \"a.crt\", key = \"a.key\" }]\n",
        ),
        (
            "[[route]]",
            "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"127.0.0.1:9001\"]\n",
        ),
    ];
    let mut seen = 0;
    for doc in ["configuration.md", "operations.md"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(doc);
        let text = std::fs::read_to_string(path).unwrap();
        for block in text.split("```toml\n").skip(1) {
            let (example, _) = block.split_once("```").unwrap();
            let mut config = example.to_string();
            for (header, section) in base {
                if !example.lines().any(|line| line.trim() == header) {
                    config.push('\n');
                    config.push_str(section);
                }
            }
            let loaded = Config::from_toml_str(&config, Path::new("/etc/wsgate/wsgate.toml"));
            assert!(loaded.is_ok(), "{doc}: {:?} in\n{config}", loaded.err());
            seen += 1;
        }
    }
    assert!(seen >= 6, "{seen} examples");
}

#[test]
fn a_route_path_with_what_windows_best_fit_reads_as_a_separator_is_refused() {
    // Requests are matched with these read as '/': such a route could not be reached.
    for path in ["/shop/\u{A5}price", "/a\u{2215}b", "/1%E2%81%842"] {
        let read = super::values::route_path(path);
        assert!(read.is_err_and(|e| e.contains("best fit")), "{path}");
    }
    // `½` is no separator, but `1⁄2` in NFKC, and that cannot be a route path.
    let read = super::values::route_path("/\u{BD}");
    assert!(read.is_err_and(|e| e.contains("Unicode normal form")));
}
/// A file whose first byte no key can start with (a control character, binary data) is
/// about the top level: no word of the parser's message is taken for a key.
#[test]
fn a_bad_first_byte_is_at_the_top_level() {
    for src in ["\u{1}", "\u{0}", "\u{7f}"] {
        let e = Config::from_toml_str(src, Path::new("/x.toml"))
            .err()
            .unwrap();
        assert!(
            e.to_string().starts_with("/x.toml:1:1: (top level): "),
            "{e}"
        );
    }
    let e = Config::from_toml_str("x = 1\n\0\0", Path::new("/x.toml"))
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .starts_with("/x.toml:2:1: (top level): a NUL byte"),
        "{e}"
    );
}

/// Syntax errors whose parser words would mislead are told as what they are, where they are:
/// a value on the line after its `=`, a bare word for a boolean, an invisible character where
/// a key starts; and the place named is a key or table, never the punctuation the parser
/// stopped on.
#[test]
fn syntax_errors_are_told_where_the_mistake_is() {
    let route = "[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n";
    each_error_contains(&[
        (
            "[timeouts]\nidle =\n  \"5s\"\n",
            ":7:7: timeouts.idle: `idle =` has no value on its line",
        ),
        (
            "[timeouts]\nidle =   # the idle time\n\n  \"5s\"\n",
            ":7:7: timeouts.idle: `idle =` has no value on its line",
        ),
        (
            &format!("{route}require_client_certificate = on\n"),
            "`on` is no TOML value: a boolean is written true or false",
        ),
        (
            "\u{200b}[timeouts]\nidle = \"5s\"\n",
            ":6:1: tls: an invisible character (U+200B) here",
        ),
        (
            "[timeouts]\nidle = \"5s\"\n\u{a0}connect = \"1s\"\n",
            "(U+00A0)",
        ),
    ]);
    for (body, stopped_on) in [("[timeouts]\n{\n", "{"), ("[timeouts]\n[[\n", "[")] {
        let said = error(body);
        assert!(
            said.contains(": timeouts: ") || said.contains(": (top level): "),
            "{said}"
        );
        assert!(!said.contains(&format!(".{stopped_on}:")), "{said}");
    }
}

/// A value of a megabyte echoed into an error is shown by its start, and the line stays short.
#[test]
fn an_error_shows_a_long_value_by_its_start() {
    let long = "a.".repeat(200_000);
    let said = error(&format!("[reload]\nwatch = \"{long}\"\n"));
    assert!(said.len() < 600, "{} characters", said.len());
    assert!(said.contains(&format!("\"{}…\"", &long[..120])), "{said}");
    let key = "k".repeat(10_000);
    let said = error(&format!("[timeouts]\n{key} = \"1s\"\n"));
    // Cut in its middle: the end, the keys it could have been, stays.
    assert!(said.chars().count() < 2100, "{said}");
    assert!(
        said.contains("characters left out)") && said.ends_with("`attempt_delay`"),
        "{said}"
    );
}

/// A refused backslash escape gets the fix for what it is in: a path, another value, or a
/// surrogate (`\ud800`), which is hex all right but no character.
#[test]
fn a_refused_escape_is_told_for_what_it_is_in() {
    let route =
        |name: &str| format!("[[route]]\nname = \"{name}\"\npath = \"/\"\nbackends = [\"h:1\"]\n");
    each_error_contains(&[
        (&route("a\\d"), "or write the value as a 'literal string')"),
        (&route("a\\ud800"), "half of a UTF-16 pair"),
    ]);
}

/// A table set as a value and then by a header is told as such (no header can add to a
/// value), not as a header written twice.
#[test]
fn a_table_set_as_a_value_and_by_a_header_is_told_as_such() {
    let route = "[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n";
    each_error_contains(&[(
        &format!("{route}backend_tls = {{ ca = \"ca.crt\" }}\n[route.backend_tls]\nca = \"x\"\n"),
        "`backend_tls` is set as a value at line 10 and again by the header [route.backend_tls]: write it one way",
    )]);
}

/// The retold messages fire only where they are right: a bare word that only starts like a
/// switch, a true followed by junk, a string cut open in an array, a number followed by a
/// comment, a value set in another route, a surrogate beside text in another script.
#[test]
fn retold_messages_fire_only_where_they_are_right() {
    let route = "[[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"h:1\"]\n";
    for (body, not_said) in [
        (
            format!("{route}host = on.example.com\n"),
            "is no TOML value",
        ),
        (format!("{route}origins = true 9\n"), "is no TOML value"),
        (
            format!("{route}subprotocols = [\n  \"v1.chat\",\n  \"token=\n]\n"),
            "has no value on its line",
        ),
    ] {
        let said = error(&body);
        assert!(!said.contains(not_said), "{said}");
    }
    each_error_contains(&[
        (
            "[limits]\nmax_connections = 340282366920938463463374607431768211456# note\n",
            "limits.max_connections: 340282366920938463463374607431768211456 is too large",
        ),
        (
            "[[route]]\nname = \"\\ud800漢字\"\npath = \"/\"\nbackends = [\"h:1\"]\n",
            "half of a UTF-16 pair",
        ),
        (
            &format!("{route}backend_tls = {{ ca = \"a\" }}\n{route}backend_tls.server_name = \"app\"\n[route.backend_tls]\nca = \"b\"\n"),
            "`backend_tls` is set as a value at line 15 and again",
        ),
    ]);
}
