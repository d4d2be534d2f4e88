//! The gate's stories and its model check.

use super::*;
use crate::block::BlockHash;
use proptest::prelude::*;

const WAIT_EVERY: Duration = Duration::from_secs(60);
const START_SECS: Duration = Duration::from_secs(10);

fn v(s: &str) -> SemVer {
    s.parse().unwrap()
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
        now: Duration::from_secs(number * 6),
    }
}

fn bad(number: u64, error: ReleaseError) -> Event {
    Event::Block {
        block: block(number),
        release: Err(error),
        now: Duration::from_secs(number * 6),
    }
}

fn exited(engine: EngineId, uptime_secs: u64) -> Event {
    Event::ChildExited {
        engine,
        uptime: Duration::from_secs(uptime_secs),
        status: "exit status: 0".into(),
    }
}

fn gate(engines: &[&str]) -> Gate {
    Gate::new(
        engines.iter().map(|e| v(e)).collect(),
        Rule::MajorMinor,
        WAIT_EVERY,
        START_SECS,
    )
}

/// The actions without the notices, which most stories do not care about.
fn commands(actions: Vec<Action>) -> Vec<Action> {
    actions
        .into_iter()
        .filter(|a| !matches!(a, Action::Notify(_)))
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
        commands(g.step(at(5, "1.0.3"))),
        [Action::Start {
            engine: 0,
            block: block(5)
        }]
    );
    assert_eq!(commands(g.step(at(6, "1.0.3"))), []);
}

#[test]
fn newer_engine_waits_then_starts_on_the_upgrade_block() {
    let mut g = gate(&["1.1.0"]);
    let first = g.step(at(1, "1.0.0"));
    assert!(matches!(
        notices(&first)[..],
        [Notice::Waiting { .. }, Notice::NoCompatibleEngine { .. }]
    ));
    assert_eq!(commands(first), []);
    // Not per block: the next block within the interval says nothing.
    assert!(g.step(at(2, "1.0.0")).is_empty());
    assert_eq!(
        commands(g.step(at(3, "1.1.0"))),
        [Action::Start {
            engine: 0,
            block: block(3)
        }]
    );
}

#[test]
fn waiting_line_repeats_at_the_interval() {
    let mut g = gate(&["1.1.0"]);
    assert!(!g.step(at(1, "1.0.0")).is_empty());
    // Blocks are 6 s apart in these stories: block 11 is exactly 60 s after block 1.
    for n in 2..11 {
        assert!(g.step(at(n, "1.0.0")).is_empty(), "block {n}");
    }
    assert!(matches!(
        notices(&g.step(at(11, "1.0.0")))[..],
        [Notice::Waiting { .. }, Notice::NoCompatibleEngine { .. }]
    ));
}

#[test]
fn old_engine_stops_and_idles_when_no_longer_compatible() {
    let mut g = gate(&["1.0.0"]);
    g.step(at(1, "1.0.0"));
    let actions = g.step(at(2, "1.1.0"));
    assert!(matches!(
        notices(&actions)[..],
        [Notice::NoLongerCompatible { .. }]
    ));
    assert_eq!(commands(actions), [Action::Stop { engine: 0 }]);
    let after_stop = g.step(exited(0, 100));
    // Said once, not again when the stop completes.
    assert!(matches!(
        notices(&after_stop)[..],
        [Notice::Stopped { .. }, Notice::NoCompatibleEngine { .. }]
    ));
    assert_eq!(commands(after_stop), []);
    assert_eq!(g.alive(), None);
    assert_eq!(commands(g.step(at(3, "1.1.0"))), []);
}

#[test]
fn shim_started_after_the_upgrade_says_no_longer_compatible_once() {
    let mut g = gate(&["1.0.0"]);
    let first = g.step(at(1, "1.1.0"));
    assert!(matches!(
        notices(&first)[..],
        [
            Notice::NoLongerCompatible { .. },
            Notice::NoCompatibleEngine { .. }
        ]
    ));
    assert_eq!(commands(first), []);
    assert!(g.step(at(2, "1.1.0")).is_empty());
}

#[test]
fn hand_over_waits_for_the_stop_to_complete() {
    let mut g = gate(&["1.0.0", "1.1.0"]);
    g.step(at(1, "1.0.0"));
    assert_eq!(
        commands(g.step(at(7, "1.1.0"))),
        [Action::Stop { engine: 0 }]
    );
    // More blocks while the old engine is still stopping start nothing.
    assert_eq!(commands(g.step(at(8, "1.1.0"))), []);
    assert_eq!(
        commands(g.step(exited(0, 100))),
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
        g.step(at(1, "1.0.0"));
        let actions = g.step(bad(2, error.clone()));
        assert!(matches!(
            notices(&actions)[..],
            [Notice::ReleaseUnknown { .. }]
        ));
        assert_eq!(commands(actions), []);
        assert_eq!(g.alive(), Some(0));
        // Idle never starts on it.
        let mut g = gate(&["1.0.0"]);
        assert_eq!(commands(g.step(bad(1, error))), []);
        assert_eq!(g.alive(), None);
    }
}

#[test]
fn crash_restarts_with_back_off() {
    let mut g = gate(&["1.0.0"]);
    g.step(at(1, "1.0.0"));
    assert_eq!(
        commands(g.step(exited(0, 0))),
        [Action::ScheduleRestart {
            engine: 0,
            after: Duration::from_secs(1)
        }]
    );
    assert_eq!(
        commands(g.step(Event::RestartDue { engine: 0 })),
        [Action::Start {
            engine: 0,
            block: block(1)
        }]
    );
    assert_eq!(
        commands(g.step(exited(0, 0))),
        [Action::ScheduleRestart {
            engine: 0,
            after: Duration::from_secs(2)
        }]
    );
}

#[test]
fn pending_restart_is_dropped_when_the_release_moves_on() {
    let mut g = gate(&["1.0.0"]);
    g.step(at(1, "1.0.0"));
    g.step(exited(0, 0));
    g.step(at(2, "1.1.0"));
    assert_eq!(commands(g.step(Event::RestartDue { engine: 0 })), []);
    assert_eq!(g.alive(), None);
}

#[test]
fn shutdown_stops_then_exits() {
    let mut g = gate(&["1.0.0"]);
    g.step(at(1, "1.0.0"));
    assert_eq!(
        commands(g.step(Event::Shutdown)),
        [Action::Stop { engine: 0 }]
    );
    assert_eq!(commands(g.step(at(2, "1.0.0"))), []);
    assert_eq!(commands(g.step(exited(0, 5))), [Action::Exit]);
    let mut idle = gate(&["1.1.0"]);
    idle.step(at(1, "1.0.0"));
    assert_eq!(commands(idle.step(Event::Shutdown)), [Action::Exit]);
}

#[test]
fn rollback_hands_back() {
    let mut g = gate(&["1.0.0", "1.1.0"]);
    g.step(at(1, "1.1.0"));
    let actions = g.step(at(2, "1.0.0"));
    assert!(matches!(
        notices(&actions)[..],
        [Notice::ReleaseMovedBack { .. }]
    ));
    assert_eq!(commands(actions), [Action::Stop { engine: 1 }]);
    assert_eq!(
        commands(g.step(exited(1, 50))),
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
    g.step(at(1, "1.0.0"));
    g.step(at(4, "1.1.0"));
    for n in 5..10 {
        g.step(at(n, "1.1.0"));
    }
    assert_eq!(
        commands(g.step(exited(0, 100))),
        [Action::Start {
            engine: 1,
            block: block(4)
        }]
    );
}

/// A model of the outside world for random event sequences: which child is alive, which stop and
/// restart requests are outstanding.
#[derive(Default)]
struct World {
    alive: Option<EngineId>,
    stop_requested: bool,
    restart_pending: Option<EngineId>,
    exited: bool,
}

#[derive(Debug, Clone)]
enum Step {
    Release(u64, Option<(u8, u8)>),
    Crash(u64),
    StopCompletes,
    RestartFires,
    Shutdown,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..100, proptest::option::weighted(0.8, (1u8..4, 0u8..4))).prop_map(|(t, r)| Step::Release(t, r)),
        1 => (0u64..30).prop_map(Step::Crash),
        2 => Just(Step::StopCompletes),
        2 => Just(Step::RestartFires),
        1 => Just(Step::Shutdown),
    ]
}

/// Applies the gate's commands to the world, checking the safety properties as it goes.
fn apply(
    world: &mut World,
    g: &Gate,
    last_known: Option<SemVer>,
    engines: &[SemVer],
    actions: Vec<Action>,
) {
    for action in actions {
        match action {
            Action::Start { engine, .. } => {
                assert_eq!(
                    world.alive, None,
                    "started {engine} while {:?} is alive",
                    world.alive
                );
                let release = last_known.expect("started without a known release");
                assert_eq!(
                    Rule::MajorMinor.compare(engines[engine], release),
                    Compatibility::Compatible,
                    "started an engine incompatible with the last known release"
                );
                world.alive = Some(engine);
                world.stop_requested = false;
            }
            Action::Stop { engine } => {
                assert_eq!(
                    world.alive,
                    Some(engine),
                    "stopped an engine that is not alive"
                );
                world.stop_requested = true;
            }
            Action::ScheduleRestart { engine, .. } => world.restart_pending = Some(engine),
            Action::Exit => {
                assert_eq!(world.alive, None, "exit with a child alive");
                world.exited = true;
            }
            Action::Notify(_) => {}
        }
    }
    assert_eq!(
        g.alive(),
        world.alive,
        "gate and world disagree on the live child"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_two_children_never_on_unknown_release_and_settles_on_the_target(
        steps in proptest::collection::vec(step_strategy(), 1..80)
    ) {
        let engines = vec![v("1.0.0"), v("1.1.0"), v("2.0.0")];
        let mut g = Gate::new(engines.clone(), Rule::MajorMinor, WAIT_EVERY, START_SECS);
        let mut world = World::default();
        let mut last_known: Option<SemVer> = None;
        let mut number = 0;
        for step in steps {
            if world.exited { break; }
            let actions = match step {
                Step::Release(secs, release) => {
                    number += 1;
                    let release = match release {
                        Some((major, minor)) => Ok(SemVer::new(major, minor, 0)),
                        None => Err(ReleaseError::Unset),
                    };
                    if let Ok(r) = release { last_known = Some(r); }
                    g.step(Event::Block { block: block(number), release, now: Duration::from_secs(secs) })
                }
                Step::Crash(uptime) => match world.alive {
                    Some(engine) if !world.stop_requested => {
                        world.alive = None;
                        g.step(Event::ChildExited { engine, uptime: Duration::from_secs(uptime), status: "signal: 9".into() })
                    }
                    _ => continue,
                },
                Step::StopCompletes => match world.alive {
                    Some(engine) if world.stop_requested => {
                        world.alive = None;
                        world.stop_requested = false;
                        g.step(exited(engine, 1))
                    }
                    _ => continue,
                },
                Step::RestartFires => match world.restart_pending.take() {
                    Some(engine) => g.step(Event::RestartDue { engine }),
                    None => continue,
                },
                Step::Shutdown => g.step(Event::Shutdown),
            };
            apply(&mut world, &g, last_known, &engines, actions);
        }
        if world.exited { return Ok(()); }
        // Let the world settle: complete stops, fire restarts, then one more block of the last release.
        for _ in 0..4 {
            if let Some(engine) = world.alive.filter(|_| world.stop_requested) {
                world.alive = None;
                let actions = g.step(exited(engine, 1));
                apply(&mut world, &g, last_known, &engines, actions);
            }
            if let Some(engine) = world.restart_pending.take() {
                let actions = g.step(Event::RestartDue { engine });
                apply(&mut world, &g, last_known, &engines, actions);
            }
        }
        if world.exited { return Ok(()); }
        let expected = last_known.and_then(|r| engines.iter().position(|&e| Rule::MajorMinor.compare(e, r) == Compatibility::Compatible));
        if !world.stop_requested && world.restart_pending.is_none() && !g.shutting_down {
            prop_assert_eq!(world.alive, expected, "settled on the wrong engine (last known {:?})", last_known);
        }
    }
}
