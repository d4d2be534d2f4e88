//! Failover across hosts on the real test database: a primary and a secondary instance, each an
//! `engine-shim run` with `--lock postgres://…`, as two hosts would run them.
//!
//! The "hosts" share one [`Host`] (one data directory, one events file) although real hosts would
//! not: fake-engine's exclusive lock on the data directory then turns any overlap of two engines
//! into a `lock_failed` event, and the shared events file puts every engine's life on one clock.
//! The exclusion the tests check is the database lock's alone: no shim is given the file lock.
//!
//! - [`PgLock`]: the lock every instance of a test names (mode, unique name, short lease).
//! - [`LeaseWatch`]: the database's own view of the lease row, sampled while a test runs, so a
//!   test can compare a takeover with the expiry the database granted the previous holder.
//! - Freezing a host ([`freeze`], [`thaw`]), the `engine-shim handoff` client, and readers for
//!   what an engine was given (`{lock_epoch}`, `ENGINE_SHIM_LOCK_EPOCH`).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::task::JoinHandle;

use super::pg::{self, psql};
use super::{
    bin, is_gone, unix_nanos_now, EngineEvent, Host, HostShimBuilder, Node, Proc, Shim, TIMEOUT,
};

/// The lease the tests run with: short, so a failover takes seconds (production default: 5 s).
pub const LEASE: Duration = Duration::from_secs(2);
/// The renewal interval the tests run with (production default: 1 s).
pub const RENEW: Duration = Duration::from_millis(400);

/// How often [`wait_gone_at`] looks at /proc: the resolution of the "gone by" times it returns.
const GONE_POLL: Duration = Duration::from_millis(5);

/// How often [`LeaseWatch`] reads the lease row.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// `--lock-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Lease,
    Advisory,
    Dual,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Lease => "lease",
            Mode::Advisory => "advisory",
            Mode::Dual => "dual",
        }
    }

    /// Whether the lock has a lease row (and so an epoch).
    pub fn uses_lease(self) -> bool {
        self != Mode::Advisory
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One PostgreSQL lock, as every instance of a test names it.
#[derive(Debug, Clone)]
pub struct PgLock {
    /// The URL the instance is given (the cluster's, or a proxy's in front of it).
    pub url: String,
    pub mode: Mode,
    /// Unique per test run ([`pg::unique_lock_name`]): tests share the database, not locks.
    pub name: String,
    pub lease: Duration,
    pub renew: Duration,
}

impl PgLock {
    /// A fresh lock for `test` on the test cluster's superuser URL, with [`LEASE`] and [`RENEW`].
    pub fn new(test: &str, mode: Mode) -> PgLock {
        PgLock {
            url: pg::pg_url(),
            mode,
            name: pg::unique_lock_name(test),
            lease: LEASE,
            renew: RENEW,
        }
    }

    /// The same lock reached at another URL (e.g. through a [`pg::TcpProxy`]).
    pub fn via(&self, url: &str) -> PgLock {
        PgLock {
            url: url.to_string(),
            ..self.clone()
        }
    }

    /// `--lock-mode M --lock-name N --lease L --renew R` (the URL goes in `--lock`).
    pub fn args(&self) -> Vec<String> {
        vec![
            "--lock-mode".into(),
            self.mode.as_str().into(),
            "--lock-name".into(),
            self.name.clone(),
            "--lease".into(),
            millis(self.lease),
            "--renew".into(),
            millis(self.renew),
        ]
    }

    /// A shim on `host` wrapping fake-engine `version` (given `epoch={lock_epoch}`, so its events
    /// show the epoch it was started with) under this lock, with a short grace.
    pub fn instance(&self, host: &Host, node: &Node, version: &str) -> HostShimBuilder {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        host.shim(node)
            .engine_with(version, &["epoch={lock_epoch}"])
            .lock(&self.url)
            .shim_args(&args)
            .shim_args(&["--grace", "2s"])
    }

    /// As [`Self::instance`], listening for `engine-shim handoff` on `DIR/<name>.sock`; returns the
    /// builder and the socket path.
    pub fn instance_with_socket(
        &self,
        host: &Host,
        node: &Node,
        version: &str,
        name: &str,
    ) -> (HostShimBuilder, PathBuf) {
        let socket = host.dir.path().join(format!("{name}.sock"));
        let socket_arg = socket.display().to_string();
        let builder = self
            .instance(host, node, version)
            .shim_args(&["--control-socket", &socket_arg]);
        (builder, socket)
    }

    /// The holder's kill deadline, counted from its last successful renewal: `lease − renew`.
    pub fn fence_bound(&self) -> Duration {
        self.lease - self.renew
    }
}

/// `250ms`: a duration as the shim's flags take it.
pub fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Starts the shim `builder` describes with extra environment variables (e.g. the database
/// password); `versions` are its engines' versions, as given to the builder.
pub fn spawn_with_env(
    builder: HostShimBuilder,
    host: &Host,
    versions: &[&str],
    env: &[(&str, &str)],
) -> Shim {
    let mut command = builder.command();
    command
        .env_remove(PASSWORD_ENV)
        .env_remove(PASSWORD_FILE_ENV);
    for (name, value) in env {
        command.env(name, value);
    }
    let versions: Vec<String> = versions.iter().map(|v| v.to_string()).collect();
    let proc = Proc::spawn(&format!("engine-shim[{}]", versions.join(",")), command);
    Shim {
        proc,
        events: host.events.clone(),
        _dir: host.dir.clone(),
        versions,
    }
}

/// The variables the shim reads the database password from.
pub const PASSWORD_ENV: &str = "ENGINE_SHIM_LOCK_PASSWORD";
pub const PASSWORD_FILE_ENV: &str = "ENGINE_SHIM_LOCK_PASSWORD_FILE";

/// The epoch the engine of `event` was started with: `ENGINE_SHIM_LOCK_EPOCH` (`None` when empty,
/// as with an advisory lock). Panics if the `{lock_epoch}` argument says otherwise.
pub fn lock_epoch(event: &EngineEvent) -> Option<u64> {
    let env = event.raw["env"]["ENGINE_SHIM_LOCK_EPOCH"]
        .as_str()
        .unwrap_or_else(|| panic!("no ENGINE_SHIM_LOCK_EPOCH in {}", event.raw));
    let arg = event
        .arg("epoch")
        .unwrap_or_else(|| panic!("no epoch= argument in {}", event.raw));
    assert_eq!(
        env, arg,
        "ENGINE_SHIM_LOCK_EPOCH and {{lock_epoch}} differ: {}",
        event.raw
    );
    if env.is_empty() {
        None
    } else {
        Some(
            env.parse()
                .unwrap_or_else(|e| panic!("epoch {env:?} is not a number ({e}): {}", event.raw)),
        )
    }
}

/// Pids of the engines `shim` started so far, from its `engine … started (pid N)` lines.
pub fn engines_of(shim: &Shim) -> Vec<u32> {
    shim.log()
        .iter()
        .filter(|l| l.is_shim() && l.message().contains(" started (pid "))
        .filter_map(|l| l.field("pid").as_u64())
        .map(|pid| pid as u32)
        .collect()
}

/// Waits until one of `shims` says it started the engine with this pid (the engine's own `start`
/// event can come before that line: the shim logs it once the guardian has reported the pid);
/// returns that shim's index.
pub async fn wait_started_by_one_of(shims: &[&Shim], pid: u32) -> usize {
    let mut found = None;
    super::wait_until(&format!("a shim to say it started pid {pid}"), || {
        found = shims.iter().position(|s| engines_of(s).contains(&pid));
        found.is_some()
    })
    .await;
    found.expect("found once the wait is over")
}

/// Waits until `shim` says it started the engine with this pid.
pub async fn wait_started_by(shim: &Shim, pid: u32) {
    let needle = format!("started (pid {pid})");
    shim.wait_message(0, &[&needle]).await;
}

/// Runs `engine-shim handoff ARGS` to completion; returns its exit code and everything it
/// printed.
pub async fn hand_off(args: &[&str]) -> (i32, String) {
    let mut command = tokio::process::Command::new(bin("engine-shim"));
    command
        .arg("handoff")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("engine-shim handoff {args:?} did not finish"))
        .expect("cannot run engine-shim handoff");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// SIGSTOPs every pid, as a host pause (cgroup freeze, VM suspend) stops every process on it.
pub fn freeze(pids: &[u32]) {
    signal_all(pids, Signal::STOP);
}

/// SIGCONTs every pid, in the order given.
pub fn thaw(pids: &[u32]) {
    signal_all(pids, Signal::CONT);
}

fn signal_all(pids: &[u32], signal: Signal) {
    for &pid in pids {
        let target = Pid::from_raw(pid as i32).expect("pid 0");
        rustix::process::kill_process(target, signal)
            .unwrap_or_else(|e| panic!("cannot send {signal:?} to pid {pid}: {e}"));
    }
}

/// True if `pid` is stopped (job control: `T` in /proc/PID/status).
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("State:"))
            .is_some_and(|state| state.trim_start().starts_with('T'))
    })
}

/// Waits until `pid` is gone (see [`is_gone`]); returns the unix nanos it was first seen gone.
/// Looks every few milliseconds, so the time is that precise.
pub async fn wait_gone_at(pid: u32, what: &str) -> u128 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = unix_nanos_now();
        if is_gone(pid) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) still runs after {TIMEOUT:?}"
        );
        tokio::time::sleep(GONE_POLL).await;
    }
}

/// `a − b` in milliseconds, signed, for messages.
pub fn ms_between(a: u128, b: u128) -> f64 {
    (a as f64 - b as f64) / 1e6
}

/// `d` in nanoseconds.
pub fn nanos(d: Duration) -> u128 {
    d.as_nanos()
}

// ---------------------------------------------------------------------------------------------
// The database's view

/// One reading of the lease row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// When the test read it (unix nanos, taken before the query).
    pub read_at: u128,
    pub epoch: u64,
    /// The holder shim's pid.
    pub pid: u32,
    /// The expiry the database granted, by its clock (unix nanos; microsecond precision).
    pub expires_at: u128,
}

/// The lease row of `name`, if the table and the row exist; `None` also when the database cannot
/// be reached.
pub async fn read_lease(name: &str) -> Option<LeaseRow> {
    let read_at = unix_nanos_now();
    let sql = format!(
        "SELECT epoch, pid, (extract(epoch FROM expires_at) * 1000000)::bigint \
         FROM engine_shim_lease WHERE name = '{}'",
        name.replace('\'', "''")
    );
    let out = psql(&pg::pg_url(), &sql, None).await;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    let mut fields = line.split('|');
    let epoch = fields.next()?.parse().ok()?;
    let pid = fields.next()?.parse().ok()?;
    let micros: u128 = fields.next()?.parse().ok()?;
    Some(LeaseRow {
        read_at,
        epoch,
        pid,
        expires_at: micros * 1000,
    })
}

/// Samples the lease row of one lock in the background until dropped or [`LeaseWatch::stop`]ped:
/// the database's own record of each holder's last expiry, to hold a takeover against.
///
/// A holder that is dead, frozen or cut off renews no more, so its row keeps its last expiry until
/// someone takes it; sampled every 100 ms, the watch sees that final value (the lease is far
/// longer than that).
pub struct LeaseWatch {
    rows: Arc<Mutex<Vec<LeaseRow>>>,
    task: Option<JoinHandle<()>>,
}

impl LeaseWatch {
    pub fn start(lock: &PgLock) -> LeaseWatch {
        let rows: Arc<Mutex<Vec<LeaseRow>>> = Arc::new(Mutex::new(Vec::new()));
        let name = lock.name.clone();
        let sink = rows.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(row) = read_lease(&name).await {
                    let mut rows = sink.lock().unwrap();
                    // Keep only changes, and the latest reading of each.
                    match rows.last_mut() {
                        Some(last)
                            if last.epoch == row.epoch && last.expires_at == row.expires_at =>
                        {
                            last.read_at = row.read_at
                        }
                        _ => rows.push(row),
                    }
                }
                tokio::time::sleep(WATCH_EVERY).await;
            }
        });
        LeaseWatch {
            rows,
            task: Some(task),
        }
    }

    /// Every distinct reading so far.
    pub fn rows(&self) -> Vec<LeaseRow> {
        self.rows.lock().unwrap().clone()
    }

    /// The last expiry the database granted in `epoch`, as far as seen.
    pub fn last_expiry(&self, epoch: u64) -> Option<u128> {
        self.rows()
            .iter()
            .filter(|r| r.epoch == epoch)
            .map(|r| r.expires_at)
            .max()
    }

    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// The readings, one a line, for failure messages.
    pub fn describe(&self) -> String {
        self.rows()
            .iter()
            .map(|r| {
                format!(
                    "read at {}: epoch {} pid {} expires at {}",
                    r.read_at, r.epoch, r.pid, r.expires_at
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for LeaseWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Samples which of `host`'s engines are alive, every 20 ms for `span`; returns every sample (one
/// list of `(pid, unix nanos before looking)` per look), for [`Host::assert_lives_never_overlap`]
/// and "nothing runs" / "exactly one runs" checks over a window.
pub async fn sample_alive_for(host: &Host, span: Duration) -> Vec<Vec<(u32, u128)>> {
    let end = Instant::now() + span;
    let mut samples = Vec::new();
    while Instant::now() < end {
        let now = unix_nanos_now();
        samples.push(host.alive().into_iter().map(|e| (e.pid, now)).collect());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    samples
}

/// Panics unless the engines' `start` events, in time order, carry strictly growing lock epochs:
/// no engine starts on an older grant. For stories where every start follows a change of holder
/// (a holder that takes its own lease again, e.g. to restart a crashed engine, keeps its epoch).
pub fn assert_epochs_grow(events: &[EngineEvent]) {
    let mut starts: Vec<&EngineEvent> = events.iter().filter(|e| e.event == "start").collect();
    starts.sort_by_key(|e| e.unix_nanos());
    let epochs: Vec<Option<u64>> = starts.iter().map(|e| lock_epoch(e)).collect();
    assert!(
        epochs.iter().all(Option::is_some),
        "every engine of a lease lock is given its epoch: {epochs:?}"
    );
    assert!(
        epochs.windows(2).all(|pair| pair[0] < pair[1]),
        "the epochs of successive starts must grow: {epochs:?}"
    );
}
