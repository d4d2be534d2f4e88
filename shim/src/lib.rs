//! engine-shim: runs exactly the engine version compatible with the chain's on-chain release.
//!
//! Data flows one way: the [`follower`] turns finalized blocks into observations, the pure gate
//! turns observations and child exits into actions, and the supervisor carries them out on real
//! processes. [`check`] answers the same compatibility question once, for scripts and CI.
//!
//! # Public API
//! Small on purpose; everything else is crate-private so it can change freely.
//! - [`run::run`]`(config, requests)`: the `run` shell. It takes a plain [`config::RunConfig`] and
//!   a channel of [`run::Request`]s (shutdown, step-down, reload); the binary installs the OS
//!   signal handlers and turns signals into requests, so a test can run the shell in-process.
//! - [`check::run`]`(request)`: the `check` answer for a plain [`check::CheckRequest`].
//! - [`config`]: the settings as clap-free layers ([`config::Overrides`] over the config file
//!   over [`defaults`], the one table of defaults).
//! - [`cli`]: the flags (clap), turned into the plain values above; used by the binary only.
//! - [`follower`]: every finalized block in order with the release at it (used by fake-engine
//!   and the benchmarks).
//! - [`block`], [`version`], [`storage_key`], and the Chainflip log lines in [`telemetry`]: the
//!   vocabulary fake-node shares with the shim.
//! - [`guardian_main`], [`request_step_down`], [`send_step_down`]: what the binary becomes or calls
//!   besides the shells.
//!
//! # Layers
//! Modules depend downwards only; a unit test (`layers`) fails on any import circle:
//! 1. vocabulary: `block`, `version`, `storage_key`, `backoff`, `pace`, `covers`, `defaults`;
//! 2. machines and I/O pieces: `gate` (pure), `lock`, `rpc`, `follower`, `supervisor`,
//!    `deadline_kill`, `guardian`, `probe`, `elf`, `watch`, `head`, `control`, `metrics`, `telemetry`;
//! 3. settings: `config` (clap-free);
//! 4. shells: `run`, `check`;
//! 5. edge: `cli` (clap) and the binary (`main.rs`: flags, signals, exit codes).

pub(crate) mod accept;
pub(crate) mod backoff;
pub mod block;
pub mod check;
pub mod cli;
pub mod config;
pub(crate) mod control;
pub(crate) mod covers;
pub(crate) mod deadline_kill;
pub mod defaults;
pub(crate) mod elf;
pub mod follower;
pub(crate) mod gate;
pub(crate) mod guardian;
pub(crate) mod head;
pub(crate) mod lock;
pub(crate) mod metrics;
pub(crate) mod pace;
pub(crate) mod preflight;
pub(crate) mod probe;
pub(crate) mod rpc;
pub mod run;
pub(crate) mod step_down_pid;
pub mod storage_key;
pub(crate) mod supervisor;
pub mod telemetry;
pub mod version;
pub(crate) mod watch;

// What the binary needs beyond the public modules: the guardian it becomes when the supervisor
// starts it, and the two ways `engine-shim step-down` reaches a running instance.
pub use control::request_step_down;
pub use guardian::{main as guardian_main, SUBCOMMAND as GUARDIAN_SUBCOMMAND};
pub use step_down_pid::{send_step_down, StepDownPidError};

#[cfg(test)]
mod layers;
