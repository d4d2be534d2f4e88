//! The fake node's state machine: the chain plus the scripted steps, the syncing flag and the
//! injected faults. No I/O: the RPC layer and the block timer call into it under one lock, and
//! carry out the [`Built::drop_connections`] request themselves.

use std::collections::BTreeMap;
use std::sync::Arc;

use engine_shim::block::BlockRef;
use engine_shim::storage_key::release_key;
use engine_shim::version::{decode_release, SemVer};
use parity_scale_codec::Encode;
use serde::Serialize;

use crate::chain::{Chain, ChainError, StorageChange, StorageMap};
use crate::fault::{FaultError, FaultMode, Faults};
use crate::metadata::ServedMetadata;
use crate::preset::ChainPreset;
use crate::scenario::{release_change, Action, Step};

/// What a node starts from.
#[derive(Clone, Debug, Default)]
pub struct Genesis {
    /// The release stored at genesis; `None` leaves the release key without a value.
    pub release: Option<SemVer>,
    pub finality_lag: u64,
    /// Scripted steps, sorted by block number.
    pub steps: Vec<Step>,
    /// The chain identity the node presents.
    pub preset: ChainPreset,
    /// The metadata to serve; `None` builds fake-node's own for the preset.
    pub metadata: Option<Arc<ServedMetadata>>,
}

/// The result of building blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    pub head: BlockRef,
    /// A scripted step asked for every client connection to be dropped.
    pub drop_connections: bool,
    /// The scripted actions that fired, with their block numbers (for the log).
    pub fired: Vec<(u64, Action)>,
}

/// A snapshot of the node for tests and `fake_status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub best: BlockStatus,
    pub finalized: BlockStatus,
    /// The release at the best block, if it decodes; `None` when absent or malformed.
    #[serde(serialize_with = "ser_release")]
    pub release: Option<SemVer>,
    /// The raw release value at the best block as `0x` hex, `None` when absent.
    pub release_raw: Option<String>,
    pub syncing: bool,
    pub stalled: bool,
    pub finality_lag: u64,
    /// Active faults: canonical method name → mode.
    pub faults: BTreeMap<String, String>,
}

/// A block as `fake_status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BlockStatus {
    pub number: u64,
    #[serde(serialize_with = "ser_display")]
    pub hash: engine_shim::block::BlockHash,
}

impl From<BlockRef> for BlockStatus {
    fn from(b: BlockRef) -> Self {
        BlockStatus {
            number: b.number,
            hash: b.hash,
        }
    }
}

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn ser_release<S: serde::Serializer>(v: &Option<SemVer>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// The node: chain, script and flags.
#[derive(Debug)]
pub struct NodeState {
    chain: Chain,
    /// Scripted steps not yet fired, by block number.
    script: BTreeMap<u64, Vec<Action>>,
    syncing: bool,
    faults: Faults,
    preset: ChainPreset,
    metadata: Arc<ServedMetadata>,
}

impl NodeState {
    /// Builds genesis: the release, then any steps at block 0.
    pub fn new(genesis: Genesis) -> Self {
        let mut script: BTreeMap<u64, Vec<Action>> = BTreeMap::new();
        for step in genesis.steps {
            script.entry(step.at).or_default().extend(step.actions);
        }
        let mut storage = StorageMap::new();
        if let Some(release) = genesis.release {
            storage.insert(release_key(), release.encode());
        }
        let genesis_actions = script.remove(&0).unwrap_or_default();
        for action in &genesis_actions {
            if let Action::SetStorage(changes) = action {
                for (key, value) in changes.iter().cloned() {
                    match value {
                        Some(value) => storage.insert(key, value),
                        None => storage.remove(&key),
                    };
                }
            }
        }
        let mut node = NodeState {
            chain: Chain::new(storage, release_key(), genesis.finality_lag),
            script,
            syncing: false,
            faults: Faults::default(),
            preset: genesis.preset,
            metadata: genesis
                .metadata
                .unwrap_or_else(|| Arc::new(ServedMetadata::built(genesis.preset))),
        };
        for action in genesis_actions {
            if !matches!(action, Action::SetStorage(_)) {
                node.apply(action);
            }
        }
        node
    }

    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The chain identity the node presents.
    pub fn preset(&self) -> ChainPreset {
        self.preset
    }

    /// The metadata the node serves (encoded once, at start).
    pub fn metadata(&self) -> &ServedMetadata {
        &self.metadata
    }

    /// Builds `count` blocks, firing scripted steps as their blocks are built, and lets finality
    /// follow after each block.
    pub fn new_blocks(&mut self, count: u64) -> Built {
        let mut drop_connections = false;
        let mut fired = Vec::new();
        for _ in 0..count {
            let number = self.chain.best().number + 1;
            let actions = self.script.remove(&number).unwrap_or_default();
            // Storage and flags first, so the step shapes the block it is tied to.
            for action in actions {
                drop_connections |= self.apply(action.clone());
                fired.push((number, action));
            }
            self.chain.build_block();
            self.chain.follow_best();
        }
        Built {
            head: self.chain.best(),
            drop_connections,
            fired,
        }
    }

    /// Applies one action; returns whether it asks for connections to be dropped.
    fn apply(&mut self, action: Action) -> bool {
        match action {
            Action::SetStorage(changes) => self.chain.set_storage(changes),
            // Finality follows once the step's block is built (or at once for genesis steps).
            Action::StallFinality(stalled) => self.chain.set_stalled(stalled),
            Action::SetFinalityLag(lag) => self.chain.set_finality_lag(lag),
            Action::SetSyncing(syncing) => self.syncing = syncing,
            Action::SetFault(fault) => {
                // Scenario faults were validated when the scenario was parsed.
                let _ = self.faults.set(&fault.method, fault.mode);
            }
            Action::DropConnections => return true,
        }
        false
    }

    /// Queues raw storage changes for the next block.
    pub fn set_storage(&mut self, changes: Vec<StorageChange>) {
        self.chain.set_storage(changes);
    }

    /// Queues a release change (or removal) for the next block.
    pub fn set_release(&mut self, release: Option<SemVer>) {
        self.chain.set_storage([release_change(release)]);
    }

    /// Sets the finality lag; a smaller lag moves finality at once.
    pub fn set_finality_lag(&mut self, lag: u64) -> Option<BlockRef> {
        self.chain.set_finality_lag(lag);
        self.chain.follow_best()
    }

    /// Stalls finality, or resumes it with one jump to `best − lag`.
    pub fn stall_finality(&mut self, stalled: bool) -> Option<BlockRef> {
        self.chain.set_stalled(stalled);
        self.chain.follow_best()
    }

    pub fn finalize(&mut self, number: u64) -> Result<Option<BlockRef>, ChainError> {
        self.chain.finalize(number)
    }

    pub fn set_syncing(&mut self, syncing: bool) {
        self.syncing = syncing;
    }

    pub fn is_syncing(&self) -> bool {
        self.syncing
    }

    pub fn set_fault(&mut self, method: &str, mode: FaultMode) -> Result<(), FaultError> {
        self.faults.set(method, mode)
    }

    /// As [`NodeState::set_fault`], with the message an `error` fault answers with.
    pub fn set_fault_with_message(
        &mut self,
        method: &str,
        mode: FaultMode,
        message: Option<String>,
    ) -> Result<(), FaultError> {
        self.faults.set_with_message(method, mode, message)
    }

    /// The message chosen for a canonical method's `error` fault, if any.
    pub fn fault_message(&self, canonical: &str) -> Option<String> {
        self.faults.message(canonical).map(str::to_string)
    }

    /// The fault of a canonical method name.
    pub fn fault(&self, canonical: &str) -> FaultMode {
        self.faults.get(canonical)
    }

    pub fn status(&self) -> Status {
        let best = self.chain.best();
        let raw = self.chain.storage_at(best.number, &release_key()).flatten();
        Status {
            best: best.into(),
            finalized: self.chain.finalized().into(),
            release: decode_release(raw.as_deref()).ok(),
            release_raw: raw.map(|v| format!("0x{}", hex::encode(v))),
            syncing: self.syncing,
            stalled: self.chain.is_stalled(),
            finality_lag: self.chain.finality_lag(),
            faults: self
                .faults
                .iter()
                .map(|(m, mode)| (m.to_string(), mode.to_string()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn v(s: &str) -> SemVer {
        s.parse().unwrap()
    }

    fn release_at(node: &NodeState, number: u64) -> Option<Vec<u8>> {
        node.chain()
            .storage_at(number, &release_key())
            .unwrap()
            .map(std::borrow::Cow::into_owned)
    }

    fn from_scenario(text: &str) -> NodeState {
        let scenario = Scenario::from_toml(text).unwrap();
        NodeState::new(Genesis {
            release: scenario.release.unwrap_or(Some(v("1.0.0"))),
            finality_lag: scenario.finality_lag.unwrap_or(0),
            steps: scenario.steps,
            ..Genesis::default()
        })
    }

    #[test]
    fn genesis_holds_the_release_or_nothing() {
        let node = NodeState::new(Genesis {
            release: Some(v("1.2.3")),
            ..Genesis::default()
        });
        assert_eq!(release_at(&node, 0), Some(vec![1, 2, 3]));
        assert_eq!(node.status().release, Some(v("1.2.3")));
        let node = NodeState::new(Genesis::default());
        assert_eq!(release_at(&node, 0), None);
        assert_eq!(node.status().release, None);
        assert_eq!(node.status().release_raw, None);
    }

    #[test]
    fn a_release_set_now_shows_from_the_next_block() {
        let mut node = NodeState::new(Genesis {
            release: Some(v("1.0.0")),
            ..Genesis::default()
        });
        node.new_blocks(2);
        node.set_release(Some(v("1.1.0")));
        assert_eq!(node.status().release, Some(v("1.0.0")));
        node.new_blocks(1);
        assert_eq!(release_at(&node, 2), Some(vec![1, 0, 0]));
        assert_eq!(release_at(&node, 3), Some(vec![1, 1, 0]));
        node.set_release(None);
        node.new_blocks(1);
        assert_eq!(release_at(&node, 4), None);
    }

    #[test]
    fn scenario_steps_shape_the_block_they_name() {
        let mut node = from_scenario(
            r#"
            release = "1.0.0"
            [[step]]
            at = 3
            release = "1.1.0"
            stall_finality = true
            syncing = true
            [[step]]
            at = 6
            stall_finality = false
            release_raw = "0x0102"
            fault = { method = "state_getStorage", mode = "error" }
            drop_connections = true
            "#,
        );
        let built = node.new_blocks(2);
        assert!(!built.drop_connections);
        assert_eq!(node.chain().finalized().number, 2);
        node.new_blocks(1);
        assert_eq!(release_at(&node, 2), Some(vec![1, 0, 0]));
        assert_eq!(release_at(&node, 3), Some(vec![1, 1, 0]));
        assert_eq!(node.chain().finalized().number, 2, "stalled at #3");
        assert!(node.is_syncing());
        let built = node.new_blocks(3);
        assert!(built.drop_connections);
        assert_eq!(built.head.number, 6);
        assert_eq!(node.chain().finality_moves(), &[1, 2, 6]);
        assert_eq!(release_at(&node, 6), Some(vec![1, 2]));
        let status = node.status();
        assert_eq!(status.release, None);
        assert_eq!(status.release_raw.as_deref(), Some("0x0102"));
        assert_eq!(node.fault("state_getStorage"), FaultMode::Error);
        // Steps fire once.
        assert!(!node.new_blocks(10).drop_connections);
    }

    #[test]
    fn genesis_steps_apply_to_block_zero() {
        let node = from_scenario(
            r#"
            release = "1.0.0"
            [[step]]
            at = 0
            release = "2.0.0"
            syncing = true
            "#,
        );
        assert_eq!(release_at(&node, 0), Some(vec![2, 0, 0]));
        assert!(node.is_syncing());
        assert_eq!(node.chain().best().number, 0);
    }

    #[test]
    fn same_scenario_same_hashes() {
        let text = include_str!("../scenarios/upgrade.toml");
        let run = || {
            let mut node = from_scenario(text);
            node.new_blocks(30);
            node.chain().best().hash
        };
        assert_eq!(run(), run());
        // Building in different batch sizes gives the same chain.
        let mut node = from_scenario(text);
        for _ in 0..30 {
            node.new_blocks(1);
        }
        assert_eq!(node.chain().best().hash, run());
    }

    #[test]
    fn the_bundled_upgrade_scenario_jumps_over_the_upgrade_block() {
        let mut node = from_scenario(include_str!("../scenarios/upgrade.toml"));
        node.new_blocks(12);
        let moves = node.chain().finality_moves();
        assert_eq!(&moves[moves.len() - 2..], &[6, 11]);
        assert_eq!(release_at(&node, 9), Some(vec![1, 0, 0]));
        assert_eq!(release_at(&node, 10), Some(vec![1, 1, 0]));
        assert_eq!(
            node.chain().spec_version_at(10),
            Some(crate::chain::GENESIS_SPEC_VERSION + 1)
        );
    }

    #[test]
    fn status_reports_flags_and_faults() {
        let mut node = NodeState::new(Genesis {
            release: Some(v("1.0.0")),
            finality_lag: 2,
            ..Genesis::default()
        });
        node.new_blocks(5);
        node.stall_finality(true);
        node.set_fault("state_getStorageAt", FaultMode::Garbage)
            .unwrap();
        let json = serde_json::to_value(node.status()).unwrap();
        assert_eq!(json["best"]["number"], 5);
        assert_eq!(json["finalized"]["number"], 3);
        assert_eq!(json["release"], "1.0.0");
        assert_eq!(json["releaseRaw"], "0x010000");
        assert_eq!(json["stalled"], true);
        assert_eq!(json["finalityLag"], 2);
        assert_eq!(json["faults"]["state_getStorage"], "garbage");
        assert!(json["best"]["hash"].as_str().unwrap().starts_with("0x"));
    }
}
