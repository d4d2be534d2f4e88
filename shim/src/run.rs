//! `engine-shim run`: the async shell around the gate.
//!
//! It feeds the gate events (the follower's blocks, child exits, lock news, the node's answers,
//! signals and step-down requests), each with the moment it is handled, and carries out the gate's
//! actions on real processes. All decisions stay in the gate, and so does time: the loop's only
//! timer is a sleep until the gate's next deadline, which then feeds it `Event::Tick`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::block::BlockRef;
use crate::config::{validate_engines, Reload, RunConfig};
use crate::control::{self, StepDownRequest};
use crate::covers::Covers;
use crate::follower::{follow, FollowerConfig, FollowerEvent};
use crate::gate::{Action, EngineId, Event, Gate, Grant, KillCause, Timing};
use crate::lock::{
    BootInstant, HolderInfo, Lock, LockEvent, LockSpec, LockSpecError, Password, PgOptions,
    Usability, PASSWORD_ENV, PASSWORD_FILE_ENV,
};
use crate::metrics::{self, Metrics};
use crate::probe::discover;
use crate::supervisor::{spawn_child, ChildExit, ChildHandle, LaunchSpec};
use crate::telemetry;
use crate::version::Rule;
use crate::watch::{watch, Replaced, Watched};

/// How long `CMD --version` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long reading the release at the finalized head may take after an engine's own exit.
const HEAD_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the engine programs are looked at for an in-place upgrade.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What the outside world asks of a running shim. The binary turns the OS signals into these
/// (SIGTERM/SIGINT, SIGUSR1, SIGHUP), so the shell itself installs no signal handler and can run
/// in-process, asked by a test through the same channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Stop the engine, give the lock back and exit 0; a second one kills the engine at once.
    /// `signal` names the cause in the log (`SIGTERM`).
    Shutdown { signal: &'static str },
    /// Stop the engine, give the lock back and stand by (as `engine-shim step-down`).
    StepDown { signal: &'static str },
    /// Re-read the config file and probe every engine again.
    Reload,
}

/// The channel [`run`] takes its [`Request`]s from. Once every sender is gone no more come.
pub type Requests = mpsc::UnboundedReceiver<Request>;

/// A start-up problem in what the operator asked for (exit code 2), as opposed to a failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// One engine the shim may run: the versions it covers and how to launch it.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    pub covers: Covers,
    pub command: Vec<String>,
}

impl Engine {
    /// The launch for the hand-over block: `{block}`, `{block_hash}` and `{lock_epoch}` are replaced
    /// in the args, and the same facts go into `ENGINE_SHIM_*` variables.
    /// The engine runs under `guardian`, the `engine-shim` binary.
    pub(crate) fn launch_spec(
        &self,
        block: BlockRef,
        lock_epoch: Option<u64>,
        guardian: &Path,
    ) -> LaunchSpec {
        let epoch = lock_epoch.map(|e| e.to_string()).unwrap_or_default();
        let substitute = |arg: &str| {
            arg.replace("{block_hash}", &block.hash.to_string())
                .replace("{block}", &block.number.to_string())
                .replace("{lock_epoch}", &epoch)
        };
        LaunchSpec {
            label: self.covers.newest().to_string(),
            program: self.command[0].clone().into(),
            args: self.command[1..].iter().map(|a| substitute(a)).collect(),
            env: vec![
                ("ENGINE_SHIM_START_BLOCK".into(), block.number.to_string()),
                (
                    "ENGINE_SHIM_START_BLOCK_HASH".into(),
                    block.hash.to_string(),
                ),
                (
                    "ENGINE_SHIM_ENGINE_VERSION".into(),
                    self.covers.newest().to_string(),
                ),
                ("ENGINE_SHIM_LOCK_EPOCH".into(), epoch.clone()),
            ],
            keep_lock: None,
            // The database password is the shim's, never the engine's.
            env_remove: vec![PASSWORD_ENV.into(), PASSWORD_FILE_ENV.into()],
            guardian: guardian.to_path_buf(),
        }
    }
}

/// The start-up checks that need no node, so a wrong path fails now rather than at the upgrade
/// block: the lock, every engine program, the control socket's directory (exit code 1).
fn preflight(config: &RunConfig, lock: &LockSpec) -> anyhow::Result<()> {
    crate::lock::preflight::check(lock).map_err(anyhow::Error::msg)?;
    for engine in &config.engines {
        crate::preflight::engine_program(&engine.command[0]).map_err(anyhow::Error::msg)?;
    }
    if let Some(path) = &config.control_socket {
        crate::preflight::control_socket_dir(path).map_err(|problem| {
            anyhow::anyhow!(
                "cannot listen on the control socket {}: {problem}",
                path.display()
            )
        })?;
    }
    Ok(())
}

/// Learns what every engine covers (declared, or discovered from the program) and refuses sets
/// the rule cannot tell apart.
async fn resolve_engines(config: &RunConfig) -> anyhow::Result<Vec<Engine>> {
    let mut engines = Vec::with_capacity(config.engines.len());
    for engine in &config.engines {
        let program = &engine.command[0];
        let covers = match Covers::new(engine.versions.clone()) {
            Some(covers) => covers,
            None => {
                let covers = discover(Path::new(program), PROBE_TIMEOUT)
                    .await
                    .with_context(|| format!("cannot learn the versions of {program}"))?;
                info!(program = %program, engine_versions = %covers.list(),
                    "engine {program} covers {}", covers.list());
                covers
            }
        };
        engines.push(Engine {
            covers,
            command: engine.command.clone(),
        });
    }
    let covers: Vec<Covers> = engines.iter().map(|e| e.covers.clone()).collect();
    validate_engines(&covers, config.rule).map_err(UsageError)?;
    Ok(engines)
}

/// What the watcher looks at for each engine: its program's path, and the versions the operator
/// declared (kept as they are when the program changes).
fn watched_engines(config: &RunConfig) -> anyhow::Result<Vec<Watched>> {
    config
        .engines
        .iter()
        .enumerate()
        .map(|(engine, command)| {
            Ok(Watched {
                engine,
                program: crate::preflight::engine_program(&command.command[0])
                    .map_err(anyhow::Error::msg)?,
                declared: Covers::new(command.versions.clone()),
            })
        })
        .collect()
}

/// The lock from `--lock` (with the PostgreSQL options and password), or the documented default
/// derived from `--lock-dir` / the engine's `--config-root`.
fn lock_spec(config: &RunConfig) -> anyhow::Result<LockSpec> {
    let Some(text) = &config.lock else {
        let args: Vec<String> = config
            .engines
            .iter()
            .flat_map(|e| e.command.iter().skip(1).cloned())
            .collect();
        let env_root = std::env::var_os(crate::lock::CONFIG_ROOT_ENV).map(PathBuf::from);
        return Ok(LockSpec::default_for(
            config.lock_dir.as_deref(),
            &args,
            env_root.as_deref(),
        ));
    };
    // A URL is not repeated past its scheme: a mistaken one may carry a password.
    let shown = LockSpec::shown_safely(text);
    let usage = |e: LockSpecError| UsageError(format!("--lock {shown}: {e}"));
    let password = if LockSpec::is_postgres(text) {
        Password::from_env(config.lock_password_file.as_deref()).map_err(usage)?
    } else {
        None
    };
    let options = PgOptions {
        mode: config.lock_mode,
        name: config.lock_name.clone(),
        lease: config.lease,
        renew: config.renew,
        password,
    };
    Ok(LockSpec::parse_with(text, &options).map_err(usage)?)
}

/// Checks everything that can be checked without the node, resolves the engines and the lock,
/// then runs until asked to shut down. A shutdown asked for while starting ends the start-up
/// (nothing runs yet, no lock is held); other requests wait until the shell runs.
pub async fn run(config: RunConfig, mut requests: Requests) -> anyhow::Result<()> {
    let mut early = Vec::new();
    let start = start(&config);
    tokio::pin!(start);
    let (shell, follower, _held) = loop {
        tokio::select! {
            biased;
            Some(request) = requests.recv() => match request {
                Request::Shutdown { signal } => {
                    info!("{signal} received while starting; exiting (no engine was started)");
                    return Ok(());
                }
                other => early.push(other),
            },
            started = &mut start => break started?,
        }
    };
    shell.run(follower, early, requests).await
}

/// What must live as long as the shell: the control socket (dropping it removes the file) and the
/// engine watcher (dropping it stops the task).
struct Held {
    _control_socket: Option<control::ControlSocket>,
    _watcher: AbortOnDrop,
}

/// Everything before the event loop: checks, engines, lock, control socket, metrics, watcher.
async fn start(config: &RunConfig) -> anyhow::Result<(Shell, FollowerConfig, Held)> {
    let lock = lock_spec(config)?;
    preflight(config, &lock)?;
    let engines = resolve_engines(config).await?;
    let listed = engines
        .iter()
        .map(|e| format!("{} ({})", e.covers, e.command[0]))
        .collect::<Vec<_>>()
        .join(", ");
    info!(
        node = %config.node, rule = config.rule.as_str(), lock = %lock,
        "engine-shim {} supervising {listed}; following {}; lock {lock}",
        env!("CARGO_PKG_VERSION"), config.node
    );
    let follower = FollowerConfig::with(
        config.node.clone(),
        config.storage_key.clone(),
        config.stale_after,
        config.reconnect_max,
        config.wait_log_every,
    );
    let gate = Gate::new(
        engines.iter().map(|e| e.covers.clone()).collect(),
        config.rule,
        Timing {
            wait_log_every: config.wait_log_every,
            start_secs: config.start_secs,
            standby: config.standby,
        },
    );
    let (control_tx, control_rx) = mpsc::channel(8);
    // Held until `run` returns, however it returns: dropping it removes the socket file.
    let control_socket = match &config.control_socket {
        Some(path) => Some(control::serve(path.clone(), control_tx).await.map_err(
            |e| match e {
                control::ListenError::Refused(message) => UsageError(message).into(),
                e => anyhow::Error::new(e),
            },
        )?),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = config.metrics_listen {
        let bound = metrics::serve(addr, metrics.clone(), config.stale_after)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        info!("serving /metrics and /health on http://{bound}");
    }
    let (replaced_tx, replaced_rx) = mpsc::unbounded_channel();
    let (rescan_tx, rescan_rx) = mpsc::unbounded_channel();
    let watcher = tokio::spawn(watch(
        watched_engines(config)?,
        WATCH_EVERY,
        PROBE_TIMEOUT,
        rescan_rx,
        replaced_tx,
    ));
    let outside = Outside {
        head: HeadCheck {
            url: config.node.clone(),
            key: config.storage_key.clone(),
        },
        lock: Lock::new(lock),
        control_rx,
        metrics,
        replaced_rx,
        rescan_tx,
        reload: config.reload.clone(),
        rule: config.rule,
        guardian: config.guardian.clone(),
    };
    let held = Held {
        _control_socket: control_socket,
        _watcher: AbortOnDrop(watcher),
    };
    let shell = Shell::new(engines, gate, config.grace, config.standby, outside);
    Ok((shell, follower, held))
}

/// Where to read the release at the finalized head when the gate asks ([`Action::CheckHead`]).
#[derive(Clone)]
struct HeadCheck {
    url: String,
    key: Vec<u8>,
}

/// Aborts a background task when the shell is done with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the shell is connected to beyond its own channels: the node for one-off questions, the
/// lock, step-down requests, metrics, the engine watcher and how to re-read the settings.
struct Outside {
    head: HeadCheck,
    lock: Lock,
    control_rx: mpsc::Receiver<StepDownRequest>,
    metrics: Arc<Metrics>,
    replaced_rx: mpsc::UnboundedReceiver<Replaced>,
    /// Asks the watcher to re-probe every engine now, with a new list after a reload.
    rescan_tx: mpsc::UnboundedSender<Option<Vec<Watched>>>,
    reload: Option<Reload>,
    rule: Rule,
    guardian: PathBuf,
}

/// The event loop's state: the gate, the live children and the channels that feed the gate.
struct Shell {
    engines: Vec<Engine>,
    gate: Gate,
    grace: Duration,
    children: HashMap<EngineId, ChildHandle>,
    exits_tx: mpsc::UnboundedSender<ChildExit>,
    exits_rx: mpsc::UnboundedReceiver<ChildExit>,
    lock: Lock,
    lock_tx: mpsc::UnboundedSender<LockEvent>,
    lock_rx: mpsc::UnboundedReceiver<LockEvent>,
    /// The epoch of the lock held now (lease locks), handed to the engine for fencing downstream.
    lock_epoch: Option<u64>,
    /// The kill deadline of the loss being handled (boot-time clock), for the deadline killer of
    /// the engine the gate fences in answer; set only while that event is handled.
    fence_kill_by: Option<BootInstant>,
    /// How long the instance stands by after a step-down (the gate keeps the time; this is for
    /// the answer to the operator).
    standby: Duration,
    control_rx: mpsc::Receiver<StepDownRequest>,
    /// `engine-shim step-down` clients waiting for the step-down to complete.
    step_down_waiters: Vec<oneshot::Sender<String>>,
    metrics: Arc<Metrics>,
    /// Where to read the release at the finalized head; answers come back on `heads_rx`.
    head: HeadCheck,
    heads_tx: mpsc::UnboundedSender<Event>,
    heads_rx: mpsc::UnboundedReceiver<Event>,
    replaced_rx: mpsc::UnboundedReceiver<Replaced>,
    rescan_tx: mpsc::UnboundedSender<Option<Vec<Watched>>>,
    reload: Option<Reload>,
    rule: Rule,
    /// The `engine-shim` binary every engine runs under.
    guardian: PathBuf,
}

impl Shell {
    fn new(
        engines: Vec<Engine>,
        gate: Gate,
        grace: Duration,
        standby: Duration,
        outside: Outside,
    ) -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let (lock_tx, lock_rx) = mpsc::unbounded_channel();
        let (heads_tx, heads_rx) = mpsc::unbounded_channel();
        let Outside {
            head,
            lock,
            control_rx,
            metrics,
            replaced_rx,
            rescan_tx,
            reload,
            rule,
            guardian,
        } = outside;
        Shell {
            engines,
            gate,
            grace,
            children: HashMap::new(),
            exits_tx,
            exits_rx,
            lock,
            lock_tx,
            lock_rx,
            lock_epoch: None,
            fence_kill_by: None,
            standby,
            control_rx,
            step_down_waiters: Vec::new(),
            metrics,
            head,
            heads_tx,
            heads_rx,
            replaced_rx,
            rescan_tx,
            reload,
            rule,
            guardian,
        }
    }

    async fn run(
        mut self,
        follower: FollowerConfig,
        early: Vec<Request>,
        mut requests: Requests,
    ) -> anyhow::Result<()> {
        let (blocks_tx, mut blocks_rx) = mpsc::channel(1024);
        let follower = tokio::spawn(follow(follower, blocks_tx));
        let mut early = VecDeque::from(early);
        // Wakes an idle loop, so that `/livez` can tell it from a wedged one.
        let mut turns = tokio::time::interval(metrics::TURN_EVERY);
        turns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            self.metrics.loop_turned();
            if let Some(request) = early.pop_front() {
                if let Some(event) = self.on_request(request) {
                    if self.handle(event) {
                        break Ok(());
                    }
                }
                continue;
            }
            let deadline = self.gate.next_deadline();
            // Biased, lock first: after a pause (SIGSTOP, VM freeze) a lost lock must be acted on
            // before anything else that became ready at the same time; then the gate's deadline
            // (a fenced engine to kill is next in urgency).
            let event = tokio::select! {
                biased;
                Some(event) = self.lock_rx.recv() => match self.on_lock_event(event) {
                    Ok(Some(event)) => event,
                    Ok(None) => continue,
                    Err(e) => break Err(e),
                },
                () = sleep_until_or_forever(deadline) => Event::Tick,
                Some(event) = blocks_rx.recv() => match event {
                    FollowerEvent::Block { block, release } => {
                        self.metrics.block(block.number, release.as_ref().ok().copied());
                        Event::Block { block, release }
                    }
                    other => { telemetry::follower_event(&other); continue; }
                },
                Some(exit) = self.exits_rx.recv() => self.on_exit(exit),
                Some(answer) = self.heads_rx.recv() => answer,
                Some(request) = requests.recv() => match self.on_request(request) {
                    Some(event) => event,
                    None => continue,
                },
                Some(request) = self.control_rx.recv() => {
                    info!("hand-off requested on the control socket");
                    self.step_down_waiters.push(request.reply);
                    Event::StepDown
                }
                Some(replaced) = self.replaced_rx.recv() => match self.on_replaced(replaced) {
                    Some(event) => event,
                    None => continue,
                },
                _ = turns.tick() => continue,
            };
            if self.handle(event) {
                break Ok(());
            }
        };
        follower.abort();
        // A released database lock is expired by a worker task: let it finish, so a waiting
        // instance takes over at once rather than a lease later.
        if !self.lock.settle(Duration::from_secs(5)).await {
            warn!(
                "the lock {} was not confirmed released before exit",
                self.lock.spec()
            );
        }
        result
    }

    /// A request from outside (a signal, in the binary) as a gate event; a reload is carried out
    /// here and concerns the gate only through the re-probed engines.
    fn on_request(&mut self, request: Request) -> Option<Event> {
        match request {
            Request::Shutdown { signal } => Some(Event::Shutdown { signal }),
            Request::StepDown { signal } => {
                info!("{signal} received: handing off");
                Some(Event::StepDown)
            }
            Request::Reload => {
                self.on_sighup();
                None
            }
        }
    }

    /// An engine's program changed on disk (or was re-probed): log what it covers now and tell
    /// the gate, unless the new program cannot be used, in which case what it covered stays.
    fn on_replaced(&mut self, replaced: Replaced) -> Option<Event> {
        let Replaced {
            engine,
            program,
            files,
            covers,
        } = replaced;
        let program = program.display();
        let before = self.engines[engine].covers.list();
        let what = if files.is_empty() {
            "was probed again"
        } else {
            "was replaced on disk"
        };
        let covers = match covers {
            Ok(covers) => covers,
            Err(e) => {
                error!(program = %program, "engine {program} {what}, but it cannot be used: {e}; it still counts as covering {before}");
                return None;
            }
        };
        let mut all: Vec<Covers> = self.engines.iter().map(|e| e.covers.clone()).collect();
        all[engine] = covers.clone();
        if let Err(problem) = validate_engines(&all, self.rule) {
            error!(program = %program, "engine {program} {what} and now covers {}, but {problem}; it still counts as covering {before}", covers.list());
            return None;
        }
        let running = if self.children.contains_key(&engine) {
            "; the running engine keeps running, the new program runs from its next start"
        } else {
            ""
        };
        info!(program = %program, engine_versions = %covers.list(),
            "engine {program} {what}; it now covers {}{running}", covers.list());
        self.engines[engine].covers = covers.clone();
        Some(Event::EngineReplaced { engine, covers })
    }

    /// SIGHUP: read the config file again and re-probe every engine. Engine commands and versions
    /// apply from each engine's next start; a running engine is left alone. A file that cannot be
    /// used changes nothing.
    fn on_sighup(&mut self) {
        let Some(reload) = &self.reload else {
            info!("SIGHUP: no config file to re-read (no --config); probing the engines again");
            let _ = self.rescan_tx.send(None);
            return;
        };
        let path = reload.path().display().to_string();
        let config = match reload.resolve() {
            Ok(config) if config.engines.len() != self.engines.len() => Err(format!(
                "it now lists {} engines instead of {}: restart engine-shim to add or remove engines",
                config.engines.len(),
                self.engines.len()
            )),
            Ok(config) => watched_engines(&config)
                .map(|watched| (config, watched))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match config {
            Ok((config, watched)) => {
                for (engine, new) in self.engines.iter_mut().zip(&config.engines) {
                    engine.command = new.command.clone();
                }
                info!(config = %path, "SIGHUP: re-read {path}; probing the engines again (engine commands and versions apply from each engine's next start; other settings need a restart)");
                let _ = self.rescan_tx.send(Some(watched));
            }
            Err(problem) => error!(config = %path,
                "SIGHUP: cannot use {path}: {problem}; keeping the settings in use"),
        }
    }

    fn on_exit(&mut self, exit: ChildExit) -> Event {
        self.children.remove(&exit.id);
        self.metrics.engine_exited();
        if exit.killed_after_grace {
            warn!(
                engine_version = %self.engines[exit.id].covers.newest(), pid = exit.pid,
                "engine {} did not stop within {:?} of SIGTERM and was killed",
                self.engines[exit.id].covers, self.grace
            );
        }
        Event::ChildExited {
            engine: exit.id,
            uptime: exit.uptime,
            status: exit.status.to_string(),
        }
    }

    /// Logs lock news; a grant goes on to the gate, a lock that cannot work at all ends the shim
    /// (no engine runs then: the gate only starts one after a grant).
    fn on_lock_event(&mut self, event: LockEvent) -> anyhow::Result<Option<Event>> {
        let spec = self.lock.spec().clone();
        match event {
            LockEvent::Waiting {
                holder: Some(holder),
            } => {
                info!(lock = %spec, holder_pid = holder.pid, holder_host = %holder.host, holder_engine = %holder.engine_version,
                    "waiting for the lock {spec} held by {holder}");
                Ok(None)
            }
            LockEvent::Waiting { holder: None } => {
                info!(lock = %spec, "waiting for the lock {spec} (holder unknown)");
                Ok(None)
            }
            LockEvent::Granted { epoch } => {
                let now = Instant::now();
                let grant = match self.lock.usability() {
                    Usability::UntilReleased => Grant::UntilReleased,
                    Usability::Until(deadline) => Grant::Until(on_gate_clock(deadline, now)),
                    // Lost before the grant was read (the loss follows): too late to use.
                    Usability::NotHeld => Grant::Until(now),
                };
                if grant == Grant::Until(now) {
                    // Past its renewal deadline already (a pause): the gate gives it back and
                    // asks again, and the shell says so then.
                    return Ok(Some(Event::LockGranted(grant)));
                }
                match epoch {
                    None => info!(lock = %spec, "acquired the lock {spec}"),
                    Some(epoch) => info!(lock = %spec, lock_epoch = epoch,
                        "acquired the lock {spec} (epoch {epoch})"),
                }
                self.lock_epoch = epoch;
                self.metrics.lock(true, epoch);
                Ok(Some(Event::LockGranted(grant)))
            }
            LockEvent::Lost { reason, kill_by } => {
                // The engine must be dead by `kill_by` (on the boot-time clock): the gate fences
                // and kills it then, on the clock it is fed.
                let remaining = kill_by.remaining();
                self.metrics.fenced();
                let within = Duration::from_millis(remaining.as_millis() as u64);
                warn!(lock = %spec, kill_within_ms = within.as_millis() as u64,
                    "lost the lock {spec}: {reason}; the engine must be gone within {}",
                    humantime::format_duration(within));
                self.fence_kill_by = Some(kill_by);
                let kill_by = Instant::now() + remaining;
                Ok(Some(Event::LockLost { reason, kill_by }))
            }
            LockEvent::Failed { error } => {
                Err(anyhow::anyhow!("the lock {spec} cannot be used: {error}"))
            }
        }
    }

    /// Asks for the lock, naming the engine it is for so waiters can say who holds it.
    fn acquire_lock(&mut self) {
        let version = self.gate.target().map(|e| self.engines[e].covers.newest());
        let me = HolderInfo::me(&version.map(|v| v.to_string()).unwrap_or_default());
        self.lock.acquire(me, self.lock_tx.clone());
    }

    /// Runs one event through the gate and carries out its actions; true when the shim may exit.
    fn handle(&mut self, event: Event) -> bool {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let now = Instant::now();
            let mut actions = match self.lock.usability() {
                // Stated before every event, converted afresh: see `Event::LockUsableUntil`.
                Usability::Until(deadline) => self
                    .gate
                    .step(now, Event::LockUsableUntil(on_gate_clock(deadline, now))),
                Usability::UntilReleased | Usability::NotHeld => Vec::new(),
            };
            actions.extend(self.gate.step(now, event));
            for action in actions {
                match action {
                    Action::Start { engine, block } => {
                        if let Err(failed) = self.start(engine, block) {
                            queue.push_back(failed);
                        }
                    }
                    Action::Stop { engine } => match self.children.get(&engine) {
                        Some(child) => child.stop(self.grace),
                        None => error!("asked to stop engine {engine}, which is not running"),
                    },
                    Action::Fence { engine } => match self.children.get(&engine) {
                        Some(child) => {
                            child.stop(self.grace);
                            // The backstop on a thread of its own: dead by the deadline even if
                            // this runtime is too busy to carry out the gate's `Kill` on time.
                            if let Some(deadline) = self.fence_kill_by {
                                child.kill_by(deadline);
                            }
                        }
                        None => error!("asked to fence engine {engine}, which is not running"),
                    },
                    // A child already reaped needs no killing.
                    Action::Kill { engine, cause } => match (self.children.get(&engine), cause) {
                        // The fencing deadline ends the stop's grace: SIGKILL now, reported as
                        // any stop that ran out of grace.
                        (Some(child), KillCause::FenceDeadline) => child.stop(Duration::ZERO),
                        (Some(child), KillCause::SecondSignal) => child.kill_now(),
                        (None, _) => {}
                    },
                    Action::HoldStart { engine } => {
                        let spec = self.lock.spec();
                        let covers = &self.engines[engine].covers;
                        warn!(lock = %spec, engine_version = %covers.newest(),
                            "engine {covers}: not started: the lock {spec} is past its renewal deadline (was this process paused?); starting it once the lock is renewed, or asking for the lock again once its loss is reported");
                    }
                    Action::RetryLock => {
                        let spec = self.lock.spec();
                        warn!(lock = %spec, "the lock {spec} was granted, but its renewal deadline passed before it could be used (was this process paused?); asking again");
                        self.lock.release();
                        self.acquire_lock();
                    }
                    Action::SteppedDown => {
                        let answer = format!(
                            "handed off: no engine runs here and the lock is given back; standing by for {}",
                            humantime::format_duration(self.standby)
                        );
                        info!("{answer}");
                        self.metrics.handed_off();
                        for waiter in self.step_down_waiters.drain(..) {
                            let _ = waiter.send(answer.clone());
                        }
                    }
                    Action::CheckHead { engine } => self.check_head(engine),
                    Action::AcquireLock => self.acquire_lock(),
                    Action::CancelLock => self.lock.cancel(),
                    Action::ReleaseLock => {
                        self.lock.release();
                        self.metrics.lock(false, None);
                        info!(lock = %self.lock.spec(), "released the lock {}", self.lock.spec());
                    }
                    Action::Notify(notice) => {
                        self.metrics.notice(&notice);
                        telemetry::notice(&notice)
                    }
                    Action::Exit => return true,
                }
            }
        }
        self.fence_kill_by = None;
        self.metrics
            .no_compatible_engine(self.gate.missing_engine().is_some());
        self.metrics.engine_should_run(self.gate.target().is_some());
        false
    }

    /// Reads the release at the finalized head in a task of its own; the answer comes back as
    /// [`Event::HeadRelease`] (an error after [`HEAD_CHECK_TIMEOUT`] at the latest).
    fn check_head(&self, engine: EngineId) {
        let head = self.head.clone();
        let answers = self.heads_tx.clone();
        info!(
            engine_version = %self.engines[engine].covers.newest(),
            "engine {}: reading the release at the finalized head of {} to decide whether it may run again",
            self.engines[engine].covers, head.url
        );
        tokio::spawn(async move {
            let answer =
                crate::head::release_at_finalized_head(&head.url, &head.key, HEAD_CHECK_TIMEOUT)
                    .await;
            let _ = answers.send(Event::HeadRelease { engine, answer });
        });
    }

    /// Spawns the engine; a failure to spawn comes back as an exit, so it is retried with back-off.
    fn start(&mut self, engine: EngineId, block: BlockRef) -> Result<(), Event> {
        let mut spec = self.engines[engine].launch_spec(block, self.lock_epoch, &self.guardian);
        // The engine shares the lock, so it is held until the engine itself is gone, even if the
        // shim dies first (see the lock module).
        spec.keep_lock = self.lock.inheritable();
        match spawn_child(engine, &spec, self.exits_tx.clone()) {
            Ok(child) => {
                info!(
                    engine_version = %spec.label, pid = child.pid(), block_number = block.number,
                    "engine {} started (pid {})", spec.label, child.pid()
                );
                // A database lock's own thread now keeps the engine's kill deadline armed: it
                // dies in time even if this loop never gets to handle the lock's loss.
                self.lock.attach(child.lease_link());
                self.children.insert(engine, child);
                self.metrics
                    .engine_started(self.engines[engine].covers.newest());
                Ok(())
            }
            Err(e) => Err(Event::ChildExited {
                engine,
                uptime: Duration::ZERO,
                status: format!("failed to start {}: {e}", spec.program.display()),
            }),
        }
    }
}

/// The lock's renewal deadline (on the boot-time clock) as a moment on the gate's clock, from
/// `now`: as far ahead as it is now, and `now` itself once it has passed. Converted afresh for
/// every use, since the two clocks drift apart by the length of every suspend of the host.
fn on_gate_clock(deadline: BootInstant, now: Instant) -> Instant {
    now + deadline.remaining()
}

/// Sleeps until the gate's next deadline; forever while it has none.
async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
