//! A fenced engine dies at its kill deadline even while the shim's async runtime is blocked.
//!
//! The run shell runs in-process on this test's single-threaded runtime, holding a PostgreSQL
//! lease through a [`TcpProxy`]; its engine is a real `fake-engine` that ignores SIGTERM, under the
//! real guardian binary. The test cuts the proxy, waits until the shell has handled the loss of the
//! lock (its "lost the lock" line is logged while the loss is handled, and nothing else runs on
//! this thread before that handling ends), and then blocks the runtime's only thread until the
//! engine is gone. Neither the gate's kill at the deadline nor the supervisor's task can run any
//! more: only the deadline killer's own thread can kill the engine, and it must.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::common::failover::{LEASE, RENEW};
use crate::common::pg::{self, TcpProxy};
use crate::common::{bin, is_gone, wait_for_events, TIMEOUT};
use engine_shim::config::Overrides;
use engine_shim::run::{self, Request};
use engine_shim::version::SemVer;
use fake_node::{FakeNode, FakeNodeConfig};
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

#[test]
fn a_fenced_engine_dies_at_its_deadline_while_the_shims_runtime_is_blocked() {
    let _database = pg::pg_shared_guard();
    let (messages_tx, mut messages) = mpsc::unbounded_channel();
    // Thread-local: the shell's tasks all run on this thread (a current-thread runtime).
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(Messages(messages_tx)),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
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
            lock_name: Some(pg::unique_lock_name("fence-blocked-runtime")),
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
        let engine = pidfd(pid);

        proxy.sever();
        let lost = tokio::time::timeout(TIMEOUT, async {
            loop {
                let message = messages.recv().await.expect("log capture closed");
                if message.starts_with("lost the lock") {
                    return message;
                }
            }
        })
        .await
        .expect("the shell never reported the loss of its lock");

        // From here until the engine is gone this thread never yields: the runtime is blocked.
        let blocked_at = Instant::now();
        let died = wait_blocking(&engine, TIMEOUT);
        let waited = blocked_at.elapsed();
        assert!(
            died && is_gone(pid),
            "the fenced engine (pid {pid}) outlived its kill deadline while the shim's runtime \
             was blocked ({lost}); waited {waited:?}"
        );
        eprintln!("engine gone {waited:?} after the shell handled: {lost}");

        requests
            .send(Request::Shutdown { signal: "SIGTERM" })
            .unwrap();
        let result = tokio::time::timeout(TIMEOUT, shell)
            .await
            .expect("the shell ends after a shutdown request")
            .expect("the shell does not panic");
        assert!(result.is_ok(), "the shell failed: {result:?}");
        node.shutdown().await;
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
