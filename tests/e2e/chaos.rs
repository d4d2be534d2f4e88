//! Chaos: seeded random runs of everything that can happen around a hand-over — release flips among
//! 1.0, 1.1, 1.2 (and 1.3, which nothing fits), finality stalls and jumps, dropped node connections,
//! engines crashing (SIGKILL), a shim SIGKILLed and started again, engines slow to stop or deaf to
//! SIGTERM, engines that leave a helper behind holding the data directory (`setsid`), the lock file
//! deleted or replaced while held — on one shim with three engines or on two shims sharing the data
//! directory and the lock.
//!
//! Every run asserts the two promises: never two engines alive on one data directory (no
//! `lock_failed` from fake-engine, and no overlap between lives seen in the events or through /proc),
//! and once the chain settles, exactly the compatible engine runs and every other one idles.
//!
//! `CHAOS_SEED` (decimal or 0x-hex) fixes the seed (default: from the clock, printed), `CHAOS_RUNS`
//! the number of runs (default 200), `CHAOS_JOBS` how many run at once (default 3), and
//! `CHAOS_ONLY=N` replays run N of a seed alone. A failure prints the seed, the run and its ops.

use crate::common;

use std::time::Duration;

use crate::common::chaos::{
    bury, crash_engines, note, observe, record_seen, run_all, seen_first_block, settle, Rng,
    Settings, SettleShim, SharedTrace, Stopping,
};
use crate::common::{sample_alive, wait_gone, Host, Node, Shim};
use rustix::process::Signal;

/// The versions engines may have, and the releases the chain may carry. 1.3.0 fits no engine;
/// 1.9.0 is kept for the settle marker (see [`settle`]).
const VERSIONS: [&str; 3] = ["1.0.0", "1.1.0", "1.2.0"];
const RELEASES: [&str; 4] = ["1.0.0", "1.1.0", "1.2.0", "1.3.0"];

/// The grace every shim gives a stopping engine: short, so deaf engines are killed quickly.
const GRACE: &str = "300ms";

// ---------------------------------------------------------------------------------------------
// A run's plan, drawn up front from its seed.

/// How the engines are spread over shims on the one host.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// One shim with engines 1.0, 1.1 and 1.2 (the container recipe).
    OneShim,
    /// Two shims, 1.0 and 1.1, one engine each (the VPS recipe); 1.2 and 1.3 fit neither.
    TwoShims,
    /// One shim with 1.0 and 1.1, another with 1.2.
    Mixed,
}

impl Layout {
    fn shims(self) -> Vec<Vec<&'static str>> {
        match self {
            Layout::OneShim => vec![VERSIONS.to_vec()],
            Layout::TwoShims => vec![vec![VERSIONS[0]], vec![VERSIONS[1]]],
            Layout::Mixed => vec![vec![VERSIONS[0], VERSIONS[1]], vec![VERSIONS[2]]],
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Set the release, build one block carrying it, then let the hand-over run for a while
    /// (0 ms half the time, so flips also pile up on a hand-over still in progress).
    Flip(&'static str, u64),
    /// Build blocks.
    Build(u64),
    /// Stall finality, build `before` blocks, optionally flip the release and build `after`, then
    /// let finality jump to the head in one notification.
    FinalityJump {
        before: u64,
        flip: Option<&'static str>,
        after: u64,
    },
    /// Drop every connection to the node.
    DropConnections,
    /// SIGKILL whichever engine runs (a crash).
    CrashEngine,
    /// SIGKILL shim N (modulo the number of shims) and start it again.
    KillShim(usize),
    /// Let things happen for a while (varies the interleavings; nothing waits on it).
    Pause(u64),
    /// Delete the lock file (`rm`, as a tmp cleaner would), or replace it with a fresh file (`mv`).
    VanishLockFile { replace: bool },
}

#[derive(Debug)]
struct Plan {
    layout: Layout,
    initial: &'static str,
    stopping: [Stopping; 3],
    /// Which versions' engines leave a helper behind (`fake-engine --leave-helper`).
    helpers: [bool; 3],
    ops: Vec<Op>,
    final_release: &'static str,
}

impl Plan {
    fn draw(seed: u64, index: usize) -> Plan {
        let mut rng = Rng::new(seed);
        let layout = match index % 3 {
            0 => Layout::OneShim,
            1 => Layout::TwoShims,
            _ => Layout::Mixed,
        };
        let stopping = [(); 3].map(|_| Stopping::draw(&mut rng));
        let helpers = [(); 3].map(|_| rng.percent(30));
        let release = |rng: &mut Rng| {
            if rng.percent(10) {
                RELEASES[3]
            } else {
                rng.pick(&VERSIONS)
            }
        };
        let initial = release(&mut rng);
        let count = rng.between(5, 15);
        let ops = (0..count)
            .map(|_| match rng.below(100) {
                0..=29 => {
                    let release = release(&mut rng);
                    let pause = if rng.percent(50) {
                        0
                    } else {
                        rng.between(10, 200)
                    };
                    Op::Flip(release, pause)
                }
                30..=39 => Op::Build(rng.between(1, 3)),
                40..=54 => Op::FinalityJump {
                    before: rng.between(0, 2),
                    flip: rng.percent(70).then(|| release(&mut rng)),
                    after: rng.between(1, 2),
                },
                55..=64 => Op::DropConnections,
                65..=74 => Op::CrashEngine,
                75..=84 => Op::KillShim(rng.below(2) as usize),
                85..=89 => Op::VanishLockFile {
                    replace: rng.percent(50),
                },
                _ => Op::Pause(rng.between(0, 300)),
            })
            .collect();
        let final_release = if rng.percent(15) {
            RELEASES[3]
        } else {
            rng.pick(&VERSIONS)
        };
        Plan {
            layout,
            initial,
            stopping,
            helpers,
            ops,
            final_release,
        }
    }

    fn flags_of(&self, version: &str) -> Vec<String> {
        let i = VERSIONS.iter().position(|v| *v == version).unwrap();
        let mut flags = self.stopping[i].flags();
        if self.helpers[i] {
            flags.push("--leave-helper".into());
        }
        flags
    }
}

// ---------------------------------------------------------------------------------------------
// Running a plan

/// A shim of the run and what it wraps, so it can be started again the same way.
struct RunShim {
    versions: Vec<&'static str>,
    shim: Shim,
}

fn spawn_shim(host: &Host, node: &Node, plan: &Plan, versions: &[&'static str]) -> Shim {
    let mut builder = host
        .shim(node)
        .shim_args(&["--grace", GRACE, "--start-secs", "100ms"]);
    for version in versions {
        let flags = plan.flags_of(version);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        builder = builder.engine_with(version, &flags);
    }
    builder.spawn()
}

/// What a run exercised, summed over runs so a passing chaos test shows it did something.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    engine_starts: usize,
    engines_killed_after_grace: usize,
    crashes: usize,
    shims_killed: usize,
    lock_files_vanished: usize,
    helpers_left: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.engine_starts += other.engine_starts;
        self.engines_killed_after_grace += other.engines_killed_after_grace;
        self.crashes += other.crashes;
        self.shims_killed += other.shims_killed;
        self.lock_files_vanished += other.lock_files_vanished;
        self.helpers_left += other.helpers_left;
    }
}

async fn run_plan(plan: &Plan, trace: SharedTrace) -> Tally {
    let mut tally = Tally::default();
    let node = Node::start(&["--release", plan.initial]).await;
    let host = Host::new();
    let mut shims: Vec<RunShim> = Vec::new();
    for versions in plan.layout.shims() {
        let shim = spawn_shim(&host, &node, plan, &versions);
        shims.push(RunShim { versions, shim });
    }
    for run_shim in &shims {
        seen_first_block(&run_shim.shim).await;
    }
    // Shims SIGKILLed along the way: kept until the end so dropping them kills nothing early.
    let mut retired: Vec<Shim> = Vec::new();

    for (step, op) in plan.ops.iter().enumerate() {
        note(&trace, format!("op {step}: {op:?}"));
        match *op {
            Op::Flip(release, pause) => {
                node.set_release(release).await;
                node.new_blocks(1).await;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Op::Build(count) => {
                node.new_blocks(count).await;
            }
            Op::FinalityJump {
                before,
                flip,
                after,
            } => {
                node.stall_finality(true).await;
                if before > 0 {
                    node.new_blocks(before).await;
                }
                if let Some(release) = flip {
                    node.set_release(release).await;
                    node.new_blocks(after).await;
                }
                node.stall_finality(false).await;
            }
            Op::DropConnections => node.drop_connections().await,
            Op::CrashEngine => tally.crashes += crash_engines(&host, &trace),
            Op::KillShim(n) => {
                let n = n % shims.len();
                let versions = shims[n].versions.clone();
                let engines: Vec<u32> = host
                    .alive()
                    .iter()
                    .filter(|e| versions.contains(&e.version.as_str()))
                    .map(|e| e.pid)
                    .collect();
                record_seen(&trace, sample_alive(engines.iter().copied()));
                note(
                    &trace,
                    format!(
                        "  SIGKILL shim {n} pid {} (its engines: {engines:?})",
                        shims[n].shim.proc.pid()
                    ),
                );
                shims[n].shim.proc.signal(Signal::KILL);
                tally.shims_killed += 1;
                shims[n].shim.proc.wait_exit().await;
                // Its engine must die with it; every sighting until then is evidence for the
                // overlap check.
                let what = format!("an engine of SIGKILLed shim {n} outlived it");
                bury(&engines, &trace, &what).await;
                let shim = spawn_shim(&host, &node, plan, &versions);
                seen_first_block(&shim).await;
                note(
                    &trace,
                    format!("  shim {n} started again: pid {}", shim.proc.pid()),
                );
                retired.push(std::mem::replace(&mut shims[n].shim, shim));
            }
            Op::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Op::VanishLockFile { replace } => {
                tally.lock_files_vanished += 1;
                if replace {
                    let fresh = host.dir.path().join("fresh.lock");
                    std::fs::write(&fresh, b"").unwrap();
                    std::fs::rename(&fresh, &host.lock).unwrap();
                } else {
                    // Absent already if nothing recreated it since the last deletion.
                    let _ = std::fs::remove_file(&host.lock);
                }
            }
        }
        observe(&host, &trace);
    }

    let settle_shims: Vec<SettleShim> = shims
        .iter()
        .map(|s| SettleShim {
            versions: &s.versions,
            shim: &s.shim,
        })
        .collect();
    settle(&node, &host, &settle_shims, plan.final_release, &trace).await;
    host.assert_no_lock_failed();

    // Stop every shim as systemd would; each exits 0 and leaves nothing running.
    for run_shim in &mut shims {
        run_shim.shim.proc.signal(Signal::TERM);
    }
    for (n, run_shim) in shims.iter_mut().enumerate() {
        let status = run_shim.shim.proc.wait_exit().await;
        assert!(status.success(), "shim {n} exited with {status} on SIGTERM");
    }
    for engine in common::read_events(&host.events) {
        match engine.event.as_str() {
            "start" => wait_gone(engine.pid, &format!("engine {}", engine.version)).await,
            // Its engine's guardian killed it before the shim exited: nothing may be left.
            "helper" => assert!(
                common::is_gone(engine.pid),
                "a helper of engine {} (pid {}) outlived its shim",
                engine.version,
                engine.pid
            ),
            _ => {}
        }
    }
    host.assert_no_lock_failed();
    let seen_alive = trace.lock().unwrap().seen_alive.clone();
    host.assert_lives_never_overlap(&seen_alive);
    let events = host.events();
    tally.engine_starts = events.iter().filter(|e| e.event == "start").count();
    tally.helpers_left = events.iter().filter(|e| e.event == "helper").count();
    tally.engines_killed_after_grace = shims
        .iter()
        .map(|s| &s.shim)
        .chain(&retired)
        .map(|s| s.count_messages("grace period: SIGKILL"))
        .sum();
    drop(retired);
    tally
}

// ---------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_never_two_engines_and_settles_on_the_compatible_one() {
    let settings = Settings::from_env("chaos", "CHAOS_RUNS", 200, "CHAOS_JOBS", 3);
    run_all(&settings, Plan::draw, |plan, trace| async move {
        run_plan(&plan, trace).await
    })
    .await;
}

/// The overlap check itself: it accuses lives that provably overlapped (a `stop`, or a sighting,
/// after another engine's `start`) and nothing else.
#[test]
fn overlap_check_accuses_only_proven_overlaps() {
    let event = |event: &str, version: &str, pid: u32, at: u64| common::EngineEvent {
        event: event.into(),
        version: version.into(),
        pid,
        args: Vec::new(),
        raw: serde_json::json!({ "unix_nanos": at }),
    };
    let handed_over = [
        event("start", "1.0.0", 10, 100),
        event("stop", "1.0.0", 10, 200),
        event("start", "1.1.0", 11, 300),
    ];
    assert!(common::overlapping_lives(&handed_over, &[]).is_empty());
    // Seen alive before it stopped, or before the next start: no overlap either.
    assert!(common::overlapping_lives(&handed_over, &[(10, 150), (11, 250)]).is_empty());
    // Seen alive after the next engine started: an overlap, even without a stop event.
    let killed = [
        event("start", "1.0.0", 10, 100),
        event("start", "1.1.0", 11, 300),
    ];
    assert!(common::overlapping_lives(&killed, &[]).is_empty());
    assert_eq!(common::overlapping_lives(&killed, &[(10, 301)]).len(), 1);
    // A stop written after the next start: an overlap.
    let interleaved = [
        event("start", "1.0.0", 10, 100),
        event("start", "1.1.0", 11, 300),
        event("stop", "1.0.0", 10, 400),
    ];
    assert_eq!(common::overlapping_lives(&interleaved, &[]).len(), 1);
}
