//! The control socket, `handoff --pid` and the accept loops under a hostile or careless hand: the
//! wrong path given to --control-socket, a permissive umask, another user, a huge request, a pid
//! that is not an engine-shim, a shim out of file descriptors.

use crate::common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::common::{bin, exit_code, Host, LogLine, Node, Proc, Shim, TIMEOUT};
use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

/// The line that says the control socket is ready.
const LISTENING: &str = "listening for hand-off requests on the control socket";

/// Runs `engine-shim handoff ARGS` to completion: exit code and everything it printed.
async fn hand_off(args: &[&str]) -> (i32, String) {
    hand_off_as(args, None).await
}

/// As [`hand_off`], run as `uid` (and the same gid) when given.
async fn hand_off_as(args: &[&str], uid: Option<u32>) -> (i32, String) {
    let mut command = tokio::process::Command::new(bin("engine-shim"));
    command.arg("handoff").args(args).env_remove("RUST_LOG");
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let output = tokio::time::timeout(TIMEOUT, command.output())
        .await
        .expect("engine-shim handoff finishes")
        .expect("engine-shim handoff runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (exit_code(output.status), text)
}

/// `engine-shim run` with `--control-socket socket` and a node nobody answers on: whatever it does
/// before exiting, it did without the node.
fn shim_without_node(dir: &Path, socket: &Path) -> Proc {
    shim_without_node_with(dir, socket, &[])
}

/// As [`shim_without_node`], with extra `engine-shim run` flags.
fn shim_without_node_with(dir: &Path, socket: &Path, flags: &[&str]) -> Proc {
    let mut command = Command::new(bin("engine-shim"));
    command
        .arg("run")
        .args(["--node", "ws://127.0.0.1:1", "--log-format", "json"])
        .arg("--lock")
        .arg(format!("file:{}", dir.join("engine-shim.lock").display()))
        .args(["--engine-version", "1.0.0", "--control-socket"])
        .arg(socket)
        .args(flags)
        .args(["--", "/bin/true"])
        .env_remove("RUST_LOG");
    Proc::spawn("engine-shim", command)
}

/// Waits for the shim to exit and returns its exit code and its error line.
async fn refusal(mut shim: Proc) -> (i32, String) {
    let code = exit_code(shim.wait_exit().await);
    let (_, message) = shim
        .output
        .wait_for(0, "the error line", |line| {
            LogLine::parse(line)
                .filter(|l| l.level() == "ERROR")
                .map(|l| l.message().to_string())
        })
        .await;
    (code, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_a_stale_socket_at_the_control_socket_path_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();

    let settings = dir.path().join("Settings.toml");
    let content = b"[node]\nws_endpoint = \"ws://localhost:9944\"\n\xff\x00binary too\n";
    fs::write(&settings, content).unwrap();
    let (code, message) = refusal(shim_without_node(dir.path(), &settings)).await;
    assert_eq!(code, 2, "{message}");
    assert!(
        message.contains(&format!(
            "{} is a regular file of {} bytes, not a socket; it was left untouched",
            settings.display(),
            content.len()
        )),
        "{message}"
    );
    assert_eq!(fs::read(&settings).unwrap(), content, "byte for byte");

    let directory = dir.path().join("keys");
    fs::create_dir(&directory).unwrap();
    fs::write(directory.join("key"), b"secret").unwrap();
    let (code, message) = refusal(shim_without_node(dir.path(), &directory)).await;
    assert_eq!(code, 2, "{message}");
    assert!(
        message.contains("is a directory, not a socket"),
        "{message}"
    );
    assert_eq!(fs::read(directory.join("key")).unwrap(), b"secret");

    let link = dir.path().join("shim.sock");
    std::os::unix::fs::symlink(&settings, &link).unwrap();
    let (code, message) = refusal(shim_without_node(dir.path(), &link)).await;
    assert_eq!(code, 2, "{message}");
    assert!(
        message.contains("is a symbolic link, not a socket"),
        "{message}"
    );
    assert_eq!(fs::read_link(&link).unwrap(), settings);
    assert_eq!(fs::read(&settings).unwrap(), content);

    let live = dir.path().join("live.sock");
    let _other_instance = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let (code, message) = refusal(shim_without_node(dir.path(), &live)).await;
    assert_eq!(code, 2, "{message}");
    assert!(
        message.contains("another instance already listens"),
        "{message}"
    );
    assert!(fs::symlink_metadata(&live).unwrap().file_type().is_socket());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_by_one_of_mode_0600_that_goes_away_on_exit() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let socket = host.dir.path().join("shim.sock");
    // An instance that died without cleaning up left its socket behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let socket_arg = socket.display().to_string();
    let mut shim = host
        .shim(&node)
        .engine("1.0.0")
        .shim_args(&["--control-socket", &socket_arg])
        .spawn_with(|command| {
            // SAFETY: umask is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(|| {
                    rustix::process::umask(rustix::fs::Mode::empty());
                    Ok(())
                });
            }
        });
    shim.wait_message(0, &[LISTENING]).await;
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.mode() & 0o7777,
        0o600,
        "mode {:o} under umask 000",
        meta.mode()
    );
    host.wait_event("start", "1.0.0", 1).await;
    let (code, answer) = hand_off(&["--control-socket", &socket_arg]).await;
    assert_eq!(code, 0, "the new socket answers: {answer}");

    shim.proc.signal(Signal::TERM);
    assert_eq!(exit_code(shim.proc.wait_exit().await), 0);
    assert!(
        fs::symlink_metadata(&socket).is_err(),
        "the socket is removed on exit"
    );

    // What someone put at the path after the shim bound it is theirs: the shim leaves it.
    let mut shim = host
        .shim(&node)
        .engine("1.0.0")
        .shim_args(&["--control-socket", &socket_arg])
        .spawn();
    let mark = shim.mark();
    shim.wait_message(0, &[LISTENING]).await;
    // Its engine runs, so it handles SIGTERM by now.
    host.wait_event("start", "1.0.0", 2).await;
    fs::remove_file(&socket).unwrap();
    fs::write(&socket, b"not yours").unwrap();
    shim.proc.signal(Signal::TERM);
    assert_eq!(exit_code(shim.proc.wait_exit().await), 0);
    assert_eq!(fs::read(&socket).unwrap(), b"not yours");
    shim.wait_message(mark, &["left", "alone on exit"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_uid_may_not_hand_off() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test runs a client as uid 65534, which needs root"
    );
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    // A socket another user can reach: a world-searchable directory, and a mode the operator
    // loosened by hand. Only the peer check stands in the way.
    let open_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(open_dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let socket = open_dir.path().join("shim.sock");
    let socket_arg = socket.display().to_string();
    let shim = host
        .shim(&node)
        .engine("1.0.0")
        .shim_args(&["--control-socket", &socket_arg])
        .spawn();
    let engine = host.wait_event("start", "1.0.0", 1).await;
    shim.wait_message(0, &[LISTENING]).await;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();

    let (code, answer) = hand_off_as(&["--control-socket", &socket_arg], Some(65534)).await;
    assert_eq!(code, 1, "{answer}");
    assert!(
        answer.contains("uid 65534 may not ask for a hand-off"),
        "{answer}"
    );
    shim.wait_message(0, &["refused a request from uid 65534"])
        .await;
    assert_eq!(shim.count_messages("hand-off requested"), 0);
    assert!(host.alive().iter().any(|e| e.pid == engine.pid));

    // The owner still may.
    let (code, answer) = hand_off(&["--control-socket", &socket_arg]).await;
    assert_eq!(code, 0, "{answer}");
    assert_eq!(host.wait_event("stop", "1.0.0", 1).await.pid, engine.pid);
}

/// Resident memory of `pid` in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_request_is_cut_off_and_memory_stays_bounded() {
    const REQUEST: usize = 128 << 20;
    const BOUND_KIB: u64 = 64 << 10;
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let socket = host.dir.path().join("shim.sock");
    let socket_arg = socket.display().to_string();
    let shim = host
        .shim(&node)
        .engine("1.1.0")
        .shim_args(&["--control-socket", &socket_arg])
        .spawn();
    shim.wait_message(0, &[LISTENING]).await;
    let before = rss_kib(shim.proc.pid());

    let (read, mut write) = UnixStream::connect(&socket).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'a'; 1 << 20];
        let mut sent = 0;
        while sent < REQUEST {
            if write.write_all(&chunk).await.is_err() {
                break; // the shim closed the connection
            }
            sent += chunk.len();
        }
        sent
    });
    let mut answer = String::new();
    tokio::time::timeout(TIMEOUT, BufReader::new(read).read_line(&mut answer))
        .await
        .expect("an answer to a request without a newline")
        .unwrap();
    assert!(
        answer.starts_with("error: request longer than 1024 bytes"),
        "{answer}"
    );
    let sent = tokio::time::timeout(TIMEOUT, writer)
        .await
        .expect("the shim closes the connection")
        .unwrap();
    assert!(sent < REQUEST, "the shim read all {sent} bytes");
    let after = rss_kib(shim.proc.pid());
    eprintln!("shim RSS: {before} KiB before, {after} KiB after a {REQUEST}-byte request");
    assert!(after < BOUND_KIB, "RSS {after} KiB after the request");

    // The socket still serves well-formed requests.
    let (code, answer) = hand_off(&["--control-socket", &socket_arg]).await;
    assert_eq!(code, 0, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_pid_signals_an_engine_shim_and_nothing_else() {
    // A bystander that would say so (and exit 9) on SIGUSR1, and answers SIGUSR2 with a line.
    let mut command = Command::new("sh");
    command.args([
        "-c",
        "trap 'echo usr1; exit 9' USR1; trap 'echo usr2' USR2; echo ready; \
         while :; do sleep 1000 & wait $!; done",
    ]);
    let mut bystander = Proc::spawn("bystander", command);
    bystander
        .output
        .wait_for(0, "ready", |l| (l == "ready").then_some(()))
        .await;
    let pid = bystander.pid() as i32;
    for (arg, says) in [
        ("--pid=-1".to_string(), "every process".to_string()),
        ("--pid=0".to_string(), "own process group".to_string()),
        (format!("--pid=-{pid}"), format!("process group {pid}")),
        (
            format!("--pid={pid}"),
            format!("pid {pid} is not an engine-shim (it is /"),
        ),
    ] {
        let (code, answer) = hand_off(&[&arg]).await;
        assert_eq!(code, 2, "{arg}: {answer}");
        assert!(answer.contains(&says), "{arg}: {answer}");
    }
    let (code, answer) = hand_off(&["--pid", "-1"]).await;
    assert_eq!(code, 2, "--pid -1: {answer}");
    assert!(answer.contains("would signal every process"), "{answer}");

    // The shell runs pending traps in signal order, so a SIGUSR1 sent before would show first.
    bystander.signal(Signal::USR2);
    bystander
        .output
        .wait_for(0, "usr2", |l| (l == "usr2").then_some(()))
        .await;
    assert!(!bystander.output.lines().iter().any(|l| l == "usr1"));
    assert_eq!(bystander.try_exit(), None, "the bystander still runs");

    // A real engine-shim still gets it.
    let node = Node::start(&["--release", "1.0.0"]).await;
    let idle = Shim::spawn(&node, "1.1.0");
    idle.wait_message(0, &["WAITING for a compatible release version"])
        .await;
    let (code, answer) = hand_off(&[&format!("--pid={}", idle.proc.pid())]).await;
    assert_eq!(code, 0, "{answer}");
    idle.wait_message(0, &["handed off: no engine runs here"])
        .await;

    // An engine's guardian is the engine-shim binary too, but not an instance to hand off.
    let running = Shim::spawn(&node, "1.0.0");
    running.wait_event("start", 1).await;
    let guardians = common::chaos::children_of(running.proc.pid());
    assert_eq!(guardians.len(), 1, "one guardian runs the engine");
    let (code, answer) = hand_off(&[&format!("--pid={}", guardians[0])]).await;
    assert_eq!(code, 2, "{answer}");
    assert!(answer.contains("is the guardian of an engine"), "{answer}");
    assert!(!running.messages().iter().any(|m| m.contains("handed off")));
}

/// `GET path` and the whole answer.
async fn get(addr: &str, path: &str) -> String {
    let work = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: shim\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .unwrap_or_else(|_| panic!("no answer to GET {path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loops_survive_running_out_of_file_descriptors() {
    const FD_LIMIT: u64 = 64;
    const CONNECTIONS: usize = 100;
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let socket = host.dir.path().join("shim.sock");
    let socket_arg = socket.display().to_string();
    let shim = host
        .shim(&node)
        .engine("1.1.0")
        .shim_args(&["--control-socket", &socket_arg])
        .shim_args(&["--metrics-listen", "127.0.0.1:0"])
        .spawn_with(|command| {
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(|| {
                    let limit = rustix::process::Rlimit {
                        current: Some(FD_LIMIT),
                        maximum: Some(FD_LIMIT),
                    };
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
                    Ok(())
                });
            }
        });
    let (_, line) = shim
        .wait_message(0, &["serving /metrics and /health on http://"])
        .await;
    let addr = line.message().rsplit("http://").next().unwrap().to_string();
    shim.wait_message(0, &[LISTENING]).await;
    shim.wait_message(0, &["WAITING for a compatible release version"])
        .await;

    // Far more idle connections than the shim has descriptors for.
    let mut held_tcp = Vec::new();
    let mut held_unix = Vec::new();
    for _ in 0..CONNECTIONS {
        held_tcp.push(TcpStream::connect(&addr).await.expect("connect (backlog)"));
        if let Ok(stream) = UnixStream::connect(&socket).await {
            held_unix.push(stream);
        }
    }
    shim.wait_message(0, &["metrics server on", "cannot accept a connection"])
        .await;
    shim.wait_message(0, &["control socket", "cannot accept a connection"])
        .await;
    drop((held_tcp, held_unix));

    // Both servers answer again.
    let health = get(&addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 "), "{health}");
    let (code, answer) = hand_off(&["--control-socket", &socket_arg]).await;
    assert_eq!(code, 0, "{answer}");
    assert!(answer.contains("handed off"), "{answer}");
    shim.wait_message(0, &["metrics server on", "accepting connections again"])
        .await;
    shim.wait_message(0, &["control socket", "accepting connections again"])
        .await;
    let error_lines = shim.count_messages("cannot accept a connection");
    eprintln!("accept-error lines: {error_lines}");
    assert!(
        error_lines <= 6,
        "{error_lines} accept-error lines:\n{}",
        shim.messages().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_removed_on_an_error_exit_too() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("shim.sock");
    // The metrics address is taken, which fails the start-up after the control socket was bound.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let shim = shim_without_node_with(dir.path(), &socket, &["--metrics-listen", &taken]);
    shim.output
        .wait_for(0, LISTENING, |l| l.contains(LISTENING).then_some(()))
        .await;
    let (code, message) = refusal(shim).await;
    assert_eq!(code, 1, "{message}");
    assert!(message.contains("cannot serve metrics"), "{message}");
    assert!(
        fs::symlink_metadata(&socket).is_err(),
        "the socket is removed on an error exit"
    );
}
