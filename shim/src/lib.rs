//! engine-shim: runs exactly the engine version compatible with the chain's on-chain release.
//!
//! Data flows one way: the [`follower`] turns finalized blocks into observations, the pure [`gate`]
//! turns observations and child exits into actions, and the [`supervisor`] carries them out on real
//! processes. [`check`] answers the same compatibility question once, for scripts and CI.

pub(crate) mod accept;
pub(crate) mod backoff;
pub mod block;
pub mod check;
pub mod cli;
pub mod config;
pub(crate) mod control;
pub(crate) mod covers;
pub mod defaults;
pub(crate) mod elf;
pub mod follower;
pub(crate) mod gate;
pub(crate) mod guardian;
pub(crate) mod handoff_pid;
pub(crate) mod head;
pub mod lock;
pub(crate) mod metrics;
pub(crate) mod preflight;
pub(crate) mod probe;
pub(crate) mod rpc;
pub mod run;
pub mod storage_key;
pub(crate) mod supervisor;
pub mod telemetry;
pub mod version;
pub(crate) mod watch;

// What the binary needs beyond the public modules: the guardian it becomes when the supervisor
// starts it, and the two ways `engine-shim handoff` reaches a running instance.
pub use control::request_hand_off;
pub use guardian::{main as guardian_main, SUBCOMMAND as GUARDIAN_SUBCOMMAND};
pub use handoff_pid::{send_hand_off, HandOffPidError};

#[cfg(test)]
mod layers;
