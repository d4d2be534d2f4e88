//! `fake-engine --node URL`: the thin shell around [`fake_node::double::Double`].
//!
//! It follows finalized blocks with the shim's own follower (every block in order, gaps filled,
//! reconnects), hands each block to the double, and carries out what it answers: print, take the
//! data directory lock only when an engine really starts, write events, exit. Waiting holds nothing,
//! as a real not-yet-compatible engine acquires none of its resources.

use std::fs::File;
use std::process::ExitCode;

use engine_shim::block::BlockRef;
use engine_shim::follower::{follow, FollowerConfig, FollowerEvent};
use engine_shim::storage_key::release_key;
use fake_node::double::{Action, Covers, Double};
use serde_json::json;
use tokio::sync::mpsc;

use super::{leave_helper, lock_data_dir, say, Args, EventLog, Signals, CRASH_EXIT};

/// Exit status when the release does not fit (any more), as both real engines exit.
const INCOMPATIBLE_EXIT: u8 = 1;

/// Follows `url` until the release leaves the engine (exit 1) or a signal stops it (exit 0).
pub async fn run(args: &Args, covers: Covers, url: &str, signals: Signals) -> ExitCode {
    let Signals { mut term, mut int } = signals;
    let log = EventLog::new(args);
    let (sender, mut blocks) = mpsc::channel(64);
    tokio::spawn(follow(FollowerConfig::new(url, release_key()), sender));
    let mut double = Double::new(covers);
    let mut lock: Option<File> = None;
    let crash = tokio::time::sleep(std::time::Duration::MAX / 4);
    tokio::pin!(crash);
    let mut crash_armed = false;

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
                    match action {
                        Action::Print(line) => say(&line),
                        Action::PrintErr(line) => eprintln!("{line}"),
                        Action::Start { version, block } => {
                            if let Some(dir) = &args.data_dir {
                                match lock_data_dir(dir) {
                                    Ok(file) => lock = Some(file),
                                    Err(error) => {
                                        eprintln!("fake-engine {version}: {error}");
                                        log.write_fields("lock_failed", version, json!({ "error": error, "data_dir": dir.display().to_string() }));
                                        return ExitCode::FAILURE;
                                    }
                                }
                            }
                            log.write_fields("start", version, block_fields(block));
                            if args.leave_helper {
                                match leave_helper(lock.as_ref()) {
                                    Ok(pid) => log.write_as("helper", pid, None),
                                    Err(error) => eprintln!("fake-engine: cannot start the helper: {error}"),
                                }
                            }
                            say(&format!("fake-engine {version} started pid {} at block {block}", std::process::id()));
                            if let Some(after) = args.crash_after {
                                crash.as_mut().reset(tokio::time::Instant::now() + after);
                                crash_armed = true;
                            }
                        }
                        Action::Switch { from, to, block } => {
                            let mut fields = block_fields(block);
                            fields["from"] = from.to_string().into();
                            log.write_fields("switch", to, fields);
                            say(&format!("fake-engine switched from {from} to {to} at block {block} in pid {}", std::process::id()));
                        }
                        Action::Exit { version, block, release } => {
                            // Written while the lock is still held, like `stop`.
                            let mut fields = block_fields(block);
                            fields["release"] = release.to_string().into();
                            log.write_fields("exit_incompatible", version, fields);
                            if let Some(lock) = lock.take() {
                                let _ = lock.unlock();
                            }
                            return ExitCode::from(INCOMPATIBLE_EXIT);
                        }
                    }
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
            () = &mut crash, if crash_armed => {
                let version = double.active().unwrap_or(covers.reported());
                log.write_fields("crash", version, json!({}));
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
            log.write_fields("stop", version, json!({}));
            if let Some(lock) = lock {
                let _ = lock.unlock();
            }
        }
        None => say(&format!(
            "fake-engine {} stopping (it was waiting and held nothing)",
            covers.reported()
        )),
    }
    ExitCode::SUCCESS
}

/// The block an event happened at, as `block` (number) and `block_hash`.
fn block_fields(block: BlockRef) -> serde_json::Value {
    json!({ "block": block.number, "block_hash": block.hash.to_string() })
}
