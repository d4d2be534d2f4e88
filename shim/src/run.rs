//! `engine-shim run`: the async shell around the gate.
//!
//! It feeds the gate events from three sources (the follower, child exits, restart timers) plus
//! signals, and carries out the gate's actions on real processes. All decisions stay in the gate.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::block::BlockRef;
use crate::cli::RunArgs;
use crate::follower::{follow, FollowerConfig, FollowerEvent};
use crate::gate::{Action, EngineId, Event, Gate};
use crate::probe::probe_version;
use crate::supervisor::{spawn_child, ChildExit, ChildHandle, LaunchSpec};
use crate::telemetry;
use crate::version::SemVer;

/// How long `CMD --version` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// One engine the shim may run: its version and how to launch it.
#[derive(Debug, Clone)]
pub struct Engine {
    pub version: SemVer,
    pub command: Vec<String>,
}

impl Engine {
    /// The launch for the hand-over block: `{block}` and `{block_hash}` are replaced in the args, and
    /// the same facts go into `ENGINE_SHIM_*` variables.
    pub fn launch_spec(&self, block: BlockRef) -> LaunchSpec {
        let substitute = |arg: &str| {
            arg.replace("{block_hash}", &block.hash.to_string())
                .replace("{block}", &block.number.to_string())
        };
        LaunchSpec {
            label: self.version.to_string(),
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
                    self.version.to_string(),
                ),
            ],
        }
    }
}

/// Resolves the engine's version (flag or `CMD --version`) and runs until SIGTERM/SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let version = match args.engine_version {
        Some(version) => version,
        None => probe_version(&args.program(), PROBE_TIMEOUT)
            .await
            .with_context(|| format!("cannot learn the version of {}", args.command[0]))?,
    };
    let engines = vec![Engine {
        version,
        command: args.command.clone(),
    }];
    info!(
        engine_version = %version, node = %args.chain.node, rule = args.chain.rule.as_str(),
        "engine-shim {} supervising engine {version} ({}); following {}",
        env!("CARGO_PKG_VERSION"), args.command[0], args.chain.node
    );
    let follower = FollowerConfig {
        url: args.chain.node.clone(),
        storage_key: args.chain.release_key(),
        stale_after: args.stale_after,
        ping_interval: Duration::from_secs(10).min(args.stale_after),
        request_timeout: Duration::from_secs(30),
        backoff_initial: Duration::from_millis(250),
        backoff_max: args.reconnect_max,
        syncing_poll: Duration::from_secs(2),
    };
    let gate = Gate::new(
        engines.iter().map(|e| e.version).collect(),
        args.chain.rule,
        args.wait_log_every,
        args.start_secs,
    );
    Shell::new(engines, gate, args.grace).run(follower).await
}

/// The event loop's state: the gate, the live children and the channels that feed the gate.
struct Shell {
    engines: Vec<Engine>,
    gate: Gate,
    grace: Duration,
    started: Instant,
    children: HashMap<EngineId, ChildHandle>,
    exits_tx: mpsc::UnboundedSender<ChildExit>,
    exits_rx: mpsc::UnboundedReceiver<ChildExit>,
    restarts_tx: mpsc::UnboundedSender<EngineId>,
    restarts_rx: mpsc::UnboundedReceiver<EngineId>,
    shutting_down: bool,
}

impl Shell {
    fn new(engines: Vec<Engine>, gate: Gate, grace: Duration) -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let (restarts_tx, restarts_rx) = mpsc::unbounded_channel();
        Shell {
            engines,
            gate,
            grace,
            started: Instant::now(),
            children: HashMap::new(),
            exits_tx,
            exits_rx,
            restarts_tx,
            restarts_rx,
            shutting_down: false,
        }
    }

    async fn run(mut self, follower: FollowerConfig) -> anyhow::Result<()> {
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let (blocks_tx, mut blocks_rx) = mpsc::channel(1024);
        let follower = tokio::spawn(follow(follower, blocks_tx));
        let result = loop {
            let event = tokio::select! {
                Some(event) = blocks_rx.recv() => match event {
                    FollowerEvent::Block { block, release } => Event::Block { block, release, now: self.started.elapsed() },
                    other => { telemetry::follower_event(&other); continue; }
                },
                Some(exit) = self.exits_rx.recv() => self.on_exit(exit),
                Some(engine) = self.restarts_rx.recv() => Event::RestartDue { engine },
                _ = sigterm.recv() => self.on_signal("SIGTERM"),
                _ = sigint.recv() => self.on_signal("SIGINT"),
            };
            if self.handle(event) {
                break Ok(());
            }
        };
        follower.abort();
        result
    }

    fn on_exit(&mut self, exit: ChildExit) -> Event {
        self.children.remove(&exit.id);
        if exit.killed_after_grace {
            warn!(
                engine_version = %self.engines[exit.id].version, pid = exit.pid,
                "engine {} did not stop within {:?} of SIGTERM and was killed",
                self.engines[exit.id].version, self.grace
            );
        }
        Event::ChildExited {
            engine: exit.id,
            uptime: exit.uptime,
            status: exit.status.to_string(),
        }
    }

    fn on_signal(&mut self, name: &str) -> Event {
        if self.shutting_down {
            // A second signal means "now": do not wait out the grace period.
            warn!("{name} again: killing the engine now");
            self.children.values().for_each(ChildHandle::kill_now);
        } else {
            info!("{name} received: stopping the engine and exiting");
        }
        self.shutting_down = true;
        Event::Shutdown
    }

    /// Runs one event through the gate and carries out its actions; true when the shim may exit.
    fn handle(&mut self, event: Event) -> bool {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            for action in self.gate.step(event) {
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
                    Action::ScheduleRestart { engine, after } => {
                        let restarts = self.restarts_tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(after).await;
                            let _ = restarts.send(engine);
                        });
                    }
                    // Until a lock backend is configured, the lock is granted at once.
                    Action::AcquireLock => queue.push_back(Event::LockGranted),
                    Action::CancelLock | Action::ReleaseLock => {}
                    Action::Notify(notice) => telemetry::notice(&notice),
                    Action::Exit => return true,
                }
            }
        }
        false
    }

    /// Spawns the engine; a failure to spawn comes back as an exit, so it is retried with back-off.
    fn start(&mut self, engine: EngineId, block: BlockRef) -> Result<(), Event> {
        let spec = self.engines[engine].launch_spec(block);
        match spawn_child(engine, &spec, self.exits_tx.clone()) {
            Ok(child) => {
                info!(
                    engine_version = %spec.label, pid = child.pid(), block_number = block.number,
                    "engine {} started (pid {})", spec.label, child.pid()
                );
                self.children.insert(engine, child);
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
