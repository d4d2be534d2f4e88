//! The `fake-node` binary's contract: first stdout line, clean exit on signals, exit 2 on bad input.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};

const BIN: &str = env!("CARGO_BIN_EXE_fake-node");

fn start(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fake-node starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("first line");
    (child, line)
}

/// Waits for the child to exit, bounded so a stuck node fails the test; returns its exit code.
fn wait_exit(mut child: Child) -> Option<i32> {
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || tx.send(child.wait().map(|s| s.code())));
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL);
            panic!("fake-node did not exit in time");
        }
    }
}

fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    kill_process(pid, signal).unwrap();
}

#[test]
fn first_line_names_the_url_and_signals_exit_cleanly() {
    for sig in [Signal::TERM, Signal::INT] {
        let (child, line) = start(&["--port", "0", "--block-time", "0"]);
        let url = line
            .strip_suffix('\n')
            .and_then(|l| l.strip_prefix("listening on ws://127.0.0.1:"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let port: u16 = url.parse().expect("a port number");
        assert_ne!(port, 0);
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("the port accepts connections");
        signal(&child, sig);
        assert_eq!(wait_exit(child), Some(0));
    }
}

#[test]
fn bad_flags_and_scenarios_exit_2() {
    let status = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(status(&["--release", "1.2"]), Some(2));
    assert_eq!(status(&["--block-time", "soon"]), Some(2));
    assert_eq!(status(&["--bogus"]), Some(2));
    assert_eq!(
        status(&["--scenario", "/nonexistent/scenario.toml"]),
        Some(2)
    );
    let dir = std::env::temp_dir().join(format!("fake-node-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[step]]\nat = 1\nrelease = \"one\"\n").unwrap();
    assert_eq!(status(&["--scenario", bad.to_str().unwrap()]), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(status(&["--help"]), Some(0));
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = Command::new(BIN)
        .args(["--port", &port, "--block-time", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}
