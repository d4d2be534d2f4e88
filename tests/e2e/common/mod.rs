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

pub mod chaos;
pub mod failover;
pub mod package;
pub mod pg;
pub mod scrape;

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

/// Waits until `pred` holds, looking again every few milliseconds (for state with no event to
/// await: /proc, flocks).
pub async fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !pred() {
        assert!(
            Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for {what}"
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

    /// When fake-engine wrote the event (nanoseconds since the Unix epoch).
    pub fn unix_nanos(&self) -> u128 {
        self.raw["unix_nanos"].as_u64().unwrap_or(0) as u128
    }
}

/// Polls an event file (it has no notification to await) until `pred` holds; on the safety-net
/// timeout, panics with what was awaited and `context` of the events seen.
pub async fn wait_for_events(
    path: &Path,
    what: &str,
    pred: impl Fn(&[EngineEvent]) -> bool,
    context: impl Fn(&[EngineEvent]) -> String,
) -> Vec<EngineEvent> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let events = read_events(path);
        if pred(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for {what}; {}",
            context(&events)
        );
        tokio::time::sleep(POLL).await;
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
        // A per-test lock, so concurrently running tests never wait for each other.
        let lock = format!("file:{}", dir.path().join("engine-shim.lock").display());
        let mut command = Command::new(bin("engine-shim"));
        command
            .arg("run")
            .args(["--node", &self.node_url, "--log-format", "json"])
            // Reconnect quickly in tests; production default is 30 s.
            .args(["--reconnect-max", "1s"])
            .args(["--lock", &lock]);
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
            _dir: Arc::new(dir),
            versions: vec![self.engine_version],
        }
    }
}

/// A running `engine-shim run` wrapping one or more fake-engines, with its log and the engines'
/// events.
pub struct Shim {
    pub proc: Proc,
    /// The events file; shared with the other shims of a [`Host`].
    pub events: PathBuf,
    /// The directory holding the engine scripts, events, data and lock (shared within a [`Host`]),
    /// held so it outlives the shim.
    pub _dir: Arc<tempfile::TempDir>,
    /// Every engine version this shim wraps.
    pub versions: Vec<String>,
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

    /// The shim's messages (not engine output) from the line at `mark` (a [`Shim::mark`]) on. The
    /// mark counts every captured line, engine output included, so it cannot index the filtered
    /// list [`Shim::messages`] returns.
    pub fn messages_since(&self, mark: usize) -> Vec<String> {
        self.proc
            .output
            .lines()
            .iter()
            .skip(mark)
            .filter_map(|l| LogLine::parse(l))
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
        wait_for_events(&self.events, what, pred, |events| {
            format!(
                "engine events: {:#?}\nshim output:\n{}",
                events.iter().map(|e| &e.raw).collect::<Vec<_>>(),
                self.proc.output.dump()
            )
        })
        .await
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

    /// Kills the shim, then every engine of its versions that may still run (an events file shared
    /// by several shims also lists the others' engines, which are left alone).
    pub fn kill_all(&mut self) {
        self.proc.kill();
        for event in self.engine_events() {
            if self.versions.contains(&event.version) {
                kill_engine(event.pid);
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

/// SIGKILLs `pid` (and its group) if it is still a fake-engine; a reused pid is left alone.
pub fn kill_engine(pid: u32) {
    if !is_fake_engine(pid) {
        return;
    }
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
}

/// True if `pid` runs fake-engine (guards against a pid the kernel has since reused).
pub fn is_fake_engine(pid: u32) -> bool {
    cmdline_contains(pid, "fake-engine")
}

/// True if the command line of `pid` contains `needle` (false for zombies: they have none).
pub fn cmdline_contains(pid: u32, needle: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
}

/// Starts a shim and waits until its engine has started; returns the shim and the start event.
pub async fn shim_with_running_engine(builder: ShimBuilder) -> (Shim, EngineEvent) {
    let shim = builder.spawn();
    let start = shim.wait_event("start", 1).await;
    (shim, start)
}

// ---------------------------------------------------------------------------------------------
// One host, several engines and shims

/// One machine as an operator sets it up: one data directory, one events file and one lock file
/// shared by every engine version and every shim of a test — as two engine packages on a VPS share
/// `data.db`. fake-engine's exclusive lock on the data directory turns any overlap into a
/// `lock_failed` event, and the shared events file orders every life on one clock.
pub struct Host {
    pub dir: Arc<tempfile::TempDir>,
    pub data_dir: PathBuf,
    pub events: PathBuf,
    /// The lock file every shim of this host is given (`--lock file:PATH`).
    pub lock: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

impl Host {
    pub fn new() -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        fs::create_dir_all(&data_dir).unwrap();
        Host {
            data_dir,
            events: dir.path().join("events.jsonl"),
            lock: dir.path().join("engine-shim.lock"),
            dir: Arc::new(dir),
        }
    }

    /// A shim on this host following `node`; add engines with [`HostShimBuilder::engine`].
    pub fn shim(&self, node: &Node) -> HostShimBuilder {
        HostShimBuilder {
            node_url: node.url.clone(),
            dir: self.dir.clone(),
            data_dir: self.data_dir.clone(),
            events: self.events.clone(),
            lock_path: self.lock.clone(),
            engines: Vec::new(),
            versions: Vec::new(),
            shim_args: Vec::new(),
            lock: None,
            shared_args: vec![
                "start-block={block}".into(),
                "start-hash={block_hash}".into(),
            ],
        }
    }

    /// Every engine event on this host so far.
    pub fn events(&self) -> Vec<EngineEvent> {
        read_events(&self.events)
    }

    /// Waits until the host's event list satisfies `pred`; returns it.
    pub async fn wait_events(
        &self,
        what: &str,
        pred: impl Fn(&[EngineEvent]) -> bool,
    ) -> Vec<EngineEvent> {
        wait_for_events(&self.events, what, pred, |events| {
            format!("engine events:\n{}", describe_events(events))
        })
        .await
    }

    /// Waits for the `n`th (1-based) `event` (start, stop, crash…) of engine `version`.
    pub async fn wait_event(&self, event: &str, version: &str, n: usize) -> EngineEvent {
        let what = format!("event #{n} `{event}` of engine {version}");
        let matches = |e: &&EngineEvent| e.event == event && e.version == version;
        let events = self
            .wait_events(&what, |events| events.iter().filter(matches).count() >= n)
            .await;
        events.iter().filter(matches).nth(n - 1).unwrap().clone()
    }

    /// Start events of this host's engines that still run (per /proc: zombies count as gone; a pid
    /// the kernel has since given to another process, even another host's engine, does not count).
    pub fn alive(&self) -> Vec<EngineEvent> {
        let events = self.events.display().to_string();
        alive_engines(&self.events())
            .into_iter()
            .filter(|e| cmdline_contains(e.pid, &events))
            .collect()
    }

    /// Panics (listing the events) if any engine failed to lock the shared data directory, i.e. two
    /// engines were alive on it at once.
    pub fn assert_no_lock_failed(&self) {
        let events = self.events();
        assert!(
            !events.iter().any(|e| e.event == "lock_failed"),
            "an engine found the data directory locked by another one:\n{}",
            describe_events(&events)
        );
    }

    /// Waits for the hand-over from the running `old` engine to `new_version` and checks its
    /// order: `old` stopped (its own stop event) before the new engine started, and the new engine
    /// was told the hand-over block. Returns the new engine's start event.
    pub async fn assert_hand_over(
        &self,
        old: &EngineEvent,
        new_version: &str,
        block: u64,
        block_hash: &str,
    ) -> EngineEvent {
        let new = self.wait_event("start", new_version, 1).await;
        let stop = self.wait_event("stop", &old.version, 1).await;
        assert_eq!(stop.pid, old.pid);
        assert!(
            stop.unix_nanos() < new.unix_nanos(),
            "stop({}) before start({new_version})",
            old.version
        );
        assert_eq!(
            new.start_block(),
            Some(block),
            "{{block}} = the upgrade block"
        );
        assert_eq!(new.start_hash(), Some(block_hash));
        new
    }

    /// Panics if the events (plus moments the test saw an engine alive) prove two lives overlapped.
    pub fn assert_lives_never_overlap(&self, seen_alive: &[(u32, u128)]) {
        let events = self.events();
        let overlaps = overlapping_lives(&events, seen_alive);
        assert!(
            overlaps.is_empty(),
            "two engines were alive at once: {overlaps:#?}\nevents:\n{}",
            describe_events(&events)
        );
    }

    /// True if nobody holds the host's lock file (checked with a non-blocking flock that is
    /// released at once, so no shim ever waits for the test).
    pub fn lock_is_free(&self) -> bool {
        lock_is_free(&self.lock)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for event in self.events() {
            kill_engine(event.pid);
        }
        if std::thread::panicking() || show_output() {
            eprintln!(
                "----- engine events of the host -----\n{}",
                describe_events(&self.events())
            );
        }
    }
}

/// True if nobody holds an flock on `path` (a missing file is free).
pub fn lock_is_free(path: &Path) -> bool {
    let Ok(file) = fs::OpenOptions::new().read(true).open(path) else {
        return true;
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            true
        }
        Err(_) => false,
    }
}

/// How to start a shim on a [`Host`] with one or more engines.
pub struct HostShimBuilder {
    node_url: String,
    dir: Arc<tempfile::TempDir>,
    data_dir: PathBuf,
    events: PathBuf,
    lock_path: PathBuf,
    engines: Vec<String>,
    versions: Vec<String>,
    shim_args: Vec<String>,
    lock: Option<String>,
    shared_args: Vec<String>,
}

impl HostShimBuilder {
    /// Adds `--engine VERSION=CMD` for a fake-engine of `version` on the host's data dir and events.
    pub fn engine(self, version: &str) -> Self {
        self.engine_with(version, &[])
    }

    /// As [`Self::engine`], with extra fake-engine flags (`--shutdown-delay 500ms`, `--ignore-term`).
    pub fn engine_with(mut self, version: &str, flags: &[&str]) -> Self {
        let program = bin("fake-engine");
        let mut words = vec![
            program.display().to_string(),
            "--as-version".into(),
            version.into(),
        ];
        words.extend(self.host_flags(flags));
        self.engines
            .push(format!("{version}={}", shell_words(&words)));
        self.versions.push(version.to_string());
        self
    }

    /// Adds `--engine CMD` without a version: the shim learns it from `CMD --version` (CMD is a
    /// script that runs fake-engine as `version`).
    pub fn probed_engine(mut self, version: &str, flags: &[&str]) -> Self {
        let script = self.dir.path().join(format!("engine-{version}"));
        // Written once: rewriting a script another shim may be executing fails with ETXTBSY.
        if !script.exists() {
            engine_script(self.dir.path(), version);
        }
        let mut words = vec![script.display().to_string()];
        words.extend(self.host_flags(flags));
        self.engines.push(shell_words(&words));
        self.versions.push(version.to_string());
        self
    }

    fn host_flags(&self, flags: &[&str]) -> Vec<String> {
        let mut words = vec![
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
            "--events".to_string(),
            self.events.display().to_string(),
        ];
        words.extend(flags.iter().map(|f| f.to_string()));
        words
    }

    /// Extra flags for `engine-shim run` (e.g. `--grace 300ms`).
    pub fn shim_args(mut self, args: &[&str]) -> Self {
        self.shim_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The `--lock` spec instead of the default `file:<host lock>`.
    pub fn lock(mut self, spec: &str) -> Self {
        self.lock = Some(spec.to_string());
        self
    }

    /// The `engine-shim run` command line this builder stands for.
    pub fn command(&self) -> Command {
        let lock = self
            .lock
            .clone()
            .unwrap_or_else(|| format!("file:{}", self.lock_path.display()));
        let mut command = Command::new(bin("engine-shim"));
        command
            .arg("run")
            .args(["--node", &self.node_url, "--log-format", "json"])
            .args(["--reconnect-max", "1s"])
            .args(["--lock", &lock]);
        for engine in &self.engines {
            command.arg("--engine").arg(engine);
        }
        command
            .args(&self.shim_args)
            .arg("--")
            .args(&self.shared_args)
            .env_remove("RUST_LOG");
        command
    }

    /// Starts `engine-shim run --log-format json --lock file:<host lock> --engine … -- start-block={block}
    /// start-hash={block_hash}`.
    pub fn spawn(self) -> Shim {
        self.spawn_with(|_| {})
    }

    /// As [`Self::spawn`], after `tweak` adjusted the command (e.g. a `pre_exec` that sets the
    /// umask or a resource limit).
    pub fn spawn_with(self, tweak: impl FnOnce(&mut Command)) -> Shim {
        assert!(!self.engines.is_empty(), "a shim needs at least one engine");
        let name = format!("engine-shim[{}]", self.versions.join(","));
        let mut command = self.command();
        tweak(&mut command);
        let proc = Proc::spawn(&name, command);
        Shim {
            proc,
            events: self.events,
            _dir: self.dir,
            versions: self.versions,
        }
    }
}

/// Joins words into one shell-like command string, single-quoting each word that needs it.
pub fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%{}".contains(c));
            if plain {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Events an engine writes as its last, while still holding its data directory: a clean stop, a
/// crash, or an exit because the release no longer fits (`fake-engine --node`).
pub fn ends_a_life(event: &str) -> bool {
    matches!(event, "stop" | "crash" | "exit_incompatible")
}

/// Start events of engines that still run (per /proc; zombies and reused pids count as gone).
pub fn alive_engines(events: &[EngineEvent]) -> Vec<EngineEvent> {
    let ended: Vec<u32> = events
        .iter()
        .filter(|e| ends_a_life(&e.event))
        .map(|e| e.pid)
        .collect();
    events
        .iter()
        .filter(|e| e.event == "start" && !ended.contains(&e.pid))
        .filter(|e| !is_gone(e.pid) && is_fake_engine(e.pid))
        .cloned()
        .collect()
}

/// Engine lives that provably overlapped. A life runs from its `start` event to the latest moment
/// it is known to have been alive: its `stop`/`crash` event (written while it still holds the data
/// directory) or a moment the test saw the pid alive (`seen_alive`: pid, unix nanos taken *before*
/// looking). Lives whose end is unknown (killed unseen) count as ending at their start, so the check
/// never accuses wrongly; fake-engine's `lock_failed` covers those.
pub fn overlapping_lives(events: &[EngineEvent], seen_alive: &[(u32, u128)]) -> Vec<String> {
    struct Life {
        pid: u32,
        version: String,
        start: u128,
        last_alive: u128,
    }
    let mut lives: Vec<Life> = events
        .iter()
        .filter(|e| e.event == "start")
        .map(|e| Life {
            pid: e.pid,
            version: e.version.clone(),
            start: e.unix_nanos(),
            last_alive: e.unix_nanos(),
        })
        .collect();
    for life in &mut lives {
        let ends = events
            .iter()
            .filter(|e| e.pid == life.pid && ends_a_life(&e.event))
            .map(EngineEvent::unix_nanos);
        let seen = seen_alive
            .iter()
            .filter(|(pid, _)| *pid == life.pid)
            .map(|(_, at)| *at);
        life.last_alive = ends
            .chain(seen)
            .filter(|&at| at >= life.start)
            .fold(life.last_alive, u128::max);
    }
    lives.sort_by_key(|l| l.start);
    let mut overlaps = Vec::new();
    for (i, earlier) in lives.iter().enumerate() {
        for later in &lives[i + 1..] {
            if earlier.last_alive > later.start {
                overlaps.push(format!(
                    "engine {} (pid {}) was alive {} µs after engine {} (pid {}) started",
                    earlier.version,
                    earlier.pid,
                    (earlier.last_alive - later.start) / 1000,
                    later.version,
                    later.pid
                ));
            }
        }
    }
    overlaps
}

/// `(pid, t)` for each of `pids` that runs now, `t` taken before looking (see [`overlapping_lives`]).
pub fn sample_alive(pids: impl IntoIterator<Item = u32>) -> Vec<(u32, u128)> {
    let now = unix_nanos_now();
    pids.into_iter()
        .filter(|&pid| !is_gone(pid) && is_fake_engine(pid))
        .map(|pid| (pid, now))
        .collect()
}

pub fn unix_nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock before 1970")
        .as_nanos()
}

/// One line per event, times relative to the first, for failure messages.
pub fn describe_events(events: &[EngineEvent]) -> String {
    let first = events
        .iter()
        .map(EngineEvent::unix_nanos)
        .min()
        .unwrap_or(0);
    events
        .iter()
        .map(|e| {
            format!(
                "+{:>9.3} ms {:<11} {} pid {} args {:?}{}",
                (e.unix_nanos().saturating_sub(first)) as f64 / 1e6,
                e.event,
                e.version,
                e.pid,
                e.args,
                e.raw
                    .get("error")
                    .map(|err| format!(" error: {err}"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
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
