//! The shim's log as a hostile world meets it: an output nobody reads, engines and nodes that
//! print control characters, and database passwords in every spelling.
//!
//! - A stuck stdout (journald that stopped reading, a `| tee` whose reader is gone) must hold up
//!   neither the hand-over, nor the forwarding of the engine's output, nor the exit: lines are
//!   dropped, counted (`engine_shim_log_lines_dropped_total`) and reported once the output drains.
//! - Text from engines and nodes cannot forge a log line or drive the terminal: control characters
//!   are escaped.
//! - No spelling of a PostgreSQL URL brings its password into the log.
//!
//! How a test knows the pipe is full without sleeping: the flooding engine writes its lines first
//! and only then execs fake-engine, so its `start` event proves the shim has read (and logged, or
//! dropped) the whole flood — several times what the pipe and the shim's queue can hold.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::common::{
    bin, exit_code, shell_words, wait_gone, wait_until, Host, Node, Proc, TIMEOUT,
};
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Lines the flooding engine prints before it becomes fake-engine: with the padding, about
/// 5 MB of shim log lines, several times the pipe (64 KiB) plus the shim's queue (1 MiB).
const FLOOD_LINES: usize = 30_000;

/// The password every test hides somewhere.
const SECRET: &str = "s3cret";

/// `--engine VERSION=…` for a fake-engine on `host` that first runs `prelude` in `sh`, then execs
/// fake-engine with the shim's arguments (`start-block={block}` …).
fn engine_after(host: &Host, version: &str, prelude: &str) -> String {
    let fake_engine = shell_words(&[
        bin("fake-engine").display().to_string(),
        "--as-version".into(),
        version.into(),
        "--data-dir".into(),
        host.data_dir.display().to_string(),
        "--events".into(),
        host.events.display().to_string(),
    ]);
    let script = format!("{prelude}\nexec {fake_engine} \"$@\"");
    let words = ["/bin/sh".to_string(), "-c".into(), script, "sh".into()];
    format!("{version}={}", shell_words(&words))
}

/// A plain fake-engine on `host`.
fn engine(host: &Host, version: &str) -> String {
    engine_after(host, version, ":")
}

/// A prelude that prints [`FLOOD_LINES`] long lines as fast as it can.
fn flood() -> String {
    format!(
        "yes 'flood line, padded to look like a busy engine: {}' | head -n {FLOOD_LINES}",
        "x".repeat(80)
    )
}

/// `engine-shim run` with this lock, log format, engines and extra flags.
fn shim_command(
    node: &Node,
    lock: &str,
    format: &str,
    engines: &[String],
    args: &[&str],
) -> Command {
    let mut command = Command::new(bin("engine-shim"));
    command
        .arg("run")
        .args(["--node", &node.url, "--log-format", format])
        .args(["--lock", lock]);
    for engine in engines {
        command.arg("--engine").arg(engine);
    }
    command
        .args(args)
        .args(["--", "start-block={block}", "start-hash={block_hash}"])
        .env_remove("RUST_LOG");
    command
}

/// A shim whose stdout and stderr both go to one pipe that the test reads only when it says so.
struct StuckShim {
    child: Child,
    output: BufReader<std::io::PipeReader>,
}

impl StuckShim {
    fn spawn(mut command: Command) -> StuckShim {
        let (reader, writer) = std::io::pipe().expect("pipe");
        command
            .stdin(Stdio::null())
            .stdout(writer.try_clone().expect("dup pipe"))
            .stderr(writer)
            .process_group(0);
        let child = command.spawn().expect("cannot start engine-shim");
        // `command` held the last copy of the write end outside the shim: EOF comes at its exit.
        drop(command);
        StuckShim {
            child,
            output: BufReader::new(reader),
        }
    }

    /// Reads lines until one contains `needle`; returns it. Only for lines the shim writes before
    /// the output gets stuck.
    async fn read_until_line(mut self, needle: &'static str) -> (StuckShim, String) {
        tokio::time::timeout(
            TIMEOUT,
            tokio::task::spawn_blocking(move || loop {
                let mut line = String::new();
                let read = self
                    .output
                    .read_line(&mut line)
                    .expect("read the shim's output");
                assert!(read > 0, "the shim closed its output before {needle:?}");
                if line.contains(needle) {
                    return (self, line);
                }
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("no line with {needle:?} within {TIMEOUT:?}"))
        .unwrap()
    }

    /// Starts reading the rest of the output on a thread; the lines collect in the result.
    fn drain(self) -> (Child, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut output = self.output;
        let collected = lines.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while output.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                collected
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                buf.clear();
            }
        });
        (self.child, lines)
    }

    /// Everything still in the pipe, after the shim has exited.
    fn read_rest(mut self) -> String {
        let mut rest = Vec::new();
        self.output.read_to_end(&mut rest).expect("read the rest");
        String::from_utf8_lossy(&rest).into_owned()
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).expect("signal the shim");
    }
}

/// Waits for `child` to exit (safety net: [`TIMEOUT`]); returns its exit code.
async fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return exit_code(status);
        }
        assert!(
            Instant::now() < deadline,
            "the shim did not exit within {TIMEOUT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Kills the shim's process group if a test failed half-way (the host kills the engines).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
    }
}

/// `GET /metrics` from the shim's metrics address.
async fn metrics(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: shim\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// The value of `engine_shim_log_lines_dropped_total`.
async fn dropped_lines(addr: &str) -> u64 {
    let text = metrics(addr).await;
    text.lines()
        .find_map(|l| l.strip_prefix("engine_shim_log_lines_dropped_total "))
        .unwrap_or_else(|| panic!("no dropped-lines counter in:\n{text}"))
        .parse()
        .unwrap()
}

/// A shim with a flooding 1.0.0 and a plain 1.1.0, its output stuck from the start; returns it
/// once the flood is over (1.0.0 has started), with its metrics address.
async fn stuck_shim_after_a_flood(node: &Node, host: &Host) -> (StuckShim, String) {
    let engines = [engine_after(host, "1.0.0", &flood()), engine(host, "1.1.0")];
    let command = shim_command(
        node,
        &host_lock(host),
        "text",
        &engines,
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let shim = StuckShim::spawn(command);
    let (shim, line) = shim
        .read_until_line("serving /metrics and /health on http://")
        .await;
    let addr = line
        .trim_end()
        .rsplit("http://")
        .next()
        .unwrap()
        .to_string();
    // From here on nobody reads the pipe. The start event comes after the whole flood went
    // through the shim: the engine was never held up by the shim's stuck output.
    host.wait_event("start", "1.0.0", 1).await;
    let dropped = dropped_lines(&addr).await;
    assert!(
        dropped > 0,
        "a flood of {FLOOD_LINES} lines into a stuck output drops lines"
    );
    (shim, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_log_output_holds_up_neither_the_hand_over_nor_the_exit() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let (shim, addr) = stuck_shim_after_a_flood(&node, &host).await;
    let _kill = KillOnDrop(shim.child.id());
    let old = host.wait_event("start", "1.0.0", 1).await;

    node.set_release("1.1.0").await;
    let upgrade = node.new_blocks(1).await; // #1 carries 1.1.0
    let new = host.assert_hand_over(&old, "1.1.0", 1, &upgrade).await;
    host.assert_no_lock_failed();
    let dropped = dropped_lines(&addr).await;
    assert!(dropped > 0);

    let asked = Instant::now();
    shim.signal(Signal::TERM);
    let mut shim = shim;
    let code = wait_exit(&mut shim.child).await;
    let took = asked.elapsed();
    assert_eq!(code, 0, "SIGTERM with a stuck output still exits 0");
    host.wait_event("stop", "1.1.0", 1).await;
    wait_gone(new.pid, "engine 1.1.0").await;
    eprintln!("exit after SIGTERM with stdout stuck took {took:?}; {dropped} lines dropped");

    // What got through before the output stuck is intact, and this was the shim's output.
    let rest = shim.read_rest();
    assert!(
        rest.contains("connected to node") || rest.contains("flood line"),
        "{rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_stuck_output_drains_one_line_says_how_many_lines_were_lost() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let (shim, addr) = stuck_shim_after_a_flood(&node, &host).await;
    let _kill = KillOnDrop(shim.child.id());

    let (mut child, lines) = shim.drain();
    let report = "log lines were dropped while the log output was blocked";
    wait_until("the dropped-lines report", || {
        lines.lock().unwrap().iter().any(|l| l.contains(report))
    })
    .await;
    let line = lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains(report))
        .cloned()
        .unwrap();
    assert!(line.contains(" WARN "), "{line}");
    let reported: u64 = line
        .split(report)
        .next()
        .and_then(|head| head.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"));
    let counted = dropped_lines(&addr).await;
    assert!(
        reported > 0 && reported <= counted,
        "reported {reported}, counted {counted}"
    );

    rustix::process::kill_process(Pid::from_raw(child.id() as i32).unwrap(), Signal::TERM)
        .expect("signal the shim");
    assert_eq!(wait_exit(&mut child).await, 0);
}

/// Text from the engine and from the node is the outside world's: a `\r` or `\n` in it cannot
/// start a forged log line, nor an ESC sequence repaint the operator's terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_and_node_text_cannot_forge_a_log_line() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let prelude = r"printf 'innocent\rINFO forged line\n'
printf 'clear\033[2J title\033]0;owned\007 del\177 csi\302\233 end\n'
printf 'soh\001 vt\013 tab\t nul-free end\n'
printf 'unicode ünïcödé ✓ stays\n'";
    let engines = [engine_after(&host, "1.0.0", prelude)];
    let shim = Proc::spawn(
        "engine-shim",
        shim_command(
            &node,
            &host_lock(&host),
            "text",
            &engines,
            &["--reconnect-max", "1s"],
        ),
    );
    host.wait_event("start", "1.0.0", 1).await;
    let (_, line) = shim
        .output
        .wait_for(0, "the engine's last printed line", |l| {
            l.contains("unicode").then(|| l.to_string())
        })
        .await;
    assert!(line.contains("unicode ünïcödé ✓ stays"), "{line}");

    // The node answers with an error whose message holds a line break and an ESC sequence.
    let _: serde_json::Value = node
        .call(
            "fake_setFault",
            vec![serde_json::json!({
                "method": "state_getStorage",
                "mode": "error",
                "message": "node says\nERROR forged by the node\u{1b}[31m",
            })],
        )
        .await;
    node.new_blocks(1).await;
    shim.output
        .wait_for(0, "the node's error message", |l| {
            l.contains("forged by the node").then_some(())
        })
        .await;

    let lines = shim.output.lines();
    let text = lines.join("\n");
    assert!(
        text.contains(r"innocent\rINFO forged line"),
        "the engine's \\r is escaped on its line:\n{text}"
    );
    assert!(
        text.contains(r"clear\x1b[2J title\x1b]0;owned\x07 del\x7f csi\u{9b} end"),
        "ESC, BEL, DEL and C1 are escaped:\n{text}"
    );
    assert!(
        text.contains(r"soh\x01 vt\x0b tab\t nul-free end"),
        "every other C0 control is escaped:\n{text}"
    );
    assert!(
        text.contains(r"node says\nERROR forged by the node\x1b[31m"),
        "the node's \\n and ESC are escaped:\n{text}"
    );
    for line in &lines {
        assert!(
            !line.chars().any(char::is_control),
            "a raw control character reached the log: {line:?}"
        );
        assert!(
            !line.starts_with("INFO forged") && !line.starts_with("ERROR forged"),
            "a forged line: {line:?}"
        );
    }
}

/// Every spelling of a PostgreSQL URL with a password is refused (exit 2) without repeating it, in
/// both formats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_url_with_a_password_brings_it_into_the_log() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let engines = [engine(&host, "1.0.0")];
    for url in [
        " POSTGRES://shim:s3cret@127.0.0.1:1/locks",
        "PostgreSQL://shim:s3cret@127.0.0.1:1/locks",
        "postgresql://shim:s3cret@127.0.0.1:1/locks ",
        "postgres://shim@127.0.0.1:1/locks?password=s3cret",
    ] {
        for format in ["text", "json"] {
            let mut command = shim_command(&node, url, format, &engines, &[]);
            command.env_remove("ENGINE_SHIM_LOCK_PASSWORD");
            let mut shim = Proc::spawn("engine-shim", command);
            let code = exit_code(shim.wait_exit().await);
            let lines = shim.output.lines();
            assert_eq!(code, 2, "{url:?} ({format}): {lines:#?}");
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("the PostgreSQL URL contains a password")),
                "{url:?} ({format}) is refused as a URL with a password: {lines:#?}"
            );
            assert_secret_absent(&lines);
        }
    }
    assert!(host.events().is_empty(), "no engine may start");
}

/// A PostgreSQL URL in capitals and with a leading space is a PostgreSQL lock: the shim takes the
/// password from the environment, tries the database and says it cannot reach it, and never
/// prints the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upper_case_url_is_a_postgres_lock_and_its_password_stays_out_of_the_log() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let engines = [engine(&host, "1.0.0")];
    for format in ["text", "json"] {
        let lock = " POSTGRES://shim@127.0.0.1:1/locks";
        let mut command = shim_command(&node, lock, format, &engines, &[]);
        command.env("ENGINE_SHIM_LOCK_PASSWORD", SECRET);
        let mut shim = Proc::spawn("engine-shim", command);
        let (started, _) = shim
            .output
            .wait_for(0, "the start-up line naming the lock", |l| {
                l.contains("supervising").then_some(())
            })
            .await;
        let (_, error) = shim
            .output
            .wait_for(started + 1, "the database error", |l| {
                l.contains("cannot reach the lock database")
                    .then(|| l.to_string())
            })
            .await;
        assert!(
            error.contains("postgres://shim@127.0.0.1:1/locks"),
            "{error}"
        );
        shim.signal(Signal::TERM);
        let _ = shim.wait_exit().await;
        assert_secret_absent(&shim.output.lines());
        assert!(host.events().is_empty(), "no engine runs without the lock");
    }
}

/// The host's lock file as a `--lock` value.
fn host_lock(host: &Host) -> String {
    format!("file:{}", host.lock.display())
}

fn assert_secret_absent(lines: &[String]) {
    let leaks: Vec<&String> = lines.iter().filter(|l| l.contains(SECRET)).collect();
    assert!(leaks.is_empty(), "the password was printed: {leaks:#?}");
}
