//! A holder whose host pauses (SIGSTOP of the shim *and* its engine, as a cgroup freeze or a VM
//! suspend stops both) past its lease: the secondary takes over only once the lease the database
//! granted has run out; when the paused host resumes, its shim sees at once that its deadline
//! passed, says it lost the lock and kills its engine.
//!
//! What "never both" means here. While paused, the old engine runs no code, but it still holds what
//! it had open, as a paused host would: here the shared data directory's lock. So the secondary's
//! first engine may find the data directory locked (`lock_failed`, then a restart with back-off),
//! exactly as the real engine would find `data.db/LOCK` taken on a shared disk. That is not an
//! overlap: nothing ran beside anything. The test asserts:
//! - the takeover (the secondary's first engine, started or refused) comes after the expiry the
//!   database granted the frozen holder, which is itself at least a renew after the holder's own
//!   kill deadline;
//! - after SIGCONT the old engine is dead within a short bound (the window FACTS.md describes, for
//!   which the engine gets the lock epoch);
//! - every `lock_failed` happened before the old engine was gone, i.e. only against the paused
//!   engine, never between two running ones; engines' lives never overlap;
//! - then exactly one engine runs, on a newer epoch than the frozen one.

use std::time::Duration;

use crate::common::failover::{
    assert_epochs_grow, engines_of, freeze, is_stopped, lock_epoch, ms_between, nanos,
    sample_alive_for, thaw, wait_gone_at, wait_started_by, wait_started_by_one_of, LeaseWatch,
    Mode, PgLock,
};
use crate::common::{describe_events, pg, unix_nanos_now, wait_until, Host, Node};

/// From SIGCONT to the old engine seen gone: the resumed shim's wake-up, its kill, the kernel's
/// reaping, and our 5 ms look at /proc.
const RESUME_KILL_BOUND: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_frozen_holder_is_taken_over_after_its_lease_and_fences_on_resume() {
    let _pg = pg::pg_shared_guard();
    let lock = PgLock::new("failover-frozen-lease", Mode::Lease);
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let watch = LeaseWatch::start(&lock);
    let primary = lock.instance(&host, &node, "1.0.0").spawn();
    let first = host.wait_event("start", "1.0.0", 1).await;
    wait_started_by(&primary, first.pid).await;
    let first_epoch = lock_epoch(&first).expect("a lease lock hands the engine its epoch");
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

    // The primary's host pauses: shim and engine together.
    let frozen_at = unix_nanos_now();
    freeze(&[primary.proc.pid(), first.pid]);
    wait_until("the primary's shim and engine to be stopped", || {
        is_stopped(primary.proc.pid()) && is_stopped(first.pid)
    })
    .await;
    let mark = secondary.mark();
    secondary
        .wait_message(mark, &["acquired the lock", "(epoch "])
        .await;
    // The secondary's first engine: started, or refused by the data directory the paused engine
    // still holds.
    let events = host
        .wait_events("the secondary's first engine", |events| {
            events
                .iter()
                .any(|e| e.pid != first.pid && (e.event == "start" || e.event == "lock_failed"))
        })
        .await;
    let takeover = events
        .iter()
        .find(|e| e.pid != first.pid && (e.event == "start" || e.event == "lock_failed"))
        .unwrap()
        .clone();
    let expiry = watch
        .last_expiry(first_epoch)
        .expect("the watch saw the frozen holder's lease");
    eprintln!(
        "takeover ({}) {:.1} ms after the freeze, {:.1} ms after the frozen lease expired",
        takeover.event,
        ms_between(takeover.unix_nanos(), frozen_at),
        ms_between(takeover.unix_nanos(), expiry)
    );
    assert!(
        takeover.unix_nanos() >= expiry,
        "the secondary's engine came {:.1} ms before the frozen holder's lease expired\n{}",
        ms_between(expiry, takeover.unix_nanos()),
        watch.describe()
    );
    // The holder's kill deadline (lease − renew after its last renewal, which the database stamped
    // no earlier than it was sent) is at least a renew before that expiry: so the takeover came
    // after it too.
    assert!(
        is_stopped(first.pid),
        "the frozen engine is still there, paused"
    );
    assert!(
        lock_epoch(&takeover) > Some(first_epoch),
        "the taker runs on a newer epoch: {}",
        takeover.raw
    );

    // The host resumes, engine first (the worst order): the shim must kill it at once.
    let mark = primary.mark();
    let thawed_at = unix_nanos_now();
    thaw(&[first.pid, primary.proc.pid()]);
    let gone_at = wait_gone_at(first.pid, "the resumed holder's engine").await;
    eprintln!(
        "the resumed holder's engine was gone {:.1} ms after SIGCONT",
        ms_between(gone_at, thawed_at)
    );
    assert!(
        gone_at <= thawed_at + nanos(RESUME_KILL_BOUND),
        "the resumed holder's engine lived {:.1} ms after SIGCONT (bound {RESUME_KILL_BOUND:?})",
        ms_between(gone_at, thawed_at)
    );
    primary
        .wait_message(
            mark,
            &["lost the lock", "the engine must be gone within 0s"],
        )
        .await;
    primary
        .wait_message(mark, &["stopping engine 1.0.0 now (fencing)"])
        .await;

    // Then exactly one engine runs, on a newer grant.
    let events = host
        .wait_events("an engine to run after the resume", |events| {
            events.iter().filter(|e| e.event == "start").count() >= 2
        })
        .await;
    let running = events
        .iter()
        .filter(|e| e.event == "start")
        .nth(1)
        .unwrap()
        .clone();
    wait_started_by_one_of(&[&primary, &secondary], running.pid).await;
    let after = sample_alive_for(&host, lock.lease + lock.renew).await;
    assert!(
        after
            .iter()
            .all(|seen| seen.iter().map(|(pid, _)| *pid).collect::<Vec<_>>() == [running.pid]),
        "exactly one engine (pid {}) must run after the resume: {after:?}",
        running.pid
    );
    let events = host.events();
    let refused: Vec<_> = events.iter().filter(|e| e.event == "lock_failed").collect();
    assert!(
        refused
            .iter()
            .all(|e| e.unix_nanos() <= gone_at && engines_of(&secondary).contains(&e.pid)),
        "the data directory was refused only to the secondary, only while the paused engine \
         held it (gone at +{:.1} ms after SIGCONT):\n{}",
        ms_between(gone_at, thawed_at),
        describe_events(&events)
    );
    assert_eq!(
        events.iter().filter(|e| e.event == "start").count(),
        2,
        "one engine before the freeze, one after:\n{}",
        describe_events(&events)
    );
    assert_epochs_grow(&events);
    let seen: Vec<(u32, u128)> = after.into_iter().flatten().collect();
    host.assert_lives_never_overlap(&seen);
    drop((primary, secondary));
}
