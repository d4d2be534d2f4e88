//! The network between the holder and the database fails while the database itself stays up for
//! everyone else: the holder reaches it through a [`TcpProxy`] that the test cuts, the secondary
//! directly. Same guarantees as a database outage: the holder fences itself (its engine is dead
//! within lease − renew of its last renewal), and the secondary takes over only once the database
//! says the holder's lease expired. When the network heals, the old holder waits for the lock.
//!
//! Two ways to cut: `sever` resets every connection (a peer that is gone: both sides notice at
//! once), `freeze` forwards nothing but keeps every socket open (a silent partition: only
//! timeouts notice). A frozen link is not tested with an advisory lock: the server still sees the
//! holder's session alive (the proxy's kernel answers its keepalives), so nobody can take over
//! until the link heals — safe, but no failover, by construction of the fault.

use crate::common;

use std::time::Duration;

use crate::common::failover::{
    assert_epochs_grow, engines_of, ms_between, nanos, wait_gone_at, wait_started_by, LeaseWatch,
    Mode, PgLock,
};
use crate::common::pg::{self, TcpProxy};
use crate::common::{unix_nanos_now, Host, Node};

/// Resolution of [`wait_gone_at`] plus reading /proc: how late a "gone" may be seen.
const SEEN_GONE_SLACK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
enum Cut {
    Sever,
    Freeze,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_holder_cut_off_by_a_reset_fences_and_the_secondary_takes_over() {
    network_cut(Mode::Lease, Cut::Sever).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_holder_behind_a_silent_partition_fences_and_the_secondary_takes_over() {
    network_cut(Mode::Lease, Cut::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_holder_cut_off_by_a_reset_fences_and_the_secondary_takes_over() {
    network_cut(Mode::Advisory, Cut::Sever).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_holder_cut_off_by_a_reset_fences_and_the_secondary_takes_over() {
    network_cut(Mode::Dual, Cut::Sever).await;
}

async fn network_cut(mode: Mode, cut: Cut) {
    let _pg = pg::pg_shared_guard();
    let lock = PgLock::new(&format!("failover-net-{mode}-{cut:?}"), mode);
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let proxy = TcpProxy::to_pg();
    let watch = LeaseWatch::start(&lock);
    let primary = lock
        .via(&proxy.url())
        .instance(&host, &node, "1.0.0")
        .spawn();
    let first = host.wait_event("start", "1.0.0", 1).await;
    wait_started_by(&primary, first.pid).await;
    let secondary = lock.instance(&host, &node, "1.0.0").spawn();
    secondary
        .wait_message(
            0,
            &[
                "waiting for the lock",
                &format!("held by pid {} on ", primary.proc.pid()),
            ],
        )
        .await;

    // Cut. Once the cut is in place nothing of the holder's reaches the database, so its last
    // successful renewal was sent before this moment.
    let mark = primary.mark();
    match cut {
        Cut::Sever => proxy.sever(),
        Cut::Freeze => proxy.freeze(),
    }
    let cut_at = unix_nanos_now();
    let gone_at = wait_gone_at(first.pid, "the cut-off holder's engine").await;
    eprintln!(
        "{mode}, {cut:?}: the holder's engine was gone {:.1} ms after the cut",
        ms_between(gone_at, cut_at)
    );
    assert!(
        gone_at <= cut_at + nanos(lock.fence_bound() + SEEN_GONE_SLACK),
        "the cut-off holder's engine lived {:.1} ms after the cut (bound: lease − renew = {:?})",
        ms_between(gone_at, cut_at),
        lock.fence_bound()
    );
    primary
        .wait_message(mark, &["lost the lock", "the engine must be gone within"])
        .await;
    primary
        .wait_message(mark, &["stopping engine 1.0.0 now (fencing)"])
        .await;

    // The secondary takes over, after the holder's lease (as the database saw it) ran out.
    let second = host.wait_event("start", "1.0.0", 2).await;
    wait_started_by(&secondary, second.pid).await;
    assert!(
        second.unix_nanos() > gone_at,
        "the old engine was gone first"
    );
    eprintln!(
        "{mode}, {cut:?}: the secondary's engine started {:.1} ms after the cut",
        ms_between(second.unix_nanos(), cut_at)
    );
    if mode.uses_lease() {
        let first_epoch = common::failover::lock_epoch(&first).unwrap();
        let expiry = watch
            .last_expiry(first_epoch)
            .expect("the watch saw the holder's lease");
        assert!(
            second.unix_nanos() >= expiry,
            "the secondary's engine started {:.1} ms before the cut-off holder's lease expired\n{}",
            ms_between(expiry, second.unix_nanos()),
            watch.describe()
        );
        assert_epochs_grow(&host.events());
    }

    // The network heals: the old holder waits for the lock, naming the secondary, and starts
    // nothing.
    proxy.heal();
    primary
        .wait_message(
            mark,
            &[
                "waiting for the lock",
                &format!("held by pid {} on ", secondary.proc.pid()),
            ],
        )
        .await;
    assert_eq!(engines_of(&primary), [first.pid]);
    assert_eq!(
        host.alive().iter().map(|e| e.pid).collect::<Vec<_>>(),
        [second.pid]
    );
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
    drop((primary, secondary));
}
