//! Operator stories for an engine that exits on its own at an upgrade, as the 1.0–1.3 engines do
//! (an error at the first no-longer-compatible finalized block) and today's runner does (exit 1
//! when the release left its pair). Whether the engine leaves before or after the shim has seen
//! the upgrade block, that is a hand-over: no ERROR, no restart of the old engine, the new engine
//! starts at the upgrade block, never two at once. Only an exit while the release still fits is a
//! crash, restarted with back-off, and never before the node has confirmed the release.
//!
//! The old engine is a small `sh` program around fake-engine: fake-engine does the real work
//! (data-directory lock, start/stop events on the host's clock) and the script exits 1 on its own
//! when the test writes a line to its fifo, standing for "the engine met the upgrade block". It
//! ignores SIGTERM itself, so even while the shim is stopping it, the exit is the engine's own.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use crate::common::{bin, shell_words, Host, LogLine, Node, Shim, TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A 1.0.0 engine that exits 1 on its own when told, like a 1.0–1.3 engine meeting the upgrade.
struct OldEngine {
    script: PathBuf,
    fifo: PathBuf,
}

impl OldEngine {
    fn new(host: &Host) -> OldEngine {
        let dir = host.dir.path();
        let fifo = dir.join("old-engine.fifo");
        let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success(), "mkfifo {}", fifo.display());
        let script = dir.join("old-engine-1.0.0");
        let fake_engine = shell_words(&[bin("fake-engine").display().to_string()]);
        let fifo_word = shell_words(&[fifo.display().to_string()]);
        fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 {fake_engine} --as-version 1.0.0 \"$@\" &\n\
                 engine=$!\n\
                 trap '' TERM\n\
                 read _ < {fifo_word}\n\
                 kill -TERM $engine 2>/dev/null\n\
                 wait $engine\n\
                 echo \"This version '1.0.0' is no longer compatible with the release version; exiting\" >&2\n\
                 exit 1\n"
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        OldEngine { script, fifo }
    }

    /// The `--engine` value: version 1.0.0, the script on the host's data directory and events.
    fn spec(&self, host: &Host) -> String {
        let words = [
            self.script.display().to_string(),
            "--data-dir".into(),
            host.data_dir.display().to_string(),
            "--events".into(),
            host.events.display().to_string(),
        ];
        format!("1.0.0={}", shell_words(&words))
    }

    /// Tells the running engine it met the upgrade: it stops its work and exits 1.
    async fn meet_upgrade(&self) {
        let fifo = self.fifo.clone();
        // Opening a fifo for writing waits for its reader: the running script.
        let told = tokio::task::spawn_blocking(move || fs::write(fifo, "upgrade\n"));
        tokio::time::timeout(TIMEOUT, told)
            .await
            .expect("the old engine never read its fifo: is it running?")
            .unwrap()
            .unwrap();
    }
}

fn shim_errors(shim: &Shim) -> Vec<String> {
    shim.log()
        .iter()
        .filter(|l| l.is_shim() && l.level() == "ERROR")
        .map(|l| l.message().to_string())
        .collect()
}

/// Waits until the shim's metrics say it processed block `number` (there is no event to await:
/// blocks that change nothing are not logged).
async fn wait_last_block(addr: &str, number: u64) {
    let wanted = format!("engine_shim_last_block {number}\n");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: shim\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        if answer.contains(&wanted) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shim never processed block #{number}: {answer}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn starts_of(host: &Host, version: &str) -> usize {
    host.events()
        .iter()
        .filter(|e| e.event == "start" && e.version == version)
        .count()
}

/// Order (a): the engine meets the upgrade block before the shim does. The node has finalized
/// block #1 carrying 1.1.0 but cannot tell the shim's follower its hash (`chain_getBlockHash`
/// fails), so the shim is still at #0 when 1.0.0 exits 1. The shim reads the release at the
/// finalized head, finds 1.1.0, and says so at INFO; nothing restarts; once the follower reaches
/// #1, 1.1.0 starts there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_exiting_before_the_shim_sees_the_upgrade_block_hands_over() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let old = OldEngine::new(&host);
    let shim = host
        .shim(&node)
        .engine("1.1.0")
        .shim_args(&["--engine", &old.spec(&host)])
        .spawn();
    let first = host.wait_event("start", "1.0.0", 1).await;

    node.set_fault("chain_getBlockHash", "error").await;
    node.set_release("1.1.0").await;
    let upgrade = node.new_blocks(1).await; // #1 carries 1.1.0, finalized at once
    old.meet_upgrade().await;

    let (_, line) = shim
        .wait_message(0, &["engine 1.0.0 exited at the upgrade to 1.1.0"])
        .await;
    assert_eq!(line.level(), "INFO");
    assert_eq!(line.field("block_number"), 1);
    assert_eq!(line.field("block_hash"), upgrade.as_str());
    assert!(
        line.message().contains("exit status: 1"),
        "{}",
        line.message()
    );
    assert_eq!(
        starts_of(&host, "1.1.0"),
        0,
        "the follower has not reached the upgrade block: nothing may start yet"
    );

    node.set_fault("chain_getBlockHash", "none").await;
    let new = host.assert_hand_over(&first, "1.1.0", 1, &upgrade).await;
    shim.wait_message(0, &["engine 1.1.0 started", &new.pid.to_string()])
        .await;
    assert_eq!(starts_of(&host, "1.0.0"), 1, "1.0.0 was never restarted");
    assert_eq!(shim_errors(&shim), Vec::<String>::new(), "no ERROR line");
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
}

/// Order (b): the shim sees the upgrade block first and is stopping 1.0.0 when it exits 1 on its
/// own. The exit completes the hand-over: no ERROR, no restart, 1.1.0 starts at the upgrade block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_exiting_after_the_shim_saw_the_upgrade_block_hands_over() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let old = OldEngine::new(&host);
    let shim = host
        .shim(&node)
        .engine("1.1.0")
        .shim_args(&["--engine", &old.spec(&host)])
        .spawn();
    let first = host.wait_event("start", "1.0.0", 1).await;

    node.set_release("1.1.0").await;
    let upgrade = node.new_blocks(1).await; // #1 carries 1.1.0
    let no_longer = format!(
        "This version '1.0.0' is no longer compatible with the release version '1.1.0' at block: {upgrade}"
    );
    shim.wait_log(0, "the no-longer-compatible line", |l| {
        l.message() == no_longer
    })
    .await;
    old.meet_upgrade().await;

    host.assert_hand_over(&first, "1.1.0", 1, &upgrade).await;
    let (_, stopped) = shim.wait_message(0, &["engine 1.0.0 stopped"]).await;
    assert!(
        stopped.message().contains("exit status: 1"),
        "the exit was the engine's own: {}",
        stopped.message()
    );
    shim.wait_message(0, &["engine 1.1.0 started"]).await;
    assert_eq!(starts_of(&host, "1.0.0"), 1, "1.0.0 was never restarted");
    assert_eq!(shim_errors(&shim), Vec::<String>::new(), "no ERROR line");
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
}

/// An engine that exits while the release at the finalized head still fits has crashed: ERROR,
/// then a restart with back-off, told the present block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_exiting_while_the_release_still_fits_is_restarted() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let old = OldEngine::new(&host);
    let shim = host
        .shim(&node)
        .engine("1.1.0")
        .shim_args(&["--engine", &old.spec(&host)])
        .shim_args(&["--metrics-listen", "127.0.0.1:0"])
        .spawn();
    let (_, serving) = shim
        .wait_message(0, &["serving /metrics and /health on http://"])
        .await;
    let metrics = serving
        .message()
        .rsplit("http://")
        .next()
        .unwrap()
        .to_string();
    let first = host.wait_event("start", "1.0.0", 1).await;
    assert_eq!(first.start_block(), Some(0));
    node.new_blocks(2).await;
    wait_last_block(&metrics, 2).await;

    old.meet_upgrade().await;
    let (_, crashed) = shim
        .wait_message(0, &["engine 1.0.0 exited unexpectedly (exit status: 1)"])
        .await;
    assert_eq!(crashed.level(), "ERROR");
    let restarted = host.wait_event("start", "1.0.0", 2).await;
    assert_eq!(
        restarted.start_block(),
        Some(2),
        "a restart begins at the present finalized block"
    );
    assert_eq!(starts_of(&host, "1.1.0"), 0);
    host.assert_no_lock_failed();
}

/// The engine exits while the node cannot say which release is at its finalized head: that is
/// treated as a crash (ERROR), but the engine is not restarted until the node answers, since the
/// chain may have moved past it. Once the node answers and the release still fits, it restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_exit_with_the_head_unreadable_restarts_only_once_the_node_answers() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let old = OldEngine::new(&host);
    let shim = host
        .shim(&node)
        .engine("1.1.0")
        .shim_args(&["--engine", &old.spec(&host)])
        .spawn();
    host.wait_event("start", "1.0.0", 1).await;

    node.set_fault("chain_getFinalizedHead", "error").await;
    old.meet_upgrade().await;
    let (_, crashed) = shim
        .wait_message(
            0,
            &[
                "engine 1.0.0 exited unexpectedly (exit status: 1)",
                "the release at the finalized head cannot be read",
            ],
        )
        .await;
    assert_eq!(crashed.level(), "ERROR");
    let (_, deferred) = shim
        .wait_message(0, &["not restarting engine 1.0.0 yet"])
        .await;
    assert_eq!(deferred.level(), "WARN");
    assert_eq!(
        starts_of(&host, "1.0.0"),
        1,
        "no restart while the node cannot confirm the release"
    );

    node.set_fault("chain_getFinalizedHead", "none").await;
    host.wait_event("start", "1.0.0", 2).await;
    let restarting = shim
        .log()
        .into_iter()
        .filter(LogLine::is_shim)
        .any(|l| l.message().starts_with("restarting engine 1.0.0"));
    assert!(restarting, "the restart is announced as one");
}
