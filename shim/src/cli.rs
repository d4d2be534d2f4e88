//! Command-line interface: flags, their environment variables, and their defaults.
//!
//! Every flag can also be set through an `ENGINE_SHIM_*` environment variable, so systemd units and
//! container specs can configure the shim without rewriting the command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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
    Run(RunArgs),
    /// Ask once whether an engine is compatible with the chain; the answer is the exit code.
    Check(CheckArgs),
}

/// Flags shared by `run` and `check`: where the chain is and how to read its release.
#[derive(Debug, Args, Clone)]
pub struct ChainArgs {
    /// WebSocket URL of the node's JSON-RPC.
    #[arg(long, env = "ENGINE_SHIM_NODE", default_value = "ws://127.0.0.1:9944")]
    pub node: String,
    /// Storage key of the release value (hex). Default: Environment::CurrentReleaseVersion,
    /// computed as twox128("Environment") ++ twox128("CurrentReleaseVersion").
    #[arg(long, env = "ENGINE_SHIM_STORAGE_KEY")]
    pub storage_key: Option<StorageKey>,
    /// Which version fields must match for an engine to be compatible with the release.
    #[arg(long, env = "ENGINE_SHIM_RULE", value_enum, default_value_t = Rule::MajorMinor)]
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

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub chain: ChainArgs,
    /// The engine's version. Without it the shim runs `CMD --version` once and takes the first X.Y.Z.
    #[arg(long, env = "ENGINE_SHIM_ENGINE_VERSION")]
    pub engine_version: Option<SemVer>,
    /// How long a stopping engine gets between SIGTERM and SIGKILL.
    #[arg(long, env = "ENGINE_SHIM_GRACE", value_parser = humantime::parse_duration, default_value = "10s")]
    pub grace: Duration,
    /// A crashed engine that had stayed up this long restarts after 1 s again (back-off reset).
    #[arg(long, env = "ENGINE_SHIM_START_SECS", value_parser = humantime::parse_duration, default_value = "10s")]
    pub start_secs: Duration,
    /// Reconnect when no finalized head has arrived for this long.
    #[arg(long, env = "ENGINE_SHIM_STALE_AFTER", value_parser = humantime::parse_duration, default_value = "60s")]
    pub stale_after: Duration,
    /// Repeat the WAITING (and other "nothing runs") lines at most this often.
    #[arg(long, env = "ENGINE_SHIM_WAIT_LOG_EVERY", value_parser = humantime::parse_duration, default_value = "60s")]
    pub wait_log_every: Duration,
    /// Longest wait between reconnect attempts (back-off doubles from 250 ms up to this).
    #[arg(long, env = "ENGINE_SHIM_RECONNECT_MAX", value_parser = humantime::parse_duration, default_value = "30s")]
    pub reconnect_max: Duration,
    /// The engine command and its arguments. `{block}` and `{block_hash}` are replaced with the
    /// first finalized block of the release the engine is started for.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl RunArgs {
    pub fn program(&self) -> PathBuf {
        PathBuf::from(&self.command[0])
    }
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
    pub at: Option<crate::check::BlockSelector>,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
    /// Give up on the node after this long.
    #[arg(long, env = "ENGINE_SHIM_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
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
            &["engine-shim", "run"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }
}
