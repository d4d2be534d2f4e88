//! `fake-engine --node URL`: the thin shell around [`fake_node::double::Double`].
//!
//! It follows finalized blocks with the shim's own follower (every block in order, gaps filled,
//! reconnects), hands each block to the double, and carries out what it answers: print, take the
//! data directory lock only when an engine really starts, write events, exit. Waiting holds nothing,
//! as a real not-yet-compatible engine acquires none of its resources.

use std::fs::File;
use std::process::ExitCode;
use std::time::Duration;

use engine_shim::block::BlockRef;
use engine_shim::follower::{follow, FollowerConfig, FollowerEvent};
use engine_shim::storage_key::release_key;
use fake_node::double::{Action, Covers, Double};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{leave_helper, lock_data_dir, say, Args, EventLog, Signals, CRASH_EXIT};

/// Exit status when the release does not fit (any more), as both real engines exit.
const INCOMPATIBLE_EXIT: u8 = 1;

/// Follows `url` until the release leaves the engine (exit 1) or a signal stops it (exit 0).
pub async fn run(args: &Args, covers: Covers, url: &str, signals: Signals) -> ExitCode {
    let Signals { mut term, mut int } = signals;
    let (sender, mut blocks) = mpsc::channel(64);
    tokio::spawn(follow(FollowerConfig::new(url, release_key()), sender));
    let mut shell = Shell {
        args,
        log: EventLog::new(args),
        lock: None,
        crash_at: None,
    };
    let mut double = Double::new(covers);
    // Armed at the start; until then it sleeps "forever".
    let crash = tokio::time::sleep(Duration::from_secs(u32::MAX.into()));
    tokio::pin!(crash);

    loop {
        tokio::select! {
            event = blocks.recv() => {
                let Some(event) = event else {
                    eprintln!("fake-engine: the follower stopped unexpectedly");
                    return ExitCode::FAILURE;
                };
                let FollowerEvent::Block { block, release } = event else {
                    eprintln!("fake-engine: node: {event:?}");
                    continue;
                };
                for action in double.step(block, &release) {
                    if let Some(exit) = shell.carry_out(action) {
                        return exit;
                    }
                }
                if let Some(at) = shell.crash_at.take() {
                    crash.as_mut().reset(at);
                }
            }
            _ = term.recv() => {
                if args.ignore_term {
                    say(&format!("fake-engine {} ignoring SIGTERM", covers.reported()));
                    continue;
                }
                break;
            }
            _ = int.recv() => break,
            () = &mut crash => {
                let version = double.active().unwrap_or(covers.reported());
                shell.log.write_fields("crash", version, json!({}));
                eprintln!("fake-engine {version} crashing as told (--crash-after)");
                std::process::exit(CRASH_EXIT.into());
            }
        }
    }

    match double.active() {
        Some(version) => {
            say(&format!("fake-engine {version} stopping"));
            tokio::time::sleep(args.shutdown_delay).await;
            // As in passive mode: `stop` while the lock is still held.
            shell.log.write_fields("stop", version, json!({}));
            shell.unlock();
        }
        None => say(&format!(
            "fake-engine {} stopping (it was waiting and held nothing)",
            covers.reported()
        )),
    }
    ExitCode::SUCCESS
}

/// What the engine holds and records while it follows the node.
struct Shell<'a> {
    args: &'a Args,
    log: EventLog,
    lock: Option<File>,
    /// Set at the start when `--crash-after` asks for a crash.
    crash_at: Option<Instant>,
}

impl Shell<'_> {
    /// Carries out one action; `Some` is the exit status when the engine must end now.
    fn carry_out(&mut self, action: Action) -> Option<ExitCode> {
        match action {
            Action::Print(line) => say(&line),
            Action::PrintErr(line) => eprintln!("{line}"),
            Action::Start { version, block } => {
                if let Some(dir) = &self.args.data_dir {
                    match lock_data_dir(dir) {
                        Ok(file) => self.lock = Some(file),
                        Err(error) => {
                            eprintln!("fake-engine {version}: {error}");
                            let fields =
                                json!({ "error": error, "data_dir": dir.display().to_string() });
                            self.log.write_fields("lock_failed", version, fields);
                            return Some(ExitCode::FAILURE);
                        }
                    }
                }
                self.log.write_fields("start", version, block_fields(block));
                if self.args.leave_helper {
                    match leave_helper(self.lock.as_ref()) {
                        Ok(pid) => self.log.write_as("helper", pid, None),
                        Err(error) => eprintln!("fake-engine: cannot start the helper: {error}"),
                    }
                }
                say(&format!(
                    "fake-engine {version} started pid {} at block {block}",
                    std::process::id()
                ));
                self.crash_at = self.args.crash_after.map(|after| Instant::now() + after);
            }
            Action::Switch { from, to, block } => {
                let mut fields = block_fields(block);
                fields["from"] = from.to_string().into();
                self.log.write_fields("switch", to, fields);
                say(&format!(
                    "fake-engine switched from {from} to {to} at block {block} in pid {}",
                    std::process::id()
                ));
            }
            Action::Exit {
                version,
                block,
                release,
            } => {
                // Written while the lock is still held, like `stop`.
                let mut fields = block_fields(block);
                fields["release"] = release.to_string().into();
                self.log.write_fields("exit_incompatible", version, fields);
                self.unlock();
                return Some(ExitCode::from(INCOMPATIBLE_EXIT));
            }
        }
        None
    }

    fn unlock(&mut self) {
        if let Some(lock) = self.lock.take() {
            let _ = lock.unlock();
        }
    }
}

/// The block an event happened at, as `block` (number) and `block_hash`.
fn block_fields(block: BlockRef) -> serde_json::Value {
    json!({ "block": block.number, "block_hash": block.hash.to_string() })
}
