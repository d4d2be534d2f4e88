//! Chaos: seeded random runs of everything that can happen around a hand-over — release flips among
//! 1.0, 1.1, 1.2 (and 1.3, which nothing fits), finality stalls and jumps, dropped node connections,
//! engines crashing (SIGKILL), a shim SIGKILLed and started again, engines slow to stop or deaf to
//! SIGTERM — on one shim with three engines or on two shims sharing the data directory and the lock.
//!
//! Every run asserts the two promises: never two engines alive on one data directory (no
//! `lock_failed` from fake-engine, and no overlap between lives seen in the events or through /proc),
//! and once the chain settles, exactly the compatible engine runs and every other one idles.
//!
//! `CHAOS_SEED` (decimal or 0x-hex) fixes the seed (default: from the clock, printed), `CHAOS_RUNS`
//! the number of runs (default 200), `CHAOS_JOBS` how many run at once (default 3), and
//! `CHAOS_ONLY=N` replays run N of a seed alone. A failure prints the seed, the run and its ops.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{kill_engine, sample_alive, unix_nanos_now, wait_gone, Host, Node, Shim};
use rustix::process::Signal;

/// The versions engines may have, and the releases the chain may carry. 1.3.0 fits no engine;
/// 1.9.0 is kept for the settle marker (see [`settle`]).
const VERSIONS: [&str; 3] = ["1.0.0", "1.1.0", "1.2.0"];
const RELEASES: [&str; 4] = ["1.0.0", "1.1.0", "1.2.0", "1.3.0"];
const MARKER_RELEASE: &str = "1.9.0";

/// The grace every shim gives a stopping engine: short, so deaf engines are killed quickly.
const GRACE: &str = "300ms";

// ---------------------------------------------------------------------------------------------
// A small deterministic PRNG (splitmix64): the same seed gives the same runs on every machine.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The seed of run `index`, so any run can be replayed alone.
fn run_seed(seed: u64, index: usize) -> u64 {
    Rng::new(seed ^ (index as u64).wrapping_mul(0xd1b5_4a32_d192_ed03)).next_u64()
}

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

/// How an engine version behaves when asked to stop.
#[derive(Debug, Clone, Copy)]
enum Stopping {
    /// Stops after this many milliseconds (within the grace).
    After(u64),
    /// Takes longer than the grace: killed.
    TooSlow,
    /// Ignores SIGTERM: killed after the grace.
    Deaf,
}

impl Stopping {
    fn flags(self) -> Vec<String> {
        match self {
            Stopping::After(ms) => vec!["--shutdown-delay".into(), format!("{ms}ms")],
            Stopping::TooSlow => vec!["--shutdown-delay".into(), "450ms".into()],
            Stopping::Deaf => vec!["--ignore-term".into()],
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
}

#[derive(Debug)]
struct Plan {
    layout: Layout,
    initial: &'static str,
    stopping: [Stopping; 3],
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
        let stopping = [(); 3].map(|_| match rng.below(10) {
            0 => Stopping::Deaf,
            1 => Stopping::TooSlow,
            _ => Stopping::After(rng.between(0, 250)),
        });
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
            ops,
            final_release,
        }
    }

    fn flags_of(&self, version: &str) -> Vec<String> {
        let i = VERSIONS.iter().position(|v| *v == version).unwrap();
        self.stopping[i].flags()
    }
}

// ---------------------------------------------------------------------------------------------
// Running a plan

/// What a run did and saw, kept outside the run so a failure can print it.
#[derive(Default)]
struct Trace {
    lines: Vec<String>,
    /// Moments an engine was seen alive (pid, unix nanos taken before looking).
    seen_alive: Vec<(u32, u128)>,
}

type SharedTrace = Arc<Mutex<Trace>>;

fn note(trace: &SharedTrace, line: String) {
    trace.lock().unwrap().lines.push(line);
}

/// Records which engines run right now, as evidence for the overlap check: two engines seen alive
/// at one moment (the later one already started) is an overlap even if neither wrote a `stop`.
fn observe(host: &Host, trace: &SharedTrace) {
    let started = host
        .events()
        .into_iter()
        .filter(|e| e.event == "start")
        .map(|e| e.pid);
    let seen = sample_alive(started);
    trace.lock().unwrap().seen_alive.extend(seen);
}

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

/// Waits until `shim` has acted on its first block. Until then it knows no block to fill a gap
/// from: a shim whose first connection drops before that starts afresh from the node's head, which
/// is right, but would make the settle marker (a block it never saw) wait for nothing.
async fn seen_first_block(shim: &Shim) {
    const FIRST_BLOCK_LINES: [&str; 4] = [
        "starting engine",
        "no installed engine is compatible",
        "waiting for the lock",
        "acquired the lock",
    ];
    shim.wait_log(0, "a line showing the shim acted on its first block", |l| {
        FIRST_BLOCK_LINES.iter().any(|m| l.message().contains(m))
    })
    .await;
}

/// What a run exercised, summed over runs so a passing chaos test shows it did something.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    engine_starts: usize,
    engines_killed_after_grace: usize,
    crashes: usize,
    shims_killed: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.engine_starts += other.engine_starts;
        self.engines_killed_after_grace += other.engines_killed_after_grace;
        self.crashes += other.crashes;
        self.shims_killed += other.shims_killed;
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
            Op::CrashEngine => {
                for engine in host.alive() {
                    let seen = sample_alive([engine.pid]);
                    trace.lock().unwrap().seen_alive.extend(seen);
                    note(
                        &trace,
                        format!("  SIGKILL engine {} pid {}", engine.version, engine.pid),
                    );
                    kill_engine(engine.pid);
                    tally.crashes += 1;
                }
            }
            Op::KillShim(n) => {
                let n = n % shims.len();
                let versions = shims[n].versions.clone();
                let engines: Vec<u32> = host
                    .alive()
                    .iter()
                    .filter(|e| versions.contains(&e.version.as_str()))
                    .map(|e| e.pid)
                    .collect();
                let seen = sample_alive(engines.iter().copied());
                trace.lock().unwrap().seen_alive.extend(seen);
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
                let deadline = std::time::Instant::now() + common::TIMEOUT;
                loop {
                    let seen = sample_alive(engines.iter().copied());
                    if seen.is_empty() {
                        break;
                    }
                    trace.lock().unwrap().seen_alive.extend(seen);
                    assert!(
                        std::time::Instant::now() < deadline,
                        "an engine of SIGKILLed shim {n} outlived it: {engines:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let shim = spawn_shim(&host, &node, plan, &versions);
                seen_first_block(&shim).await;
                note(
                    &trace,
                    format!("  shim {n} started again: pid {}", shim.proc.pid()),
                );
                retired.push(std::mem::replace(&mut shims[n].shim, shim));
            }
            Op::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
        observe(&host, &trace);
    }

    settle(plan, &node, &host, &shims, &trace).await;

    // Stop every shim as systemd would; each exits 0 and leaves nothing running.
    for run_shim in &mut shims {
        run_shim.shim.proc.signal(Signal::TERM);
    }
    for (n, run_shim) in shims.iter_mut().enumerate() {
        let status = run_shim.shim.proc.wait_exit().await;
        assert!(status.success(), "shim {n} exited with {status} on SIGTERM");
    }
    for engine in common::read_events(&host.events) {
        if engine.event == "start" {
            wait_gone(engine.pid, &format!("engine {}", engine.version)).await;
        }
    }
    host.assert_no_lock_failed();
    let seen_alive = trace.lock().unwrap().seen_alive.clone();
    host.assert_lives_never_overlap(&seen_alive);
    let events = host.events();
    tally.engine_starts = events.iter().filter(|e| e.event == "start").count();
    tally.engines_killed_after_grace = shims
        .iter()
        .map(|s| &s.shim)
        .chain(&retired)
        .map(|s| s.count_messages("grace period: SIGKILL"))
        .sum();
    drop(retired);
    tally
}

/// Brings the chain to its final release in a way every shim must visibly act on, then checks that
/// exactly the compatible engine runs.
///
/// The release first moves to 1.9.0 (no engine fits: everything stops) at block S0, then to the
/// final release at S = S0 + 1. A shim with an engine for the final release must start it with
/// `{block}` = S; a shim without one must say so for a block ≥ S. Those lines and events can only
/// come after the shim processed S, so there is no guessing when the dust has settled.
async fn settle(plan: &Plan, node: &Node, host: &Host, shims: &[RunShim], trace: &SharedTrace) {
    let release = plan.final_release;
    node.stall_finality(false).await;
    node.set_release(MARKER_RELEASE).await;
    node.new_blocks(1).await;
    node.set_release(release).await;
    let hash = node.new_blocks(1).await;
    let s = node.block_number(&hash).await;
    node.new_blocks(2).await;
    note(trace, format!("settle: release {release} from block #{s}"));

    let mut expected = None;
    for (n, run_shim) in shims.iter().enumerate() {
        let fits = run_shim
            .versions
            .iter()
            .find(|v| v.split('.').take(2).eq(release.split('.').take(2)));
        match fits {
            Some(version) => {
                let started = host
                    .wait_events(
                        &format!("shim {n} to start {version} at block #{s}"),
                        |events| {
                            events.iter().any(|e| {
                                e.event == "start"
                                    && e.version == *version
                                    && e.start_block() == Some(s)
                            })
                        },
                    )
                    .await;
                let start = started
                    .iter()
                    .find(|e| {
                        e.event == "start" && e.version == *version && e.start_block() == Some(s)
                    })
                    .unwrap()
                    .clone();
                expected = Some(start);
            }
            None => {
                let prefix =
                    format!("no installed engine is compatible with release {release} at block #");
                run_shim
                    .shim
                    .wait_log(0, &format!("shim {n} to say nothing fits {release}"), |l| {
                        l.message()
                            .strip_prefix(&prefix)
                            .and_then(|rest| rest.split(' ').next())
                            .and_then(|number| number.parse::<u64>().ok())
                            .is_some_and(|number| number >= s)
                    })
                    .await;
            }
        }
    }

    observe(host, trace);
    let alive: Vec<(String, u32)> = host
        .alive()
        .iter()
        .map(|e| (e.version.clone(), e.pid))
        .collect();
    let want: Vec<(String, u32)> = expected
        .iter()
        .map(|e| (e.version.clone(), e.pid))
        .collect();
    assert_eq!(
        alive, want,
        "after settling on release {release}, exactly the compatible engine runs"
    );

    // One more block every shim must comment on, with what it runs: still the same.
    node.set_release_value(Some("0x0102")).await;
    let bad = node.new_blocks(1).await;
    let bad_number = node.block_number(&bad).await;
    for run_shim in shims {
        let state = match &expected {
            Some(e) if run_shim.versions.contains(&e.version.as_str()) => {
                format!("keeping engine {} running", e.version)
            }
            _ => "starting nothing".to_string(),
        };
        run_shim
            .shim
            .wait_message(
                0,
                &[
                    &format!("cannot use the release at block #{bad_number}"),
                    &state,
                ],
            )
            .await;
    }
    observe(host, trace);
    let alive: Vec<(String, u32)> = host
        .alive()
        .iter()
        .map(|e| (e.version.clone(), e.pid))
        .collect();
    assert_eq!(alive, want, "the settled state holds");
    host.assert_no_lock_failed();
}

// ---------------------------------------------------------------------------------------------
// The test

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={value}: {e}")))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_never_two_engines_and_settles_on_the_compatible_one() {
    let seed = env_u64("CHAOS_SEED").unwrap_or_else(|| (unix_nanos_now() as u64) ^ 0x5eed);
    let runs = env_u64("CHAOS_RUNS").unwrap_or(200) as usize;
    let jobs = env_u64("CHAOS_JOBS").unwrap_or(3).max(1) as usize;
    let only = env_u64("CHAOS_ONLY").map(|n| n as usize);
    let indices: Vec<usize> = match only {
        Some(n) => vec![n],
        None => (0..runs).collect(),
    };
    eprintln!("chaos: CHAOS_SEED={seed:#x} CHAOS_RUNS={runs} CHAOS_JOBS={jobs}");

    let mut pending = indices.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut runs_by_task = std::collections::HashMap::new();
    let mut failure: Option<String> = None;
    let mut done = 0;
    let mut tally = Tally::default();
    loop {
        while failure.is_none() && running.len() < jobs {
            let Some(index) = pending.next() else { break };
            let plan = Plan::draw(run_seed(seed, index), index);
            let trace = SharedTrace::default();
            let task_trace = trace.clone();
            let task = running.spawn(async move { run_plan(&plan, task_trace).await });
            runs_by_task.insert(task.id(), (index, trace));
        }
        let Some(joined) = running.join_next_with_id().await else {
            break;
        };
        let error = match joined {
            Ok((id, run_tally)) => {
                runs_by_task.remove(&id);
                done += 1;
                tally += run_tally;
                continue;
            }
            Err(error) => error,
        };
        let Some((index, trace)) = runs_by_task.remove(&error.id()) else {
            continue;
        };
        if error.is_cancelled() {
            continue; // aborted after another run failed
        }
        let why = match error.try_into_panic() {
            Ok(payload) => panic_message(payload.as_ref()),
            Err(error) => error.to_string(),
        };
        let plan = Plan::draw(run_seed(seed, index), index);
        let trace = trace.lock().unwrap();
        let report = format!(
            "chaos run {index} failed (replay: CHAOS_SEED={seed:#x} CHAOS_ONLY={index})\n\
             plan: {plan:#?}\nwhat happened:\n  {}\nfailure: {why}",
            trace.lines.join("\n  ")
        );
        eprintln!("{report}");
        failure.get_or_insert(report);
        running.abort_all();
    }
    if let Some(report) = failure {
        panic!("{report}");
    }
    eprintln!("chaos: {done} runs passed (CHAOS_SEED={seed:#x}); exercised: {tally:?}");
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
