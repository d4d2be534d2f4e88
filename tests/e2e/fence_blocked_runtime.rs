//! An engine on a PostgreSQL lock dies at its kill deadline even while the shim's async runtime is
//! blocked, and only then.
//!
//! The run shell runs in-process on each test's single-threaded runtime, holding a PostgreSQL
//! lease through a [`TcpProxy`]; its engine is a real `fake-engine` that ignores SIGTERM, under the
//! real guardian binary. Once the test blocks the runtime's only thread, neither the gate's kill at
//! the deadline nor the supervisor's task can run: only the deadline killer's own thread, armed by
//! the run loop's fence or by the lock's worker thread at every renewal, can kill the engine.
//! - Blocked after the loss was handled: the run loop's fence armed the deadline.
//! - Blocked before the loss (then the database cut): the loss is never handled; the kill
//!   deadline the lock's worker armed at the last renewal must kill the engine all the same.
//! - Blocked while renewals go on succeeding, for longer than a lease: the worker moves the
//!   deadline on at every renewal, and the engine must not be killed.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::common::failover::{LEASE, RENEW};
use crate::common::pg::{self, TcpProxy};
use crate::common::{bin, is_gone, wait_for_events, TIMEOUT};
use engine_shim::config::Overrides;
use engine_shim::run::{self, Request};
use engine_shim::version::SemVer;
use fake_node::{FakeNode, FakeNodeConfig, FakeNodeHandle};
use tokio::sync::mpsc;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Sends the message of every log event on this thread to the test.
struct Messages(mpsc::UnboundedSender<String>);

impl<S: tracing::Subscriber> Layer<S> for Messages {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let _ = self.0.send(message.0);
    }
}

/// An in-process run shell on a PostgreSQL lock (through a proxy the test can cut), its engine
/// started; the log messages of this thread go to `messages`.
struct Running {
    node: FakeNodeHandle,
    proxy: TcpProxy,
    requests: mpsc::UnboundedSender<Request>,
    shell: tokio::task::JoinHandle<anyhow::Result<()>>,
    pid: u32,
    engine: OwnedFd,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts the shell and waits for its engine to start.
    async fn start(test: &str) -> Running {
        let node = FakeNode::spawn(FakeNodeConfig::default())
            .await
            .expect("fake node");
        node.new_blocks(3);
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.jsonl");
        let proxy = TcpProxy::to_pg();
        let mut config = Overrides {
            node: Some(node.url()),
            engine_version: Some(SemVer::new(1, 0, 0)),
            lock: Some(proxy.url()),
            lock_name: Some(pg::unique_lock_name(test)),
            lease: Some(LEASE),
            renew: Some(RENEW),
            // Far beyond the test: only a kill at the deadline can end the engine in time.
            grace: Some(Duration::from_secs(600)),
            command: vec![
                bin("fake-engine").display().to_string(),
                "--as-version".into(),
                "1.0.0".into(),
                "--ignore-term".into(),
                "--events".into(),
                events.display().to_string(),
            ],
            ..Overrides::default()
        }
        .resolve()
        .expect("valid settings");
        config.guardian = bin("engine-shim");
        let (requests, received) = mpsc::unbounded_channel();
        let shell = tokio::spawn(run::run(config, received));
        let started = wait_for_events(
            &events,
            "the engine's start",
            |events| events.iter().any(|e| e.event == "start"),
            |events| format!("events: {events:?}"),
        )
        .await;
        let pid = started[0].pid;
        Running {
            node,
            proxy,
            requests,
            shell,
            pid,
            engine: pidfd(pid),
            _dir: dir,
        }
    }

    /// Asks the shell to shut down and waits for it to end cleanly. An engine still running
    /// ignores SIGTERM and has a long grace: a second signal, as an operator would send, kills it.
    async fn shut_down(self) {
        for _ in 0..2 {
            self.requests
                .send(Request::Shutdown { signal: "SIGTERM" })
                .unwrap();
        }
        let result = tokio::time::timeout(TIMEOUT, self.shell)
            .await
            .expect("the shell ends after a shutdown request")
            .expect("the shell does not panic");
        assert!(result.is_ok(), "the shell failed: {result:?}");
        self.node.shutdown().await;
    }
}

/// Captures the messages of this thread's log events, and a current-thread runtime to run on.
fn capture() -> (
    tracing::subscriber::DefaultGuard,
    mpsc::UnboundedReceiver<String>,
    tokio::runtime::Runtime,
) {
    let (messages_tx, messages) = mpsc::unbounded_channel();
    // Thread-local: the shell's tasks all run on this thread (a current-thread runtime).
    let guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(Messages(messages_tx)),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (guard, messages, runtime)
}

/// Waits for the first log message starting with `prefix`.
async fn message_starting(messages: &mut mpsc::UnboundedReceiver<String>, prefix: &str) -> String {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let message = messages.recv().await.expect("log capture closed");
            if message.starts_with(prefix) {
                return message;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no log message starting with {prefix:?} within {TIMEOUT:?}"))
}

#[test]
fn a_fenced_engine_dies_at_its_deadline_while_the_shims_runtime_is_blocked() {
    let _database = pg::pg_shared_guard();
    let (_log, mut messages, runtime) = capture();
    runtime.block_on(async {
        let running = Running::start("fence-blocked-runtime").await;
        let pid = running.pid;

        running.proxy.sever();
        let lost = message_starting(&mut messages, "lost the lock").await;

        // From here until the engine is gone this thread never yields: the runtime is blocked.
        let blocked_at = Instant::now();
        let died = wait_blocking(&running.engine, TIMEOUT);
        let waited = blocked_at.elapsed();
        assert!(
            died && is_gone(pid),
            "the fenced engine (pid {pid}) outlived its kill deadline while the shim's runtime \
             was blocked ({lost}); waited {waited:?}"
        );
        eprintln!("engine gone {waited:?} after the shell handled: {lost}");
        running.shut_down().await;
    });
}

/// The runtime is blocked *before* the lock is lost, so the run loop never learns of the loss
/// while the engine lives: the kill deadline the lock's own thread armed at the last renewal is
/// what kills it.
#[test]
fn an_engine_dies_at_its_kill_deadline_when_the_runtime_is_blocked_before_the_loss() {
    let _database = pg::pg_shared_guard();
    let (_log, mut messages, runtime) = capture();
    runtime.block_on(async {
        let running = Running::start("deadman-blocked-before-loss").await;
        let pid = running.pid;

        // From here until the engine is gone this thread never yields: the runtime is blocked
        // from before the database is cut, and the loss cannot be handled.
        let blocked_at = Instant::now();
        running.proxy.sever();
        let died = wait_blocking(&running.engine, TIMEOUT);
        let waited = blocked_at.elapsed();
        assert!(
            died && is_gone(pid),
            "the engine (pid {pid}) outlived its lock's kill deadline while the shim's runtime was \
             blocked from before the loss; waited {waited:?}"
        );
        eprintln!("engine gone {waited:?} after the runtime was blocked and the database cut");
        // Only now, unblocked, does the run loop hear of the loss.
        let lost = message_starting(&mut messages, "lost the lock").await;
        eprintln!("then the shell handled: {lost}");
        running.shut_down().await;
    });
}

/// A holder whose renewals go on succeeding (on the lock's own thread) while the runtime is
/// blocked for several lease periods keeps its engine: every renewal moves the kill deadline on
/// before it comes.
#[test]
fn an_engine_whose_lock_is_renewed_in_time_survives_a_blocked_runtime() {
    let _database = pg::pg_shared_guard();
    let (_log, mut messages, runtime) = capture();
    runtime.block_on(async {
        let running = Running::start("deadman-renewed").await;
        let pid = running.pid;

        // The runtime is blocked for three lease periods: the kill deadline armed at the grant
        // passes many times over unless each renewal moves it on.
        let blocked_for = LEASE * 3;
        let died = wait_blocking(&running.engine, blocked_for);
        assert!(
            !died && !is_gone(pid),
            "the engine (pid {pid}) was killed while its lock was renewed in time ({blocked_for:?} \
             of blocked runtime)"
        );
        // Unblocked: the lock was never lost and the engine still runs.
        tokio::task::yield_now().await;
        while let Ok(message) = messages.try_recv() {
            assert!(
                !message.starts_with("lost the lock") && !message.contains("kill deadline"),
                "the lock was lost or the engine fenced: {message}"
            );
        }
        assert!(!is_gone(pid), "the engine (pid {pid}) died after the block");
        running.shut_down().await;
    });
}

fn pidfd(pid: u32) -> OwnedFd {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a real pid");
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .expect("the engine is alive")
}

/// Waits for a process to end by polling its pidfd, blocking the calling thread (and so the
/// runtime it runs) for up to `within`; true if the process ended.
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
        if unsafe { libc::poll(&mut poll, 1, left.as_millis() as i32) } > 0 {
            return true;
        }
    }
}
