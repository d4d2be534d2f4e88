//! Operator stories for one shim holding several engine versions (the Docker / Kubernetes recipe
//! without supervisord): exactly the engine compatible with the release runs, and a hand-over is
//! stop → reaped → start at the exact block, never both at once.
//!
//! Every engine of a test shares one data directory and one events file (a [`Host`]): fake-engine's
//! exclusive lock on the data directory turns any overlap into a `lock_failed` event, and the shared
//! events file puts every life on one clock.

use crate::common;

use crate::common::{exit_code, is_gone, Host, Node};

/// The story the issue opens with: 1.0.0 runs; the release moves to 1.1.0 at block #3; 1.0.0 is
/// told it is no longer compatible and stopped; only once it is gone does 1.1.0 start, told
/// `{block}` = 3 and the hash of #3. Afterwards the shim keeps 1.1.0 and never restarts 1.0.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_moves_to_1_1_old_engine_stops_then_new_starts_at_the_upgrade_block() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let shim = host.shim(&node).engine("1.0.0").engine("1.1.0").spawn();

    let old = host.wait_event("start", "1.0.0", 1).await;
    assert_eq!(
        old.start_block(),
        Some(0),
        "1.0.0 starts on the first block"
    );
    assert!(
        host.events().iter().all(|e| e.version == "1.0.0"),
        "only the compatible engine runs"
    );

    node.new_blocks(2).await;
    node.set_release("1.1.0").await;
    node.new_blocks(1).await; // #3 carries 1.1.0
    let upgrade = node.block_hash(3).await;

    let new = host.assert_hand_over(&old, "1.1.0", 3, &upgrade).await;
    assert!(is_gone(old.pid), "1.0.0 is gone once 1.1.0 runs");
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);

    let no_longer = format!(
        "This version '1.0.0' is no longer compatible with the release version '1.1.0' at block: {upgrade}"
    );
    let (said_no_longer, _) = shim
        .wait_log(0, "the no-longer-compatible line", |l| {
            l.message() == no_longer
        })
        .await;
    let (stopped, _) = shim.wait_message(0, &["engine 1.0.0 stopped"]).await;
    let (starting, line) = shim.wait_message(0, &["starting engine 1.1.0"]).await;
    assert_eq!(line.field("block_number"), 3);
    assert!(
        said_no_longer < stopped && stopped < starting,
        "the log tells the hand-over in order: no longer compatible, stopped, starting"
    );

    // More blocks, then one the shim cannot read: its line says 1.1.0 is kept, and nothing else
    // ever started.
    node.new_blocks(2).await;
    node.set_release_value(Some("0x0102")).await;
    node.new_blocks(1).await; // #6
    shim.wait_message(
        0,
        &[
            "cannot use the release at block #6",
            "keeping engine 1.1.0 running",
        ],
    )
    .await;
    let lives: Vec<(String, String)> = host
        .events()
        .iter()
        .map(|e| (e.event.clone(), e.version.clone()))
        .collect();
    let expected = [("start", "1.0.0"), ("stop", "1.0.0"), ("start", "1.1.0")];
    assert_eq!(
        lives,
        expected.map(|(e, v)| (e.to_string(), v.to_string())),
        "one hand-over, no restart of 1.0.0"
    );
    assert_eq!(
        host.alive().iter().map(|e| e.pid).collect::<Vec<_>>(),
        [new.pid]
    );
}

/// Three versions installed and the release jumps 1.0 → 1.2 directly: 1.2.0 starts at the upgrade
/// block; 1.1.0, never compatible, never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_jumps_from_1_0_to_1_2_and_1_1_never_starts() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let shim = host
        .shim(&node)
        .engine("1.0.0")
        .engine("1.1.0")
        .engine("1.2.0")
        .spawn();
    let old = host.wait_event("start", "1.0.0", 1).await;

    node.new_blocks(1).await;
    node.set_release("1.2.0").await;
    node.new_blocks(3).await; // #2 carries 1.2.0
    let upgrade = node.block_hash(2).await;

    let new = host.wait_event("start", "1.2.0", 1).await;
    let stop = host.wait_event("stop", "1.0.0", 1).await;
    assert_eq!(stop.pid, old.pid);
    assert!(stop.unix_nanos() < new.unix_nanos());
    assert_eq!(new.start_block(), Some(2));
    assert_eq!(new.start_hash(), Some(upgrade.as_str()));
    shim.wait_message(
        0,
        &["This version '1.0.0' is no longer compatible with the release version '1.2.0'"],
    )
    .await;

    // A marker block the shim must process after the jump: then 1.1.0 has had every chance.
    node.set_release_value(Some("0x0102")).await;
    node.new_blocks(1).await; // #5
    shim.wait_message(
        0,
        &[
            "cannot use the release at block #5",
            "keeping engine 1.2.0 running",
        ],
    )
    .await;
    let events = host.events();
    assert!(
        !events.iter().any(|e| e.version == "1.1.0"),
        "1.1.0 never started: {events:#?}"
    );
    assert_eq!(shim.count_messages("starting engine 1.1.0"), 0);
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
}

/// The release moves to 1.3.0, for which nothing is installed: the running engine stops, all idle,
/// the shim holds no lock, and its warning names the release, the block, what is installed and what
/// to install — instead of a crash loop. When the release comes back to an installed version, that
/// engine starts at that block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_with_no_installed_engine_idles_everything_and_names_the_fix() {
    let node = Node::start(&["--release", "1.1.0"]).await;
    let host = Host::new();
    let mut shim = host
        .shim(&node)
        .engine("1.0.0")
        .engine("1.1.0")
        .engine("1.2.0")
        .spawn();
    let running = host.wait_event("start", "1.1.0", 1).await;
    assert!(
        !host.lock_is_free(),
        "the lock is held while an engine runs"
    );

    node.set_release("1.3.0").await;
    node.new_blocks(1).await; // #1 carries 1.3.0
    let hash = node.block_hash(1).await;
    let install = format!(
        "no installed engine is compatible with release 1.3.0 at block #1 ({hash}); installed: 1.0.0, 1.1.0, 1.2.0; install a 1.3.x engine (or run it in another shim sharing the lock)"
    );
    let (_, line) = shim
        .wait_log(0, "the install line", |l| l.message() == install)
        .await;
    assert_eq!(line.level(), "WARN");
    let stop = host.wait_event("stop", "1.1.0", 1).await;
    assert_eq!(stop.pid, running.pid);
    assert!(host.alive().is_empty(), "nothing runs on release 1.3.0");
    common::wait_until("the idle shim to give the lock back", || {
        host.lock_is_free()
    })
    .await;
    assert!(
        shim.proc.try_exit().is_none(),
        "the shim idles, it does not exit"
    );

    // The chain rolls back to 1.2.0 (the operator need not restart anything).
    node.new_blocks(2).await;
    node.set_release("1.2.0").await;
    node.new_blocks(1).await; // #4
    let back = host.wait_event("start", "1.2.0", 1).await;
    assert_eq!(back.start_block(), Some(4));
    assert_eq!(back.start_hash(), Some(node.block_hash(4).await.as_str()));
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
}

/// A rollback: 1.1.0 runs and the release goes back to 1.0.0 at block #2. The shim says 1.1.0 is
/// not yet compatible any more and hands back the same way: stop 1.1.0, then start 1.0.0 at #2.
/// The versions here are probed from the binaries (`--engine CMD`, no `VERSION=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_from_1_1_to_1_0_hands_back_at_the_rollback_block() {
    let node = Node::start(&["--release", "1.1.0"]).await;
    let host = Host::new();
    let shim = host
        .shim(&node)
        .probed_engine("1.0.0", &[])
        .probed_engine("1.1.0", &[])
        .spawn();
    let newer = host.wait_event("start", "1.1.0", 1).await;

    node.new_blocks(1).await;
    node.set_release("1.0.0").await;
    node.new_blocks(2).await; // #2 carries 1.0.0
    let rollback = node.block_hash(2).await;

    let older = host.wait_event("start", "1.0.0", 1).await;
    let stop = host.wait_event("stop", "1.1.0", 1).await;
    assert_eq!(stop.pid, newer.pid);
    assert!(
        stop.unix_nanos() < older.unix_nanos(),
        "stop(1.1.0) before start(1.0.0)"
    );
    assert_eq!(older.start_block(), Some(2));
    assert_eq!(older.start_hash(), Some(rollback.as_str()));
    shim.wait_message(
        0,
        &[
            "This version '1.1.0' is not yet compatible with the release version '1.0.0'",
            &rollback,
        ],
    )
    .await;
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
}

/// The old engine takes its time to stop (800 ms of a 10 s grace): it is not killed, and the new
/// engine starts only after it has stopped — the hand-over waits, it does not race.
///
/// The grace is the production default, far above the 800 ms: on a loaded machine the engine's
/// exit and its reaping through the guardian may come well after its 800 ms, and a grace that
/// ran out first would kill it (no `stop` event, a `killed` line) although the product did right.
/// A long grace costs nothing here: the engine stops on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_old_engine_is_waited_for_before_the_new_one_starts() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let shim = host
        .shim(&node)
        .engine_with("1.0.0", &["--shutdown-delay", "800ms"])
        .engine("1.1.0")
        .shim_args(&["--grace", "10s"])
        .spawn();
    let old = host.wait_event("start", "1.0.0", 1).await;

    node.set_release("1.1.0").await;
    let before = common::unix_nanos_now();
    node.new_blocks(1).await;

    let new = host.wait_event("start", "1.1.0", 1).await;
    let stop = host.wait_event("stop", "1.0.0", 1).await;
    assert_eq!(stop.pid, old.pid, "the old engine stopped on its own");
    assert!(stop.unix_nanos() < new.unix_nanos());
    assert!(
        new.unix_nanos() - before >= 800_000_000,
        "the new engine started {} ms after the upgrade block, before the old one's 800 ms stop",
        (new.unix_nanos() - before) / 1_000_000
    );
    assert_eq!(new.start_block(), Some(1));
    shim.wait_message(0, &["engine 1.0.0 stopped"]).await;
    assert_eq!(
        shim.count_messages("killed"),
        0,
        "an engine that stops within its grace is not killed"
    );
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
}

/// The old engine ignores SIGTERM: after the 700 ms grace it is killed, and only then does the new
/// engine start (fake-engine 1.0.0 holds the data directory until it dies, so an early start would
/// fail its lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_old_engine_is_killed_after_grace_and_only_then_the_new_one_starts() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let shim = host
        .shim(&node)
        .engine_with("1.0.0", &["--ignore-term"])
        .engine("1.1.0")
        .shim_args(&["--grace", "700ms"])
        .spawn();
    let old = host.wait_event("start", "1.0.0", 1).await;

    node.set_release("1.1.0").await;
    let before = common::unix_nanos_now();
    node.new_blocks(1).await;

    let new = host.wait_event("start", "1.1.0", 1).await;
    assert!(
        new.unix_nanos() - before >= 700_000_000,
        "the new engine started {} ms after the upgrade block, inside the old one's grace",
        (new.unix_nanos() - before) / 1_000_000
    );
    assert!(is_gone(old.pid), "the stuck engine is gone");
    assert!(
        !host
            .events()
            .iter()
            .any(|e| e.event == "stop" && e.version == "1.0.0"),
        "1.0.0 never stopped by itself: it was killed"
    );
    assert_eq!(new.start_block(), Some(1));
    shim.wait_log(0, "a warning that 1.0.0 was killed", |l| {
        l.level() == "WARN" && l.message().contains("1.0.0") && l.message().contains("killed")
    })
    .await;
    host.assert_no_lock_failed();
}

/// Two installed engines compatible with one release (1.1.0 and 1.1.3) make the choice ambiguous:
/// a usage error (exit 2) naming both, before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_versions_are_a_startup_error_naming_both() {
    let node = Node::start(&["--release", "1.1.0"]).await;
    let host = Host::new();
    let mut shim = host.shim(&node).engine("1.1.0").engine("1.1.3").spawn();
    let status = shim.proc.wait_exit().await;
    assert_eq!(
        exit_code(status),
        2,
        "overlapping versions are a usage error"
    );
    let output = shim.proc.output.lines().join("\n");
    assert!(
        output.contains("1.1.0") && output.contains("1.1.3"),
        "the error names both versions:\n{output}"
    );
    assert!(host.events().is_empty(), "nothing started");
}

/// The same ambiguity found by probing the binaries (`--engine CMD` twice, both answering 1.1.x), and
/// an exact duplicate given with versions: both are startup errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probed_overlap_and_duplicate_versions_are_startup_errors() {
    let node = Node::start(&["--release", "1.1.0"]).await;
    let host = Host::new();
    let mut probed = host
        .shim(&node)
        .probed_engine("1.1.0", &[])
        .probed_engine("1.1.3", &[])
        .spawn();
    assert_eq!(exit_code(probed.proc.wait_exit().await), 2);
    let output = probed.proc.output.lines().join("\n");
    assert!(
        output.contains("1.1.0") && output.contains("1.1.3"),
        "the error names both probed versions:\n{output}"
    );

    let mut duplicate = host.shim(&node).engine("1.2.0").engine("1.2.0").spawn();
    assert_eq!(exit_code(duplicate.proc.wait_exit().await), 2);
    let output = duplicate.proc.output.lines().join("\n");
    assert!(
        output.contains("1.2.0"),
        "the error names the version:\n{output}"
    );
    assert!(host.events().is_empty(), "nothing started");
}
