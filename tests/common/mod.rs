//! Shared harness for the end-to-end tests: real `fake-node`, `engine-shim` and `fake-engine`
//! processes, real sockets.
//!
//! - Binaries come from the same target profile directory as the test executable; build them with
//!   `cargo build --workspace --bins` first.
//! - Every process a test starts is put in its own process group and SIGKILLed (group and all) when
//!   its guard drops, so a failing test leaves nothing behind. Engines started by a shim are found
//!   through their event file and killed too.
//! - Nothing synchronises by sleeping: tests await log lines, event-file lines and process exits,
//!   each with a generous safety-net timeout. On a failing test the captured output of every
//!   process is printed (on every test with `E2E_SHOW_OUTPUT=1`).
#![allow(dead_code)] // each test binary uses its own subset of the harness

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonrpsee::core::client::{ClientT, Error as ClientError};
use jsonrpsee::core::params::ArrayParams;
use jsonrpsee_ws_client::{WsClient, WsClientBuilder};
use rustix::process::{Pid, Signal};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::watch;

/// Safety net for every wait: far longer than anything should take, so only a real hang trips it.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// How often file- and /proc-based waits look again (there is no notification to await for these).
const POLL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------------
// Binaries

/// Path of a workspace binary in the test executable's own profile directory (`target/debug`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has no directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The hex (`0x…`) of the release storage key, as the node's RPC takes it.
pub fn release_key_hex() -> String {
    hex_of(&engine_shim::storage_key::release_key())
}

pub fn hex_of(bytes: &[u8]) -> String {
    let mut out = String::from("0x");
    for byte in bytes {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Captured output

#[derive(Default)]
struct Captured {
    lines: Vec<String>,
    open_streams: usize,
}

/// The lines a process printed, captured by reader threads and awaitable.
#[derive(Clone)]
pub struct Output {
    name: String,
    captured: Arc<Mutex<Captured>>,
    changed: Arc<watch::Sender<()>>,
}

impl Output {
    fn new(name: &str) -> Self {
        Output {
            name: name.to_string(),
            captured: Arc::default(),
            changed: Arc::new(watch::channel(()).0),
        }
    }

    /// Drains `stream` line by line on a thread; stderr lines are prefixed with `[stderr] `.
    fn capture(&self, stream: impl Read + Send + 'static, prefix: &'static str) {
        self.captured.lock().unwrap().open_streams += 1;
        let out = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = format!("{prefix}{}", line.trim_end_matches(['\n', '\r']));
                        out.captured.lock().unwrap().lines.push(line);
                        out.changed.send_replace(());
                    }
                }
            }
            out.captured.lock().unwrap().open_streams -= 1;
            out.changed.send_replace(());
        });
    }

    /// A copy of every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.captured.lock().unwrap().lines.clone()
    }

    /// Number of lines so far: a mark to search from later.
    pub fn mark(&self) -> usize {
        self.captured.lock().unwrap().lines.len()
    }

    /// Waits for the first line at index `from` or later for which `find` returns `Some`; returns
    /// its index and the value. Panics (with the output so far) on timeout or if the process
    /// closed its output first.
    pub async fn wait_for<T>(
        &self,
        from: usize,
        what: &str,
        mut find: impl FnMut(&str) -> Option<T>,
    ) -> (usize, T) {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let mut scanned = from;
        loop {
            changed.borrow_and_update();
            {
                let captured = self.captured.lock().unwrap();
                for (i, line) in captured.lines.iter().enumerate().skip(scanned) {
                    if let Some(found) = find(line) {
                        return (i, found);
                    }
                }
                scanned = scanned.max(captured.lines.len());
                if captured.open_streams == 0 {
                    drop(captured);
                    panic!(
                        "{} closed its output before {what}; output:\n{}",
                        self.name,
                        self.dump()
                    );
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                panic!(
                    "timed out after {TIMEOUT:?} waiting for {what} from {}; output:\n{}",
                    self.name,
                    self.dump()
                );
            }
        }
    }

    /// The last lines, for failure messages.
    pub fn dump(&self) -> String {
        let lines = self.lines();
        let skip = lines.len().saturating_sub(300);
        lines[skip..].join("\n")
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process in its own process group; dropping it SIGKILLs the group and reaps the child.
pub struct Proc {
    pub name: String,
    child: Child,
    pub output: Output,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `command` with stdout/stderr captured and stdin closed, in a new process group.
    pub fn spawn(name: &str, mut command: Command) -> Proc {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        let output = Output::new(name);
        output.capture(child.stdout.take().unwrap(), "");
        output.capture(child.stderr.take().unwrap(), "[stderr] ");
        Proc {
            name: name.to_string(),
            child,
            output,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process itself (not its group).
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("cannot signal {}: {e}", self.name));
    }

    /// Waits for the process to exit (polling `try_wait`; a std child has no async wait).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {TIMEOUT:?}; output:\n{}",
                self.name,
                self.output.dump()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The exit status if the process has exited (and reaps it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait failed");
        }
        self.exited
    }

    /// SIGKILLs the whole process group and reaps the child. Idempotent.
    pub fn kill(&mut self) {
        if self.exited.is_some() {
            return;
        }
        if let Some(pgid) = Pid::from_raw(self.pid() as i32) {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() || show_output() {
            eprintln!(
                "----- output of {} (pid {}) -----\n{}\n----- end of {} -----",
                self.name,
                self.pid(),
                self.output.dump(),
                self.name
            );
        }
    }
}

/// `E2E_SHOW_OUTPUT=1` prints every process's output when its guard drops, even on success.
fn show_output() -> bool {
    std::env::var_os("E2E_SHOW_OUTPUT").is_some()
}

/// True once `pid` no longer runs: no /proc entry, or a zombie (in this sandbox PID 1 does not
/// reap orphans, so a dead orphan stays a zombie and still answers `kill -0`).
pub fn is_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(status) => status
            .lines()
            .find_map(|line| line.strip_prefix("State:"))
            .is_some_and(|state| {
                let state = state.trim_start();
                state.starts_with('Z') || state.starts_with('X')
            }),
    }
}

/// Waits until `pid` is gone (see [`is_gone`]).
pub async fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !is_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) still runs after {TIMEOUT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The exit code, or a panic naming the signal that ended the process.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| panic!("killed by signal {:?}", status.signal()))
}

// ---------------------------------------------------------------------------------------------
// fake-node

/// A `fake-node` process with a control connection.
pub struct Node {
    pub proc: Proc,
    pub url: String,
    pub port: u16,
    args: Vec<String>,
    client: tokio::sync::Mutex<Option<WsClient>>,
}

impl Node {
    /// Starts a manual-block (`--block-time 0`) node on a free port; `args` are extra flags such
    /// as `["--release", "1.0.0"]`.
    pub async fn start(args: &[&str]) -> Node {
        Node::start_on(0, args).await
    }

    /// As [`Node::start`], on the given port (0 = any free port).
    pub async fn start_on(port: u16, args: &[&str]) -> Node {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut command = Command::new(bin("fake-node"));
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--block-time", "0"])
            .args(&args);
        let proc = Proc::spawn("fake-node", command);
        let (_, url) = proc
            .output
            .wait_for(0, "the `listening on ws://HOST:PORT` line", |line| {
                line.strip_prefix("listening on ").map(str::to_string)
            })
            .await;
        let first_stdout_line = proc
            .output
            .lines()
            .into_iter()
            .find(|l| !l.starts_with("[stderr] "));
        assert_eq!(
            first_stdout_line,
            Some(format!("listening on {url}")),
            "the first line of fake-node's stdout must be `listening on ws://HOST:PORT`"
        );
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in {url}"));
        Node {
            proc,
            url,
            port,
            args,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// Kills this node and starts a new one with the same flags on the same port (a restart: the
    /// new node begins again from genesis).
    pub async fn restart(mut self) -> Node {
        let (port, args) = (self.port, std::mem::take(&mut self.args));
        self.proc.kill();
        drop(self);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Node::start_on(port, &args).await
    }

    /// Calls `method` with positional `params`; panics on any error.
    pub async fn call<R: DeserializeOwned>(&self, method: &str, params: Vec<Value>) -> R {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|e| panic!("fake-node {method} failed: {e}"))
    }

    /// Calls `method`, building a new control connection first if the last one was lost.
    pub async fn try_call<R: DeserializeOwned>(
        &self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<R, ClientError> {
        let mut rpc_params = ArrayParams::new();
        for param in params {
            rpc_params.insert(param).expect("params serialize");
        }
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(|c| !c.is_connected()) {
            *client = Some(
                WsClientBuilder::default()
                    .request_timeout(TIMEOUT)
                    .build(&self.url)
                    .await?,
            );
        }
        let result = client.as_ref().unwrap().request(method, rpc_params).await;
        if let Err(ClientError::RestartNeeded(_)) = result {
            *client = None;
        }
        result
    }

    /// Builds `count` blocks; returns the new best hash.
    pub async fn new_blocks(&self, count: u64) -> String {
        self.call("dev_newBlock", vec![json!({ "count": count })])
            .await
    }

    /// Builds blocks until block `number` exists; returns the new best hash.
    pub async fn build_to(&self, number: u64) -> String {
        self.call("dev_newBlock", vec![json!({ "to": number })])
            .await
    }

    /// Sets the release (applies from the next block).
    pub async fn set_release(&self, version: &str) {
        let _: Value = self.call("fake_setRelease", vec![json!(version)]).await;
    }

    /// Sets the raw release storage value (`None` = remove it); applies from the next block.
    pub async fn set_release_value(&self, value: Option<&str>) {
        let _: Value = self
            .call("dev_setStorage", vec![json!([[release_key_hex(), value]])])
            .await;
    }

    pub async fn stall_finality(&self, stalled: bool) {
        let _: Value = self.call("fake_stallFinality", vec![json!(stalled)]).await;
    }

    pub async fn set_syncing(&self, syncing: bool) {
        let _: Value = self.call("fake_setSyncing", vec![json!(syncing)]).await;
    }

    /// Makes `method` answer `mode` ("garbage" | "error" | "none").
    pub async fn set_fault(&self, method: &str, mode: &str) {
        let _: Value = self
            .call(
                "fake_setFault",
                vec![json!({ "method": method, "mode": mode })],
            )
            .await;
    }

    /// Drops every connection, our own control connection included (the next call reconnects).
    pub async fn drop_connections(&self) {
        // The answer may be lost with the connection; either way, every connection is gone.
        let _ = self.try_call::<Value>("fake_dropConnections", vec![]).await;
        *self.client.lock().await = None;
    }

    pub async fn status(&self) -> Value {
        self.call("fake_status", vec![]).await
    }

    /// `chain_getBlockHash(number)`; panics if the node has no such block.
    pub async fn block_hash(&self, number: u64) -> String {
        let hash: Option<String> = self.call("chain_getBlockHash", vec![json!(number)]).await;
        hash.unwrap_or_else(|| panic!("fake-node has no block #{number}"))
    }

    /// The number of the block with this hash, from `chain_getHeader`.
    pub async fn block_number(&self, hash: &str) -> u64 {
        let header: Value = self.call("chain_getHeader", vec![json!(hash)]).await;
        let number = header["number"]
            .as_str()
            .unwrap_or_else(|| panic!("header without a hex number: {header}"));
        u64::from_str_radix(number.trim_start_matches("0x"), 16)
            .unwrap_or_else(|e| panic!("header number {number}: {e}"))
    }

    /// `state_getStorage(release key, hash)`.
    pub async fn release_value_at(&self, hash: &str) -> Option<String> {
        self.call(
            "state_getStorage",
            vec![json!(release_key_hex()), json!(hash)],
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// fake-engine

/// One line of a fake-engine event file.
#[derive(Debug, Clone)]
pub struct EngineEvent {
    pub event: String,
    pub version: String,
    pub pid: u32,
    pub args: Vec<String>,
    pub raw: Value,
}

impl EngineEvent {
    fn parse(line: &str) -> Option<EngineEvent> {
        let raw: Value = serde_json::from_str(line).ok()?;
        Some(EngineEvent {
            event: raw["event"].as_str()?.to_string(),
            version: raw["version"].as_str().unwrap_or_default().to_string(),
            pid: raw["pid"].as_u64()? as u32,
            args: raw["args"]
                .as_array()
                .map(|args| {
                    args.iter()
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            raw,
        })
    }

    /// The value of a `name=VALUE` argument the engine was given.
    pub fn arg(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.args.iter().find_map(|a| a.strip_prefix(&prefix))
    }

    /// The start block the shim substituted for `{block}`.
    pub fn start_block(&self) -> Option<u64> {
        self.arg("start-block").and_then(|b| b.parse().ok())
    }

    /// The start block hash the shim substituted for `{block_hash}`.
    pub fn start_hash(&self) -> Option<&str> {
        self.arg("start-hash")
    }
}

/// Every complete line of an event file so far.
pub fn read_events(path: &Path) -> Vec<EngineEvent> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete.lines().filter_map(EngineEvent::parse).collect()
}

/// Writes an executable script that runs fake-engine as `version`: a stand-in for a real engine
/// binary, for `CMD --version` probing.
pub fn engine_script(dir: &Path, version: &str) -> PathBuf {
    let path = dir.join(format!("engine-{version}"));
    fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec '{}' --as-version {version} \"$@\"\n",
            bin("fake-engine").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// engine-shim run

/// One JSON log line of the shim.
#[derive(Debug, Clone)]
pub struct LogLine(pub Value);

impl LogLine {
    pub fn parse(line: &str) -> Option<LogLine> {
        serde_json::from_str::<Value>(line)
            .ok()
            .filter(|v| v.is_object())
            .map(LogLine)
    }

    pub fn message(&self) -> &str {
        self.0["fields"]["message"].as_str().unwrap_or_default()
    }

    pub fn level(&self) -> &str {
        self.0["level"].as_str().unwrap_or_default()
    }

    pub fn target(&self) -> &str {
        self.0["target"].as_str().unwrap_or_default()
    }

    pub fn field(&self, name: &str) -> &Value {
        &self.0["fields"][name]
    }

    /// The shim's own lines (not forwarded engine output).
    pub fn is_shim(&self) -> bool {
        self.target() != "engine"
    }
}

/// How to start a shim around one fake-engine.
pub struct ShimBuilder {
    node_url: String,
    engine_version: String,
    pass_engine_version: bool,
    shim_args: Vec<String>,
    engine_args: Vec<String>,
}

impl ShimBuilder {
    /// Extra flags for `engine-shim run` (before `--`).
    pub fn shim_args(mut self, args: &[&str]) -> Self {
        self.shim_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Extra flags for fake-engine (e.g. `--crash-after 200ms`).
    pub fn engine_args(mut self, args: &[&str]) -> Self {
        self.engine_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Leaves out `--engine-version`, so the shim probes `CMD --version`.
    pub fn probe_version(mut self) -> Self {
        self.pass_engine_version = false;
        self
    }

    /// Starts `engine-shim run --log-format json … -- <engine script> --data-dir D --events F …
    /// start-block={block} start-hash={block_hash}`.
    pub fn spawn(self) -> Shim {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = dir.path().join("events.jsonl");
        let data_dir = dir.path().join("data");
        fs::create_dir_all(&data_dir).unwrap();
        let engine = engine_script(dir.path(), &self.engine_version);
        let mut command = Command::new(bin("engine-shim"));
        command
            .arg("run")
            .args(["--node", &self.node_url, "--log-format", "json"])
            // Reconnect quickly in tests; production default is 30 s.
            .args(["--reconnect-max", "1s"]);
        if self.pass_engine_version {
            command.args(["--engine-version", &self.engine_version]);
        }
        command
            .args(&self.shim_args)
            .arg("--")
            .arg(&engine)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--events")
            .arg(&events)
            .args(&self.engine_args)
            .args(["--", "start-block={block}", "start-hash={block_hash}"])
            .env_remove("RUST_LOG");
        let proc = Proc::spawn("engine-shim", command);
        Shim {
            proc,
            events,
            dir,
            engine_version: self.engine_version,
        }
    }
}

/// A running `engine-shim run` wrapping one fake-engine, with its log and the engine's events.
pub struct Shim {
    pub proc: Proc,
    pub events: PathBuf,
    pub dir: tempfile::TempDir,
    pub engine_version: String,
}

impl Shim {
    /// A shim following `node` and wrapping fake-engine `--as-version engine_version`.
    pub fn builder(node: &Node, engine_version: &str) -> ShimBuilder {
        ShimBuilder {
            node_url: node.url.clone(),
            engine_version: engine_version.to_string(),
            pass_engine_version: true,
            shim_args: Vec::new(),
            engine_args: Vec::new(),
        }
    }

    /// A shim with default flags.
    pub fn spawn(node: &Node, engine_version: &str) -> Shim {
        Shim::builder(node, engine_version).spawn()
    }

    /// Every JSON log line so far.
    pub fn log(&self) -> Vec<LogLine> {
        self.proc
            .output
            .lines()
            .iter()
            .filter_map(|l| LogLine::parse(l))
            .collect()
    }

    /// Messages of the shim's own lines so far.
    pub fn messages(&self) -> Vec<String> {
        self.log()
            .iter()
            .filter(|l| l.is_shim())
            .map(|l| l.message().to_string())
            .collect()
    }

    /// How many shim messages (not engine output) so far contain `needle`.
    pub fn count_messages(&self, needle: &str) -> usize {
        self.messages()
            .iter()
            .filter(|m| m.contains(needle))
            .count()
    }

    /// A mark in the log to search from later.
    pub fn mark(&self) -> usize {
        self.proc.output.mark()
    }

    /// Waits for a shim line (not engine output) at index `from` or later that satisfies `pred`.
    pub async fn wait_log(
        &self,
        from: usize,
        what: &str,
        pred: impl Fn(&LogLine) -> bool,
    ) -> (usize, LogLine) {
        self.proc
            .output
            .wait_for(from, what, |line| {
                LogLine::parse(line).filter(|l| l.is_shim() && pred(l))
            })
            .await
    }

    /// Waits for a shim message containing every one of `needles`, at `from` or later.
    pub async fn wait_message(&self, from: usize, needles: &[&str]) -> (usize, LogLine) {
        let what = format!("a log message containing {needles:?}");
        self.wait_log(from, &what, |l| {
            needles.iter().all(|n| l.message().contains(n))
        })
        .await
    }

    /// The engine's events so far.
    pub fn engine_events(&self) -> Vec<EngineEvent> {
        read_events(&self.events)
    }

    /// Waits until the event list satisfies `pred`; returns it.
    pub async fn wait_events(
        &self,
        what: &str,
        pred: impl Fn(&[EngineEvent]) -> bool,
    ) -> Vec<EngineEvent> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let events = self.engine_events();
            if pred(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {TIMEOUT:?} waiting for {what}; engine events: {:#?}\nshim output:\n{}",
                events.iter().map(|e| &e.raw).collect::<Vec<_>>(),
                self.proc.output.dump()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for the `n`th (1-based) event named `event`; returns it.
    pub async fn wait_event(&self, event: &str, n: usize) -> EngineEvent {
        let what = format!("engine event #{n} `{event}`");
        let events = self
            .wait_events(&what, |events| {
                events.iter().filter(|e| e.event == event).count() >= n
            })
            .await;
        events
            .into_iter()
            .filter(|e| e.event == event)
            .nth(n - 1)
            .unwrap()
    }

    /// Kills the shim, then every engine it started that may still run.
    pub fn kill_all(&mut self) {
        self.proc.kill();
        for event in self.engine_events() {
            let is_engine = fs::read(format!("/proc/{}/cmdline", event.pid))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("fake-engine"));
            if is_engine {
                if let Some(pid) = Pid::from_raw(event.pid as i32) {
                    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
        }
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() || show_output() {
            eprintln!(
                "----- engine events -----\n{}",
                fs::read_to_string(&self.events).unwrap_or_default()
            );
        }
    }
}

/// Starts a shim and waits until its engine has started; returns the shim and the start event.
pub async fn shim_with_running_engine(builder: ShimBuilder) -> (Shim, EngineEvent) {
    let shim = builder.spawn();
    let start = shim.wait_event("start", 1).await;
    (shim, start)
}

// ---------------------------------------------------------------------------------------------
// engine-shim check

/// What one `engine-shim check` run said.
#[derive(Debug)]
pub struct CheckOutcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CheckOutcome {
    /// The `--json` answer.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("check --json printed no JSON object ({e}): {self:?}"))
    }
}

/// Runs `engine-shim check ARGS` to completion.
pub async fn check(args: &[&str]) -> CheckOutcome {
    let mut command = tokio::process::Command::new(bin("engine-shim"));
    command
        .arg("check")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("engine-shim check {args:?} did not finish within {TIMEOUT:?}"))
        .expect("cannot run engine-shim check");
    CheckOutcome {
        code: exit_code(output.status),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
