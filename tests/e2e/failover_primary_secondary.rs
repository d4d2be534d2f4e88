//! The primary/secondary story on a real PostgreSQL, in each lock mode: two instances (two "hosts")
//! of `engine-shim run --lock postgres://…` follow one chain. The primary runs the engine, the
//! secondary waits and says who holds the lock. The primary's host dies (SIGKILL) ⇒ the secondary
//! takes over within the mode's bound. The primary comes back ⇒ it waits, naming the secondary.
//! The operator hands the secondary off ⇒ the primary takes over again. Every change of holder
//! moves the lease's epoch on, and the engine is told it.

use std::time::Duration;

use crate::common::failover::{
    engines_of, hand_off, lock_epoch, ms_between, nanos, wait_started_by, LeaseWatch, Mode, PgLock,
};
use crate::common::{pg, unix_nanos_now, Host, Node};
use rustix::process::Signal;

/// What a takeover may take beyond the lock's own wait: the engine's spawn and start-up, the
/// shim's loop, a loaded CI machine.
const SLACK: Duration = Duration::from_millis(1000);

/// The advisory lock is free the moment the dead holder's session closes; the secondary sees it on
/// its next attempt (every renew), holds it a moment before using it, then starts its engine.
const ADVISORY_TAKEOVER: Duration = Duration::from_millis(3000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_secondary_takes_over_after_kill_and_hands_back() {
    primary_dies_secondary_takes_over_and_hands_back(Mode::Lease).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_secondary_takes_over_after_kill_and_hands_back() {
    primary_dies_secondary_takes_over_and_hands_back(Mode::Advisory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_secondary_takes_over_after_kill_and_hands_back() {
    primary_dies_secondary_takes_over_and_hands_back(Mode::Dual).await;
}

async fn primary_dies_secondary_takes_over_and_hands_back(mode: Mode) {
    let _pg = pg::pg_shared_guard();
    let lock = PgLock::new(&format!("failover-kill-{mode}"), mode);
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let watch = LeaseWatch::start(&lock);

    // The primary runs the engine; the secondary waits, naming the primary.
    let (primary, primary_socket) = lock.instance_with_socket(&host, &node, "1.0.0", "primary");
    // Never dropped before the end: a dropped `Shim` kills every 1.0.0 engine of the host.
    let mut primary = primary.spawn();
    let first = host.wait_event("start", "1.0.0", 1).await;
    wait_started_by(&primary, first.pid).await;
    let (secondary, secondary_socket) =
        lock.instance_with_socket(&host, &node, "1.0.0", "secondary");
    let secondary = secondary.spawn();
    let held_by_primary = format!("held by pid {} on ", primary.proc.pid());
    secondary
        .wait_message(0, &["waiting for the lock", &held_by_primary])
        .await;
    let first_epoch = lock_epoch(&first);
    if mode.uses_lease() {
        let epoch = first_epoch.expect("a lease lock hands the engine its epoch");
        secondary
            .wait_message(
                0,
                &[&held_by_primary, &format!(", epoch {epoch}, lease until ")],
            )
            .await;
        primary
            .wait_message(0, &["acquired the lock", &format!("(epoch {epoch})")])
            .await;
    } else {
        assert_eq!(first_epoch, None, "an advisory lock has no epoch");
    }

    // kill -9 the primary's shim: its engine dies with it (parent-death signal).
    let killed_at = unix_nanos_now();
    primary.proc.signal(Signal::KILL);
    primary.proc.wait_exit().await;
    let second = host.wait_event("start", "1.0.0", 2).await;
    wait_started_by(&secondary, second.pid).await;
    assert!(engines_of(&secondary).contains(&second.pid));
    let took = second.unix_nanos().saturating_sub(killed_at);
    let took_ms = took as f64 / 1e6;
    eprintln!("{mode}: failover after SIGKILL took {took_ms:.1} ms");
    if mode.uses_lease() {
        // Not before the lease the database granted the dead primary ran out…
        let first_epoch = first_epoch.unwrap();
        let expiry = watch
            .last_expiry(first_epoch)
            .expect("the watch saw the primary's lease");
        assert!(
            second.unix_nanos() >= expiry,
            "the secondary's engine started {:.1} ms before the primary's lease expired\n{}",
            ms_between(expiry, second.unix_nanos()),
            watch.describe()
        );
        // …and within one lease and one renew of the kill (the last renewal was at most a renew
        // before it; the secondary looks every renew).
        let bound = lock.lease + lock.renew + SLACK;
        assert!(
            took <= nanos(bound),
            "failover took {took_ms:.1} ms; bound {bound:?} (lease + renew + slack)"
        );
    } else {
        assert!(
            took <= nanos(ADVISORY_TAKEOVER),
            "failover took {took_ms:.1} ms; bound {ADVISORY_TAKEOVER:?}"
        );
    }
    let second_epoch = lock_epoch(&second);

    // The primary comes back: it waits, naming the secondary (and, with a lease, its epoch).
    let returned = lock
        .instance_with_socket(&host, &node, "1.0.0", "primary")
        .0
        .spawn();
    let held_by_secondary = format!("held by pid {} on ", secondary.proc.pid());
    let mut expected = vec!["waiting for the lock".to_string(), held_by_secondary];
    if let Some(epoch) = second_epoch {
        expected.push(format!(", epoch {epoch}, "));
    }
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    returned.wait_message(0, &expected).await;
    assert_eq!(
        host.events().iter().filter(|e| e.event == "start").count(),
        2,
        "the returning primary must not start an engine while the secondary holds the lock"
    );

    // Maintenance: hand the secondary off; the primary takes over.
    let asked_at = unix_nanos_now();
    let socket = secondary_socket.display().to_string();
    let (code, answer) = hand_off(&["--control-socket", &socket]).await;
    assert_eq!(code, 0, "{answer}");
    assert!(answer.contains("handed off"), "{answer}");
    let third = host.wait_event("start", "1.0.0", 3).await;
    wait_started_by(&returned, third.pid).await;
    let stop = host.wait_event("stop", "1.0.0", 1).await;
    assert_eq!(stop.pid, second.pid, "the secondary's engine stopped");
    assert!(stop.unix_nanos() < third.unix_nanos());
    eprintln!(
        "{mode}: hand-off request → other engine started: {:.1} ms",
        ms_between(third.unix_nanos(), asked_at)
    );
    secondary
        .wait_message(0, &["handed off: no engine runs here"])
        .await;

    // Every change of holder moved the epoch on.
    let third_epoch = lock_epoch(&third);
    if mode.uses_lease() {
        let epochs = [first_epoch, second_epoch, third_epoch].map(Option::unwrap);
        assert!(
            epochs[0] < epochs[1] && epochs[1] < epochs[2],
            "epochs {epochs:?} must grow with every change of holder"
        );
        returned
            .wait_message(0, &["acquired the lock", &format!("(epoch {})", epochs[2])])
            .await;
    } else {
        assert_eq!((second_epoch, third_epoch), (None, None));
    }
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
    assert_eq!(
        host.alive().iter().map(|e| e.pid).collect::<Vec<_>>(),
        [third.pid]
    );
    let _ = primary_socket;
    drop((returned, secondary, primary));
}
