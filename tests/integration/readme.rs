//! README.md's main job, as a newcomer runs it: the demo (wsgate and an echo backend, on the
//! default config and the dev certificates) echoes a message through
//! `wss://localhost:8443/echo`, and the `wsclient` example then talks to it. The examples
//! are the ones `cargo test` builds beside this binary; the ports are the README's own.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::*;

/// An example's binary, built by `cargo test` into the `examples` folder beside `deps`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile.join("examples").join(name)
}

/// The README's ports must be free: a demo still running from the README's first command would
/// make this one exit at once, and the test fail with only "no log line" to say why.
fn readme_ports_free() {
    for port in ["127.0.0.1:8443", "127.0.0.1:9001"] {
        if let Err(e) = std::net::TcpListener::bind(port) {
            panic!(
                "{port} is taken ({e}): is the README's demo still running? Stop it (Ctrl-C) \
                 and run the tests again"
            );
        }
    }
}

#[test]
fn the_readme_demo_echoes_through_the_proxy_and_wsclient_talks_to_it() {
    readme_ports_free();
    let mut demo = Command::new(example("demo"));
    demo.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut demo = WsgateChild::spawn(&mut demo);
    let said = stderr_lines(demo.stdout.take().unwrap());
    let url = "wss://localhost:8443/echo";
    let echoed = wait_for_line(&said, "echo OK via");
    assert!(
        echoed.contains(&format!("{url}: hello through wsgate")),
        "{echoed}"
    );
    wait_for_line(&said, &format!("wsgate is serving {url}"));

    let mut client = Command::new(example("wsclient"))
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A line typed, then the end of input: the client closes once it has its echo back.
    let mut typed = client.stdin.take().unwrap();
    typed.write_all(b"typed through wsgate\n").unwrap();
    drop(typed);
    let printed = stderr_lines(client.stdout.take().unwrap());
    let echo = wait_for_line(&printed, "typed through wsgate");
    assert_eq!(echo, "< typed through wsgate");
    // It closes the WebSocket politely and exits.
    let pid = client.id();
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || exited.send(client.wait().unwrap()));
    let exit = exit.recv_timeout(TIMEOUT);
    if exit.is_err() {
        send_signal(pid, "KILL");
    }
    assert!(exit.is_ok_and(|exit| exit.success()), "{exit:?}");
}
