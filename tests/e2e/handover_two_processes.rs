//! Operator stories for the VPS recipe: one systemd service per engine package, each a separate
//! `engine-shim run` with one engine, all on one data directory and one host-wide lock file.
//!
//! The lock is taken only to start an engine and given back once it is reaped, so the shims hand over
//! through it: the new one waits (saying who holds it) while the old engine stops, and wakes when it
//! is released. fake-engine's data-directory lock and the shared events file prove the two engines
//! never ran at once.

use crate::common;

use crate::common::{is_gone, sample_alive, Host, Node};
use rustix::process::Signal;

/// The VPS story: the 1.0.0 service runs its engine; the 1.1.0 service waits with Chainflip's
/// WAITING line; the upgrade lands at #3; 1.0.0 stops, the 1.1.0 shim takes the lock and starts its
/// engine with `{block}` = 3. Afterwards the 1.0.0 shim idles (alive, starting nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shims_hand_over_from_1_0_to_1_1_at_the_upgrade_block() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let genesis = node.block_hash(0).await;
    let host = Host::new();
    let mut old_shim = host.shim(&node).engine("1.0.0").spawn();
    let new_shim = host.shim(&node).engine("1.1.0").spawn();

    let old = host.wait_event("start", "1.0.0", 1).await;
    let waiting = format!(
        "This version '1.1.0' is incompatible with the current release '1.0.0' at block: {genesis}. WAITING for a compatible release version."
    );
    let (_, line) = new_shim
        .wait_log(0, "the WAITING line", |l| l.message() == waiting)
        .await;
    assert_eq!(line.level(), "INFO");

    node.new_blocks(2).await;
    node.set_release("1.1.0").await;
    node.new_blocks(1).await; // #3 carries 1.1.0
    let upgrade = node.block_hash(3).await;

    let new = host.assert_hand_over(&old, "1.1.0", 3, &upgrade).await;
    assert!(is_gone(old.pid));
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);

    old_shim
        .wait_message(
            0,
            &[&format!(
                "This version '1.0.0' is no longer compatible with the release version '1.1.0' at block: {upgrade}"
            )],
        )
        .await;
    let (acquired, _) = new_shim.wait_message(0, &["acquired the lock"]).await;
    let (started, _) = new_shim.wait_message(0, &["engine 1.1.0 started"]).await;
    assert!(
        acquired < started,
        "the lock is taken before the engine starts"
    );
    let last_waiting = new_shim
        .proc
        .output
        .lines()
        .iter()
        .rposition(|l| l.contains("WAITING for a compatible release version"))
        .unwrap();
    assert!(
        last_waiting < started,
        "the WAITING line stops at the upgrade"
    );

    // Both shims process a later block: the old one starts nothing, the new one keeps 1.1.0.
    node.new_blocks(2).await;
    node.set_release_value(Some("0x0102")).await;
    node.new_blocks(1).await; // #6
    old_shim
        .wait_message(
            0,
            &["cannot use the release at block #6", "starting nothing"],
        )
        .await;
    new_shim
        .wait_message(
            0,
            &[
                "cannot use the release at block #6",
                "keeping engine 1.1.0 running",
            ],
        )
        .await;
    assert_eq!(
        host.events()
            .iter()
            .filter(|e| e.event == "start")
            .map(|e| e.version.as_str())
            .collect::<Vec<_>>(),
        ["1.0.0", "1.1.0"],
        "one hand-over, no restart of 1.0.0"
    );
    assert_eq!(
        host.alive().iter().map(|e| e.pid).collect::<Vec<_>>(),
        [new.pid]
    );
    assert!(
        old_shim.proc.try_exit().is_none(),
        "the old shim idles, it does not exit"
    );
}

/// The old engine takes 2 s to stop: meanwhile the new shim waits for the lock and says who holds
/// it (pid, version, since when); once the old engine is reaped and the lock given back, the new
/// shim acquires it and starts its engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_shim_waits_for_the_lock_and_says_who_holds_it() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let old_shim = host
        .shim(&node)
        .engine_with("1.0.0", &["--shutdown-delay", "2s"])
        .shim_args(&["--grace", "10s"])
        .spawn();
    let new_shim = host.shim(&node).engine("1.1.0").spawn();
    let old = host.wait_event("start", "1.0.0", 1).await;
    new_shim.wait_message(0, &["WAITING"]).await;

    node.set_release("1.1.0").await;
    node.new_blocks(1).await;

    let (waiting_at, line) = new_shim.wait_message(0, &["waiting for the lock"]).await;
    let message = line.message();
    assert_eq!(line.level(), "INFO");
    let holder_pids = [old_shim.proc.pid(), old.pid];
    assert!(
        holder_pids
            .iter()
            .any(|pid| message.contains(&format!("pid {pid}"))),
        "the line names the holder's pid (shim {} or engine {}): {message}",
        old_shim.proc.pid(),
        old.pid
    );
    assert!(
        message.contains("1.0.0"),
        "the line names the holder's engine version: {message}"
    );
    assert!(
        message.contains("since"),
        "the line says since when: {message}"
    );
    assert!(
        !host.events().iter().any(|e| e.event == "stop"),
        "the new shim waits while the old engine is still stopping"
    );

    let new = host.wait_event("start", "1.1.0", 1).await;
    let stop = host.wait_event("stop", "1.0.0", 1).await;
    assert!(stop.unix_nanos() < new.unix_nanos());
    let (acquired_at, _) = new_shim.wait_message(0, &["acquired the lock"]).await;
    assert!(waiting_at < acquired_at);
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
}

/// The old service's engine ignores SIGTERM: its shim kills it after the 700 ms grace and only then
/// gives the lock back; the new engine starts after that, never beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_engine_in_the_other_shim_is_killed_before_the_new_one_starts() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let old_shim = host
        .shim(&node)
        .engine_with("1.0.0", &["--ignore-term"])
        .shim_args(&["--grace", "700ms"])
        .spawn();
    let _new_shim = host.shim(&node).engine("1.1.0").spawn();
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
    assert!(is_gone(old.pid));
    old_shim
        .wait_log(0, "a warning that 1.0.0 was killed", |l| {
            l.level() == "WARN" && l.message().contains("1.0.0") && l.message().contains("killed")
        })
        .await;
    host.assert_no_lock_failed();
}

/// The lock is held only while an engine runs: with 1.0.0 running it is taken; when the release
/// moves to 1.3.0 (nothing installed fits) both shims idle and the lock file is free; when 1.1.0
/// becomes compatible, its shim holds the lock the moment its engine has started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_held_only_while_an_engine_runs() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let shim_a = host.shim(&node).engine("1.0.0").spawn();
    let shim_b = host.shim(&node).engine("1.1.0").spawn();
    host.wait_event("start", "1.0.0", 1).await;
    assert!(!host.lock_is_free(), "the lock is held while 1.0.0 runs");

    node.set_release("1.3.0").await;
    node.new_blocks(1).await; // #1
    host.wait_event("stop", "1.0.0", 1).await;
    for shim in [&shim_a, &shim_b] {
        shim.wait_message(
            0,
            &["no installed engine is compatible with release 1.3.0 at block #1"],
        )
        .await;
    }
    common::wait_until("both idle shims to hold no lock", || host.lock_is_free()).await;

    node.set_release("1.1.0").await;
    node.new_blocks(1).await; // #2
    let started = host.wait_event("start", "1.1.0", 1).await;
    assert_eq!(started.start_block(), Some(2));
    assert!(!host.lock_is_free(), "the lock is held while 1.1.0 runs");
    host.assert_no_lock_failed();
}

/// A rollback across services: 1.1.0 runs in its shim, the release goes back to 1.0.0 at #2, and the
/// 1.0.0 service takes over through the lock at that block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_hands_back_across_shims() {
    let node = Node::start(&["--release", "1.1.0"]).await;
    let host = Host::new();
    let _older_shim = host.shim(&node).engine("1.0.0").spawn();
    let newer_shim = host.shim(&node).engine("1.1.0").spawn();
    let newer = host.wait_event("start", "1.1.0", 1).await;

    node.new_blocks(1).await;
    node.set_release("1.0.0").await;
    node.new_blocks(1).await; // #2
    let rollback = node.block_hash(2).await;

    let older = host.wait_event("start", "1.0.0", 1).await;
    let stop = host.wait_event("stop", "1.1.0", 1).await;
    assert_eq!(stop.pid, newer.pid);
    assert!(stop.unix_nanos() < older.unix_nanos());
    assert_eq!(older.start_block(), Some(2));
    assert_eq!(older.start_hash(), Some(rollback.as_str()));
    newer_shim
        .wait_message(
            0,
            &["This version '1.1.0' is not yet compatible with the release version '1.0.0'"],
        )
        .await;
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
}

/// The old shim dies (SIGKILL) while its engine is still taking its time to stop and the new shim
/// waits for the lock: the old engine dies with its shim, and the new engine starts only once it is
/// gone — the lock the kernel frees with the dead shim must not let the new engine in beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_shim_killed_mid_hand_over_its_engine_is_gone_before_the_new_one_starts() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let mut old_shim = host
        .shim(&node)
        .engine_with("1.0.0", &["--shutdown-delay", "5s"])
        .shim_args(&["--grace", "10s"])
        .spawn();
    let new_shim = host.shim(&node).engine("1.1.0").spawn();
    let old = host.wait_event("start", "1.0.0", 1).await;

    node.set_release("1.1.0").await;
    node.new_blocks(1).await;
    new_shim.wait_message(0, &["waiting for the lock"]).await;

    // Watch the old engine from just before the kill until it is gone: each sighting is evidence
    // of when it was still alive.
    let mut seen_alive = sample_alive([old.pid]);
    old_shim.proc.signal(Signal::KILL);
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    loop {
        let seen = sample_alive([old.pid]);
        if seen.is_empty() {
            break;
        }
        seen_alive.extend(seen);
        assert!(
            std::time::Instant::now() < deadline,
            "the old engine outlived its shim"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let status = old_shim.proc.wait_exit().await;
    assert!(!status.success(), "the old shim was killed: {status}");

    let new = host.wait_event("start", "1.1.0", 1).await;
    assert_eq!(new.start_block(), Some(1));
    assert!(
        !host
            .events()
            .iter()
            .any(|e| e.event == "stop" && e.version == "1.0.0"),
        "the old engine died with its shim, it did not finish its 5 s stop"
    );
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&seen_alive);
}
