//! The version hand-over of a runtime upgrade still works when the lock lives in PostgreSQL and
//! the two engine versions are wrapped by two shims, as on two hosts (one per version): the 1.1.0
//! instance waits with Chainflip's WAITING line without asking for the lock; the upgrade lands at
//! block #3; 1.0.0 stops and gives the lock back; 1.1.0 takes it and starts with `{block}` = 3,
//! after the stop, on a newer epoch.

use crate::common::failover::{lock_epoch, wait_started_by, Mode, PgLock};
use crate::common::{pg, Host, Node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_two_hosts_hand_over_from_1_0_to_1_1_at_the_upgrade_block() {
    upgrade_across_two_hosts(Mode::Lease).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_two_hosts_hand_over_from_1_0_to_1_1_at_the_upgrade_block() {
    upgrade_across_two_hosts(Mode::Advisory).await;
}

async fn upgrade_across_two_hosts(mode: Mode) {
    let _pg = pg::pg_shared_guard();
    let lock = PgLock::new(&format!("failover-upgrade-{mode}"), mode);
    let node = Node::start(&["--release", "1.0.0"]).await;
    let genesis = node.block_hash(0).await;
    let host = Host::new();
    let old_shim = lock.instance(&host, &node, "1.0.0").spawn();
    let new_shim = lock.instance(&host, &node, "1.1.0").spawn();

    let old = host.wait_event("start", "1.0.0", 1).await;
    wait_started_by(&old_shim, old.pid).await;
    let waiting = format!(
        "This version '1.1.0' is incompatible with the current release '1.0.0' at block: {genesis}. WAITING for a compatible release version."
    );
    new_shim
        .wait_log(0, "the WAITING line", |l| l.message() == waiting)
        .await;
    // An instance with no compatible engine never asks for the lock.
    assert_eq!(new_shim.count_messages("acquired the lock"), 0);
    assert_eq!(new_shim.count_messages("waiting for the lock"), 0);

    node.new_blocks(2).await;
    node.set_release("1.1.0").await;
    node.new_blocks(1).await; // #3 carries 1.1.0
    let upgrade = node.block_hash(3).await;

    let new = host.assert_hand_over(&old, "1.1.0", 3, &upgrade).await;
    wait_started_by(&new_shim, new.pid).await;
    old_shim
        .wait_message(
            0,
            &[&format!(
                "This version '1.0.0' is no longer compatible with the release version '1.1.0' at block: {upgrade}"
            )],
        )
        .await;
    old_shim.wait_message(0, &["released the lock"]).await;
    let (acquired, _) = new_shim.wait_message(0, &["acquired the lock"]).await;
    let (started, _) = new_shim.wait_message(0, &["engine 1.1.0 started"]).await;
    assert!(
        acquired < started,
        "the lock is taken before the engine starts"
    );
    match (lock_epoch(&old), lock_epoch(&new)) {
        (Some(old_epoch), Some(new_epoch)) => assert!(
            old_epoch < new_epoch,
            "the epoch grows at the hand-over: {old_epoch} → {new_epoch}"
        ),
        (None, None) => assert_eq!(mode, Mode::Advisory),
        other => panic!("epochs {other:?} in {mode} mode"),
    }
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
    assert_eq!(
        host.alive().iter().map(|e| e.pid).collect::<Vec<_>>(),
        [new.pid]
    );
    drop((old_shim, new_shim));
}
