//! What the seeded chaos tests share: the deterministic PRNG and per-run seeds, the run loop
//! (`CHAOS_SEED`, `CHAOS_ONLY`, a runs and a jobs variable; a failure prints the seed, the run and
//! its plan), the trace a failing run prints, the ops both tests have (engine crash, shim SIGKILL),
//! and the settle step that ends every run by checking that exactly the compatible engine runs.
//!
//! A run's plan is drawn up front from its own seed ([`run_seed`]), so `CHAOS_SEED=S CHAOS_ONLY=N`
//! replays run N of seed S alone, on any machine.

use std::fmt::Debug;
use std::future::Future;
use std::ops::AddAssign;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{kill_engine, sample_alive, unix_nanos_now, EngineEvent, Host, Node, Shim, TIMEOUT};

/// A release no engine of the chaos tests fits: the settle step moves the chain to it first, so
/// every engine stops and the final release is news to every shim (see [`settle`]).
pub const MARKER_RELEASE: &str = "1.9.0";

// ---------------------------------------------------------------------------------------------
// A small deterministic PRNG (splitmix64): the same seed gives the same runs on every machine.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The seed of run `index`, so any run can be replayed alone.
pub fn run_seed(seed: u64, index: usize) -> u64 {
    Rng::new(seed ^ (index as u64).wrapping_mul(0xd1b5_4a32_d192_ed03)).next_u64()
}

// ---------------------------------------------------------------------------------------------
// Engines that stop in their own way

/// How an engine version behaves when asked to stop.
#[derive(Debug, Clone, Copy)]
pub enum Stopping {
    /// Stops after this many milliseconds (within the grace).
    After(u64),
    /// Takes longer than the grace: killed.
    TooSlow,
    /// Ignores SIGTERM: killed after the grace.
    Deaf,
}

impl Stopping {
    /// One in ten deaf, one in ten too slow, the rest stop within 0–250 ms.
    pub fn draw(rng: &mut Rng) -> Stopping {
        match rng.below(10) {
            0 => Stopping::Deaf,
            1 => Stopping::TooSlow,
            _ => Stopping::After(rng.between(0, 250)),
        }
    }

    /// fake-engine's flags for this behaviour, with a grace of 300 ms.
    pub fn flags(self) -> Vec<String> {
        match self {
            Stopping::After(ms) => vec!["--shutdown-delay".into(), format!("{ms}ms")],
            Stopping::TooSlow => vec!["--shutdown-delay".into(), "450ms".into()],
            Stopping::Deaf => vec!["--ignore-term".into()],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What a run did and saw

/// What a run did and saw, kept outside the run so a failure can print it.
#[derive(Default)]
pub struct Trace {
    pub lines: Vec<String>,
    /// Moments an engine was seen alive (pid, unix nanos taken before looking).
    pub seen_alive: Vec<(u32, u128)>,
}

pub type SharedTrace = Arc<Mutex<Trace>>;

pub fn note(trace: &SharedTrace, line: String) {
    trace.lock().unwrap().lines.push(line);
}

/// Adds sightings to the evidence for the overlap check.
pub fn record_seen(trace: &SharedTrace, seen: Vec<(u32, u128)>) {
    trace.lock().unwrap().seen_alive.extend(seen);
}

/// Records which engines run right now, as evidence for the overlap check: two engines seen alive
/// at one moment (the later one already started) is an overlap even if neither wrote a `stop`.
pub fn observe(host: &Host, trace: &SharedTrace) {
    let started = host
        .events()
        .into_iter()
        .filter(|e| e.event == "start")
        .map(|e| e.pid);
    record_seen(trace, sample_alive(started));
}

// ---------------------------------------------------------------------------------------------
// Ops both chaos tests have

/// Waits until `shim` has acted on its first block. Until then it knows no block to fill a gap
/// from: a shim whose first connection drops before that starts afresh from the node's head, which
/// is right, but would make the settle marker (a block it never saw) wait for nothing.
pub async fn seen_first_block(shim: &Shim) {
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

/// SIGKILLs whichever engine of `host` runs (a crash); returns how many it killed.
pub fn crash_engines(host: &Host, trace: &SharedTrace) -> usize {
    let mut crashes = 0;
    for engine in host.alive() {
        record_seen(trace, sample_alive([engine.pid]));
        note(
            trace,
            format!("  SIGKILL engine {} pid {}", engine.version, engine.pid),
        );
        kill_engine(engine.pid);
        crashes += 1;
    }
    crashes
}

/// Waits until every one of `engines` is gone; every sighting until then is evidence for the
/// overlap check. `what` names them for the timeout message.
pub async fn bury(engines: &[u32], trace: &SharedTrace, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seen = sample_alive(engines.iter().copied());
        if seen.is_empty() {
            return;
        }
        record_seen(trace, seen);
        assert!(Instant::now() < deadline, "{what}: {engines:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// /proc

/// The parent of `pid` (from `/proc/PID/stat`), if it still runs.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so cut at the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every process whose parent is `pid` now.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| parent_pid(child) == Some(pid))
        .collect()
}

/// Every process below `pid` now: its children, theirs, and so on.
pub fn descendants_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        let children = children_of(parent);
        next.extend(&children);
        found.extend(children);
    }
    found
}

/// The engines a shim runs now: each runs under a guardian, the shim's child.
pub fn engines_of_shim(shim: u32) -> Vec<u32> {
    children_of(shim)
        .into_iter()
        .flat_map(children_of)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Settling

/// A shim of a run as [`settle`] needs it: what it wraps, and its process.
pub struct SettleShim<'a> {
    pub versions: &'a [&'static str],
    pub shim: &'a Shim,
}

/// Brings the chain to `release` in a way every shim must visibly act on, then checks that
/// exactly the compatible engine runs; returns its start event (`None` if no engine fits).
///
/// The release first moves to [`MARKER_RELEASE`] (no engine fits: everything stops) at block S0,
/// then to `release` at S = S0 + 1. The shim that runs the engine for `release` must start it with
/// `{block}` = S (when several shims have it, one of them: whichever gets the lock); a shim without
/// one must say so for a block ≥ S. Those lines and events can only come after the shim processed
/// S, so there is no guessing when the dust has settled. One more block with an unusable release
/// then makes every shim say what it runs: the holder keeps its engine, every other shim starts
/// nothing.
pub async fn settle(
    node: &Node,
    host: &Host,
    shims: &[SettleShim<'_>],
    release: &str,
    trace: &SharedTrace,
) -> Option<EngineEvent> {
    node.stall_finality(false).await;
    node.set_release(MARKER_RELEASE).await;
    node.new_blocks(1).await;
    node.set_release(release).await;
    let hash = node.new_blocks(1).await;
    let s = node.block_number(&hash).await;
    node.new_blocks(2).await;
    note(trace, format!("settle: release {release} from block #{s}"));

    let fits = |versions: &[&str]| {
        versions
            .iter()
            .find(|v| v.split('.').take(2).eq(release.split('.').take(2)))
            .map(|v| v.to_string())
    };
    let version = shims.iter().find_map(|s| fits(s.versions));
    let expected = match &version {
        Some(version) => {
            let is_it = |e: &EngineEvent| {
                e.event == "start" && e.version == *version && e.start_block() == Some(s)
            };
            let started = host
                .wait_events(
                    &format!("engine {version} to start at block #{s}"),
                    |events| events.iter().any(is_it),
                )
                .await;
            Some(started.into_iter().find(is_it).unwrap())
        }
        None => None,
    };
    for (n, settle_shim) in shims.iter().enumerate() {
        if fits(settle_shim.versions).is_some() {
            continue;
        }
        let prefix = format!("no installed engine is compatible with release {release} at block #");
        settle_shim
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
    // Its parent is the guardian of the shim that runs it (checked while it runs, so the pids
    // are not reused).
    let owner = expected.as_ref().map(|e| {
        let parent = parent_pid(e.pid).and_then(parent_pid);
        shims
            .iter()
            .position(|s| Some(s.shim.proc.pid()) == parent)
            .unwrap_or_else(|| {
                panic!(
                    "engine {} (pid {}) is no grandchild of a running shim (grandparent {parent:?})",
                    e.version, e.pid
                )
            })
    });

    // One more block every shim must comment on, with what it runs: still the same.
    node.set_release_value(Some("0x0102")).await;
    let bad = node.new_blocks(1).await;
    let bad_number = node.block_number(&bad).await;
    for (n, settle_shim) in shims.iter().enumerate() {
        let state = match &expected {
            Some(e) if owner == Some(n) => format!("keeping engine {} running", e.version),
            _ => "starting nothing".to_string(),
        };
        settle_shim
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
    expected
}

// ---------------------------------------------------------------------------------------------
// The run loop

/// How many runs, which, and how many at once: from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Printed before every line the loop prints (`chaos`, `chaos-pg`).
    pub name: &'static str,
    pub seed: u64,
    pub runs: usize,
    pub jobs: usize,
    /// `CHAOS_ONLY`: replay this run alone.
    pub only: Option<usize>,
    runs_var: &'static str,
    jobs_var: &'static str,
}

impl Settings {
    /// `CHAOS_SEED` (decimal or 0x-hex; default: from the clock), `runs_var` and `jobs_var`
    /// (defaults given), `CHAOS_ONLY`.
    pub fn from_env(
        name: &'static str,
        runs_var: &'static str,
        default_runs: u64,
        jobs_var: &'static str,
        default_jobs: u64,
    ) -> Settings {
        Settings {
            name,
            seed: env_u64("CHAOS_SEED").unwrap_or_else(|| (unix_nanos_now() as u64) ^ 0x5eed),
            runs: env_u64(runs_var).unwrap_or(default_runs) as usize,
            jobs: env_u64(jobs_var).unwrap_or(default_jobs).max(1) as usize,
            only: env_u64("CHAOS_ONLY").map(|n| n as usize),
            runs_var,
            jobs_var,
        }
    }

    /// The indices of the runs to do.
    pub fn indices(&self) -> Vec<usize> {
        match self.only {
            Some(n) => vec![n],
            None => (0..self.runs).collect(),
        }
    }
}

pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={value}: {e}")))
}

pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs every run of `settings`, `jobs` at once: `draw` makes run N's plan from its seed, `run`
/// carries it out and returns what it exercised. The first failure stops the rest and panics with
/// the seed, the run, its plan and its trace. Returns the tally summed over the runs.
pub async fn run_all<P, T, Fut>(
    settings: &Settings,
    draw: impl Fn(u64, usize) -> P,
    run: impl Fn(P, SharedTrace) -> Fut,
) -> T
where
    P: Debug,
    T: Default + AddAssign + Debug + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let Settings {
        name,
        seed,
        runs,
        jobs,
        ..
    } = *settings;
    eprintln!(
        "{name}: CHAOS_SEED={seed:#x} {}={runs} {}={jobs}",
        settings.runs_var, settings.jobs_var
    );
    let mut pending = settings.indices().into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut runs_by_task = std::collections::HashMap::new();
    let mut failure: Option<String> = None;
    let mut done = 0;
    let mut tally = T::default();
    loop {
        while failure.is_none() && running.len() < jobs {
            let Some(index) = pending.next() else { break };
            let plan = draw(run_seed(seed, index), index);
            let trace = SharedTrace::default();
            let task = running.spawn(run(plan, trace.clone()));
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
        let plan = draw(run_seed(seed, index), index);
        let trace = trace.lock().unwrap();
        let report = format!(
            "{name} run {index} failed (replay: CHAOS_SEED={seed:#x} CHAOS_ONLY={index})\n\
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
    eprintln!("{name}: {done} runs passed (CHAOS_SEED={seed:#x}); exercised: {tally:?}");
    tally
}
