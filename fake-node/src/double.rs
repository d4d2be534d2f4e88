//! The decisions of `fake-engine --node`: what a real Chainflip engine does at each finalized block.
//!
//! Two engines are modelled, because operators run both and a wrapper must cope with both:
//! - **one version** (the 1.0–1.3 packages): while not yet compatible it prints the WAITING line once
//!   per finalized block and holds nothing; at the first compatible block it starts; at the first
//!   no-longer-compatible block it prints the no-longer line and exits 1.
//! - **the runner** (since 1.4): one process covering an old and a new version. It tries new first,
//!   falls back to old when new is not yet compatible, switches from old to new *inside the same
//!   process* at the block where old stops being compatible, and exits 1 when the release leaves its
//!   pair. Its lines are the runner's own (`engine-runner-bin/src/main.rs` in chainflip-backend),
//!   including the `ExitStatus { status_code, at_block }` it prints for each inner exit.
//!
//! [`Double::step`] takes one finalized block and returns what to do; the binary carries that out
//! (prints, takes the data directory lock, writes events, exits). No I/O here, so every path is
//! tested directly.

use engine_shim::block::BlockRef;
use engine_shim::telemetry::{no_longer_line, waiting_line};
use engine_shim::version::{Compatibility, ReleaseError, Rule, SemVer};

/// The runner's message when its new version is no longer compatible on its first run, verbatim.
pub const UPDATE_YOUR_CFE: &str = "You need to update your CFE. The current version of the CFE you are running is not compatible with the latest runtime update.";

/// The inner engine's exit status codes, as `engine-upgrade-utils` defines them.
const NO_LONGER_COMPATIBLE: i32 = 1;
const NOT_YET_COMPATIBLE: i32 = 2;

/// Which engine the double is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Covers {
    /// A 1.0–1.3 engine: one version, waits inside itself.
    One(SemVer),
    /// Today's runner, linked against two engine versions.
    Runner { old: SemVer, new: SemVer },
}

impl Covers {
    /// The version `--version` prints: the runner names only its new version.
    pub fn reported(self) -> SemVer {
        match self {
            Covers::One(version) => version,
            Covers::Runner { new, .. } => new,
        }
    }
}

/// What to do after a block, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A line on stdout.
    Print(String),
    /// A line on stderr (the runner's final `Error: …`, as Rust prints an error returned from main).
    PrintErr(String),
    /// Take the data directory lock and start running as `version` from `block`.
    Start { version: SemVer, block: BlockRef },
    /// Keep the process and the lock; the active inner version becomes `to` from `block`.
    Switch {
        from: SemVer,
        to: SemVer,
        block: BlockRef,
    },
    /// The release does not fit (any more): release what is held and exit 1. `version` is the
    /// version that gave up (the active one, or the one that was tried).
    Exit {
        version: SemVer,
        block: BlockRef,
        release: SemVer,
    },
}

/// Where the double stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing runs yet (waiting for a known or compatible release).
    Idle,
    /// Running `version`. `switched` is true for a runner's new version started at a hand-over
    /// (its exit message differs from the one on a first run).
    Running { version: SemVer, switched: bool },
    /// Exited: later blocks change nothing.
    Done,
}

/// The per-block decisions of a fake engine that follows the node itself.
#[derive(Debug, Clone)]
pub struct Double {
    covers: Covers,
    rule: Rule,
    phase: Phase,
}

impl Double {
    pub fn new(covers: Covers) -> Self {
        Double {
            covers,
            rule: Rule::MajorMinor,
            phase: Phase::Idle,
        }
    }

    /// The version running now, if any.
    pub fn active(&self) -> Option<SemVer> {
        match self.phase {
            Phase::Running { version, .. } => Some(version),
            Phase::Idle | Phase::Done => None,
        }
    }

    /// One finalized block and the release read at it (every block, in order).
    pub fn step(&mut self, block: BlockRef, release: &Result<SemVer, ReleaseError>) -> Vec<Action> {
        let release = match release {
            Ok(release) => *release,
            Err(error) => return self.unknown_release(block, error),
        };
        match (self.covers, self.phase) {
            (_, Phase::Done) => Vec::new(),
            (Covers::One(version), _) => self.one_version(version, block, release),
            (Covers::Runner { old, new }, Phase::Idle) => {
                self.runner_first_run(old, new, block, release)
            }
            (Covers::Runner { old, new }, Phase::Running { version, switched }) => {
                if version == old {
                    self.runner_old_runs(old, new, block, release)
                } else {
                    self.runner_new_runs(old, new, switched, block, release)
                }
            }
        }
    }

    /// An unusable release value (absent, 0.0.0, malformed): never start on it; a running engine
    /// keeps running and decides on the next readable block.
    fn unknown_release(&self, block: BlockRef, error: &ReleaseError) -> Vec<Action> {
        let who = self.covers.reported();
        match self.phase {
            Phase::Idle => vec![Action::Print(format!(
                "fake-engine {who}: the release at block {block} is unknown ({error}); WAITING for a known release"
            ))],
            Phase::Running { version, .. } => vec![Action::Print(format!(
                "fake-engine {version}: the release at block {block} is unknown ({error}); running on"
            ))],
            Phase::Done => Vec::new(),
        }
    }

    /// A 1.0–1.3 engine: wait, start, or give up at the first no-longer-compatible block.
    fn one_version(&mut self, version: SemVer, block: BlockRef, release: SemVer) -> Vec<Action> {
        let running = self.active().is_some();
        match self.rule.compare(version, release) {
            Compatibility::Compatible if running => Vec::new(),
            Compatibility::Compatible => {
                self.phase = Phase::Running {
                    version,
                    switched: false,
                };
                vec![Action::Start { version, block }]
            }
            Compatibility::NotYetCompatible if !running => {
                vec![Action::Print(waiting_line(version, release, block.hash))]
            }
            // The release went back below a running engine: the real engine errors out.
            Compatibility::NotYetCompatible => self.exit(
                vec![Action::Print(format!(
                    "fake-engine {version}: the release went back to {release} at block {block}; exiting"
                ))],
                version,
                block,
                release,
            ),
            Compatibility::NoLongerCompatible => self.exit(
                vec![Action::Print(no_longer_line(version, release, block.hash))],
                version,
                block,
                release,
            ),
        }
    }

    /// The runner's first run: new first, then old when new is not yet compatible.
    fn runner_first_run(
        &mut self,
        old: SemVer,
        new: SemVer,
        block: BlockRef,
        release: SemVer,
    ) -> Vec<Action> {
        match self.rule.compare(new, release) {
            Compatibility::Compatible => self.start(new, block),
            Compatibility::NoLongerCompatible => self.new_outgrown(new, block, release),
            Compatibility::NotYetCompatible => {
                let mut actions = fall_back_to_old(old, new);
                actions.extend(self.runner_old_first(old, new, block, release));
                actions
            }
        }
    }

    /// Old's first check, right after new said "not yet compatible".
    fn runner_old_first(
        &mut self,
        old: SemVer,
        new: SemVer,
        block: BlockRef,
        release: SemVer,
    ) -> Vec<Action> {
        match self.rule.compare(old, release) {
            Compatibility::Compatible => match self.phase {
                // New was running and the release went back: the same process carries on as old.
                Phase::Running { version, .. } => {
                    self.phase = Phase::Running {
                        version: old,
                        switched: false,
                    };
                    vec![Action::Switch {
                        from: version,
                        to: old,
                        block,
                    }]
                }
                Phase::Idle | Phase::Done => self.start(old, block),
            },
            Compatibility::NotYetCompatible => self.old_refused(old, block, release),
            Compatibility::NoLongerCompatible => self.switch_to_new(old, new, block, release),
        }
    }

    /// Old runs; at its first no-longer-compatible block the process switches to new.
    fn runner_old_runs(
        &mut self,
        old: SemVer,
        new: SemVer,
        block: BlockRef,
        release: SemVer,
    ) -> Vec<Action> {
        match self.rule.compare(old, release) {
            Compatibility::Compatible => Vec::new(),
            Compatibility::NoLongerCompatible => self.switch_to_new(old, new, block, release),
            Compatibility::NotYetCompatible => self.old_refused(old, block, release),
        }
    }

    /// New, on its first run, is already older than the release: the runner asks for an update.
    fn new_outgrown(&mut self, new: SemVer, block: BlockRef, release: SemVer) -> Vec<Action> {
        self.exit(
            vec![
                Action::Print(new_exited_first(NO_LONGER_COMPATIBLE, block.number)),
                Action::PrintErr(format!("Error: {UPDATE_YOUR_CFE}")),
            ],
            new,
            block,
            release,
        )
    }

    /// Old answered "not yet compatible": the runner has no version for this release and exits.
    fn old_refused(&mut self, old: SemVer, block: BlockRef, release: SemVer) -> Vec<Action> {
        let status = exit_status(NOT_YET_COMPATIBLE, 0);
        self.exit(
            vec![
                Action::Print(format!("Old version has exited with exit status: {status}")),
                Action::PrintErr(format!(
                    "Error: An error has occurred running the old version with exit status: {status}"
                )),
            ],
            old,
            block,
            release,
        )
    }

    /// Old said "no longer compatible" at `block`: run new from that block in this process.
    fn switch_to_new(
        &mut self,
        old: SemVer,
        new: SemVer,
        block: BlockRef,
        release: SemVer,
    ) -> Vec<Action> {
        let mut actions = vec![
            Action::Print(format!(
                "Old version has exited with exit status: {}",
                exit_status(NO_LONGER_COMPATIBLE, block.number)
            )),
            Action::Print(format!(
                "Switching to the new version {new} after the old version {old} is no longer compatible."
            )),
        ];
        match self.rule.compare(new, release) {
            Compatibility::Compatible => {
                actions.push(match self.phase {
                    Phase::Running { .. } => Action::Switch {
                        from: old,
                        to: new,
                        block,
                    },
                    Phase::Idle | Phase::Done => Action::Start {
                        version: new,
                        block,
                    },
                });
                self.phase = Phase::Running {
                    version: new,
                    switched: true,
                };
                actions
            }
            Compatibility::NoLongerCompatible => {
                actions.push(new_exited_after_switch(NO_LONGER_COMPATIBLE, block.number));
                self.exit(actions, new, block, release)
            }
            Compatibility::NotYetCompatible => {
                actions.push(new_exited_after_switch(NOT_YET_COMPATIBLE, 0));
                self.exit(actions, new, block, release)
            }
        }
    }

    /// New runs (first run or after a switch) until the release leaves it.
    fn runner_new_runs(
        &mut self,
        old: SemVer,
        new: SemVer,
        switched: bool,
        block: BlockRef,
        release: SemVer,
    ) -> Vec<Action> {
        match self.rule.compare(new, release) {
            Compatibility::Compatible => Vec::new(),
            Compatibility::NoLongerCompatible if switched => self.exit(
                vec![new_exited_after_switch(NO_LONGER_COMPATIBLE, block.number)],
                new,
                block,
                release,
            ),
            Compatibility::NoLongerCompatible => self.new_outgrown(new, block, release),
            Compatibility::NotYetCompatible if switched => self.exit(
                vec![new_exited_after_switch(NOT_YET_COMPATIBLE, 0)],
                new,
                block,
                release,
            ),
            // On its first run the runner answers "not yet" by running old.
            Compatibility::NotYetCompatible => {
                let mut actions = fall_back_to_old(old, new);
                actions.extend(self.runner_old_first(old, new, block, release));
                actions
            }
        }
    }

    fn start(&mut self, version: SemVer, block: BlockRef) -> Vec<Action> {
        self.phase = Phase::Running {
            version,
            switched: false,
        };
        vec![Action::Start { version, block }]
    }

    fn exit(
        &mut self,
        mut actions: Vec<Action>,
        version: SemVer,
        block: BlockRef,
        release: SemVer,
    ) -> Vec<Action> {
        self.phase = Phase::Done;
        actions.push(Action::Exit {
            version,
            block,
            release,
        });
        actions
    }
}

/// The runner's lines when new answers "not yet compatible" on its first run.
fn fall_back_to_old(old: SemVer, new: SemVer) -> Vec<Action> {
    vec![
        Action::Print(new_exited_first(NOT_YET_COMPATIBLE, 0)),
        Action::Print(format!(
            "The latest version {new} is not yet compatible. Running the old version {old}..."
        )),
    ]
}

/// The inner engine's exit status as the runner prints it (`{:?}` of `ExitStatus`).
fn exit_status(status_code: i32, at_block: u64) -> String {
    format!("ExitStatus {{ status_code: {status_code}, at_block: {at_block} }}")
}

fn new_exited_first(status_code: i32, at_block: u64) -> String {
    format!(
        "The new version has exited with exit status: {}",
        exit_status(status_code, at_block)
    )
}

fn new_exited_after_switch(status_code: i32, at_block: u64) -> Action {
    Action::PrintErr(format!(
        "Error: New version has exited with exit status: {}",
        exit_status(status_code, at_block)
    ))
}

#[cfg(test)]
mod tests;
