//! Scripted scenarios: what happens at which block, read from a TOML file.
//!
//! A scenario makes a CI run repeatable: the same file gives the same blocks, hashes and events
//! whatever the timing, because steps are tied to block numbers, not to clocks. Steps fire when
//! their block is built — by the block timer or by `dev_newBlock` alike.
//!
//! ```toml
//! release = "1.0.0"        # genesis release; "none" leaves the key without a value
//! block_time = "500ms"     # humantime; "0s" = manual (dev_newBlock only)
//! finality_lag = 1         # finalized = best − lag
//! chain = "chainflip"      # chain identity preset (fake-node, chainflip)
//!
//! [[step]]
//! at = 10                  # fires when block #10 is built
//! release = "1.1.0"        # the value read at block #10 is 1.1.0
//!
//! [[step]]
//! at = 12
//! stall_finality = true    # block #12 is not finalized…
//!
//! [[step]]
//! at = 20
//! stall_finality = false   # …until #20, when finality jumps in one notification
//! ```
//!
//! Step fields (any combination; at least one besides `at`):
//! - `release = "X.Y.Z" | "none"`, `release_raw = "0x…"` (any bytes, e.g. a malformed value),
//!   `storage = [{ key = "0x…", value = "0x…" }, { key = "0x…" }]` (no `value` deletes):
//!   storage changes, visible in the state of block `at` itself.
//! - `stall_finality = bool`, `finality_lag = N`, `syncing = bool`.
//! - `fault = { method = "state_getStorage", mode = "garbage" }` (modes: none, garbage, non_hex,
//!   error, hang).
//! - `drop_connections = true`: drops every client connection once block `at` is built.
//!
//! Within one step, storage changes apply first, then finality, syncing and fault settings, then
//! the connection drop. Several steps may share a block; they fire in file order. Steps at
//! `at = 0` shape the genesis block.

use std::path::Path;
use std::time::Duration;

use engine_shim::storage_key::release_key;
use engine_shim::version::SemVer;
use parity_scale_codec::Encode;
use serde::Deserialize;

use crate::chain::StorageChange;
use crate::fault::{canonical_method, Fault, FaultMode};
use crate::preset::ChainPreset;

/// One thing a step does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Queue storage changes; they are part of the block being built.
    SetStorage(Vec<StorageChange>),
    StallFinality(bool),
    SetFinalityLag(u64),
    SetSyncing(bool),
    SetFault(Fault),
    DropConnections,
}

/// Actions that fire when block `at` is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub at: u64,
    pub actions: Vec<Action>,
}

/// A parsed scenario. Absent top-level fields leave the command line (or library) settings alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scenario {
    /// Genesis release: `Some(None)` means "no value at genesis".
    pub release: Option<Option<SemVer>>,
    pub block_time: Option<Duration>,
    pub finality_lag: Option<u64>,
    /// Chain identity preset.
    pub chain: Option<ChainPreset>,
    /// Steps sorted by block number, file order kept within a block.
    pub steps: Vec<Step>,
}

/// Why a scenario could not be used; the message names the file, step and fix.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario is not valid TOML for fake-node: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("scenario: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    release: Option<String>,
    block_time: Option<String>,
    finality_lag: Option<u64>,
    chain: Option<String>,
    #[serde(default, rename = "step")]
    steps: Vec<StepFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    at: u64,
    release: Option<String>,
    release_raw: Option<String>,
    storage: Option<Vec<StorageEntryFile>>,
    stall_finality: Option<bool>,
    finality_lag: Option<u64>,
    syncing: Option<bool>,
    fault: Option<FaultFile>,
    drop_connections: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageEntryFile {
    key: String,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    method: String,
    mode: String,
}

/// Parses a release as given on the command line or in a scenario: `X.Y.Z`, or `none` for "no
/// value at all".
pub fn parse_release(text: &str) -> Result<Option<SemVer>, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    text.parse::<SemVer>()
        .map(Some)
        .map_err(|e| format!("{e} (or 'none' for no release value)"))
}

/// Parses `0x`-prefixed (or bare) hex bytes; empty is allowed for values.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    hex::decode(digits).map_err(|e| format!("'{text}' is not hex: {e}"))
}

/// The storage change that sets (or removes) the release.
pub fn release_change(release: Option<SemVer>) -> StorageChange {
    (release_key(), release.map(|v| v.encode()))
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::from_toml(&text)
    }

    /// Parses and validates scenario text.
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text)?;
        let invalid = ScenarioError::Invalid;
        let release = file
            .release
            .as_deref()
            .map(parse_release)
            .transpose()
            .map_err(|e| invalid(format!("release: {e}")))?;
        let block_time = file
            .block_time
            .as_deref()
            .map(humantime::parse_duration)
            .transpose()
            .map_err(|e| {
                invalid(format!(
                    "block_time: {e} (examples: \"6s\", \"500ms\", \"0s\")"
                ))
            })?;
        let chain = file
            .chain
            .as_deref()
            .map(str::parse::<ChainPreset>)
            .transpose()
            .map_err(|e| invalid(format!("chain: {e}")))?;
        let mut steps = file
            .steps
            .into_iter()
            .enumerate()
            .map(|(index, step)| {
                let at = step.at;
                step.into_actions()
                    .map(|actions| Step { at, actions })
                    .map_err(|e| invalid(format!("step {} (at = {at}): {e}", index + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        steps.sort_by_key(|step| step.at); // stable: file order within a block
        Ok(Scenario {
            release,
            block_time,
            finality_lag: file.finality_lag,
            chain,
            steps,
        })
    }
}

impl StepFile {
    fn into_actions(self) -> Result<Vec<Action>, String> {
        let mut actions = Vec::new();
        let mut changes = Vec::new();
        match (self.release, self.release_raw) {
            (Some(_), Some(_)) => {
                return Err("set either release or release_raw, not both".into());
            }
            (Some(text), None) => {
                changes.push(release_change(
                    parse_release(&text).map_err(|e| format!("release: {e}"))?,
                ));
            }
            (None, Some(raw)) => {
                changes.push((
                    release_key(),
                    Some(parse_hex(&raw).map_err(|e| format!("release_raw: {e}"))?),
                ));
            }
            (None, None) => {}
        }
        for entry in self.storage.unwrap_or_default() {
            let key = parse_hex(&entry.key).map_err(|e| format!("storage key: {e}"))?;
            if key.is_empty() {
                return Err("storage key must not be empty".into());
            }
            let value = entry
                .value
                .as_deref()
                .map(parse_hex)
                .transpose()
                .map_err(|e| format!("storage value: {e}"))?;
            changes.push((key, value));
        }
        if !changes.is_empty() {
            actions.push(Action::SetStorage(changes));
        }
        if let Some(lag) = self.finality_lag {
            actions.push(Action::SetFinalityLag(lag));
        }
        if let Some(stalled) = self.stall_finality {
            actions.push(Action::StallFinality(stalled));
        }
        if let Some(syncing) = self.syncing {
            actions.push(Action::SetSyncing(syncing));
        }
        if let Some(fault) = self.fault {
            let mode: FaultMode = fault.mode.parse().map_err(|e| format!("fault: {e}"))?;
            if canonical_method(&fault.method).is_none() {
                return Err(format!(
                    "fault: {}",
                    crate::fault::FaultError::UnknownMethod(fault.method)
                ));
            }
            actions.push(Action::SetFault(Fault {
                method: fault.method,
                mode,
            }));
        }
        match self.drop_connections {
            Some(true) => actions.push(Action::DropConnections),
            Some(false) => {
                return Err("drop_connections = false does nothing; remove it".into());
            }
            None => {}
        }
        if actions.is_empty() {
            return Err("the step does nothing; add e.g. release = \"1.1.0\"".into());
        }
        Ok(actions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_example_parses() {
        let text = include_str!("../scenarios/upgrade.toml");
        let scenario = Scenario::from_toml(text).unwrap();
        assert_eq!(scenario.release, Some(Some(SemVer::new(1, 0, 0))));
        assert!(!scenario.steps.is_empty());
        assert!(scenario.steps.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn parses_every_step_kind() {
        let scenario = Scenario::from_toml(
            r#"
            release = "none"
            block_time = "500ms"
            finality_lag = 2

            [[step]]
            at = 7
            drop_connections = true

            [[step]]
            at = 5
            release = "1.1.0"
            stall_finality = true
            syncing = false
            fault = { method = "state_getStorageAt", mode = "garbage" }

            [[step]]
            at = 7
            release_raw = "0x0102"
            storage = [{ key = "0xaa", value = "0x01" }, { key = "0xbb" }]
            finality_lag = 0
            "#,
        )
        .unwrap();
        assert_eq!(scenario.release, Some(None));
        assert_eq!(scenario.block_time, Some(Duration::from_millis(500)));
        assert_eq!(scenario.finality_lag, Some(2));
        let ats: Vec<u64> = scenario.steps.iter().map(|s| s.at).collect();
        assert_eq!(ats, vec![5, 7, 7]);
        assert_eq!(
            scenario.steps[0].actions,
            vec![
                Action::SetStorage(vec![release_change(Some(SemVer::new(1, 1, 0)))]),
                Action::StallFinality(true),
                Action::SetSyncing(false),
                Action::SetFault(Fault {
                    method: "state_getStorageAt".into(),
                    mode: FaultMode::Garbage
                }),
            ]
        );
        // File order is kept within a block: the drop step came first.
        assert_eq!(scenario.steps[1].actions, vec![Action::DropConnections]);
        assert_eq!(
            scenario.steps[2].actions,
            vec![
                Action::SetStorage(vec![
                    (release_key(), Some(vec![1, 2])),
                    (vec![0xaa], Some(vec![1])),
                    (vec![0xbb], None),
                ]),
                Action::SetFinalityLag(0),
            ]
        );
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| Scenario::from_toml(text).unwrap_err().to_string();
        assert!(err("relase = \"1.0.0\"").contains("unknown field"));
        assert!(err("release = \"1.0\"").contains("release"));
        assert!(err("block_time = \"soon\"").contains("block_time"));
        assert!(err("[[step]]\nat = 3\n").contains("step 1 (at = 3): the step does nothing"));
        assert!(err("[[step]]\nat = 3\nrelease = \"x\"").contains("step 1 (at = 3): release"));
        assert!(
            err("[[step]]\nat = 1\nrelease = \"1.0.0\"\nrelease_raw = \"0x01\"")
                .contains("not both")
        );
        assert!(
            err("[[step]]\nat = 1\nfault = { method = \"nope\", mode = \"error\" }")
                .contains("cannot be faulted")
        );
        assert!(
            err("[[step]]\nat = 1\nfault = { method = \"system_health\", mode = \"odd\" }")
                .contains("fault mode 'odd'")
        );
        assert!(err("[[step]]\nat = 1\nstorage = [{ key = \"0xzz\" }]").contains("storage key"));
        assert!(err("[[step]]\nrelease = \"1.0.0\"").contains("at"));
    }

    #[test]
    fn releases_parse_with_none() {
        assert_eq!(parse_release("none"), Ok(None));
        assert_eq!(parse_release("1.2.3"), Ok(Some(SemVer::new(1, 2, 3))));
        assert!(parse_release("1.2").is_err());
    }

    #[test]
    fn a_scenario_may_name_the_chain_preset() {
        let scenario = Scenario::from_toml(r#"chain = "chainflip""#).unwrap();
        assert_eq!(scenario.chain, Some(ChainPreset::Chainflip));
        assert_eq!(Scenario::from_toml("").unwrap().chain, None);
        let error = Scenario::from_toml(r#"chain = "kusama""#).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("chain: unknown chain preset 'kusama'"),
            "{error}"
        );
    }
}
