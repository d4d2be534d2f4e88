//! The lock database goes down while a holder runs its engine: the holder cannot renew, so it
//! fences itself (stops its engine) before its lease can end; nobody else can take the lock, so
//! nothing runs until the database is back; then exactly one instance runs.
//!
//! These tests stop the shared test cluster, so they hold [`pg::outage_guard`]: no other test uses
//! the database meanwhile.

use std::time::Duration;

use crate::common::failover::{
    engines_of, ms_between, nanos, sample_alive_for, wait_gone_at, wait_started_by,
    wait_started_by_one_of, Mode, PgLock,
};
use crate::common::{pg, unix_nanos_now, Host, Node};

/// Resolution of [`wait_gone_at`] plus reading /proc: how late a "gone" may be seen.
const SEEN_GONE_SLACK: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_holder_fences_when_the_database_stops_and_one_runs_when_it_is_back() {
    database_outage(Mode::Lease).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_holder_fences_when_the_database_stops_and_one_runs_when_it_is_back() {
    database_outage(Mode::Advisory).await;
}

async fn database_outage(mode: Mode) {
    let _outage = pg::outage_guard();
    let lock = PgLock::new(&format!("failover-outage-{mode}"), mode);
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let primary = lock.instance(&host, &node, "1.0.0").spawn();
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

    // The database stops. Once pg_ctl returns it answers nothing, so the holder's last successful
    // renewal was sent before then: its engine must be dead within lease − renew of that moment,
    // a full renew before the database itself could have let the lease go.
    let stopping_at = unix_nanos_now();
    pg::pg_stop().await;
    let stopped_at = unix_nanos_now();
    let gone_at = wait_gone_at(first.pid, "the holder's engine").await;
    let bound = lock.fence_bound() + SEEN_GONE_SLACK;
    eprintln!(
        "{mode}: pg_ctl stop took {:.1} ms; the holder's engine was gone {:.1} ms after it returned",
        ms_between(stopped_at, stopping_at),
        ms_between(gone_at, stopped_at)
    );
    assert!(
        gone_at <= stopped_at + nanos(bound),
        "the holder's engine was still alive {:.1} ms after the database stopped (bound: lease − \
         renew = {:?}, + {SEEN_GONE_SLACK:?} to see it)",
        ms_between(gone_at, stopped_at),
        lock.fence_bound()
    );
    if mode == Mode::Lease {
        // A lease holder stops its engine at its renew deadline (SIGTERM; fake-engine writes
        // `stop` at once) rather than running into its kill deadline. (With an advisory lock the
        // session's end is the loss itself: the engine is killed at once, without a `stop`.)
        let stop = host.wait_event("stop", "1.0.0", 1).await;
        assert_eq!(stop.pid, first.pid);
        assert!(
            stop.unix_nanos() <= stopped_at + nanos(lock.fence_bound()),
            "the holder's engine stopped {:.1} ms after the database stopped (bound {:?})",
            ms_between(stop.unix_nanos(), stopped_at),
            lock.fence_bound()
        );
    }
    primary
        .wait_message(0, &["lost the lock", "the engine must be gone within"])
        .await;
    primary
        .wait_message(0, &["stopping engine 1.0.0 now (fencing)"])
        .await;
    // Both now try the database in vain.
    primary
        .wait_message(0, &["cannot reach the lock database"])
        .await;
    secondary
        .wait_message(0, &["cannot reach the lock database"])
        .await;

    // Nobody runs while the database is down, well past the point where the lease would have
    // expired (a full lease and a renew after the last possible renewal).
    let until = stopped_at + nanos(lock.lease + lock.renew);
    let window = Duration::from_nanos(until.saturating_sub(unix_nanos_now()) as u64)
        .max(Duration::from_millis(500));
    let down = sample_alive_for(&host, window).await;
    assert!(
        down.iter().all(Vec::is_empty),
        "an engine ran while the lock database was down: {down:?}"
    );
    let starts = host.events().iter().filter(|e| e.event == "start").count();
    assert_eq!(starts, 1, "nothing may start while the database is down");

    // The database is back: exactly one instance takes the lock and runs its engine.
    pg::pg_start().await;
    let back_at = unix_nanos_now();
    let second = host.wait_event("start", "1.0.0", 2).await;
    eprintln!(
        "{mode}: an engine ran again {:.1} ms after the database was back",
        ms_between(second.unix_nanos(), back_at)
    );
    let loser = match wait_started_by_one_of(&[&primary, &secondary], second.pid).await {
        0 => &secondary,
        _ => &primary,
    };
    // A full lease and a renew later, still exactly that one, and the other has not started one.
    let after = sample_alive_for(&host, lock.lease + lock.renew).await;
    assert!(
        after
            .iter()
            .all(|seen| seen.iter().map(|(pid, _)| *pid).collect::<Vec<_>>() == [second.pid]),
        "exactly one engine (pid {}) must run once the database is back: {after:?}",
        second.pid
    );
    assert_eq!(
        host.events().iter().filter(|e| e.event == "start").count(),
        2,
        "only one instance started an engine after the outage"
    );
    assert!(!engines_of(loser).contains(&second.pid));
    host.assert_no_lock_failed();
    let seen: Vec<(u32, u128)> = down.into_iter().chain(after).flatten().collect();
    host.assert_lives_never_overlap(&seen);
    drop((primary, secondary));
}
