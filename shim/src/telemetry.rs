//! Log set-up and the wording of every line an operator may grep for.
//!
//! The gate and the follower say *what* happened; this module says it in words. The WAITING and
//! "no longer compatible" lines keep Chainflip's exact wording so existing alerts keep working.
//! In JSON mode each line is tracing's `{"timestamp","level","fields":{"message",…},"target"}`,
//! the same shape the engine itself logs. Lines pass through [`sink`] (never blocks, counts
//! what it drops) and [`scrub`] (no forged lines, no passwords) on their way out.

mod scrub;
mod sink;

use std::time::Duration;

use tracing::{error, info, warn};

pub use sink::{dropped_lines, LogGuard};

use crate::follower::FollowerEvent;
use crate::gate::{Notice, StartKind};
use crate::version::SemVer;

/// How log lines are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber, writing through a [`sink::Sink`] to stdout (or stderr): log
/// calls never wait for the output, and every line is cleaned by [`scrub::clean_line`] (controls
/// escaped, passwords redacted). `RUST_LOG` overrides the default `info` level. Keep the guard
/// until the process exits: dropping it gives the last lines a bounded time to be written.
pub fn init(format: LogFormat, to_stderr: bool) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sink = sink::Sink::start(format, to_stderr);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(sink.clone());
    // `try_init` so a second call (tests) is harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    LogGuard::new(sink)
}

/// Chainflip's waiting line, verbatim.
pub fn waiting_line(engine: SemVer, release: SemVer, hash: impl std::fmt::Display) -> String {
    format!(
        "This version '{engine}' is incompatible with the current release '{release}' at block: {hash}. WAITING for a compatible release version."
    )
}

/// Chainflip's line when a running engine meets the first incompatible finalized block, verbatim.
pub fn no_longer_line(engine: SemVer, release: SemVer, hash: impl std::fmt::Display) -> String {
    format!(
        "This version '{engine}' is no longer compatible with the release version '{release}' at block: {hash}"
    )
}

fn versions(list: &[SemVer]) -> String {
    list.iter()
        .map(SemVer::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// Logs a gate notice.
pub fn notice(notice: &Notice) {
    match notice {
        Notice::Starting {
            engine,
            release,
            block,
            kind,
        } => {
            let verb = match kind {
                StartKind::Fresh => "starting",
                StartKind::Restart => "restarting",
            };
            info!(
                engine_version = %engine.newest(), release = %release, block_number = block.number, block_hash = %block.hash,
                "{verb} engine {engine}: compatible with release {release} since block #{} ({})",
                block.number, block.hash
            );
        }
        Notice::Waiting {
            engine,
            release,
            block,
        } => info!(
            engine_version = %engine, release = %release, block_number = block.number, block_hash = %block.hash,
            "{}", waiting_line(*engine, *release, block.hash)
        ),
        Notice::NoLongerCompatible {
            engine,
            release,
            block,
        } => warn!(
            engine_version = %engine, release = %release, block_number = block.number, block_hash = %block.hash,
            "{}", no_longer_line(*engine, *release, block.hash)
        ),
        Notice::ReleaseMovedBack {
            engine,
            release,
            block,
        } => warn!(
            engine_version = %engine, release = %release, block_number = block.number, block_hash = %block.hash,
            "This version '{engine}' is not yet compatible with the release version '{release}' at block: {} (the release moved back); stopping it",
            block.hash
        ),
        Notice::NoCompatibleEngine {
            release,
            block,
            installed,
        } => {
            let head = format!(
                "no installed engine is compatible with release {release} at block #{} ({}); installed: {}",
                block.number,
                block.hash,
                versions(installed)
            );
            // Every engine ahead of the chain is the normal wait before an upgrade, not a fault.
            if installed.iter().all(|engine| engine > release) {
                info!(
                    release = %release, block_number = block.number, block_hash = %block.hash, installed = %versions(installed),
                    "{head}; waiting for the upgrade"
                );
            } else {
                warn!(
                    release = %release, block_number = block.number, block_hash = %block.hash, installed = %versions(installed),
                    "{head}; install a {}.{}.x engine (or run it in another shim sharing the lock)",
                    release.major, release.minor
                );
            }
        }
        Notice::ReleaseUnknown {
            block,
            error,
            running,
        } => {
            let state = match running {
                Some(engine) => format!("keeping engine {engine} running"),
                None => "starting nothing".to_string(),
            };
            error!(
                block_number = block.number, block_hash = %block.hash, error = %error,
                "cannot use the release at block #{} ({}): {error}; {state}",
                block.number, block.hash
            );
        }
        Notice::Crashed {
            engine,
            status,
            uptime,
            restart_in,
            unconfirmed: None,
        } => error!(
            engine_version = %engine.newest(), status = %status, restart_in_ms = restart_in.as_millis() as u64,
            "engine {engine} exited unexpectedly ({status}) after {}; restarting in {}",
            secs(*uptime), secs(*restart_in)
        ),
        Notice::Crashed {
            engine,
            status,
            uptime,
            restart_in,
            unconfirmed: Some(why),
        } => error!(
            engine_version = %engine, status = %status, restart_in_ms = restart_in.as_millis() as u64, error = %why,
            "engine {engine} exited unexpectedly ({status}) after {}, and the release at the finalized head cannot be read ({why}); restarting in {} once the node confirms the release still fits",
            secs(*uptime), secs(*restart_in)
        ),
        Notice::ExitedAtUpgrade {
            engine,
            release,
            block,
            status,
        } => info!(
            engine_version = %engine, release = %release, block_number = block.number, block_hash = %block.hash, status = %status,
            "engine {engine} exited at the upgrade to {release} ({status}; release {release} at finalized block #{} ({})); not restarting it, the next engine starts at the upgrade block",
            block.number, block.hash
        ),
        Notice::RestartDeferred {
            engine,
            error,
            retry_in,
        } => warn!(
            engine_version = %engine, error = %error, retry_in_ms = retry_in.as_millis() as u64,
            "not restarting engine {engine} yet: the release at the finalized head cannot be read ({error}); asking again in {}",
            secs(*retry_in)
        ),
        Notice::Fenced { engine, reason } => error!(
            engine_version = %engine.newest(), reason = %reason,
            "lost the lock: {reason}; stopping engine {engine} now (fencing)"
        ),
        Notice::HandingOff {
            engine: Some(engine),
        } => info!(
            engine_version = %engine.newest(),
            "hand-off requested: stopping engine {engine}, then giving the lock back and standing by"
        ),
        Notice::HandingOff { engine: None } => {
            info!("hand-off requested: no engine runs here; giving any lock back and standing by")
        }
        Notice::StandbyOver => {
            info!("stand-by after the hand-off is over; competing for the lock again")
        }
        Notice::ShutdownRequested { signal } => {
            info!("{signal} received: stopping the engine and exiting")
        }
        Notice::ShutdownAgain { signal } => warn!("{signal} again: killing the engine now"),
        Notice::Stopped { engine, status } => info!(
            engine_version = %engine.newest(), status = %status,
            "engine {engine} stopped ({status})"
        ),
    }
}

/// Logs what the follower reports about the node.
pub fn follower_event(event: &FollowerEvent) {
    match event {
        FollowerEvent::Connected { url, finalized } => info!(
            node = %url, block_number = finalized.number, block_hash = %finalized.hash,
            "connected to node {url}; finalized head #{} ({})", finalized.number, finalized.hash
        ),
        FollowerEvent::Syncing { url } => warn!(
            node = %url,
            "node at {url} is syncing; waiting before reading the release"
        ),
        FollowerEvent::Disconnected { reason, retry_in } => warn!(
            retry_in_ms = retry_in.as_millis() as u64,
            "lost the node: {reason}; reconnecting in {} (the engine's state is kept)",
            secs(*retry_in)
        ),
        FollowerEvent::Behind {
            url,
            last_processed,
            node_finalized,
        } => warn!(
            node = %url, last_processed, node_finalized,
            "node at {url} reports finalized block #{node_finalized}, behind #{last_processed} already processed; waiting for it to pass #{last_processed}"
        ),
        FollowerEvent::WrongChain { url, mismatch } => error!(
            node = %url, mismatch = %mismatch,
            "node at {url} serves another chain: {mismatch}; nothing is started or stopped on its blocks and the engines are left as they are; point --node at a node of the followed chain (asking this one again after a back-off)"
        ),
        FollowerEvent::Block { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chainflip_wording_is_verbatim() {
        let hash = "0x4d66fb38";
        assert_eq!(
            waiting_line(SemVer::new(1, 1, 0), SemVer::new(1, 0, 0), hash),
            "This version '1.1.0' is incompatible with the current release '1.0.0' at block: 0x4d66fb38. WAITING for a compatible release version."
        );
        assert_eq!(
            no_longer_line(SemVer::new(1, 0, 0), SemVer::new(1, 1, 0), hash),
            "This version '1.0.0' is no longer compatible with the release version '1.1.0' at block: 0x4d66fb38"
        );
    }
}
