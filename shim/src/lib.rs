//! engine-shim: runs exactly the engine version compatible with the chain's on-chain release.
//!
//! Data flows one way: the [`follower`] turns finalized blocks into observations, the pure [`gate`]
//! turns observations and child exits into actions, and the [`supervisor`] carries them out on real
//! processes. [`check`] answers the same compatibility question once, for scripts and CI.

pub mod accept;
pub mod backoff;
pub mod block;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod covers;
pub mod defaults;
pub mod elf;
pub mod follower;
pub mod gate;
pub mod guardian;
pub mod handoff_pid;
pub mod head;
pub mod lock;
pub mod metrics;
pub mod preflight;
pub mod probe;
pub mod rpc;
pub mod run;
pub mod storage_key;
pub mod supervisor;
pub mod telemetry;
pub mod version;
pub mod watch;

#[cfg(test)]
mod layers;
