//! One supervised engine process: spawn, forward its output, stop it (TERM, grace, KILL), report its exit.
//!
//! The run loop decides *when* to start and stop; this module only makes each start safe and each
//! stop complete:
//! - the engine runs under its guardian (`guardian.rs`), a child subreaper that holds the lock:
//!   the engine gets its own process group (pgid = pid), so every signal reaches the engine and
//!   anything it spawned, and after the engine exits the guardian kills and reaps everything left
//!   of its tree, even what escaped with `setsid`: no grandchild lingers holding data.db, keys or
//!   ports that the next engine needs, and the lock is only given back after that;
//! - the guardian gets a parent-death signal, so the shim's own death (even SIGKILL) never leaves
//!   an orphan engine running beside a new shim;
//! - signals go to the guardian (our own unreaped child, so its pid cannot be recycled), which
//!   passes them on: SIGTERM to the engine's group, and [`guardian::KILL_NOW`] for SIGKILL to the
//!   whole tree;
//! - stdout and stderr are drained continuously and forwarded line by line as tracing events, so a
//!   chatty engine never blocks on a full pipe and its lines land in the shim's log format;
//! - exactly one [`ChildExit`] is sent per child, after the child was reaped;
//! - a hard kill deadline ([`ChildHandle::kill_by`], the lock's fence) is also watched by the
//!   deadline killer (`deadline_kill.rs`), an OS thread that sends the same [`guardian::KILL_NOW`]
//!   through the guardian's pidfd: the engine dies on time even when this module's task, which
//!   normally kills it first, is held up by a busy runtime. A database lock's worker keeps that
//!   deadline armed at the lock's kill deadline while the lock is held ([`ChildHandle::lease_link`]).

use std::borrow::Cow;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::deadline_kill::{self, LeaseLink, Watch};
use crate::guardian::{self, Report};
use crate::lock::BootInstant;

/// How long the guardian may take to start the engine and report its pid: an exec and a fork.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// [`guardian::KILL_NOW`] as a rustix signal.
const KILL_NOW: Signal = Signal::USR2;

/// What to run: the program, its arguments and extra environment (added to the shim's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// Names the child in log lines, e.g. the engine version `1.1.0`.
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// A lock the child inherits across exec, so it stays held until the child is gone too.
    pub keep_lock: Option<crate::lock::InheritedLock>,
    /// Variables of the shim's own environment the child must not see (secrets meant for the shim).
    pub env_remove: Vec<String>,
    /// The `engine-shim` binary that runs as the engine's guardian (`/proc/self/exe` in the shim,
    /// which stays valid even when the binary on disk has been replaced by an upgrade).
    pub guardian: PathBuf,
}

/// How and when a child ended; sent exactly once per spawned child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildExit {
    /// The id given to [`spawn_child`], so the run loop can tell an old child's exit from a new one's.
    pub id: usize,
    pub pid: u32,
    pub status: ExitStatus,
    /// From spawn to reaping; what [`crate::backoff::RestartBackoff`] judges a "good start" by.
    pub uptime: Duration,
    /// A stop or kill was asked for before the child exited: the exit was intended, not a crash.
    pub stop_requested: bool,
    /// The child outlived its grace period after SIGTERM and was killed with SIGKILL.
    pub killed_after_grace: bool,
}

/// A request from a [`ChildHandle`] to the task that owns the child.
#[derive(Debug, Clone, Copy)]
enum Control {
    Stop { grace: Duration },
    KillNow,
}

/// A cheap, cloneable handle to one supervised child.
///
/// Dropping it does **not** kill the child: the run loop decides a child's fate, and the exit is
/// still reported on the exits channel. Requests go to the task that owns the child, which alone
/// knows whether the pid is still ours, so a late request can never signal a recycled pid.
#[derive(Debug, Clone)]
pub struct ChildHandle {
    pid: u32,
    control: mpsc::UnboundedSender<Control>,
    /// The child's entry with the deadline killer; forgotten by the child's task once reaped.
    deadline: Arc<Watch>,
}

impl ChildHandle {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks the child to stop: SIGTERM to its process group now, SIGKILL to the group after `grace`
    /// if it has not exited by then. Non-blocking and idempotent: a repeated call never re-sends
    /// SIGTERM; it can only bring the SIGKILL deadline forward. A no-op once the child has exited.
    pub fn stop(&self, grace: Duration) {
        // A send error means the child was already reaped; there is nothing left to stop.
        let _ = self.control.send(Control::Stop { grace });
    }

    /// SIGKILL to the child's process group at once, e.g. when the lock guarding the engine is lost.
    pub fn kill_now(&self) {
        let _ = self.control.send(Control::KillNow);
    }

    /// The child must be dead by `deadline` (on the boot-time clock), e.g. the lock's kill
    /// deadline once it is lost. Arms the deadline killer's thread, which kills the child's whole
    /// tree then as [`ChildHandle::kill_now`] would, even if no runtime thread is free to run the
    /// child's task. Synchronous; a later deadline than one already set changes nothing; a no-op
    /// once the child has been reaped.
    pub fn kill_by(&self, deadline: BootInstant) {
        self.deadline.arm(deadline);
    }

    /// The child's dead man's switch, for the database lock it runs on to keep armed at the
    /// lock's kill deadline from the lock's own thread (see [`crate::lock::Lock::attach`]).
    pub fn lease_link(&self) -> LeaseLink {
        LeaseLink::new(Arc::clone(&self.deadline))
    }
}

/// How long the exit report waits for the output readers to reach end-of-file after the child was
/// reaped, so the child's last lines are logged before its exit. Bounded because a process that
/// escaped the group (e.g. with `setsid`) could hold the pipes open forever.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Longest line forwarded as one log event; longer output is split, so a child writing without
/// newlines cannot make the shim buffer without bound.
const MAX_LINE_BYTES: u64 = 64 * 1024;

/// Spawns `spec` as child `id` and supervises it until it exits; the exit is sent on `exits`.
///
/// Must be called from an async task on the tokio runtime, never from `spawn_blocking`:
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked dies, and blocking-pool threads exit when
/// idle, which would kill a healthy engine seconds later.
pub fn spawn_child(
    id: usize,
    spec: &LaunchSpec,
    exits: mpsc::UnboundedSender<ChildExit>,
) -> io::Result<ChildHandle> {
    let (report_read, report_write) = io::pipe()?;
    let report_fd = report_write.as_raw_fd();
    let mut command = Command::new(&spec.guardian);
    for name in &spec.env_remove {
        command.env_remove(name);
    }
    command
        .arg0("engine-shim")
        .arg(guardian::SUBCOMMAND)
        .arg(report_fd.to_string())
        .arg(&spec.program)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let parent = rustix::process::getpid();
    let keep_lock = spec.keep_lock;
    let kill_now = KILL_NOW;
    // SAFETY: the closure runs between fork and exec and only makes raw system calls through
    // rustix (no allocation, no locks), which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(kill_now))?;
            // Closes the race where the parent died between fork and prctl: the signal would never
            // come, so give up now. The error is only seen if the parent is somehow still there.
            if rustix::process::getppid() != Some(parent) {
                return Err(Errno::SRCH.into());
            }
            if let Some(lock) = keep_lock {
                lock.keep_across_exec()?;
            }
            let report = BorrowedFd::borrow_raw(report_fd);
            rustix::io::fcntl_setfd(report, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = command.spawn()?;
    // Only the guardian may hold the writing end: its end-of-file tells us it is done.
    drop(report_write);
    let guardian_pid = child
        .id()
        .ok_or_else(|| io::Error::other("spawned guardian has no pid"))?;
    // Opened while the guardian is our unreaped child, so it names the guardian and nothing else.
    let guardian_fd = match open_pidfd(guardian_pid) {
        Ok(fd) => fd,
        Err(error) => {
            let _ = signal_pid(guardian_pid, Signal::KILL);
            return Err(error);
        }
    };
    let pid = match read_report(report_read, REPORT_TIMEOUT) {
        Ok(Report::Started(pid)) => pid,
        Ok(Report::Failed(error)) => return Err(io::Error::other(error)),
        Err(error) => {
            let _ = signal_pid(guardian_pid, Signal::KILL);
            return Err(error);
        }
    };
    // Mirrors the task's own kill: KILL_NOW to the guardian, which kills the engine's whole tree.
    let deadline = match deadline_kill::watch(deadline_kill::Target {
        pidfd: guardian_fd,
        signal: KILL_NOW,
        label: spec.label.clone(),
        engine_pid: pid,
    }) {
        Ok(watch) => Arc::new(watch),
        Err(error) => {
            let _ = signal_pid(guardian_pid, KILL_NOW);
            return Err(error);
        }
    };
    let readers = [
        child
            .stdout
            .take()
            .map(|out| tokio::spawn(forward_lines(out, spec.label.clone(), Stream::Stdout))),
        child
            .stderr
            .take()
            .map(|err| tokio::spawn(forward_lines(err, spec.label.clone(), Stream::Stderr))),
    ];
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let supervised = Supervised {
        id,
        pid,
        guardian_pid,
        label: spec.label.clone(),
        started,
        child,
        control: control_rx,
        readers: readers.into_iter().flatten().collect(),
        deadline: Arc::clone(&deadline),
    };
    tokio::spawn(async move {
        let exit = supervised.run().await;
        // The run loop may have shut down already; then nobody needs the report.
        let _ = exits.send(exit);
    });
    Ok(ChildHandle {
        pid,
        control: control_tx,
        deadline,
    })
}

/// A pidfd for our own child `pid`; the error names what the shim needs.
fn open_pidfd(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    let Some(pid) = Pid::from_raw(pid as i32) else {
        return Err(io::Error::other(format!("invalid pid {pid}")));
    };
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(|error| {
        io::Error::other(format!(
            "cannot open a pidfd for the engine's guardian (pid {pid}): {error}; \
             engine-shim needs Linux 5.3 or newer"
        ))
    })
}

/// Reads the guardian's one-line report. Blocks the calling thread for as long as the guardian
/// takes to exec and fork (milliseconds), bounded by `within`.
fn read_report(mut pipe: io::PipeReader, within: Duration) -> io::Result<Report> {
    let deadline = Instant::now() + within;
    let mut text = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::other(format!(
                "the engine's guardian did not report within {}",
                humantime::format_duration(within)
            )));
        }
        let mut poll = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(60_000) as i32) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if ready == 0 {
            continue;
        }
        let mut buf = [0u8; 512];
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Report::parse(&String::from_utf8_lossy(&text)).ok_or_else(|| {
        io::Error::other("the engine's guardian ended before it could start the engine")
    })
}

fn signal_pid(pid: u32, signal: Signal) -> rustix::io::Result<()> {
    match Pid::from_raw(pid as i32) {
        Some(pid) => rustix::process::kill_process(pid, signal),
        None => Ok(()),
    }
}

/// The task-side state of one child; [`Supervised::run`] owns it until the child is reaped.
struct Supervised {
    id: usize,
    /// The engine's pid, for log lines and the exit report.
    pid: u32,
    /// The guardian: our child, the one we wait for and signal.
    guardian_pid: u32,
    label: String,
    started: Instant,
    child: Child,
    control: mpsc::UnboundedReceiver<Control>,
    readers: Vec<JoinHandle<()>>,
    /// Forgotten as soon as the guardian is reaped (or killed by this task), so the deadline
    /// killer never signals it afterwards.
    deadline: Arc<Watch>,
}

/// Where a child is on its way out. It only moves forward: running, then terminating (SIGTERM
/// sent, SIGKILL due), then killed. Transitions are pure and return the signal to send, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopProgress {
    Running,
    Terminating { kill_at: tokio::time::Instant },
    Killed { after_grace: bool },
}

impl StopProgress {
    /// A stop request: SIGTERM the first time; a repeat can only bring the SIGKILL forward.
    fn stop(&mut self, now: tokio::time::Instant, grace: Duration) -> Option<Signal> {
        let due = now + grace;
        match *self {
            StopProgress::Running => {
                *self = StopProgress::Terminating { kill_at: due };
                Some(Signal::TERM)
            }
            StopProgress::Terminating { kill_at } => {
                *self = StopProgress::Terminating {
                    kill_at: kill_at.min(due),
                };
                None
            }
            StopProgress::Killed { .. } => None,
        }
    }

    fn kill_now(&mut self) -> Option<Signal> {
        match *self {
            StopProgress::Killed { .. } => None,
            _ => {
                *self = StopProgress::Killed { after_grace: false };
                Some(Signal::KILL)
            }
        }
    }

    fn grace_elapsed(&mut self) -> Option<Signal> {
        match *self {
            StopProgress::Terminating { .. } => {
                *self = StopProgress::Killed { after_grace: true };
                Some(Signal::KILL)
            }
            _ => None,
        }
    }

    fn kill_at(self) -> Option<tokio::time::Instant> {
        match self {
            StopProgress::Terminating { kill_at } => Some(kill_at),
            _ => None,
        }
    }
}

impl Supervised {
    async fn run(mut self) -> ChildExit {
        let mut stop = StopProgress::Running;
        let mut control_open = true;
        let status = loop {
            let kill_at = stop.kill_at();
            tokio::select! {
                // `Child::wait` is cancel-safe, so losing a race to a control message is harmless.
                status = self.child.wait() => break self.reaped(status).await,
                request = self.control.recv(), if control_open => match request {
                    // Every handle is gone; the child keeps running and is still reported.
                    None => control_open = false,
                    Some(Control::Stop { grace }) => {
                        if let Some(signal) = stop.stop(tokio::time::Instant::now(), grace) {
                            tracing::info!(
                                engine = %self.label,
                                pid = self.pid,
                                grace = %humantime::format_duration(grace),
                                "stopping engine: SIGTERM to its process group"
                            );
                            self.signal_group(signal);
                        }
                    }
                    Some(Control::KillNow) => {
                        if let Some(signal) = stop.kill_now() {
                            tracing::warn!(
                                engine = %self.label,
                                pid = self.pid,
                                "killing engine: SIGKILL to its process group"
                            );
                            self.signal_group(signal);
                        }
                    }
                },
                () = sleep_until_or_forever(kill_at), if kill_at.is_some() => {
                    if let Some(signal) = stop.grace_elapsed() {
                        tracing::warn!(
                            engine = %self.label,
                            pid = self.pid,
                            "engine still running after its grace period: SIGKILL to its process group"
                        );
                        self.signal_group(signal);
                    }
                }
            }
        };
        // The guardian has exited: the engine and everything it left were killed and reaped.
        self.deadline.forget();
        let uptime = self.started.elapsed();
        let readers = std::mem::take(&mut self.readers);
        let drained = tokio::time::timeout(OUTPUT_DRAIN_LIMIT, async {
            for reader in readers {
                let _ = reader.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(engine = %self.label, pid = self.pid, "engine output still open after exit; a process outside its group holds the pipe");
        }
        tracing::debug!(engine = %self.label, pid = self.pid, %status, uptime = ?uptime, "engine exited");
        ChildExit {
            id: self.id,
            pid: self.pid,
            status,
            uptime,
            stop_requested: stop != StopProgress::Running,
            killed_after_grace: stop == StopProgress::Killed { after_grace: true },
        }
    }

    /// Turns the result of waiting into a status. Waiting only fails if the child cannot be waited
    /// for at all; then it is killed and waited for once more, so the pid is never left unreaped.
    async fn reaped(&mut self, status: io::Result<ExitStatus>) -> ExitStatus {
        match status {
            Ok(status) => status,
            Err(error) => {
                tracing::error!(engine = %self.label, pid = self.pid, %error, "cannot wait for engine; killing it");
                self.signal_group(Signal::KILL);
                self.child
                    .wait()
                    .await
                    .unwrap_or_else(|_| ExitStatus::from_raw(Signal::KILL.as_raw()))
            }
        }
    }

    /// Asks the guardian to pass `signal` on: SIGTERM to the engine's group as it is, SIGKILL as
    /// [`guardian::KILL_NOW`] (the whole tree; the guardian must survive to reap it).
    fn signal_group(&self, signal: Signal) {
        let to_guardian = if signal == Signal::KILL {
            KILL_NOW
        } else {
            signal
        };
        match signal_pid(self.guardian_pid, to_guardian) {
            // The whole tree is being killed: nothing is left for the deadline killer to do.
            Ok(()) if signal == Signal::KILL => self.deadline.forget(),
            // The guardian is already gone, and with it the whole tree.
            Ok(()) | Err(Errno::SRCH) => {}
            Err(error) => {
                tracing::warn!(
                    engine = %self.label,
                    pid = self.pid,
                    %error,
                    signal = signal.as_raw(),
                    "cannot signal the engine's guardian"
                );
            }
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Forwards one pipe line by line until end-of-file, as `info` (stdout) or `warn` (stderr) events
/// with target `engine`. Reads raw bytes with `read_until` rather than `lines()`, which stops at the
/// first invalid UTF-8 and would leave the child blocked on a full pipe.
async fn forward_lines(pipe: impl AsyncRead + Unpin, label: String, stream: Stream) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) => return,
            Ok(_) => {
                let line = line_text(&buf);
                match stream {
                    Stream::Stdout => {
                        tracing::info!(target: "engine", engine = %label, stream = "stdout", "{line}");
                    }
                    Stream::Stderr => {
                        tracing::warn!(target: "engine", engine = %label, stream = "stderr", "{line}");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(engine = %label, ?stream, %error, "cannot read engine output");
                return;
            }
        }
    }
}

/// The text of one output line: line ending removed, invalid UTF-8 replaced with U+FFFD.
fn line_text(raw: &[u8]) -> Cow<'_, str> {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    String::from_utf8_lossy(raw)
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;
    use tokio::sync::mpsc::UnboundedReceiver;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use super::*;

    /// Only a safety net against a hung test; every wait below ends on an event well before it.
    const SAFETY: Duration = Duration::from_secs(30);

    fn sh(label: &str, script: &str) -> LaunchSpec {
        LaunchSpec {
            label: label.to_string(),
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".to_string(), script.to_string()],
            env: vec![],
            keep_lock: None,
            env_remove: vec![],
            guardian: guardian_binary(),
        }
    }

    /// The `engine-shim` binary beside this test executable (`cargo build --workspace --bins`).
    fn guardian_binary() -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap();
        let dir = if dir.ends_with("deps") {
            dir.parent().unwrap()
        } else {
            dir
        };
        let path = dir.join("engine-shim");
        assert!(
            path.is_file(),
            "{} is missing: run `cargo build --workspace --bins` first",
            path.display()
        );
        path
    }

    /// One forwarded output line, as a log subscriber sees it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Forwarded {
        level: tracing::Level,
        engine: String,
        stream: String,
        message: String,
    }

    /// Collects `engine` events into a channel, so tests can await a line instead of sleeping.
    struct Capture(mpsc::UnboundedSender<Forwarded>);

    #[derive(Default)]
    struct Fields {
        engine: String,
        stream: String,
        message: String,
    }

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.record_debug(field, &format_args!("{value}"));
        }

        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let text = format!("{value:?}");
            match field.name() {
                "engine" => self.engine = text,
                "stream" => self.stream = text,
                "message" => self.message = text,
                _ => {}
            }
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if event.metadata().target() != "engine" {
                return;
            }
            let mut fields = Fields::default();
            event.record(&mut fields);
            let _ = self.0.send(Forwarded {
                level: *event.metadata().level(),
                engine: fields.engine,
                stream: fields.stream,
                message: fields.message,
            });
        }
    }

    /// Captures forwarded lines on this thread; `#[tokio::test]` runs every task on it.
    fn capture() -> (
        tracing::subscriber::DefaultGuard,
        UnboundedReceiver<Forwarded>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let subscriber = tracing_subscriber::registry().with(Capture(tx));
        (tracing::subscriber::set_default(subscriber), rx)
    }

    async fn line_where(
        lines: &mut UnboundedReceiver<Forwarded>,
        wanted: impl Fn(&Forwarded) -> bool,
    ) -> Forwarded {
        tokio::time::timeout(SAFETY, async {
            loop {
                let line = lines.recv().await.expect("capture closed");
                if wanted(&line) {
                    return line;
                }
            }
        })
        .await
        .expect("line never forwarded")
    }

    async fn next_exit(exits: &mut UnboundedReceiver<ChildExit>) -> ChildExit {
        tokio::time::timeout(SAFETY, exits.recv())
            .await
            .expect("child never reported its exit")
            .expect("exit channel closed")
    }

    /// Waits until a process (not necessarily our child) has terminated, via its pidfd.
    async fn terminated(pidfd: OwnedFd) {
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and unchanged for its life.
        let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.unwrap();
        tokio::time::timeout(SAFETY, pidfd.readable())
            .await
            .expect("process still alive")
            .unwrap()
            .retain_ready();
    }

    fn pidfd(pid: u32) -> OwnedFd {
        let pid = Pid::from_raw(pid as i32).unwrap();
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap()
    }

    /// Gone or a zombie: in this sandbox nobody reaps orphans, so a dead grandchild may linger as `Z`.
    fn is_dead(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/status")) {
            Err(_) => true,
            Ok(status) => status.lines().any(|l| l.starts_with("State:\tZ")),
        }
    }

    #[test]
    fn a_stop_sends_term_once_then_kill_once() {
        let now = tokio::time::Instant::now();
        let second = Duration::from_secs(1);
        let mut stop = StopProgress::Running;
        assert_eq!(stop.grace_elapsed(), None, "no deadline before a stop");
        assert_eq!(stop.stop(now, 10 * second), Some(Signal::TERM));
        assert_eq!(stop.kill_at(), Some(now + 10 * second));
        // A repeat never re-sends TERM and never pushes the deadline back, only forward.
        assert_eq!(stop.stop(now, 20 * second), None);
        assert_eq!(stop.kill_at(), Some(now + 10 * second));
        assert_eq!(stop.stop(now, second), None);
        assert_eq!(stop.kill_at(), Some(now + second));
        assert_eq!(stop.grace_elapsed(), Some(Signal::KILL));
        assert_eq!(stop, StopProgress::Killed { after_grace: true });
        assert_eq!(stop.kill_now(), None);
        assert_eq!(stop.stop(now, second), None);
        assert_eq!(stop.kill_at(), None);
    }

    #[test]
    fn kill_now_skips_the_grace_period() {
        let now = tokio::time::Instant::now();
        let mut stop = StopProgress::Running;
        assert_eq!(stop.kill_now(), Some(Signal::KILL));
        assert_eq!(stop, StopProgress::Killed { after_grace: false });
        let mut stop = StopProgress::Running;
        stop.stop(now, Duration::from_secs(10));
        assert_eq!(stop.kill_now(), Some(Signal::KILL));
        assert_eq!(stop.grace_elapsed(), None);
        assert_eq!(stop, StopProgress::Killed { after_grace: false });
    }

    #[test]
    fn line_text_drops_the_line_ending_and_replaces_invalid_utf8() {
        assert_eq!(line_text(b"hello\n"), "hello");
        assert_eq!(line_text(b"crlf\r\n"), "crlf");
        assert_eq!(line_text(b"no newline"), "no newline");
        assert_eq!(line_text(b"a\xffb\n"), "a\u{fffd}b");
        assert_eq!(line_text(b"\n"), "");
    }

    #[tokio::test]
    async fn exit_is_reported_once_with_status_and_uptime() {
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let child = spawn_child(7, &sh("1.0.0", "sleep 0.2; exit 7"), exits_tx).unwrap();
        let exit = next_exit(&mut exits).await;
        assert_eq!((exit.id, exit.pid), (7, child.pid()));
        assert_eq!(exit.status.code(), Some(7));
        assert!(exit.uptime >= Duration::from_millis(200), "{exit:?}");
        assert!(!exit.stop_requested && !exit.killed_after_grace);
        // The sender was moved into the child's task; after its one report the channel closes.
        assert!(exits.recv().await.is_none());
        // Stopping a child that is gone is a harmless no-op.
        child.stop(Duration::from_secs(1));
        child.kill_now();
    }

    #[tokio::test]
    async fn dropping_the_handle_does_not_kill_the_child() {
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let (_guard, mut lines) = capture();
        let child = spawn_child(1, &sh("1.0.0", "echo up; sleep 0.1; exit 5"), exits_tx).unwrap();
        drop(child);
        line_where(&mut lines, |l| l.message == "up").await;
        assert_eq!(next_exit(&mut exits).await.status.code(), Some(5));
    }

    #[tokio::test]
    async fn output_is_forwarded_line_by_line_with_labels() {
        let (_guard, mut lines) = capture();
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let script =
            r"echo 'out one'; echo 'err one' >&2; printf 'bad \377\376 bytes\n'; printf 'last'";
        spawn_child(0, &sh("1.1.0", script), exits_tx).unwrap();
        next_exit(&mut exits).await;
        // Every line is forwarded before the exit is reported.
        let mut got = Vec::new();
        while let Ok(line) = lines.try_recv() {
            got.push(line);
        }
        let line = |level, stream: &str, message: &str| Forwarded {
            level,
            engine: "1.1.0".to_string(),
            stream: stream.to_string(),
            message: message.to_string(),
        };
        let stdout: Vec<_> = got
            .iter()
            .filter(|l| l.stream == "stdout")
            .cloned()
            .collect();
        let stderr: Vec<_> = got
            .iter()
            .filter(|l| l.stream == "stderr")
            .cloned()
            .collect();
        use tracing::Level;
        assert_eq!(
            stdout,
            [
                line(Level::INFO, "stdout", "out one"),
                line(Level::INFO, "stdout", "bad \u{fffd}\u{fffd} bytes"),
                line(Level::INFO, "stdout", "last"),
            ]
        );
        assert_eq!(stderr, [line(Level::WARN, "stderr", "err one")]);
    }

    #[tokio::test]
    async fn invalid_utf8_flood_never_blocks_the_child() {
        let (_guard, mut lines) = capture();
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        // Far more than a pipe buffer (64 KiB) of random bytes on both streams: if forwarding
        // stopped at the first invalid UTF-8, the child would block on a full pipe and never exit.
        let script = "head -c 2000000 /dev/urandom; head -c 300000 /dev/urandom >&2; \
                      echo; echo 'still forwarding'; exit 0";
        spawn_child(0, &sh("1.1.0", script), exits_tx).unwrap();
        let exit = next_exit(&mut exits).await;
        assert!(exit.status.success(), "{exit:?}");
        line_where(&mut lines, |l| l.message == "still forwarding").await;
    }

    #[tokio::test]
    async fn stop_terminates_a_child_that_exits_on_term() {
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let child = spawn_child(0, &sh("1.0.0", "exec sleep 300"), exits_tx).unwrap();
        child.stop(Duration::from_secs(20));
        child.stop(Duration::from_secs(20));
        let exit = next_exit(&mut exits).await;
        assert_eq!(
            exit.status.signal(),
            Some(Signal::TERM.as_raw()),
            "{exit:?}"
        );
        assert!(exit.stop_requested && !exit.killed_after_grace, "{exit:?}");
        assert!(exit.uptime < Duration::from_secs(10), "{exit:?}");
    }

    #[tokio::test]
    async fn stop_kills_a_child_that_ignores_term_after_the_grace_period() {
        let (_guard, mut lines) = capture();
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let script = "trap '' TERM; echo ready; while :; do sleep 0.05; done";
        let child = spawn_child(0, &sh("1.0.0", script), exits_tx).unwrap();
        line_where(&mut lines, |l| l.message == "ready").await;
        let grace = Duration::from_millis(300);
        let stopped_at = Instant::now();
        // A second stop may only bring the deadline forward.
        child.stop(Duration::from_secs(60));
        child.stop(grace);
        let exit = next_exit(&mut exits).await;
        assert_eq!(
            exit.status.signal(),
            Some(Signal::KILL.as_raw()),
            "{exit:?}"
        );
        assert!(exit.stop_requested && exit.killed_after_grace, "{exit:?}");
        let waited = stopped_at.elapsed();
        assert!(
            waited >= grace && waited < Duration::from_secs(10),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn kill_now_kills_at_once() {
        let (_guard, mut lines) = capture();
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let script = "trap '' TERM; echo ready; while :; do sleep 0.05; done";
        let child = spawn_child(0, &sh("1.0.0", script), exits_tx).unwrap();
        line_where(&mut lines, |l| l.message == "ready").await;
        child.stop(Duration::from_secs(60));
        child.kill_now();
        let exit = next_exit(&mut exits).await;
        assert_eq!(
            exit.status.signal(),
            Some(Signal::KILL.as_raw()),
            "{exit:?}"
        );
        assert!(exit.stop_requested && !exit.killed_after_grace, "{exit:?}");
    }

    #[tokio::test]
    async fn no_grandchild_survives_a_stop() {
        let (_guard, mut lines) = capture();
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        // The grandchild ignores SIGTERM, so only the group SIGKILL after the leader's exit ends it.
        let script = r#"sh -c 'trap "" TERM; echo grandchild ready; exec sleep 300' &
                        echo "grandchild $!"; wait"#;
        let child = spawn_child(0, &sh("1.0.0", script), exits_tx).unwrap();
        // The two lines come from two processes, in either order.
        let mut grandchild = None;
        let mut ready = false;
        while grandchild.is_none() || !ready {
            let line = line_where(&mut lines, |l| l.message.starts_with("grandchild ")).await;
            match line.message["grandchild ".len()..].parse::<u32>() {
                Ok(pid) => grandchild = Some(pid),
                Err(_) => ready = true,
            }
        }
        let grandchild = grandchild.unwrap();
        let grandchild_fd = pidfd(grandchild);
        assert!(!is_dead(grandchild));

        child.stop(Duration::from_secs(20));
        let exit = next_exit(&mut exits).await;
        assert_eq!(
            exit.status.signal(),
            Some(Signal::TERM.as_raw()),
            "{exit:?}"
        );
        assert!(!exit.killed_after_grace, "{exit:?}");
        terminated(grandchild_fd).await;
        assert!(is_dead(grandchild));
    }

    #[tokio::test]
    async fn child_gets_the_parent_death_signal() {
        // PR_SET_PDEATHSIG follows the thread that forked: let that thread end while the shim
        // process lives on, and the child must be killed, just as it would be if the shim died.
        let pidfd = std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (exits_tx, _exits) = mpsc::unbounded_channel();
                let child = spawn_child(0, &sh("1.0.0", "exec sleep 300"), exits_tx).unwrap();
                pidfd(child.pid())
            })
        })
        .join()
        .unwrap();
        terminated(pidfd).await;
    }

    #[tokio::test]
    async fn extra_environment_reaches_the_child() {
        let (_guard, mut lines) = capture();
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let mut spec = sh("1.0.0", "echo \"block=$ENGINE_SHIM_START_BLOCK\"");
        spec.env
            .push(("ENGINE_SHIM_START_BLOCK".to_string(), "42".to_string()));
        spawn_child(0, &spec, exits_tx).unwrap();
        next_exit(&mut exits).await;
        line_where(&mut lines, |l| l.message == "block=42").await;
    }

    #[tokio::test]
    async fn a_missing_program_fails_to_spawn() {
        let (exits_tx, _exits) = mpsc::unbounded_channel();
        let mut spec = sh("1.0.0", "");
        spec.program = PathBuf::from("/nonexistent/engine");
        let err = spawn_child(0, &spec, exits_tx).unwrap_err().to_string();
        assert!(err.contains("cannot start /nonexistent/engine"), "{err}");
        assert!(err.contains("No such file"), "{err}");
    }

    /// Starts an engine that leaves a helper behind in a session of its own (`setsid`), which no
    /// process-group signal reaches; returns the engine's handle and the helper's pid.
    async fn engine_with_escaped_helper(
        lines: &mut UnboundedReceiver<Forwarded>,
        exits: mpsc::UnboundedSender<ChildExit>,
    ) -> (ChildHandle, u32) {
        let script = r#"setsid sh -c 'trap "" TERM; echo "helper $$"; exec sleep 300' &
                        exec sleep 300"#;
        let child = spawn_child(0, &sh("1.0.0", script), exits).unwrap();
        let line = line_where(lines, |l| l.message.starts_with("helper ")).await;
        let helper: u32 = line.message["helper ".len()..].parse().unwrap();
        assert!(!is_dead(helper));
        (child, helper)
    }

    #[tokio::test]
    async fn a_helper_that_escaped_with_setsid_is_dead_before_the_exit_is_reported() {
        let (_guard, mut lines) = capture();
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let (child, helper) = engine_with_escaped_helper(&mut lines, exits_tx).await;
        child.stop(Duration::from_secs(20));
        let exit = next_exit(&mut exits).await;
        assert_eq!(exit.pid, child.pid());
        assert_eq!(
            exit.status.signal(),
            Some(Signal::TERM.as_raw()),
            "{exit:?}"
        );
        // Not "soon after": the guardian reaped the helper before it exited, so before the report.
        assert!(
            is_dead(helper),
            "helper {helper} outlived the engine's exit report"
        );
    }

    #[tokio::test]
    async fn the_shims_death_takes_an_escaped_helper_along() {
        // As in `child_gets_the_parent_death_signal`: the forking thread's end stands in for the
        // shim's death.
        let (helper, engine) = std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (_guard, mut lines) = capture();
                let (exits_tx, _exits) = mpsc::unbounded_channel();
                let (child, helper) = engine_with_escaped_helper(&mut lines, exits_tx).await;
                (pidfd(helper), pidfd(child.pid()))
            })
        })
        .join()
        .unwrap();
        terminated(engine).await;
        terminated(helper).await;
    }

    /// Waits for a process to end by polling its pidfd on the calling thread, blocking it (and the
    /// runtime it belongs to) for up to `within`; true if the process ended.
    fn wait_blocking(pidfd: &OwnedFd, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut poll = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis() as i32) };
            if ready > 0 {
                return true;
            }
        }
    }

    /// The lock's fence in miniature: an engine that ignores SIGTERM must be dead by its kill
    /// deadline, and the only runtime thread that could run its task is blocked from before the
    /// deadline until the engine is dead. Only the deadline killer's own thread can kill it.
    #[test]
    fn the_engine_dies_at_its_kill_deadline_while_the_runtime_is_blocked() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (_guard, mut lines) = capture();
            let (exits_tx, mut exits) = mpsc::unbounded_channel();
            let script = "trap '' TERM; echo ready; while :; do sleep 0.05; done";
            let child = spawn_child(0, &sh("1.0.0", script), exits_tx).unwrap();
            line_where(&mut lines, |l| l.message == "ready").await;
            let engine = pidfd(child.pid());
            // What the run loop does when the lock is lost: stop with a long grace (the async
            // SIGKILL is far away) and a hard deadline soon.
            child.stop(Duration::from_secs(60));
            let deadline = BootInstant::now() + Duration::from_millis(300);
            child.kill_by(deadline);

            // From here until the engine is dead, this task never yields: the runtime is blocked.
            let died = wait_blocking(&engine, SAFETY);
            let dead_at = BootInstant::now();
            assert!(
                died,
                "the engine outlived its kill deadline while the runtime was blocked"
            );
            assert!(dead_at >= deadline, "killed before its deadline");
            // The lock's contract: dead a full renewal (1 s by default) before the database
            // could let another holder in; the deadline itself is that far ahead of it.
            let late = dead_at.saturating_duration_since(deadline);
            assert!(
                late < crate::lock::DEFAULT_RENEW,
                "killed {late:?} after its deadline"
            );
            eprintln!("engine dead {late:?} after its kill deadline");

            let exit = next_exit(&mut exits).await;
            assert_eq!(
                exit.status.signal(),
                Some(Signal::KILL.as_raw()),
                "{exit:?}"
            );
        });
    }

    #[tokio::test]
    async fn a_reaped_engine_is_never_armed_again() {
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let child = spawn_child(0, &sh("1.0.0", "exit 0"), exits_tx).unwrap();
        next_exit(&mut exits).await;
        // A deadline set after the reaping (the run loop has not heard of the exit yet) is
        // ignored: the guardian's pidfd is closed and nothing is sent to it, or to its pid.
        child.kill_by(BootInstant::now());
        assert!(!child.deadline.is_armed());
    }

    #[tokio::test]
    async fn a_kill_by_the_task_disarms_the_deadline_killer() {
        let (_guard, mut lines) = capture();
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let script = "trap '' TERM; echo ready; while :; do sleep 0.05; done";
        let child = spawn_child(0, &sh("1.0.0", script), exits_tx).unwrap();
        line_where(&mut lines, |l| l.message == "ready").await;
        child.kill_by(BootInstant::now() + Duration::from_secs(3600));
        assert!(child.deadline.is_armed());
        child.kill_now();
        let exit = next_exit(&mut exits).await;
        assert_eq!(exit.status.signal(), Some(Signal::KILL.as_raw()));
        assert!(!child.deadline.is_armed());
    }
}
