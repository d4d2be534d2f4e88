//! Command-line interface: flags, their environment variables, and their defaults.
//!
//! Every flag can also be set through an `ENGINE_SHIM_*` environment variable, so systemd units and
//! container specs can configure the shim without rewriting the command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::block::BlockSelector;
use crate::check::{CheckRequest, EngineToCheck};
use crate::config::{EngineList, Overrides};
use crate::defaults;
use crate::lock::LockMode;
use crate::storage_key::StorageKey;
use crate::telemetry::LogFormat;
use crate::version::{Rule, SemVer};

/// Runs exactly the engine version compatible with the chain's on-chain release.
#[derive(Debug, Parser)]
#[command(name = "engine-shim", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Wrap an engine: run it while the on-chain release is compatible, idle it otherwise.
    Run(Box<RunArgs>),
    /// Ask once whether an engine is compatible with the chain; the answer is the exit code.
    Check(CheckArgs),
    /// Ask a running instance to stop its engine, give the lock back and stand by, so another
    /// instance takes over (maintenance without downtime).
    Handoff(HandoffArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which-instance").required(true).args(["control_socket", "pid"])))]
pub struct HandoffArgs {
    /// The running instance's `--control-socket`: waits until the hand-off is complete.
    #[arg(long, env = "ENGINE_SHIM_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Or the running instance's pid: sends SIGUSR1 and returns at once. Only a positive pid of
    /// a running engine-shim is taken (-1, 0 and process groups are refused, exit code 2).
    #[arg(long, allow_negative_numbers = true)]
    pub pid: Option<i32>,
    /// How long to wait for the hand-off to complete (the engine's stop included) [default: 60s]
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
}

impl HandoffArgs {
    /// `--timeout`, or its default.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(defaults::HAND_OFF_TIMEOUT)
    }
}

/// `check`'s flags for where the chain is and how to read its release (`run` has its own, optional
/// ones, so a config file can sit below them).
#[derive(Debug, Args, Clone)]
pub struct ChainArgs {
    /// WebSocket URL of the node's JSON-RPC.
    #[arg(long, env = "ENGINE_SHIM_NODE", default_value = defaults::NODE, value_parser = crate::config::parse_node_url)]
    pub node: String,
    /// Storage key of the release value (hex). Default: Environment::CurrentReleaseVersion,
    /// computed as twox128("Environment") ++ twox128("CurrentReleaseVersion").
    #[arg(long, env = "ENGINE_SHIM_STORAGE_KEY")]
    pub storage_key: Option<StorageKey>,
    /// Which version fields must match for an engine to be compatible with the release.
    #[arg(long, env = "ENGINE_SHIM_RULE", value_enum, default_value_t = defaults::RULE)]
    pub rule: Rule,
    /// Log format.
    #[arg(long, env = "ENGINE_SHIM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl ChainArgs {
    /// The key to read the release from: the flag, or Chainflip's computed key.
    pub fn release_key(&self) -> Vec<u8> {
        match &self.storage_key {
            Some(key) => key.0.clone(),
            None => crate::storage_key::release_key(),
        }
    }
}

/// `engine-shim run`'s flags as given. Nothing has a clap default, so [`Overrides::resolve`] can put
/// the config file between the environment and the defaults; the defaults are in the help text and
/// in [`crate::defaults`].
#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    /// TOML file with any of these settings, keyed by the flag name in snake_case (`stale_after =
    /// "2m"`, `[[engine]]` tables, `shared_args`). Flags and environment variables override it.
    #[arg(long, env = "ENGINE_SHIM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// An engine the shim may run, as `[VERSIONS=]CMD` (VERSIONS: X.Y.Z, or X.Y.Z,X.Y.Z for a
    /// program covering several versions): CMD is split into program and args like a
    /// shell would (quotes, backslashes; no expansion). Give it once per installed version; an
    /// unquoted `;` also separates engines. Without VERSION the shim runs `PROGRAM --version` once.
    /// With --engine, the args after `--` are appended to every engine's own args.
    #[arg(
        long = "engine",
        env = "ENGINE_SHIM_ENGINES",
        value_name = "[VERSION=]CMD",
        value_parser = crate::config::parse_engines,
        conflicts_with = "engine_version"
    )]
    pub engines: Vec<EngineList>,
    /// The version of the single engine given as `-- CMD`. Without it the shim runs `CMD --version`
    /// once and takes the first X.Y.Z.
    #[arg(long, env = "ENGINE_SHIM_ENGINE_VERSION", value_name = "X.Y.Z")]
    pub engine_version: Option<SemVer>,
    /// WebSocket URL of the node's JSON-RPC [default: ws://127.0.0.1:9944]
    #[arg(long, env = "ENGINE_SHIM_NODE", value_name = "URL", value_parser = crate::config::parse_node_url)]
    pub node: Option<String>,
    /// Storage key of the release value (hex). Default: Environment::CurrentReleaseVersion,
    /// computed as twox128("Environment") ++ twox128("CurrentReleaseVersion").
    #[arg(long, env = "ENGINE_SHIM_STORAGE_KEY", value_name = "HEX")]
    pub storage_key: Option<StorageKey>,
    /// Which version fields must match for an engine to be compatible with the release
    /// [default: major-minor]
    #[arg(long, env = "ENGINE_SHIM_RULE", value_enum)]
    pub rule: Option<Rule>,
    /// Log format [default: text]
    #[arg(long, env = "ENGINE_SHIM_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// How long a stopping engine gets between SIGTERM and SIGKILL (100ms to 1h) [default: 10s]
    #[arg(long, env = "ENGINE_SHIM_GRACE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub grace: Option<Duration>,
    /// A crashed engine that had stayed up this long restarts after 1 s again (back-off reset)
    /// (100ms to 1h) [default: 10s]
    #[arg(long, env = "ENGINE_SHIM_START_SECS", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub start_secs: Option<Duration>,
    /// Reconnect when no finalized head has arrived for this long (1s to 1h) [default: 60s]
    #[arg(long, env = "ENGINE_SHIM_STALE_AFTER", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub stale_after: Option<Duration>,
    /// Repeat the WAITING (and other "nothing runs") lines at most this often (1s to 24h)
    /// [default: 60s]
    #[arg(long, env = "ENGINE_SHIM_WAIT_LOG_EVERY", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub wait_log_every: Option<Duration>,
    /// Longest wait between reconnect attempts (back-off doubles from 250 ms up to this)
    /// (250ms to 1h) [default: 30s]
    #[arg(long, env = "ENGINE_SHIM_RECONNECT_MAX", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub reconnect_max: Option<Duration>,
    /// Keeps shims that share a data directory from running engines at once: `file:PATH` (an
    /// flock every such shim must name), or `none` for a shim that is alone by construction.
    /// Default: file:DIR/engine-shim.lock, DIR being --lock-dir, else the engine's
    /// `--config-root`, else /etc/chainflip.
    #[arg(long, env = "ENGINE_SHIM_LOCK", value_name = "SPEC")]
    pub lock: Option<String>,
    /// Directory of the default lock file (see --lock).
    #[arg(long, env = "ENGINE_SHIM_LOCK_DIR", value_name = "DIR")]
    pub lock_dir: Option<PathBuf>,
    /// PostgreSQL lock: `lease` (a row renewed with the database's clock), `advisory` (a session
    /// advisory lock) or `dual` (both) [default: lease]
    #[arg(long, env = "ENGINE_SHIM_LOCK_MODE", value_enum)]
    pub lock_mode: Option<LockMode>,
    /// PostgreSQL lock: which lock in the database, so validators can share one [default: engine-shim]
    #[arg(long, env = "ENGINE_SHIM_LOCK_NAME", value_name = "NAME")]
    pub lock_name: Option<String>,
    /// PostgreSQL lease lock: how long one renewal holds it (1s to 1h) [default: 5s]
    #[arg(long, env = "ENGINE_SHIM_LEASE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub lease: Option<Duration>,
    /// PostgreSQL lock: how often the holder renews, at most half the lease (100ms to
    /// 30m) [default: 1s]
    #[arg(long, env = "ENGINE_SHIM_RENEW", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub renew: Option<Duration>,
    /// After a hand-off (SIGUSR1 or `engine-shim handoff`), ask for no lock for this long, so
    /// another instance takes over (100ms to 24h) [default: 30s]
    #[arg(long, env = "ENGINE_SHIM_STANDBY", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub standby: Option<Duration>,
    /// Serve `GET /metrics` (Prometheus) and `GET /health` on this address, e.g. 127.0.0.1:9616
    /// (off unless given). /health answers 200 while finalized blocks keep arriving.
    #[arg(long, env = "ENGINE_SHIM_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Listen on this Unix socket for `engine-shim handoff` (off unless given).
    #[arg(long, env = "ENGINE_SHIM_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Without --engine: the engine command and its args. With --engine (or [[engine]] in the config
    /// file): args appended to every engine's own (shared args). `{block}` and `{block_hash}` are
    /// replaced with the first finalized block of the release the engine is started for.
    #[arg(last = true, value_name = "ARGS")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which-engine").required(true).args(["engine_version", "engine"])))]
pub struct CheckArgs {
    #[command(flatten)]
    pub chain: ChainArgs,
    /// The engine version to check.
    #[arg(long, env = "ENGINE_SHIM_ENGINE_VERSION")]
    pub engine_version: Option<SemVer>,
    /// An engine binary to probe with `PATH --version`.
    #[arg(long, env = "ENGINE_SHIM_ENGINE")]
    pub engine: Option<PathBuf>,
    /// Check at this block (0x-hash or decimal number) instead of the finalized head.
    #[arg(long)]
    pub at: Option<BlockSelector>,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
    /// Give up on the node after this long [default: 10s]
    #[arg(long, env = "ENGINE_SHIM_TIMEOUT", value_parser = crate::config::parse_check_timeout, value_name = "TIMEOUT")]
    pub timeout: Option<Duration>,
}

impl CheckArgs {
    /// The question as `check` takes it, with the defaults filled in.
    pub fn request(&self) -> CheckRequest {
        let engine = match (self.engine_version, &self.engine) {
            (Some(version), _) => EngineToCheck::Version(version),
            (None, Some(path)) => EngineToCheck::Program(path.clone()),
            (None, None) => unreachable!("clap requires --engine-version or --engine"),
        };
        CheckRequest {
            node: self.chain.node.clone(),
            storage_key: self.chain.release_key(),
            rule: self.chain.rule,
            engine,
            at: self.at,
            json: self.json,
            timeout: self.timeout.unwrap_or(defaults::CHECK_TIMEOUT),
        }
    }
}

impl From<RunArgs> for Overrides {
    fn from(args: RunArgs) -> Self {
        let RunArgs {
            config,
            engines,
            engine_version,
            node,
            storage_key,
            rule,
            log_format,
            grace,
            start_secs,
            stale_after,
            wait_log_every,
            reconnect_max,
            lock,
            lock_dir,
            lock_mode,
            lock_name,
            lease,
            renew,
            standby,
            metrics_listen,
            control_socket,
            command,
        } = args;
        Overrides {
            config,
            engines,
            engine_version,
            node,
            storage_key,
            rule,
            log_format,
            grace,
            start_secs,
            stale_after,
            wait_log_every,
            reconnect_max,
            lock,
            lock_dir,
            lock_mode,
            lock_name,
            lease,
            renew,
            standby,
            metrics_listen,
            control_socket,
            command,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, FileConfig};
    use clap::CommandFactory;

    /// `run`'s flags on their own, parsed by clap (flags and environment).
    #[derive(Debug, Parser)]
    struct RunOnly {
        #[command(flatten)]
        flags: RunArgs,
    }

    fn run_flags(args: &[&str]) -> RunArgs {
        RunOnly::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .unwrap()
            .flags
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        RunOnly::command().debug_assert();
    }

    #[test]
    fn default_storage_key_is_the_computed_one() {
        let cli =
            Cli::try_parse_from(["engine-shim", "check", "--engine-version", "1.0.0"]).unwrap();
        let Command::Check(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.chain.release_key(), crate::storage_key::release_key());
        let cli = Cli::try_parse_from([
            "engine-shim",
            "check",
            "--engine-version",
            "1.0.0",
            "--storage-key",
            "0x0a0b",
        ])
        .unwrap();
        let Command::Check(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.chain.release_key(), vec![10, 11]);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for argv in [
            &["engine-shim", "check"][..],
            &["engine-shim", "check", "--engine-version", "1.2"],
            &[
                "engine-shim",
                "check",
                "--engine-version",
                "1.0.0",
                "--at",
                "0x12",
            ],
            &["engine-shim", "run", "--grace", "soon", "--", "x"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
        for args in [
            &["--grace", "soon", "--", "x"][..],
            &["--rule", "minor", "--", "x"],
            &["--engine-version", "1.2", "--", "x"],
            &["--engine", "1.1=/usr/bin/engine"],
            &["--engine-version", "1.0.0", "--engine", "x"],
            // Without `--` a CMD is not taken, so a typo cannot become the engine.
            &["/usr/bin/engine"],
        ] {
            let err = RunOnly::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
                .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    /// clap cannot show a default it does not apply, so the help text states them; this keeps the
    /// text and [`crate::config`]'s constants in step.
    #[test]
    fn help_states_the_defaults_that_apply() {
        let command = RunOnly::command();
        let help = |id: &str| {
            command
                .get_arguments()
                .find(|arg| arg.get_id() == id)
                .and_then(|arg| arg.get_long_help().or(arg.get_help()))
                .unwrap_or_else(|| panic!("no help for {id}"))
                .to_string()
        };
        for (id, text, value) in [
            ("grace", "10s", defaults::GRACE),
            ("start_secs", "10s", defaults::START_SECS),
            ("stale_after", "60s", defaults::STALE_AFTER),
            ("wait_log_every", "60s", defaults::WAIT_LOG_EVERY),
            ("reconnect_max", "30s", defaults::RECONNECT_MAX),
            ("standby", "30s", defaults::STANDBY),
            ("lease", "5s", defaults::LEASE),
            ("renew", "1s", defaults::RENEW),
        ] {
            assert!(help(id).ends_with(&format!("[default: {text}]")), "{id}");
            assert_eq!(humantime::parse_duration(text).unwrap(), value, "{id}");
            // The accepted range too, as config.rs enforces it.
            let range = config::RUN_DURATIONS
                .iter()
                .find(|r| r.flag.replace('-', "_") == id)
                .unwrap_or_else(|| panic!("no range for {id}"));
            assert_eq!(range.default, value, "{id}");
            let stated = help(id);
            let (min, max) = stated
                .rsplit_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .and_then(|(range, _)| range.split_once(" to "))
                .unwrap_or_else(|| panic!("{id}: no (MIN to MAX) in its help"));
            let parse = |text| humantime::parse_duration(text).unwrap();
            assert_eq!((parse(min), parse(max)), (range.min, range.max), "{id}");
        }
        assert!(help("node").ends_with(&format!("[default: {}]", defaults::NODE)));
        assert!(help("rule").ends_with(&format!("[default: {}]", defaults::RULE.as_str())));
        assert!(help("log_format").ends_with("[default: text]"));
        assert_eq!(LogFormat::default(), LogFormat::Text);
    }

    /// The config file spells the choices as the flags do.
    #[test]
    fn config_choices_are_the_flags_values() {
        fn names<T: clap::ValueEnum + config::Choice>() -> (Vec<String>, Vec<String>) {
            let clap = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .map(|v| v.get_name().to_string())
                .collect();
            let config = T::ALL.iter().map(|c| c.name().to_string()).collect();
            (clap, config)
        }
        let (clap, config) = names::<Rule>();
        assert_eq!(clap, config);
        let (clap, config) = names::<LogFormat>();
        assert_eq!(clap, config);
    }

    /// `check` and `handoff` state their timeouts' defaults the same way.
    #[test]
    fn check_and_handoff_help_state_their_timeouts() {
        let cli = Cli::command();
        let help = |command: &str| {
            cli.find_subcommand(command)
                .and_then(|c| c.get_arguments().find(|arg| arg.get_id() == "timeout"))
                .and_then(|arg| arg.get_help())
                .unwrap()
                .to_string()
        };
        let stated = |text: String| {
            let value = text
                .rsplit_once("[default: ")
                .unwrap()
                .1
                .trim_end_matches(']');
            humantime::parse_duration(value).unwrap()
        };
        assert_eq!(stated(help("check")), defaults::CHECK_TIMEOUT);
        assert_eq!(stated(help("handoff")), defaults::HAND_OFF_TIMEOUT);
        assert_eq!(config::CHECK_TIMEOUT.default, defaults::CHECK_TIMEOUT);
    }

    /// The only test that sets an environment variable: the environment is shared by every test
    /// thread, so it uses one variable that no other test's outcome depends on.
    #[test]
    fn flag_beats_environment_beats_file_beats_default() {
        const VAR: &str = "ENGINE_SHIM_RECONNECT_MAX";
        let file = || FileConfig::parse("reconnect_max = \"5s\"", "f.toml".as_ref()).unwrap();
        let resolved = |args: &[&str], file: FileConfig| {
            Overrides::from(run_flags(args))
                .merge(file, None)
                .unwrap()
                .reconnect_max
        };
        std::env::set_var(VAR, "7s");
        let with_env = [
            resolved(&["--reconnect-max", "3s", "--", "e"], file()),
            resolved(&["--", "e"], file()),
        ];
        std::env::remove_var(VAR);
        let secs = Duration::from_secs;
        assert_eq!(with_env, [secs(3), secs(7)]);
        assert_eq!(resolved(&["--", "e"], file()), secs(5));
        assert_eq!(
            resolved(&["--", "e"], FileConfig::default()),
            defaults::RECONNECT_MAX
        );
    }
}
