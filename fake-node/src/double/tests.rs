use super::*;
use engine_shim::block::BlockHash;

fn v(s: &str) -> SemVer {
    s.parse().unwrap()
}

fn block(number: u64) -> BlockRef {
    BlockRef {
        number,
        hash: BlockHash([number as u8; 32]),
    }
}

/// Feeds `releases` as blocks 1, 2, …; returns every action, in order.
fn run(double: &mut Double, releases: &[&str]) -> Vec<Action> {
    releases
        .iter()
        .enumerate()
        .flat_map(|(i, r)| double.step(block(i as u64 + 1), &Ok(v(r))))
        .collect()
}

fn is_print(action: &Action) -> bool {
    matches!(action, Action::Print(_) | Action::PrintErr(_))
}

fn lines(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Print(line) => Some(line.clone()),
            Action::PrintErr(line) => Some(format!("[stderr] {line}")),
            _ => None,
        })
        .collect()
}

fn effects(actions: &[Action]) -> Vec<Action> {
    actions.iter().filter(|a| !is_print(a)).cloned().collect()
}

#[test]
fn one_version_waits_per_block_starts_at_the_upgrade_and_exits_at_the_next() {
    let mut double = Double::new(Covers::One(v("1.1.0")));
    let actions = run(
        &mut double,
        &["1.0.0", "1.0.0", "1.1.0", "1.1.3", "1.2.0", "1.2.0"],
    );
    assert_eq!(
        lines(&actions),
        vec![
            waiting_line(v("1.1.0"), v("1.0.0"), block(1).hash),
            waiting_line(v("1.1.0"), v("1.0.0"), block(2).hash),
            no_longer_line(v("1.1.0"), v("1.2.0"), block(5).hash),
        ]
    );
    assert_eq!(
        effects(&actions),
        vec![
            Action::Start {
                version: v("1.1.0"),
                block: block(3)
            },
            Action::Exit {
                version: v("1.1.0"),
                block: block(5),
                release: v("1.2.0")
            },
        ]
    );
}

#[test]
fn one_version_started_after_its_release_exits_at_once() {
    let mut double = Double::new(Covers::One(v("1.0.0")));
    let actions = run(&mut double, &["1.1.0"]);
    assert_eq!(
        actions.last(),
        Some(&Action::Exit {
            version: v("1.0.0"),
            block: block(1),
            release: v("1.1.0")
        })
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Start { .. })));
}

#[test]
fn an_unknown_release_never_starts_anything_and_never_stops_a_running_engine() {
    let mut double = Double::new(Covers::One(v("1.0.0")));
    let unset = double.step(block(1), &Err(ReleaseError::Unset));
    assert!(unset.iter().all(is_print), "{unset:?}");
    assert!(lines(&unset)[0].contains("WAITING for a known release"));
    assert_eq!(double.active(), None);
    double.step(block(2), &Ok(v("1.0.0")));
    let absent = double.step(block(3), &Err(ReleaseError::Absent));
    assert!(absent.iter().all(is_print), "{absent:?}");
    assert_eq!(double.active(), Some(v("1.0.0")));
}

#[test]
fn runner_runs_old_switches_to_new_in_place_and_exits_when_the_release_leaves_the_pair() {
    let mut double = Double::new(Covers::Runner {
        old: v("2.2.8"),
        new: v("2.3.0"),
    });
    let actions = run(
        &mut double,
        &["2.2.0", "2.2.0", "2.3.0", "2.3.0", "2.4.0", "2.4.0"],
    );
    assert_eq!(
        effects(&actions),
        vec![
            Action::Start {
                version: v("2.2.8"),
                block: block(1)
            },
            Action::Switch {
                from: v("2.2.8"),
                to: v("2.3.0"),
                block: block(3)
            },
            Action::Exit {
                version: v("2.3.0"),
                block: block(5),
                release: v("2.4.0")
            },
        ]
    );
    assert_eq!(
        lines(&actions),
        vec![
            "The new version has exited with exit status: ExitStatus { status_code: 2, at_block: 0 }",
            "The latest version 2.3.0 is not yet compatible. Running the old version 2.2.8...",
            "Old version has exited with exit status: ExitStatus { status_code: 1, at_block: 3 }",
            "Switching to the new version 2.3.0 after the old version 2.2.8 is no longer compatible.",
            "[stderr] Error: New version has exited with exit status: ExitStatus { status_code: 1, at_block: 5 }",
        ]
    );
}

#[test]
fn runner_started_on_its_new_release_asks_for_an_update_at_the_next() {
    let mut double = Double::new(Covers::Runner {
        old: v("2.2.8"),
        new: v("2.3.0"),
    });
    let actions = run(&mut double, &["2.3.0", "2.4.0"]);
    assert_eq!(
        lines(&actions),
        vec![
            "The new version has exited with exit status: ExitStatus { status_code: 1, at_block: 2 }"
                .to_string(),
            format!("[stderr] Error: {UPDATE_YOUR_CFE}"),
        ]
    );
    assert!(matches!(actions.last(), Some(Action::Exit { .. })));
}

#[test]
fn runner_started_after_its_pair_asks_for_an_update_without_starting() {
    let mut double = Double::new(Covers::Runner {
        old: v("2.2.8"),
        new: v("2.3.0"),
    });
    let actions = run(&mut double, &["2.4.0"]);
    assert_eq!(
        effects(&actions),
        vec![Action::Exit {
            version: v("2.3.0"),
            block: block(1),
            release: v("2.4.0")
        }]
    );
    assert_eq!(
        lines(&actions)[1],
        format!("[stderr] Error: {UPDATE_YOUR_CFE}")
    );
}

#[test]
fn runner_started_before_its_pair_exits_with_the_old_versions_error() {
    let mut double = Double::new(Covers::Runner {
        old: v("2.2.8"),
        new: v("2.3.0"),
    });
    let actions = run(&mut double, &["2.1.0"]);
    assert_eq!(
        lines(&actions).last().unwrap(),
        "[stderr] Error: An error has occurred running the old version with exit status: ExitStatus { status_code: 2, at_block: 0 }"
    );
    assert_eq!(
        effects(&actions),
        vec![Action::Exit {
            version: v("2.2.8"),
            block: block(1),
            release: v("2.1.0")
        }]
    );
}

#[test]
fn runner_whose_release_skips_past_new_while_old_runs_exits_at_that_block() {
    let mut double = Double::new(Covers::Runner {
        old: v("2.2.8"),
        new: v("2.3.0"),
    });
    let actions = run(&mut double, &["2.2.0", "2.4.0"]);
    assert_eq!(
        effects(&actions)[1],
        Action::Exit {
            version: v("2.3.0"),
            block: block(2),
            release: v("2.4.0")
        }
    );
}

#[test]
fn nothing_happens_after_an_exit() {
    let mut double = Double::new(Covers::One(v("1.0.0")));
    run(&mut double, &["1.0.0", "1.1.0"]);
    assert_eq!(double.step(block(9), &Ok(v("1.0.0"))), Vec::new());
    assert_eq!(double.active(), None);
}

#[test]
fn the_runner_reports_only_its_new_version() {
    let covers = Covers::Runner {
        old: v("2.2.8"),
        new: v("2.3.0"),
    };
    assert_eq!(covers.reported(), v("2.3.0"));
}
