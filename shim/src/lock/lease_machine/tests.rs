//! The machine's transitions, one story each: which operations it asks for, what it tells the
//! handle, and when it wants to be woken.

use std::time::Duration;

use super::*;

const LEASE: Duration = Duration::from_millis(5000);
const RENEW: Duration = Duration::from_millis(1000);

fn at(ms: u64) -> BootInstant {
    BootInstant::from_boot(Duration::from_millis(1_000_000 + ms))
}

fn machine(uses_lease: bool, uses_advisory: bool) -> LeaseMachine {
    LeaseMachine::new(Policy {
        uses_lease,
        uses_advisory,
        lease: LEASE,
        renew: RENEW,
    })
}

fn me() -> HolderInfo {
    HolderInfo {
        pid: 7,
        host: "host-a".into(),
        engine_version: "1.0.0".into(),
        since_unix_ms: 0,
        epoch: None,
        expires_at: None,
    }
}

fn other() -> Option<HolderInfo> {
    Some(HolderInfo {
        pid: 8,
        host: "host-b".into(),
        ..me()
    })
}

fn acquire(serial: u64) -> Want {
    Want::Acquire { serial, me: me() }
}

fn events(m: &mut LeaseMachine) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

/// Answers the operation the machine asks for, which must be `expected`.
fn answer(m: &mut LeaseMachine, now: BootInstant, expected: Op, outcome: Outcome) {
    assert_eq!(m.poll_op(), Some(expected));
    m.handle_outcome(now, outcome);
}

fn failure(kind: ErrorKind) -> Outcome {
    Outcome::Failed(DbError {
        message: "connection refused".into(),
        kind,
    })
}

/// A lease-mode machine that got the lock for acquisition 1, attempt sent at `at(0)`.
fn holding_lease() -> LeaseMachine {
    let mut m = machine(true, false);
    m.handle_want(at(0), acquire(1));
    answer(&mut m, at(1), Op::Connect, Outcome::Done);
    answer(&mut m, at(2), Op::EnsureTable, Outcome::Done);
    answer(&mut m, at(3), Op::NameSession(me()), Outcome::Done);
    answer(
        &mut m,
        at(4),
        Op::TakeLease(me()),
        Outcome::LeaseTaken { epoch: 3 },
    );
    assert_eq!(
        events(&mut m),
        [Event::Granted {
            serial: 1,
            epoch: Some(3),
            usable_until: at(2500),
            kill_by: at(4000),
        }]
    );
    m.handle_want(at(4), Want::Hold { serial: 1 });
    m
}

#[test]
fn a_free_lease_is_granted_usable_for_half_a_lease_from_when_the_attempt_began() {
    let m = holding_lease();
    // The next renewal one renew after the attempt was sent.
    assert_eq!(m.poll_timeout(), Some(at(1000)));
    assert!(!m.settled());
}

#[test]
fn renewals_move_the_deadline_from_when_each_was_sent() {
    let mut m = holding_lease();
    assert_eq!(m.poll_op(), None);
    m.handle_timeout(at(1000));
    assert_eq!(m.poll_op(), Some(Op::RenewLease));
    // While it is under way, the machine wants to give it up at the renew deadline.
    assert_eq!(m.poll_timeout(), Some(at(2500)));
    m.handle_outcome(at(1400), Outcome::Answer(true));
    assert_eq!(
        events(&mut m),
        [Event::Renewed {
            usable_until: at(3500),
            kill_by: at(5000),
        }]
    );
    assert_eq!(m.poll_timeout(), Some(at(2000)));
}

#[test]
fn a_renewal_unanswered_at_the_deadline_is_given_up_and_the_lock_lost_with_a_kill_deadline() {
    let mut m = holding_lease();
    m.handle_timeout(at(1000));
    assert_eq!(m.poll_op(), Some(Op::RenewLease));
    m.handle_timeout(at(2500));
    let lost = events(&mut m);
    assert!(
        matches!(&lost[..], [Event::Lost { serial: 1, kill_by, reason }]
            if *kill_by == at(4000) && reason.contains("no renewal succeeded within 2s 500ms")),
        "{lost:?}"
    );
    // The handle hears it and wants nothing: the database side stays as it is until the engine
    // must be dead (kill deadline + one renew), then goes without a release.
    m.handle_want(at(2500), Want::Nothing);
    assert_eq!(m.poll_op(), None);
    assert_eq!(m.poll_timeout(), Some(at(5000)));
    assert!(!m.settled());
    m.handle_timeout(at(5000));
    assert_eq!(m.poll_op(), Some(Op::Disconnect));
    assert_eq!(m.poll_op(), None);
    assert!(m.settled());
}

#[test]
fn a_failed_renewal_is_reported_and_the_next_one_follows_a_renew_later() {
    let mut m = holding_lease();
    m.handle_timeout(at(1000));
    answer(
        &mut m,
        at(1100),
        Op::RenewLease,
        failure(ErrorKind::Transient),
    );
    assert_eq!(
        events(&mut m),
        [Event::RenewalFailed {
            error: "connection refused".into(),
            fence_in: Duration::from_millis(1400),
        }]
    );
    // A lease alone survives its session: the next renewal opens a new one.
    assert_eq!(m.poll_op(), Some(Op::Disconnect));
    assert_eq!(m.poll_timeout(), Some(at(2000)));
    m.handle_timeout(at(2000));
    assert_eq!(m.poll_op(), Some(Op::Connect));
}

#[test]
fn a_renewal_that_finds_the_lease_taken_loses_at_once() {
    let mut m = holding_lease();
    m.handle_timeout(at(1000));
    answer(&mut m, at(1100), Op::RenewLease, Outcome::Answer(false));
    assert!(matches!(
        &events(&mut m)[..],
        [Event::Lost { kill_by, .. }] if *kill_by == at(1100)
    ));
}

#[test]
fn waking_after_a_freeze_past_the_deadline_loses_first_with_a_kill_deadline_in_the_past() {
    let mut m = holding_lease();
    m.handle_timeout(at(60_000));
    assert!(matches!(
        &events(&mut m)[..],
        [Event::Lost { kill_by, .. }] if *kill_by == at(4000)
    ));
    assert_eq!(m.poll_op(), None);
}

#[test]
fn a_grant_whose_answer_comes_after_the_deadline_is_not_given_and_the_next_attempt_follows() {
    let mut m = machine(true, false);
    m.handle_want(at(0), acquire(1));
    answer(&mut m, at(1), Op::Connect, Outcome::Done);
    answer(&mut m, at(2), Op::EnsureTable, Outcome::Done);
    answer(&mut m, at(3), Op::NameSession(me()), Outcome::Done);
    answer(
        &mut m,
        at(2500),
        Op::TakeLease(me()),
        Outcome::LeaseTaken { epoch: 1 },
    );
    assert_eq!(events(&mut m), []);
    answer(&mut m, at(2501), Op::NameSession(me()), Outcome::Done);
    answer(
        &mut m,
        at(2502),
        Op::TakeLease(me()),
        Outcome::LeaseTaken { epoch: 1 },
    );
    assert!(matches!(
        &events(&mut m)[..],
        [Event::Granted { usable_until, .. }] if *usable_until == at(5000)
    ));
}

#[test]
fn a_busy_lease_reports_its_holder_once_and_looks_again_every_renew_or_when_woken() {
    let mut m = machine(true, false);
    m.handle_want(at(0), acquire(1));
    answer(&mut m, at(1), Op::Connect, Outcome::Done);
    answer(&mut m, at(2), Op::EnsureTable, Outcome::Done);
    answer(&mut m, at(3), Op::NameSession(me()), Outcome::Done);
    let busy = Outcome::LeaseBusy { holder: other() };
    answer(&mut m, at(4), Op::TakeLease(me()), busy.clone());
    assert_eq!(
        events(&mut m),
        [Event::Waiting {
            serial: 1,
            holder: other()
        }]
    );
    assert_eq!(m.poll_op(), None);
    assert_eq!(m.poll_timeout(), Some(at(1004)));
    m.handle_timeout(at(1004));
    answer(&mut m, at(1005), Op::NameSession(me()), Outcome::Done);
    answer(&mut m, at(1006), Op::TakeLease(me()), busy);
    // The same holder again is no news.
    assert_eq!(events(&mut m), []);
    m.handle_wake(at(1100));
    assert_eq!(m.poll_op(), Some(Op::NameSession(me())));
}

#[test]
fn an_unreachable_database_is_logged_paced_and_retried_with_back_off() {
    let mut m = machine(true, false);
    m.handle_want(at(0), acquire(1));
    answer(&mut m, at(1), Op::Connect, failure(ErrorKind::Transient));
    assert_eq!(
        events(&mut m),
        [
            Event::Unreachable {
                error: "connection refused".into(),
                retry_in: RENEW,
            },
            Event::Waiting {
                serial: 1,
                holder: None
            },
        ]
    );
    assert_eq!(m.poll_timeout(), Some(at(1001)));
    m.handle_timeout(at(1001));
    answer(&mut m, at(1002), Op::Connect, failure(ErrorKind::Transient));
    // The line is paced (next in 5 s), the pause doubles.
    assert_eq!(events(&mut m), []);
    assert_eq!(m.poll_timeout(), Some(at(3002)));
}

#[test]
fn a_fatal_error_fails_the_acquisition_and_closes_the_session() {
    let mut m = machine(true, false);
    m.handle_want(at(0), acquire(1));
    answer(&mut m, at(1), Op::Connect, Outcome::Done);
    answer(&mut m, at(2), Op::EnsureTable, failure(ErrorKind::Fatal));
    assert_eq!(
        events(&mut m),
        [Event::Failed {
            serial: 1,
            error: "connection refused".into()
        }]
    );
    assert_eq!(m.poll_op(), Some(Op::Disconnect));
}

#[test]
fn a_lock_given_back_is_released_at_once_and_then_settled() {
    let mut m = holding_lease();
    m.handle_want(at(100), Want::Nothing);
    answer(&mut m, at(101), Op::ReleaseLease, Outcome::Done);
    assert_eq!(m.poll_op(), None);
    assert!(m.settled());
}

#[test]
fn a_release_that_fails_says_the_lease_runs_out_by_itself() {
    let mut m = holding_lease();
    m.handle_want(at(100), Want::Nothing);
    answer(
        &mut m,
        at(101),
        Op::ReleaseLease,
        failure(ErrorKind::Transient),
    );
    assert_eq!(
        events(&mut m),
        [Event::ReleaseFailed {
            error: "connection refused".into()
        }]
    );
    assert!(m.settled());
}

#[test]
fn a_loss_the_handle_did_not_hear_is_released_at_once() {
    let mut m = holding_lease();
    m.handle_timeout(at(3000));
    assert!(matches!(&events(&mut m)[..], [Event::Lost { .. }]));
    m.handle_want(at(3000), Want::Nothing);
    m.handle_loss_unheard(at(3000));
    assert_eq!(m.poll_op(), Some(Op::ReleaseLease));
}

#[test]
fn a_grant_the_handle_cancelled_meanwhile_is_given_back_but_not_while_lingering_on_a_loss() {
    let mut m = machine(true, false);
    m.handle_want(at(0), acquire(1));
    answer(&mut m, at(1), Op::Connect, Outcome::Done);
    answer(&mut m, at(2), Op::EnsureTable, Outcome::Done);
    answer(&mut m, at(3), Op::NameSession(me()), Outcome::Done);
    answer(
        &mut m,
        at(4),
        Op::TakeLease(me()),
        Outcome::LeaseTaken { epoch: 1 },
    );
    assert_eq!(events(&mut m).len(), 1);
    // The handle cancelled before the grant reached it: nothing ran on it.
    m.handle_want(at(5), Want::Nothing);
    assert_eq!(m.poll_op(), Some(Op::ReleaseLease));

    // Lost, then asked for again and cancelled again: the lost engine may still live, so the
    // lease stays until its kill deadline has passed.
    let mut m = holding_lease();
    m.handle_timeout(at(3000));
    events(&mut m);
    m.handle_want(at(3000), acquire(2));
    answer(&mut m, at(3001), Op::NameSession(me()), Outcome::Done);
    answer(
        &mut m,
        at(3002),
        Op::TakeLease(me()),
        Outcome::LeaseTaken { epoch: 1 },
    );
    assert_eq!(events(&mut m).len(), 1);
    m.handle_want(at(3003), Want::Nothing);
    assert_eq!(m.poll_op(), None);
    assert_eq!(m.poll_timeout(), Some(at(5000)));
}

#[test]
fn a_free_advisory_lock_settles_before_it_is_granted() {
    let mut m = machine(false, true);
    m.handle_want(at(0), acquire(1));
    answer(&mut m, at(1), Op::Connect, Outcome::Done);
    answer(&mut m, at(2), Op::NameSession(me()), Outcome::Done);
    answer(&mut m, at(3), Op::TryAdvisoryLock, Outcome::Answer(true));
    assert_eq!(events(&mut m), []);
    assert_eq!(m.poll_timeout(), Some(at(253)));
    m.handle_timeout(at(253));
    answer(&mut m, at(254), Op::NameSession(me()), Outcome::Done);
    answer(
        &mut m,
        at(255),
        Op::CheckAdvisoryLock,
        Outcome::Answer(true),
    );
    assert!(matches!(
        &events(&mut m)[..],
        [Event::Granted { epoch: None, usable_until, .. }] if *usable_until == at(2753)
    ));
}

#[test]
fn a_busy_advisory_lock_names_its_holder_from_the_lease_row_first_in_dual_mode() {
    let mut m = machine(true, true);
    m.handle_want(at(0), acquire(1));
    answer(&mut m, at(1), Op::Connect, Outcome::Done);
    answer(&mut m, at(2), Op::EnsureTable, Outcome::Done);
    answer(&mut m, at(3), Op::NameSession(me()), Outcome::Done);
    answer(&mut m, at(4), Op::TryAdvisoryLock, Outcome::Answer(false));
    answer(&mut m, at(5), Op::ReadLeaseHolder, Outcome::Holder(None));
    answer(
        &mut m,
        at(6),
        Op::ReadAdvisoryHolder,
        Outcome::Holder(other()),
    );
    assert_eq!(
        events(&mut m),
        [Event::Waiting {
            serial: 1,
            holder: other()
        }]
    );
}

#[test]
fn an_advisory_holder_whose_session_ends_loses_at_once() {
    let mut m = machine(false, true);
    m.handle_want(at(0), acquire(1));
    answer(&mut m, at(1), Op::Connect, Outcome::Done);
    answer(&mut m, at(2), Op::NameSession(me()), Outcome::Done);
    answer(&mut m, at(3), Op::TryAdvisoryLock, Outcome::Answer(true));
    m.handle_timeout(at(253));
    answer(&mut m, at(254), Op::NameSession(me()), Outcome::Done);
    answer(
        &mut m,
        at(255),
        Op::CheckAdvisoryLock,
        Outcome::Answer(true),
    );
    events(&mut m);
    m.handle_want(at(255), Want::Hold { serial: 1 });
    m.handle_session_ended(at(700), "the server closed the connection");
    let lost = events(&mut m);
    assert!(
        matches!(&lost[..], [Event::Lost { kill_by, reason, .. }]
            if *kill_by == at(700) && reason.contains("session holding the advisory lock ended")),
        "{lost:?}"
    );
    assert_eq!(m.poll_op(), Some(Op::Disconnect));
}

#[test]
fn dual_mode_renews_with_the_lease_and_takes_the_lease_after_the_advisory_lock() {
    let mut m = machine(true, true);
    m.handle_want(at(0), acquire(1));
    answer(&mut m, at(1), Op::Connect, Outcome::Done);
    answer(&mut m, at(2), Op::EnsureTable, Outcome::Done);
    answer(&mut m, at(3), Op::NameSession(me()), Outcome::Done);
    answer(&mut m, at(4), Op::TryAdvisoryLock, Outcome::Answer(true));
    answer(
        &mut m,
        at(5),
        Op::TakeLease(me()),
        Outcome::LeaseTaken { epoch: 9 },
    );
    assert!(matches!(
        &events(&mut m)[..],
        [Event::Granted { epoch: Some(9), .. }]
    ));
    m.handle_want(at(5), Want::Hold { serial: 1 });
    m.handle_timeout(at(1000));
    assert_eq!(m.poll_op(), Some(Op::RenewLease));
    m.handle_outcome(at(1001), Outcome::Answer(true));
    // Given back: the lease first, then the advisory lock.
    m.handle_want(at(1002), Want::Nothing);
    answer(&mut m, at(1003), Op::ReleaseLease, Outcome::Done);
    answer(&mut m, at(1004), Op::UnlockAdvisory, Outcome::Done);
    assert_eq!(m.poll_op(), None);
    assert!(m.settled());
}

#[test]
fn after_a_release_that_went_unanswered_the_lease_is_granted_again_only_once_it_cannot_land() {
    let mut m = holding_lease();
    m.handle_want(at(100), Want::Nothing);
    // Given up on: the database may still run it later, over its old session.
    answer(
        &mut m,
        at(1100),
        Op::ReleaseLease,
        failure(ErrorKind::Transient),
    );
    assert!(matches!(&events(&mut m)[..], [Event::ReleaseFailed { .. }]));
    m.handle_want(at(1200), acquire(2));
    answer(&mut m, at(1201), Op::NameSession(me()), Outcome::Done);
    let taken = Outcome::LeaseTaken { epoch: 3 };
    answer(&mut m, at(1202), Op::TakeLease(me()), taken.clone());
    assert_eq!(events(&mut m), []);
    assert_eq!(m.poll_timeout(), Some(at(6100)));
    m.handle_timeout(at(6100));
    answer(&mut m, at(6101), Op::NameSession(me()), Outcome::Done);
    answer(&mut m, at(6102), Op::TakeLease(me()), taken);
    assert!(matches!(
        &events(&mut m)[..],
        [Event::Granted { serial: 2, usable_until, .. }] if *usable_until == at(6100 + 2500)
    ));
}
