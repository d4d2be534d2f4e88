//! The one table of defaults: every value the shim uses when the operator gives none.
//!
//! Flags, the config file and the internal settings derived from them all read their defaults
//! here, so the help text, the README and the running shim cannot drift apart (a test in `cli`
//! checks the help text against this table, and `config` checks every duration's range against
//! it). The log format's default is `LogFormat::default()` (text). This module depends on nothing
//! but the version rule and the lock's own defaults, so any layer may use it.

use std::time::Duration;

/// The PostgreSQL lock's defaults (`--lock-name`, `--lease`, `--renew`) are defined with the lock,
/// which checks its own rules against them; they are part of this table all the same.
pub use crate::lock::{
    DEFAULT_LEASE as LEASE, DEFAULT_LOCK_NAME as LOCK_NAME, DEFAULT_RENEW as RENEW,
};
use crate::version::Rule;

/// `--node`: a node on this host, at Substrate's default RPC port.
pub const NODE: &str = "ws://127.0.0.1:9944";
/// `--rule`: Chainflip's rule, major and minor match.
pub const RULE: Rule = Rule::MajorMinor;
/// `--grace`: time between SIGTERM and SIGKILL when stopping an engine.
pub const GRACE: Duration = Duration::from_secs(10);
/// `--start-secs`: uptime after which a crash restarts after 1 s again.
pub const START_SECS: Duration = Duration::from_secs(10);
/// `--stale-after`: no new finalized head for this long ⇒ reconnect.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// `--wait-log-every`: how often a "nothing runs" line may repeat.
pub const WAIT_LOG_EVERY: Duration = Duration::from_secs(60);
/// `--reconnect-max`: cap of the reconnect back-off.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// `--standby`: how long a handed-off instance asks for no lock.
pub const STANDBY: Duration = Duration::from_secs(30);
/// The program each engine runs under as its guardian: this very binary, even if an upgrade has
/// replaced the file on disk since. Only a program that runs the shell in-process (a test) names
/// the `engine-shim` binary instead.
pub const GUARDIAN: &str = "/proc/self/exe";
/// `check --timeout`: how long `check` waits for the node.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// `handoff --timeout`: how long `handoff` waits for the hand-off to complete.
pub const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(60);

/// The follower's settings that have no flag. Documented in the README (pings, "250 ms doubling").
pub mod follower {
    use std::time::Duration;

    /// WebSocket ping interval, at most this and never above `--stale-after`, so a half-open
    /// connection is found before the staleness timer would.
    pub const PING_INTERVAL_MAX: Duration = Duration::from_secs(10);
    /// Longest wait for any single answer from the node.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    /// First reconnect delay; it doubles up to `--reconnect-max`.
    pub const RECONNECT_FIRST: Duration = Duration::from_millis(250);
    /// How often a syncing node is asked whether it has finished.
    pub const SYNCING_POLL: Duration = Duration::from_secs(2);
}
