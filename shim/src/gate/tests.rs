//! The gate's stories and its model check.

use super::*;
use crate::block::BlockHash;
use proptest::prelude::*;

const WAIT_EVERY: Duration = Duration::from_secs(60);
const START_SECS: Duration = Duration::from_secs(10);
const STANDBY: Duration = Duration::from_secs(30);

fn v(s: &str) -> SemVer {
    s.parse().unwrap()
}

/// `"1.1.0"` is an engine of one version, `"2.2.8,2.3.0"` a runner covering two.
fn covers(list: &str) -> Covers {
    Covers::new(list.split(',').map(v).collect()).unwrap()
}

fn block(number: u64) -> BlockRef {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&number.to_be_bytes());
    BlockRef {
        number,
        hash: BlockHash(hash),
    }
}

fn at(number: u64, release: &str) -> Event {
    Event::Block {
        block: block(number),
        release: Ok(v(release)),
    }
}

fn bad(number: u64, error: ReleaseError) -> Event {
    Event::Block {
        block: block(number),
        release: Err(error),
    }
}

fn exited(engine: EngineId, uptime_secs: u64) -> Event {
    Event::ChildExited {
        engine,
        uptime: Duration::from_secs(uptime_secs),
        status: "exit status: 0".into(),
    }
}

const TIMING: Timing = Timing {
    wait_log_every: WAIT_EVERY,
    start_secs: START_SECS,
    standby: STANDBY,
};

/// A gate on a virtual clock: block `n` arrives at `6n` seconds (blocks are 6 s apart in these
/// stories); other events happen at the time of the latest one, until time is moved on.
struct Sim {
    gate: Gate,
    start: Instant,
    now: Instant,
}

impl Sim {
    fn step(&mut self, event: Event) -> Vec<Action> {
        if let Event::Block { block, .. } = &event {
            self.now = self
                .now
                .max(self.start + Duration::from_secs(block.number * 6));
        }
        self.gate.step(self.now, event)
    }

    /// Moves the clock on by `by`, without telling the gate.
    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Moves the clock to the gate's next deadline, without telling the gate.
    fn run_to_deadline(&mut self) {
        let deadline = self.gate.next_deadline().expect("the gate has a deadline");
        self.now = self.now.max(deadline);
    }

    /// How long from now the gate's next deadline is.
    fn deadline_in(&self) -> Option<Duration> {
        self.gate.next_deadline().map(|d| d - self.now)
    }
}

impl std::ops::Deref for Sim {
    type Target = Gate;
    fn deref(&self) -> &Gate {
        &self.gate
    }
}

fn gate(engines: &[&str]) -> Sim {
    let start = Instant::now();
    Sim {
        gate: Gate::new(
            engines.iter().map(|e| covers(e)).collect(),
            Rule::MajorMinor,
            TIMING,
        ),
        start,
        now: start,
    }
}

/// Feeds `event`, granting the lock at once whenever the gate asks for it: the stories that are
/// not about the lock read as if there were none.
fn step(g: &mut Sim, event: Event) -> Vec<Action> {
    let mut actions = g.step(event);
    if let Some(i) = actions.iter().position(|a| *a == Action::AcquireLock) {
        actions.remove(i);
        actions.extend(g.step(Event::LockGranted(Grant::Usable)));
    }
    actions
}

/// Lets time run to the gate's next deadline and ticks it there (granting the lock as [`step`]).
fn due(g: &mut Sim) -> Vec<Action> {
    g.run_to_deadline();
    step(g, Event::Tick)
}

const SIGTERM: Event = Event::Shutdown { signal: "SIGTERM" };

/// The actions without the notices and lock traffic, which most stories do not care about.
fn commands(actions: Vec<Action>) -> Vec<Action> {
    actions
        .into_iter()
        .filter(|a| {
            !matches!(
                a,
                Action::Notify(_) | Action::AcquireLock | Action::CancelLock | Action::ReleaseLock
            )
        })
        .collect()
}

fn notices(actions: &[Action]) -> Vec<&Notice> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notify(n) => Some(n),
            _ => None,
        })
        .collect()
}

#[test]
fn compatible_engine_starts_at_once() {
    let mut g = gate(&["1.0.0"]);
    assert_eq!(
        commands(step(&mut g, at(5, "1.0.3"))),
        [Action::Start {
            engine: 0,
            block: block(5)
        }]
    );
    assert_eq!(commands(step(&mut g, at(6, "1.0.3"))), []);
}

#[test]
fn newer_engine_waits_then_starts_on_the_upgrade_block() {
    let mut g = gate(&["1.1.0"]);
    let first = step(&mut g, at(1, "1.0.0"));
    assert!(matches!(
        notices(&first)[..],
        [Notice::Waiting { .. }, Notice::NoCompatibleEngine { .. }]
    ));
    assert_eq!(commands(first), []);
    // Not per block: the next block within the interval says nothing.
    assert!(step(&mut g, at(2, "1.0.0")).is_empty());
    assert_eq!(
        commands(step(&mut g, at(3, "1.1.0"))),
        [Action::Start {
            engine: 0,
            block: block(3)
        }]
    );
}

#[test]
fn a_block_at_or_below_one_already_seen_changes_nothing() {
    let mut g = gate(&["1.0.0", "1.1.0"]);
    step(&mut g, at(1, "1.0.0"));
    assert_eq!(
        commands(step(&mut g, at(5, "1.1.0"))),
        [Action::Stop { engine: 0 }]
    );
    step(&mut g, exited(0, 24));
    // Block #3 again (a replayed or stale head) would hand back to 1.0.0: it is ignored.
    assert!(step(&mut g, at(3, "1.0.0")).is_empty());
    assert!(step(&mut g, at(5, "1.0.0")).is_empty());
    assert_eq!(g.alive(), Some(1));
    assert_eq!(commands(step(&mut g, at(6, "1.1.0"))), []);
}

#[test]
fn waiting_line_repeats_at_the_interval() {
    let mut g = gate(&["1.1.0"]);
    assert!(!step(&mut g, at(1, "1.0.0")).is_empty());
    // Blocks are 6 s apart in these stories: block 11 is exactly 60 s after block 1.
    for n in 2..11 {
        assert!(step(&mut g, at(n, "1.0.0")).is_empty(), "block {n}");
    }
    assert!(matches!(
        notices(&step(&mut g, at(11, "1.0.0")))[..],
        [Notice::Waiting { .. }, Notice::NoCompatibleEngine { .. }]
    ));
}

#[test]
fn old_engine_stops_and_idles_when_no_longer_compatible() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    let actions = step(&mut g, at(2, "1.1.0"));
    assert!(matches!(
        notices(&actions)[..],
        [Notice::NoLongerCompatible { .. }]
    ));
    assert_eq!(commands(actions), [Action::Stop { engine: 0 }]);
    let after_stop = step(&mut g, exited(0, 100));
    // Said once, not again when the stop completes.
    assert!(matches!(
        notices(&after_stop)[..],
        [Notice::Stopped { .. }, Notice::NoCompatibleEngine { .. }]
    ));
    assert_eq!(commands(after_stop), []);
    assert_eq!(g.alive(), None);
    assert_eq!(commands(step(&mut g, at(3, "1.1.0"))), []);
}

#[test]
fn shim_started_after_the_upgrade_says_no_longer_compatible_once() {
    let mut g = gate(&["1.0.0"]);
    let first = step(&mut g, at(1, "1.1.0"));
    assert!(matches!(
        notices(&first)[..],
        [
            Notice::NoLongerCompatible { .. },
            Notice::NoCompatibleEngine { .. }
        ]
    ));
    assert_eq!(commands(first), []);
    assert!(step(&mut g, at(2, "1.1.0")).is_empty());
}

#[test]
fn hand_over_waits_for_the_stop_to_complete() {
    let mut g = gate(&["1.0.0", "1.1.0"]);
    step(&mut g, at(1, "1.0.0"));
    assert_eq!(
        commands(step(&mut g, at(7, "1.1.0"))),
        [Action::Stop { engine: 0 }]
    );
    // More blocks while the old engine is still stopping start nothing.
    assert_eq!(commands(step(&mut g, at(8, "1.1.0"))), []);
    assert_eq!(
        commands(step(&mut g, exited(0, 100))),
        [Action::Start {
            engine: 1,
            block: block(7)
        }]
    );
}

#[test]
fn unknown_release_keeps_the_state() {
    for error in [
        ReleaseError::Absent,
        ReleaseError::Unset,
        ReleaseError::WrongLength {
            value_hex: "0102".into(),
            len: 2,
        },
    ] {
        // Running stays running.
        let mut g = gate(&["1.0.0"]);
        step(&mut g, at(1, "1.0.0"));
        let actions = step(&mut g, bad(2, error.clone()));
        assert!(matches!(
            notices(&actions)[..],
            [Notice::ReleaseUnknown { .. }]
        ));
        assert_eq!(commands(actions), []);
        assert_eq!(g.alive(), Some(0));
        // Idle never starts on it.
        let mut g = gate(&["1.0.0"]);
        assert_eq!(commands(step(&mut g, bad(1, error))), []);
        assert_eq!(g.alive(), None);
    }
}

fn head(engine: EngineId, number: u64, release: &str) -> Event {
    Event::HeadRelease {
        engine,
        answer: Ok((block(number), v(release))),
    }
}

fn head_unreadable(engine: EngineId) -> Event {
    Event::HeadRelease {
        engine,
        answer: Err("node at ws://127.0.0.1:9944 is unreachable".into()),
    }
}

#[test]
fn crash_restarts_with_back_off() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    // An exit nobody asked for: first the release at the head, then the verdict.
    assert_eq!(
        commands(step(&mut g, exited(0, 0))),
        [Action::CheckHead { engine: 0 }]
    );
    assert_eq!(commands(step(&mut g, head(0, 1, "1.0.0"))), []);
    assert_eq!(g.deadline_in(), Some(Duration::from_secs(1)));
    // Not before its time.
    g.advance(Duration::from_millis(999));
    assert_eq!(commands(step(&mut g, Event::Tick)), []);
    // And once more before the restart itself: the chain may have moved on meanwhile.
    assert_eq!(commands(due(&mut g)), [Action::CheckHead { engine: 0 }]);
    assert_eq!(
        commands(step(&mut g, head(0, 1, "1.0.0"))),
        [Action::Start {
            engine: 0,
            block: block(1)
        }]
    );
    step(&mut g, exited(0, 0));
    assert_eq!(commands(step(&mut g, head(0, 1, "1.0.0"))), []);
    assert_eq!(g.deadline_in(), Some(Duration::from_secs(2)));
}

#[test]
fn an_engine_that_exits_before_the_follower_reaches_the_upgrade_hands_over() {
    let mut g = gate(&["1.0.0", "1.1.0"]);
    step(&mut g, at(1, "1.0.0"));
    step(&mut g, at(2, "1.0.0"));
    // The engine saw block 3 (release 1.1.0) first and left; the shim is still at block 2.
    assert_eq!(
        commands(step(&mut g, exited(0, 30))),
        [Action::CheckHead { engine: 0 }]
    );
    let actions = step(&mut g, head(0, 3, "1.1.0"));
    assert_eq!(
        notices(&actions),
        [&Notice::ExitedAtUpgrade {
            engine: covers("1.0.0"),
            release: v("1.1.0"),
            block: block(3),
            status: "exit status: 0".into(),
        }]
    );
    // Not a crash: no restart, the lock is kept for the hand-over.
    assert_eq!(commands_and_lock(actions), []);
    assert_eq!(g.alive(), None);
    // No restart either while the follower is still before the upgrade block.
    assert_eq!(commands_and_lock(g.step(at(2, "1.0.0"))), []);
    assert_eq!(
        commands_and_lock(g.step(at(3, "1.1.0"))),
        [Action::Start {
            engine: 1,
            block: block(3)
        }]
    );
}

#[test]
fn an_engine_exit_the_follower_explains_first_is_a_hand_over_too() {
    let mut g = gate(&["1.0.0", "1.1.0"]);
    step(&mut g, at(1, "1.0.0"));
    step(&mut g, exited(0, 30));
    // Block 2 carries the new release before the head is read: the hand-over happens there.
    let actions = step(&mut g, at(2, "1.1.0"));
    assert!(notices(&actions)
        .iter()
        .any(|n| matches!(n, Notice::ExitedAtUpgrade { block: b, .. } if *b == block(2))));
    assert_eq!(
        commands(actions),
        [Action::Start {
            engine: 1,
            block: block(2)
        }]
    );
    // The answer that arrives late changes nothing.
    assert_eq!(commands_and_lock(g.step(head(0, 2, "1.1.0"))), []);
    assert_eq!(g.alive(), Some(1));
}

#[test]
fn an_engine_exit_while_the_release_still_fits_is_a_crash() {
    let mut g = gate(&["1.0.0", "1.1.0"]);
    step(&mut g, at(1, "1.0.0"));
    step(&mut g, exited(0, 0));
    // A patch upgrade keeps the engine compatible: still a crash.
    let actions = step(&mut g, head(0, 5, "1.0.3"));
    assert!(notices(&actions).iter().any(|n| matches!(
        n,
        Notice::Crashed {
            unconfirmed: None,
            ..
        }
    )));
    assert!(lock_actions(&actions).contains(&Action::ReleaseLock));
}

#[test]
fn an_unreadable_head_is_a_crash_restarted_only_once_the_node_answers() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    step(&mut g, exited(0, 0));
    let actions = step(&mut g, head_unreadable(0));
    assert!(notices(&actions).iter().any(|n| matches!(
        n,
        Notice::Crashed {
            unconfirmed: Some(_),
            ..
        }
    )));
    assert_eq!(commands(actions), []);
    assert_eq!(g.deadline_in(), Some(Duration::from_secs(1)));
    // Due, but the node still does not answer: deferred with back-off, nothing started.
    due(&mut g);
    let actions = step(&mut g, head_unreadable(0));
    assert!(notices(&actions)
        .iter()
        .any(|n| matches!(n, Notice::RestartDeferred { .. })));
    assert_eq!(commands(actions), []);
    assert_eq!(g.deadline_in(), Some(Duration::from_secs(2)));
    assert_eq!(g.alive(), None);
    // The node answers and the release still fits: restarted.
    due(&mut g);
    assert_eq!(
        commands(step(&mut g, head(0, 1, "1.0.0"))),
        [Action::Start {
            engine: 0,
            block: block(1)
        }]
    );
}

#[test]
fn a_restart_due_after_the_chain_moved_on_is_a_hand_over() {
    let mut g = gate(&["1.0.0", "1.1.0"]);
    step(&mut g, at(1, "1.0.0"));
    step(&mut g, exited(0, 0));
    step(&mut g, head_unreadable(0));
    due(&mut g);
    // The node is back, and past the upgrade: the old engine is not restarted.
    let actions = step(&mut g, head(0, 4, "1.1.0"));
    assert!(notices(&actions)
        .iter()
        .any(|n| matches!(n, Notice::ExitedAtUpgrade { .. })));
    assert_eq!(commands_and_lock(actions), []);
    assert_eq!(
        commands(step(&mut g, at(4, "1.1.0"))),
        [Action::Start {
            engine: 1,
            block: block(4)
        }]
    );
}

#[test]
fn only_the_first_start_after_an_upgrade_begins_at_the_upgrade_block() {
    let mut g = gate(&["1.1.0"]);
    step(&mut g, at(1, "1.0.0"));
    assert_eq!(
        commands(step(&mut g, at(2, "1.1.0"))),
        [Action::Start {
            engine: 0,
            block: block(2)
        }]
    );
    step(&mut g, at(3, "1.1.0"));
    step(&mut g, exited(0, 0));
    step(&mut g, head(0, 3, "1.1.0"));
    due(&mut g);
    // A restart begins from the present, as a fresh start does.
    assert_eq!(
        commands(step(&mut g, head(0, 3, "1.1.0"))),
        [Action::Start {
            engine: 0,
            block: block(3)
        }]
    );
}

#[test]
fn pending_restart_is_dropped_when_the_release_moves_on() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    step(&mut g, exited(0, 0));
    step(&mut g, head(0, 1, "1.0.0"));
    assert!(g.next_deadline().is_some());
    step(&mut g, at(2, "1.1.0"));
    // The restart's deadline went with the restart.
    assert_eq!(g.next_deadline(), None);
    assert_eq!(commands(step(&mut g, Event::Tick)), []);
    assert_eq!(g.alive(), None);
}

#[test]
fn shutdown_stops_then_exits() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    assert_eq!(
        commands(step(&mut g, SIGTERM)),
        [Action::Stop { engine: 0 }]
    );
    assert_eq!(commands(step(&mut g, at(2, "1.0.0"))), []);
    assert_eq!(commands(step(&mut g, exited(0, 5))), [Action::Exit]);
    let mut idle = gate(&["1.1.0"]);
    step(&mut idle, at(1, "1.0.0"));
    assert_eq!(commands(step(&mut idle, SIGTERM)), [Action::Exit]);
}

#[test]
fn rollback_hands_back() {
    let mut g = gate(&["1.0.0", "1.1.0"]);
    step(&mut g, at(1, "1.1.0"));
    let actions = step(&mut g, at(2, "1.0.0"));
    assert!(matches!(
        notices(&actions)[..],
        [Notice::ReleaseMovedBack { .. }]
    ));
    assert_eq!(commands(actions), [Action::Stop { engine: 1 }]);
    assert_eq!(
        commands(step(&mut g, exited(1, 50))),
        [Action::Start {
            engine: 0,
            block: block(2)
        }]
    );
}

#[test]
fn late_start_keeps_the_hand_over_block() {
    // The release changed at block 4 but the old engine took until block 9 to stop.
    let mut g = gate(&["1.0.0", "1.1.0"]);
    step(&mut g, at(1, "1.0.0"));
    step(&mut g, at(4, "1.1.0"));
    for n in 5..10 {
        step(&mut g, at(n, "1.1.0"));
    }
    assert_eq!(
        commands(step(&mut g, exited(0, 100))),
        [Action::Start {
            engine: 1,
            block: block(4)
        }]
    );
}

/// Only the lock traffic of a list of actions.
fn lock_actions(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::AcquireLock | Action::CancelLock | Action::ReleaseLock
            )
        })
        .cloned()
        .collect()
}

#[test]
fn an_engine_starts_only_once_the_lock_is_granted() {
    let mut g = gate(&["1.0.0"]);
    assert_eq!(
        commands_and_lock(g.step(at(1, "1.0.0"))),
        [Action::AcquireLock]
    );
    assert_eq!(g.alive(), None);
    assert_eq!(commands(g.step(at(2, "1.0.0"))), []);
    // Not an upgrade: the engine starts from the present, the latest finalized block.
    assert_eq!(
        commands(g.step(Event::LockGranted(Grant::Usable))),
        [Action::Start {
            engine: 0,
            block: block(2)
        }]
    );
}

fn commands_and_lock(actions: Vec<Action>) -> Vec<Action> {
    actions
        .into_iter()
        .filter(|a| !matches!(a, Action::Notify(_)))
        .collect()
}

#[test]
fn an_idle_shim_holds_no_lock() {
    // Waiting for the lock when the release moves away: the wait is cancelled.
    let mut g = gate(&["1.0.0"]);
    g.step(at(1, "1.0.0"));
    assert_eq!(lock_actions(&g.step(at(2, "1.1.0"))), [Action::CancelLock]);
    // A grant that crossed the cancel is handed straight back.
    assert_eq!(
        g.step(Event::LockGranted(Grant::Usable)),
        [Action::ReleaseLock]
    );
    // Running, then no longer compatible: the lock goes back only after the child is reaped.
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    assert_eq!(lock_actions(&g.step(at(2, "1.1.0"))), []);
    assert_eq!(lock_actions(&g.step(exited(0, 5))), [Action::ReleaseLock]);
}

#[test]
fn a_hand_over_in_one_process_keeps_the_lock() {
    let mut g = gate(&["1.0.0", "1.1.0"]);
    step(&mut g, at(1, "1.0.0"));
    g.step(at(2, "1.1.0"));
    assert_eq!(
        commands_and_lock(g.step(exited(0, 5))),
        [Action::Start {
            engine: 1,
            block: block(2)
        }]
    );
}

#[test]
fn a_crashed_engine_gives_the_lock_back_until_its_restart() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    g.step(exited(0, 0));
    assert!(lock_actions(&g.step(head(0, 1, "1.0.0"))).contains(&Action::ReleaseLock));
    g.run_to_deadline();
    g.step(Event::Tick);
    assert_eq!(
        commands_and_lock(g.step(head(0, 1, "1.0.0"))),
        [Action::AcquireLock]
    );
}

#[test]
fn shutdown_while_waiting_for_the_lock_cancels_it_and_exits() {
    let mut g = gate(&["1.0.0"]);
    g.step(at(1, "1.0.0"));
    assert_eq!(
        commands_and_lock(g.step(SIGTERM)),
        [Action::CancelLock, Action::Exit]
    );
}

#[test]
fn a_lost_lock_fences_the_engine_and_waits_for_the_lock_again() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    let kill_by = g.now + Duration::from_secs(3);
    let lost = g.step(Event::LockLost {
        reason: "lease not renewed".into(),
        kill_by,
    });
    assert!(matches!(notices(&lost)[..], [Notice::Fenced { .. }]));
    // Nothing to release: the lock is not ours any more.
    assert_eq!(commands_and_lock(lost), [Action::Fence { engine: 0 }]);
    assert_eq!(
        commands_and_lock(g.step(exited(0, 3))),
        [Action::AcquireLock]
    );
}

#[test]
fn hand_off_stops_releases_and_stands_by_until_told() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    assert_eq!(
        commands_and_lock(g.step(Event::HandOff)),
        [Action::Stop { engine: 0 }]
    );
    // The stand-by counts from the request.
    assert_eq!(g.deadline_in(), Some(STANDBY));
    assert_eq!(
        commands_and_lock(g.step(exited(0, 3))),
        [Action::ReleaseLock, Action::HandedOff]
    );
    // Standing by: blocks of a compatible release start nothing, not even a lock request.
    assert_eq!(commands_and_lock(g.step(at(2, "1.0.0"))), []);
    g.run_to_deadline();
    let over = g.step(Event::Tick);
    assert!(notices(&over).contains(&&Notice::StandbyOver));
    assert_eq!(commands_and_lock(over), [Action::AcquireLock]);
}

#[test]
fn a_second_hand_off_during_the_stand_by_starts_the_stand_by_afresh() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    g.step(Event::HandOff);
    g.step(exited(0, 3));
    g.advance(STANDBY / 2);
    assert_eq!(
        commands_and_lock(g.step(Event::HandOff)),
        [Action::HandedOff]
    );
    // When the first stand-by would have ended, the second one goes on.
    g.advance(STANDBY / 2);
    let first_end = g.step(Event::Tick);
    assert!(!notices(&first_end).contains(&&Notice::StandbyOver));
    assert_eq!(commands_and_lock(first_end), []);
    assert_eq!(g.deadline_in(), Some(STANDBY / 2));
    g.run_to_deadline();
    assert_eq!(
        commands_and_lock(g.step(Event::Tick)),
        [Action::AcquireLock]
    );
}

#[test]
fn a_stand_by_that_ends_while_the_engine_stops_competes_once_it_is_reaped() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    g.step(Event::HandOff);
    let over = due(&mut g);
    assert!(notices(&over).contains(&&Notice::StandbyOver));
    assert_eq!(commands_and_lock(over), []);
    // The hand-off is still answered, then the instance competes again.
    assert_eq!(
        commands_and_lock(g.step(exited(0, 40))),
        [Action::ReleaseLock, Action::HandedOff, Action::AcquireLock]
    );
}

#[test]
fn a_grant_too_old_to_use_is_given_back_and_asked_for_again() {
    let mut g = gate(&["1.0.0"]);
    assert_eq!(
        commands_and_lock(g.step(at(1, "1.0.0"))),
        [Action::AcquireLock]
    );
    assert_eq!(
        g.step(Event::LockGranted(Grant::Expired)),
        [Action::RetryLock]
    );
    assert_eq!(g.alive(), None);
    // The next grant answers the same wait.
    assert_eq!(
        commands(g.step(Event::LockGranted(Grant::Usable))),
        [Action::Start {
            engine: 0,
            block: block(1)
        }]
    );
    // A stale grant nobody waits for any more is just given back.
    let mut g = gate(&["1.0.0"]);
    g.step(at(1, "1.0.0"));
    g.step(at(2, "1.1.0"));
    assert_eq!(
        g.step(Event::LockGranted(Grant::Expired)),
        [Action::ReleaseLock]
    );
}

#[test]
fn a_fenced_engine_is_killed_at_the_fencing_deadline() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    let kill_by = g.now + Duration::from_secs(3);
    let reason = "lease not renewed".to_string();
    assert_eq!(
        commands(g.step(Event::LockLost { reason, kill_by })),
        [Action::Fence { engine: 0 }]
    );
    assert_eq!(g.next_deadline(), Some(kill_by));
    g.advance(Duration::from_secs(3) - Duration::from_millis(1));
    assert_eq!(commands(g.step(Event::Tick)), []);
    g.advance(Duration::from_millis(1));
    assert_eq!(
        commands(g.step(Event::Tick)),
        [Action::Kill {
            engine: 0,
            cause: KillCause::FenceDeadline
        }]
    );
    // Killed once; then the exit ends the fence and the lock is asked for again.
    assert_eq!(g.next_deadline(), None);
    assert_eq!(
        commands_and_lock(g.step(exited(0, 3))),
        [Action::AcquireLock]
    );
}

#[test]
fn a_loss_noticed_after_its_deadline_kills_at_once() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    let kill_by = g.now;
    g.advance(Duration::from_secs(10));
    let reason = "renew deadline passed while paused".to_string();
    assert_eq!(
        commands(g.step(Event::LockLost { reason, kill_by })),
        [
            Action::Fence { engine: 0 },
            Action::Kill {
                engine: 0,
                cause: KillCause::FenceDeadline
            }
        ]
    );
}

#[test]
fn an_engine_that_exits_before_its_fencing_deadline_is_not_killed() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    let kill_by = g.now + Duration::from_secs(3);
    let reason = "lease not renewed".to_string();
    g.step(Event::LockLost { reason, kill_by });
    // The exit is reported after the deadline passed, before the timer fired: nothing to kill.
    g.advance(Duration::from_secs(5));
    assert_eq!(
        commands_and_lock(g.step(exited(0, 3))),
        [Action::AcquireLock]
    );
}

#[test]
fn a_second_signal_kills_the_engine_now() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(1, "1.0.0"));
    let first = g.step(SIGTERM);
    assert_eq!(
        notices(&first),
        [&Notice::ShutdownRequested { signal: "SIGTERM" }]
    );
    assert_eq!(commands(first), [Action::Stop { engine: 0 }]);
    let again = g.step(Event::Shutdown { signal: "SIGINT" });
    assert_eq!(
        notices(&again),
        [&Notice::ShutdownAgain { signal: "SIGINT" }]
    );
    assert_eq!(
        commands(again),
        [Action::Kill {
            engine: 0,
            cause: KillCause::SecondSignal
        }]
    );
    assert_eq!(commands(g.step(exited(0, 5))), [Action::Exit]);
}

#[test]
fn hand_off_of_an_idle_instance_answers_at_once() {
    let mut g = gate(&["1.1.0"]);
    g.step(at(1, "1.0.0"));
    assert_eq!(
        commands_and_lock(g.step(Event::HandOff)),
        [Action::HandedOff]
    );
}

#[test]
fn a_runner_starts_on_its_older_version_and_runs_through_the_upgrade() {
    let mut g = gate(&["2.2.8,2.3.0"]);
    let start = step(&mut g, at(5, "2.2.0"));
    assert_eq!(
        commands(start.clone()),
        [Action::Start {
            engine: 0,
            block: block(5)
        }]
    );
    assert!(
        matches!(notices(&start)[..], [Notice::Starting { engine, .. }] if *engine == covers("2.2.8,2.3.0"))
    );
    // The runner switches inside its own process: nothing for the shim to do at 2.3.
    assert_eq!(step(&mut g, at(6, "2.3.0")), []);
    let stop = step(&mut g, at(7, "2.4.0"));
    assert_eq!(commands(stop.clone()), [Action::Stop { engine: 0 }]);
    assert_eq!(
        notices(&stop),
        [&Notice::NoLongerCompatible {
            engine: v("2.3.0"),
            release: v("2.4.0"),
            block: block(7)
        }]
    );
    let idle = step(&mut g, exited(0, 60));
    assert!(notices(&idle).contains(&&Notice::NoCompatibleEngine {
        release: v("2.4.0"),
        block: block(7),
        installed: vec![v("2.2.8"), v("2.3.0")],
    }));
}

#[test]
fn a_runner_waits_on_its_oldest_version() {
    let mut g = gate(&["2.3.0,2.4.0"]);
    let actions = step(&mut g, at(5, "2.2.0"));
    assert!(notices(&actions).contains(&&Notice::Waiting {
        engine: v("2.3.0"),
        release: v("2.2.0"),
        block: block(5)
    }));
}

#[test]
fn a_running_compatible_engine_keeps_running_when_another_becomes_compatible() {
    let mut g = gate(&["2.2.8,2.3.0", "2.3.0,2.4.0"]);
    assert_eq!(
        commands(step(&mut g, at(5, "2.2.0"))),
        [Action::Start {
            engine: 0,
            block: block(5)
        }]
    );
    // Both cover 2.3: no hand-over between two compatible engines.
    assert_eq!(step(&mut g, at(6, "2.3.0")), []);
    assert_eq!(
        commands(step(&mut g, at(7, "2.4.0"))),
        [Action::Stop { engine: 0 }]
    );
    assert_eq!(
        commands(step(&mut g, exited(0, 60))),
        [Action::Start {
            engine: 1,
            block: block(7)
        }]
    );
}

#[test]
fn of_several_compatible_engines_the_highest_newest_version_starts() {
    let engines = ["2.2.8,2.3.0", "2.3.0,2.4.0", "2.3.1"].map(covers);
    let rule = Rule::MajorMinor;
    assert_eq!(pick_engine(&engines, rule, v("2.3.0"), None), Some(1));
    assert_eq!(pick_engine(&engines, rule, v("2.3.0"), Some(2)), Some(2));
    assert_eq!(pick_engine(&engines, rule, v("2.2.0"), Some(1)), Some(0));
    assert_eq!(pick_engine(&engines, rule, v("2.5.0"), Some(1)), None);
    // A tie goes to the engine given first.
    let twins = ["2.2.8,2.3.0", "2.3.0"].map(covers);
    assert_eq!(pick_engine(&twins, rule, v("2.3.0"), None), Some(0));
    // Idle at 2.3 with both installed: the newer runner starts.
    let mut g = gate(&["2.2.8,2.3.0", "2.3.0,2.4.0"]);
    assert_eq!(
        commands(step(&mut g, at(5, "2.3.0"))),
        [Action::Start {
            engine: 1,
            block: block(5)
        }]
    );
}

fn replaced(engine: EngineId, list: &str) -> Event {
    Event::EngineReplaced {
        engine,
        covers: covers(list),
    }
}

/// The gauge behind `engine_shim_no_compatible_engine`: set while the release has left every
/// installed engine, not while the engines wait for an upgrade, and cleared once an engine
/// covering the release is installed.
#[test]
fn an_engine_is_missing_only_while_the_release_has_left_every_installed_one() {
    let mut g = gate(&["2.2.8,2.3.0"]);
    assert_eq!(g.missing_engine(), None, "no release known yet");
    step(&mut g, at(1, "2.1.0"));
    assert_eq!(g.missing_engine(), None, "waiting for the upgrade");
    step(&mut g, at(2, "2.2.0"));
    assert_eq!(g.missing_engine(), None, "the runner runs");
    step(&mut g, at(3, "2.4.0"));
    assert_eq!(
        g.missing_engine(),
        Some(v("2.4.0")),
        "while the runner stops"
    );
    step(&mut g, exited(0, 20));
    assert_eq!(g.missing_engine(), Some(v("2.4.0")), "idle on 2.4");
    step(&mut g, bad(4, ReleaseError::Absent));
    assert_eq!(
        g.missing_engine(),
        Some(v("2.4.0")),
        "an unreadable block changes nothing"
    );
    step(&mut g, replaced(0, "2.3.0,2.4.0"));
    assert_eq!(g.missing_engine(), None, "the next package is installed");
}

#[test]
fn an_idle_shim_starts_a_program_replaced_in_place_without_waiting_for_a_block() {
    let mut g = gate(&["2.2.8,2.3.0"]);
    step(&mut g, at(5, "2.4.0"));
    assert_eq!(
        commands(step(&mut g, replaced(0, "2.3.0,2.4.0"))),
        [Action::Start {
            engine: 0,
            block: block(5)
        }]
    );
}

#[test]
fn a_running_engine_replaced_in_place_keeps_running_until_its_next_start() {
    let mut g = gate(&["2.2.8,2.3.0"]);
    step(&mut g, at(5, "2.3.0"));
    // The new program covers 2.4 too, but the running process is the old one: nothing happens.
    assert_eq!(step(&mut g, replaced(0, "2.3.0,2.4.0")), []);
    assert_eq!(step(&mut g, at(6, "2.3.0")), []);
    // At 2.4 the old process is no longer compatible: it stops, and the new program starts.
    assert_eq!(
        commands(step(&mut g, at(7, "2.4.0"))),
        [Action::Stop { engine: 0 }]
    );
    assert_eq!(
        commands(step(&mut g, exited(0, 60))),
        [Action::Start {
            engine: 0,
            block: block(7)
        }]
    );
}

#[test]
fn a_runner_exiting_at_the_upgrade_after_its_replacement_was_installed_is_a_hand_over_not_a_crash()
{
    let mut g = gate(&["2.2.8,2.3.0"]);
    step(&mut g, at(5, "2.3.0"));
    // The next package is installed while the old runner runs; the runner then leaves at 2.4,
    // before this shim has seen the 2.4 block.
    assert_eq!(step(&mut g, replaced(0, "2.3.0,2.4.0")), []);
    assert_eq!(
        commands(step(&mut g, exited(0, 60))),
        [Action::CheckHead { engine: 0 }]
    );
    // Judged by what the exited runner covered (2.2.8, 2.3.0), not by the new package.
    let actions = step(&mut g, head(0, 7, "2.4.0"));
    assert_eq!(
        notices(&actions),
        [&Notice::ExitedAtUpgrade {
            engine: covers("2.2.8,2.3.0"),
            release: v("2.4.0"),
            block: block(7),
            status: "exit status: 0".into(),
        }]
    );
    assert_eq!(commands(actions), []);
    // The new package starts at the upgrade block, once the follower reaches it.
    assert_eq!(commands(step(&mut g, at(6, "2.3.0"))), []);
    assert_eq!(
        commands(step(&mut g, at(7, "2.4.0"))),
        [Action::Start {
            engine: 0,
            block: block(7)
        }]
    );
}

#[test]
fn a_runner_exiting_after_its_replacement_was_installed_is_settled_by_the_follower_too() {
    let mut g = gate(&["2.2.8,2.3.0"]);
    step(&mut g, at(5, "2.3.0"));
    step(&mut g, replaced(0, "2.3.0,2.4.0"));
    step(&mut g, exited(0, 60));
    // The follower reaches the upgrade block before the head answer: the new package starts.
    assert_eq!(
        commands(step(&mut g, at(6, "2.4.0"))),
        [Action::Start {
            engine: 0,
            block: block(6)
        }]
    );
    // The late answer changes nothing.
    assert_eq!(commands(step(&mut g, head(0, 6, "2.4.0"))), []);
}

#[test]
fn an_engine_installed_while_nothing_could_run_starts_at_the_upgrade_block() {
    let mut g = gate(&["1.0.0"]);
    step(&mut g, at(5, "1.0.0"));
    step(&mut g, at(10, "1.1.0"));
    step(&mut g, exited(0, 60));
    // Nothing covers 1.1 until the 1.1 package is installed at block 15: the blocks since the
    // upgrade (#10) were processed by nobody, so the new engine starts there.
    step(&mut g, at(15, "1.1.0"));
    assert_eq!(
        commands(step(&mut g, replaced(0, "1.1.0"))),
        [Action::Start {
            engine: 0,
            block: block(10)
        }]
    );
}

#[test]
fn a_replacement_that_changes_nothing_does_nothing() {
    let mut g = gate(&["1.1.0"]);
    step(&mut g, at(5, "1.0.0"));
    assert_eq!(step(&mut g, replaced(0, "1.1.0")), []);
}

// ---------------------------------------------------------------------------------------------
// Model check: one or two shims (processes), each with its own gate and engines, sharing one chain
// and one lock, under random interleavings of blocks, crashes, stop completions, lock grants (in
// time or too late to use), lock losses (with their fencing deadline ahead or already passed),
// hand-offs, signals and the passing of virtual time, with each shim's timer firing late or
// early at any point among them.

/// How long a fenced engine may live after the loss is reported, and when the lost lease may go
/// to someone else: later than the fencing deadline, as the real lock's deadlines guarantee.
const MODEL_KILL_WITHIN: Duration = Duration::from_secs(3);
const MODEL_LEASE_FREE_AFTER: Duration = Duration::from_secs(5);

/// One shim process as the outside world sees it.
struct Shim {
    gate: Gate,
    engines: Vec<Covers>,
    /// Next chain block this shim will see (each shim follows the chain at its own pace).
    cursor: usize,
    last_known: Option<SemVer>,
    alive: Option<EngineId>,
    stop_requested: bool,
    /// The live child was sent SIGKILL: it can no longer touch anything, its exit is pending.
    killed: bool,
    exited: bool,
    shutting_down: bool,
    /// The lock was taken from this shim while its engine lived: the engine is being fenced. The
    /// lease stays with this shim until the engine is reaped or `lease_free_at`, whichever is
    /// first; by then the gate must have killed it.
    lost: Option<Lost>,
    /// When this shim was last asked to hand off: it asks for no lock for [`STANDBY`] after it.
    handed_off_at: Option<Instant>,
    /// The gate asked for the release at the finalized head for this engine; no answer yet.
    head_check: Option<EngineId>,
    /// What a replaced engine covers once its live child (the old program) is gone.
    replaced: Vec<Option<Covers>>,
}

#[derive(Debug, Clone, Copy)]
struct Lost {
    kill_by: Instant,
    lease_free_at: Instant,
}

/// The shared world: the chain, the lock (FIFO waiters, like flock's wake-up) and the clock.
struct World {
    shims: Vec<Shim>,
    chain: Vec<Result<SemVer, ReleaseError>>,
    holder: Option<usize>,
    /// The holder's grant came too late to be used: it must not start anything on it.
    holder_expired: bool,
    waiting: std::collections::VecDeque<usize>,
    now: Instant,
}

#[derive(Debug, Clone)]
enum Op {
    Chain(Option<(u8, u8)>),
    Deliver(usize),
    Crash(usize, u64),
    StopCompletes(usize),
    /// The lock goes to the first waiter; `false`: the grant arrives too late to be used.
    Grant(bool),
    /// The shim's second signal, if it is the second.
    Shutdown(usize),
    /// The lock is lost; `true`: the loss is noticed only after its fencing deadline passed.
    Lose(usize, bool),
    /// A lost lease runs out at the database, so it may go to someone else.
    LeaseExpires(usize),
    HandOff(usize),
    /// Time passes (milliseconds), without anyone being told.
    Advance(u64),
    /// The shim's timer fires (it may be late, or early for nothing).
    Tick(usize),
    /// The node answers a head check: with the chain's head (true) or with an error (false).
    HeadAnswers(usize, bool),
    /// Shim, engine, and the index in [`ENGINES`] of what its program covers after an upgrade.
    Replace(usize, usize, usize),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::option::weighted(0.85, (1u8..3, 0u8..3)).prop_map(Op::Chain),
        6 => (0usize..2).prop_map(Op::Deliver),
        1 => (0usize..2, 0u64..30).prop_map(|(s, up)| Op::Crash(s, up)),
        3 => (0usize..2).prop_map(Op::StopCompletes),
        3 => proptest::bool::weighted(0.85).prop_map(Op::Grant),
        1 => (0usize..2).prop_map(Op::Shutdown),
        1 => (0usize..2, proptest::bool::weighted(0.2)).prop_map(|(s, late)| Op::Lose(s, late)),
        1 => (0usize..2).prop_map(Op::LeaseExpires),
        1 => (0usize..2).prop_map(Op::HandOff),
        3 => prop_oneof![Just(100u64), Just(1_000), Just(4_000), Just(20_000)].prop_map(Op::Advance),
        3 => (0usize..2).prop_map(Op::Tick),
        3 => (0usize..2, proptest::bool::weighted(0.8)).prop_map(|(s, ok)| Op::HeadAnswers(s, ok)),
        1 => (0usize..2, 0usize..3, 0..ENGINES.len()).prop_map(|(s, e, k)| Op::Replace(s, e, k)),
    ]
}

/// Engines of one version each (never two sharing a release, as the config demands) and runners
/// covering two consecutive versions, which overlap them and each other.
const ENGINES: [&str; 7] = [
    "1.0.0",
    "1.1.0",
    "1.2.0",
    "2.0.0",
    "1.0.0,1.1.0",
    "1.1.0,1.2.0",
    "1.2.0,2.0.0",
];

fn engines_strategy() -> impl Strategy<Value = Vec<Covers>> {
    proptest::sample::subsequence(ENGINES.to_vec(), 1..=3)
        .prop_shuffle()
        .prop_map(|list| list.into_iter().map(covers).collect())
}

impl World {
    fn new(engine_sets: Vec<Vec<Covers>>) -> Self {
        let shims = engine_sets
            .into_iter()
            .map(|engines| Shim {
                gate: Gate::new(engines.clone(), Rule::MajorMinor, TIMING),
                replaced: vec![None; engines.len()],
                engines,
                cursor: 0,
                last_known: None,
                alive: None,
                stop_requested: false,
                killed: false,
                exited: false,
                shutting_down: false,
                lost: None,
                handed_off_at: None,
                head_check: None,
            })
            .collect();
        World {
            shims,
            chain: Vec::new(),
            holder: None,
            holder_expired: false,
            waiting: Default::default(),
            now: Instant::now(),
        }
    }

    fn feed(&mut self, s: usize, event: Event) {
        let release = match &event {
            Event::Block {
                release: Ok(release),
                ..
            } => Some(*release),
            _ => None,
        };
        let actions = self.shims[s].gate.step(self.now, event);
        for action in actions {
            if let (Action::Stop { engine }, Some(release)) = (&action, release) {
                // No hand-over between two compatible engines: a block stops only what it must.
                assert_ne!(
                    self.shims[s].engines[*engine].compare(Rule::MajorMinor, release),
                    Compatibility::Compatible,
                    "a block stopped an engine still compatible with {release}"
                );
            }
            self.apply(s, action);
        }
        // Whatever was due by now was acted on: a fenced engine is killed once its deadline has
        // come, whichever event woke the gate.
        let shim = &self.shims[s];
        if let (Some(lost), Some(_)) = (shim.lost, shim.alive) {
            assert!(
                self.now < lost.kill_by || shim.killed,
                "the fenced engine lives past its deadline"
            );
        }
        self.check_invariants();
    }

    fn apply(&mut self, s: usize, action: Action) {
        let others_running: Vec<_> = (0..self.shims.len())
            .filter(|&o| o != s && self.shims[o].alive.is_some() && !self.shims[o].killed)
            .collect();
        let now = self.now;
        let shim = &mut self.shims[s];
        match action {
            Action::Start { engine, .. } => {
                assert_eq!(self.holder, Some(s), "shim {s} started without the lock");
                assert!(!self.holder_expired, "shim {s} started on an expired grant");
                assert_eq!(shim.alive, None, "shim {s} started a second child");
                assert!(
                    others_running.is_empty(),
                    "two engines alive: shim {s} and {others_running:?}"
                );
                let release = shim.last_known.expect("started without a known release");
                assert_eq!(
                    shim.engines[engine].compare(Rule::MajorMinor, release),
                    Compatibility::Compatible,
                    "started an engine incompatible with the last known release"
                );
                shim.alive = Some(engine);
                shim.stop_requested = false;
                shim.killed = false;
            }
            Action::Stop { engine } => {
                assert_eq!(
                    shim.alive,
                    Some(engine),
                    "stopped an engine that is not alive"
                );
                shim.stop_requested = true;
            }
            Action::AcquireLock => {
                assert_ne!(self.holder, Some(s), "asked for a lock it holds");
                assert!(!self.waiting.contains(&s), "asked twice");
                if let Some(at) = shim.handed_off_at {
                    assert!(
                        now >= at + STANDBY,
                        "asked for the lock {:?} after a hand-off, within the stand-by",
                        now - at
                    );
                }
                self.waiting.push_back(s);
            }
            Action::RetryLock => {
                assert_eq!(self.holder, Some(s), "gave back a grant it does not hold");
                assert!(self.holder_expired, "gave back a grant it could use");
                self.holder = None;
                self.holder_expired = false;
                self.waiting.push_back(s);
            }
            Action::CancelLock => {
                let at = self.waiting.iter().position(|&w| w == s);
                self.waiting
                    .remove(at.expect("cancelled a lock it was not waiting for"));
            }
            Action::Fence { engine } => {
                assert_eq!(
                    shim.alive,
                    Some(engine),
                    "fenced an engine that is not alive"
                );
                assert!(shim.lost.is_some(), "fenced without losing the lock");
                shim.stop_requested = true;
            }
            Action::Kill { engine, cause } => {
                assert_eq!(
                    shim.alive,
                    Some(engine),
                    "killed an engine that is not alive"
                );
                match cause {
                    KillCause::FenceDeadline => {
                        let lost = shim.lost.expect("killed for a fence it does not have");
                        assert!(now >= lost.kill_by, "killed before the fencing deadline");
                    }
                    KillCause::SecondSignal => {
                        assert!(shim.shutting_down, "killed for a signal never sent")
                    }
                }
                shim.killed = true;
            }
            Action::CheckHead { engine } => {
                assert_eq!(shim.alive, None, "checked the head with a child alive");
                shim.head_check = Some(engine);
            }
            Action::HandedOff => {
                assert_eq!(shim.alive, None, "handed off with a child alive");
                assert_ne!(self.holder, Some(s), "handed off holding the lock");
            }
            Action::ReleaseLock => {
                assert!(shim.lost.is_none(), "released a lock it had lost");
                assert_eq!(self.holder, Some(s), "released a lock it does not hold");
                assert_eq!(shim.alive, None, "released the lock with a child alive");
                self.holder = None;
                self.holder_expired = false;
            }
            Action::Exit => {
                assert_eq!(shim.alive, None, "exit with a child alive");
                assert_ne!(self.holder, Some(s), "exit holding the lock");
                assert!(
                    !self.waiting.contains(&s),
                    "exit while waiting for the lock"
                );
                shim.exited = true;
            }
            Action::Notify(_) => {}
        }
    }

    fn check_invariants(&self) {
        for (s, shim) in self.shims.iter().enumerate() {
            if shim.lost.is_some() {
                assert!(
                    shim.alive.is_some(),
                    "a lost lock outlived its engine in the model"
                );
            }
            assert_eq!(shim.gate.alive(), shim.alive, "gate and world disagree");
            if shim.alive.is_some() && !shim.killed {
                assert_eq!(self.holder, Some(s), "a live child without the lock");
            }
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Chain(release) => self.chain.push(match release {
                Some((major, minor)) => Ok(SemVer::new(major, minor, 0)),
                None => Err(ReleaseError::Unset),
            }),
            Op::Deliver(s) => self.deliver(s),
            Op::Crash(s, uptime) => {
                let Some(shim) = self.shims.get_mut(s) else {
                    return;
                };
                if let (Some(engine), false, false) = (shim.alive, shim.stop_requested, shim.killed)
                {
                    shim.alive = None;
                    if let Some(covers) = shim.replaced[engine].take() {
                        shim.engines[engine] = covers;
                    }
                    let status = "signal: 9".to_string();
                    let uptime = Duration::from_secs(uptime);
                    self.feed(
                        s,
                        Event::ChildExited {
                            engine,
                            uptime,
                            status,
                        },
                    );
                }
            }
            Op::StopCompletes(s) => self.complete_stop(s),
            Op::Grant(usable) => {
                if self.holder.is_none() {
                    if let Some(s) = self.waiting.pop_front() {
                        self.holder = Some(s);
                        self.holder_expired = !usable;
                        let grant = if usable {
                            Grant::Usable
                        } else {
                            Grant::Expired
                        };
                        self.feed(s, Event::LockGranted(grant));
                    }
                }
            }
            Op::Lose(s, late) => {
                if self.holder != Some(s) || self.holder_expired || self.shims[s].lost.is_some() {
                    return;
                }
                // Noticed late (the process was paused): the deadline has passed already, and
                // the lease may go to someone else as soon as this shim has acted on it.
                let lost = if late {
                    Lost {
                        kill_by: self.now,
                        lease_free_at: self.now,
                    }
                } else {
                    Lost {
                        kill_by: self.now + MODEL_KILL_WITHIN,
                        lease_free_at: self.now + MODEL_LEASE_FREE_AFTER,
                    }
                };
                if self.shims[s].alive.is_some() {
                    self.shims[s].lost = Some(lost);
                } else {
                    self.holder = None;
                }
                let reason = "lease expired".to_string();
                let kill_by = lost.kill_by;
                self.feed(s, Event::LockLost { reason, kill_by });
                if late {
                    self.expire_lease(s);
                }
            }
            Op::LeaseExpires(s) => self.expire_lease(s),
            Op::HandOff(s) => {
                if s < self.shims.len() && !self.shims[s].exited {
                    if !self.shims[s].shutting_down {
                        self.shims[s].handed_off_at = Some(self.now);
                    }
                    self.feed(s, Event::HandOff);
                }
            }
            Op::Advance(ms) => self.now += Duration::from_millis(ms),
            Op::Tick(s) => {
                if self.shims.get(s).is_some_and(|sh| !sh.exited) {
                    self.feed(s, Event::Tick);
                }
            }
            Op::HeadAnswers(s, ok) => {
                let Some(engine) = self.shims.get_mut(s).and_then(|sh| sh.head_check.take()) else {
                    return;
                };
                // The node's finalized head is the end of the chain, wherever this shim's
                // follower is.
                let answer = match (ok, self.chain.last()) {
                    (true, Some(Ok(release))) => Ok((block(self.chain.len() as u64), *release)),
                    (true, Some(Err(error))) => Err(error.to_string()),
                    (true, None) => Err("no block yet".to_string()),
                    (false, _) => Err("node unreachable".to_string()),
                };
                self.feed(s, Event::HeadRelease { engine, answer });
            }
            Op::Replace(s, engine, k) => {
                let Some(shim) = self.shims.get_mut(s).filter(|sh| !sh.exited) else {
                    return;
                };
                if engine >= shim.engines.len() {
                    return;
                }
                let new = covers(ENGINES[k]);
                if shim.alive == Some(engine) {
                    shim.replaced[engine] = Some(new.clone());
                } else {
                    shim.replaced[engine] = None;
                    shim.engines[engine] = new.clone();
                }
                self.feed(
                    s,
                    Event::EngineReplaced {
                        engine,
                        covers: new,
                    },
                );
            }
            Op::Shutdown(s) => {
                if let Some(shim) = self.shims.get_mut(s).filter(|sh| !sh.exited) {
                    shim.shutting_down = true;
                    self.feed(s, Event::Shutdown { signal: "SIGTERM" });
                }
            }
        }
    }

    /// The database lets a lost lease go once its time is up. The fenced shim's timer has fired
    /// by then (perhaps late, after other events): the gate must have killed its engine.
    fn expire_lease(&mut self, s: usize) {
        let Some(lost) = self.shims.get(s).and_then(|sh| sh.lost) else {
            return;
        };
        if self.now < lost.lease_free_at {
            return;
        }
        if !self.shims[s].exited {
            self.feed(s, Event::Tick);
        }
        let shim = &mut self.shims[s];
        assert!(
            shim.alive.is_none() || shim.killed,
            "the lease ran out with the fenced engine still able to run"
        );
        if shim.lost.take().is_some() && self.holder == Some(s) {
            self.holder = None;
        }
    }

    fn deliver(&mut self, s: usize) {
        let Some(shim) = self.shims.get_mut(s).filter(|sh| !sh.exited) else {
            return;
        };
        let Some(release) = self.chain.get(shim.cursor).cloned() else {
            return;
        };
        shim.cursor += 1;
        if let Ok(r) = release {
            shim.last_known = Some(r);
        }
        let number = shim.cursor as u64;
        self.feed(
            s,
            Event::Block {
                block: block(number),
                release,
            },
        );
    }

    fn complete_stop(&mut self, s: usize) {
        let Some(shim) = self.shims.get_mut(s) else {
            return;
        };
        if let (Some(engine), true) = (shim.alive, shim.stop_requested || shim.killed) {
            shim.alive = None;
            shim.stop_requested = false;
            shim.killed = false;
            if let Some(covers) = shim.replaced[engine].take() {
                shim.engines[engine] = covers;
            }
            if shim.lost.take().is_some() && self.holder == Some(s) {
                // The fenced engine is dead: only now may the lock pass to someone else.
                self.holder = None;
            }
            self.feed(s, exited(engine, 1));
        }
    }

    /// Lets every pending thing happen until nothing changes: blocks, stops, answers, grants,
    /// and time running on to every deadline.
    fn settle(&mut self) {
        for _ in 0..(self.chain.len() + 8) * 4 {
            for s in 0..self.shims.len() {
                self.deliver(s);
                self.complete_stop(s);
                self.run(Op::HeadAnswers(s, true));
                self.expire_lease(s);
            }
            self.run(Op::Grant(true));
            let next = self
                .shims
                .iter()
                .filter(|sh| !sh.exited)
                .filter_map(|sh| sh.gate.next_deadline())
                .min();
            if let Some(next) = next {
                self.now = self.now.max(next);
                for s in 0..self.shims.len() {
                    self.run(Op::Tick(s));
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Never two engines alive (within a shim or across shims), never a start without the lock,
    /// on an expired grant or on an unknown release, a fenced engine killed by its deadline, no
    /// lock asked for within a stand-by, and once the chain settles exactly the compatible
    /// engine runs.
    #[test]
    fn model_check_one_or_two_shims_sharing_a_lock(
        engine_sets in proptest::collection::vec(engines_strategy(), 1..=2),
        ops in proptest::collection::vec(op_strategy(), 1..120),
    ) {
        let mut world = World::new(engine_sets);
        for op in ops {
            world.run(op);
        }
        world.settle();
        let Some(release) = world.chain.iter().rev().find_map(|r| r.clone().ok()) else {
            prop_assert!(world.shims.iter().all(|s| s.alive.is_none()), "started on nothing known");
            return Ok(());
        };
        let candidates: Vec<(usize, EngineId)> = world
            .shims
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.shutting_down)
            .flat_map(|(i, s)| {
                s.engines
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.compare(Rule::MajorMinor, release) == Compatibility::Compatible)
                    .map(move |(e, _)| (i, e))
            })
            .collect();
        let running: Vec<(usize, EngineId)> = world
            .shims
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.alive.map(|e| (i, e)))
            .collect();
        let shutting_down_holder = world.holder.is_some_and(|h| world.shims[h].shutting_down);
        // An engine that exited while the release at the head is unknown is not restarted until
        // the node can confirm it; one that never exited keeps running.
        let head_unknown = world.chain.last().is_some_and(|r| r.is_err());
        if candidates.is_empty() || shutting_down_holder {
            prop_assert!(running.is_empty(), "ran {running:?} with nothing compatible with {release}");
        } else if head_unknown {
            prop_assert!(running.len() <= 1, "ran {:?}", running);
            prop_assert!(running.iter().all(|r| candidates.contains(r)), "ran {:?} for release {}", running, release);
        } else {
            prop_assert_eq!(running.len(), 1, "settled on {:?} for release {}", running, release);
            prop_assert!(candidates.contains(&running[0]), "settled on {:?} for release {}", running, release);
        }
    }
}
