//! A hand-over inside one shim (1.0.0 stops at the upgrade, 1.1.0 starts on the lock already held)
//! while the host pauses past the PostgreSQL lease: the next engine must not start on the lock
//! the shim held before the pause. The shim is resumed with everything due at once: the old
//! engine's exit (the hand-over point) and the lock's renewal deadline, long passed. Whichever the
//! shim handles first, 1.1.0 starts only on a lock acquired after the resume: either the loss is
//! handled first (the lock is asked for again), or the start is held back with the WARN line
//! until the loss comes.
//!
//! How it is driven, without sleeping: the old engine ignores SIGTERM (so the hand-over waits on
//! it); once the shim has asked it to stop, the shim alone is stopped (SIGSTOP), the test waits
//! until the database's lease has expired, then ends the old engine itself and waits until the
//! engine's guardian, the shim's child, has exited and waits to be reaped. Only then is the shim
//! resumed.

use crate::common::chaos::parent_pid;
use crate::common::failover::{
    freeze, is_stopped, lock_epoch, read_lease, thaw, wait_started_by, Mode, PgLock,
};
use crate::common::{kill_engine, pg, unix_nanos_now, wait_gone, wait_until, Host, Node, TIMEOUT};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_holder_paused_during_a_hand_over_starts_the_next_engine_only_on_a_new_grant() {
    let _pg = pg::pg_shared_guard();
    let lock = PgLock::new("failover-paused-hand-over", Mode::Lease);
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let lock_args = lock.args();
    let lock_args: Vec<&str> = lock_args.iter().map(String::as_str).collect();
    let shim = host
        .shim(&node)
        .engine_with("1.0.0", &["--ignore-term", "epoch={lock_epoch}"])
        .engine_with("1.1.0", &["epoch={lock_epoch}"])
        .lock(&lock.url)
        .shim_args(&lock_args)
        // The old engine is ended by the test, never by the grace period running out.
        .shim_args(&["--grace", "1h"])
        .spawn();
    let old = host.wait_event("start", "1.0.0", 1).await;
    wait_started_by(&shim, old.pid).await;
    let epoch = lock_epoch(&old).expect("a lease lock hands the engine its epoch");

    // The upgrade: the shim asks 1.0.0 to stop; it does not (yet).
    node.new_blocks(1).await;
    node.set_release("1.1.0").await;
    node.new_blocks(1).await; // #2 carries 1.1.0
    let upgrade = node.block_hash(2).await;
    shim.wait_message(
        0,
        &["This version '1.0.0' is no longer compatible with the release version '1.1.0'"],
    )
    .await;

    // The host pauses (the shim; its engine, ignoring SIGTERM, is as good as paused) until the
    // database has let the lease expire.
    freeze(&[shim.proc.pid()]);
    wait_until("the shim to be stopped", || is_stopped(shim.proc.pid())).await;
    let guardian = parent_pid(old.pid).expect("the old engine runs under its guardian");
    wait_lease_expired(&lock.name).await;
    // The old engine ends while the shim is paused: its exit is waiting when the shim resumes.
    kill_engine(old.pid);
    wait_gone(old.pid, "the old engine").await;
    // Gone means a zombie here: its parent, the shim, is stopped and cannot reap it yet.
    wait_gone(guardian, "the old engine's guardian").await;

    let mark = shim.mark();
    let thawed_at = unix_nanos_now();
    thaw(&[shim.proc.pid()]);
    let new = host.wait_event("start", "1.1.0", 1).await;
    wait_started_by(&shim, new.pid).await;
    let messages = shim.messages_since(mark);
    let position = |needle: &str| messages.iter().position(|m| m.contains(needle));
    let started = position("engine 1.1.0 started").expect("the start line");
    let acquired = position("acquired the lock");
    assert!(
        acquired.is_some_and(|acquired| acquired < started),
        "after the resume, 1.1.0 started before the lock was acquired again (on the grant from \
         before the pause):\n{}",
        messages.join("\n")
    );
    let lost = position("lost the lock").expect("the loss of the paused holder's lock is reported");
    assert!(lost < started, "{}", messages.join("\n"));
    if let Some(held_back) = position("engine 1.1.0: not started: the lock postgres://") {
        assert!(
            messages[held_back].contains("is past its renewal deadline (was this process paused?)"),
            "{}",
            messages[held_back]
        );
        assert!(held_back < started);
    }
    assert!(new.unix_nanos() > thawed_at);
    assert!(lock_epoch(&new) >= Some(epoch));
    // Still the hand-over: 1.1.0 begins at the upgrade block.
    assert_eq!(new.start_block(), Some(2));
    assert_eq!(new.start_hash(), Some(upgrade.as_str()));
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
    drop(shim);
}

/// Waits until the database's lease row of `name` has expired by the test's clock (the database
/// runs on this host, so its clock is the same).
async fn wait_lease_expired(name: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let row = read_lease(name).await;
        if row
            .as_ref()
            .is_some_and(|row| row.expires_at < unix_nanos_now())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the lease {name} did not expire within {TIMEOUT:?}: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
