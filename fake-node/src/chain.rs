//! The chain itself: blocks, per-block storage and finality, with no I/O.
//!
//! Everything a client can observe is derived here, deterministically, from the sequence of
//! operations applied: the same storage changes at the same block numbers give the same hashes on
//! every run and every machine, whatever the timing.
//!
//! - A header is `{parentHash, number, stateRoot, extrinsicsRoot, digest: {logs: []}}` and its hash is
//!   `blake2_256` of its SCALE encoding (number as `Compact`), as in Substrate.
//! - `stateRoot` is `blake2_256` of the SCALE-encoded, sorted storage map (not a trie root, but it
//!   changes exactly when the storage does).
//! - Storage is snapshotted per block. Blocks that change nothing share their parent's snapshot, so
//!   a long chain costs about one hash and one pointer per block; a value read at an old block is
//!   the value that block had.
//! - Storage changes are queued and take effect in the next block built (chopsticks'
//!   `dev_setStorage` semantics).
//! - Finality trails the best block by a lag, can be stalled, and when it moves again it may jump
//!   several blocks at once. Each move is recorded, so subscribers see exactly one notification
//!   per move, skipping the blocks in between, like a real node's finalized stream.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use engine_shim::block::{BlockHash, BlockRef};
use parity_scale_codec::{Compact, Encode};

use crate::system_storage::SystemItem;

/// Storage as the chain holds it: raw keys to raw values, sorted (so encoding is canonical).
pub type StorageMap = BTreeMap<Vec<u8>, Vec<u8>>;

/// One storage edit: set `key` to `Some(value)` or delete it with `None`.
pub type StorageChange = (Vec<u8>, Option<Vec<u8>>);

/// The specVersion reported for the genesis runtime; each later change of the runtime key adds one.
pub const GENESIS_SPEC_VERSION: u32 = 100;

/// `blake2_256`, the hash Substrate uses for block hashes.
pub fn blake2_256(data: &[u8]) -> [u8; 32] {
    Blake2b::<U32>::digest(data).into()
}

/// A block header with the fields a real Substrate header has. The digest is always empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub parent_hash: BlockHash,
    pub number: u64,
    pub state_root: [u8; 32],
    pub extrinsics_root: [u8; 32],
}

impl Header {
    /// The SCALE encoding of the header: parent hash, `Compact` number, state root, extrinsics root,
    /// then the digest (an empty vector of logs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 9 + 32 + 32 + 1);
        out.extend_from_slice(&self.parent_hash.0);
        Compact(self.number).encode_to(&mut out);
        out.extend_from_slice(&self.state_root);
        out.extend_from_slice(&self.extrinsics_root);
        Vec::<u8>::new().encode_to(&mut out); // digest: no logs
        out
    }

    /// The block hash: `blake2_256` of the SCALE-encoded header.
    pub fn hash(&self) -> BlockHash {
        BlockHash(blake2_256(&self.encode()))
    }

    /// The header as JSON-RPC returns it: numbers as `0x` hex, hashes as full `0x` hex.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "parentHash": self.parent_hash.to_string(),
            "number": format!("0x{:x}", self.number),
            "stateRoot": format!("0x{}", hex::encode(self.state_root)),
            "extrinsicsRoot": format!("0x{}", hex::encode(self.extrinsics_root)),
            "digest": { "logs": [] },
        })
    }
}

/// The extrinsics root of block `number`: blocks carry no extrinsics, but a per-block root keeps
/// headers distinct and realistic.
pub fn extrinsics_root(number: u64) -> [u8; 32] {
    blake2_256(&number.to_le_bytes())
}

/// The storage of one or more consecutive blocks, shared between them while nothing changes.
#[derive(Debug)]
struct Snapshot {
    storage: StorageMap,
    root: [u8; 32],
    spec_version: u32,
    /// The keys the block that made this snapshot wrote (set or deleted), sorted; what
    /// `state_subscribeStorage` reports for that block.
    written: Vec<Vec<u8>>,
}

impl Snapshot {
    fn new(storage: StorageMap, spec_version: u32, written: Vec<Vec<u8>>) -> Self {
        let root = blake2_256(&storage.encode());
        Snapshot {
            storage,
            root,
            spec_version,
            written,
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    hash: BlockHash,
    state: Arc<Snapshot>,
}

/// Why a finality request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error(
        "cannot finalize block #{requested}: the best block is #{best}; build more blocks first"
    )]
    BeyondBest { requested: u64, best: u64 },
}

/// The whole chain: blocks by number and hash, queued storage changes and finality.
#[derive(Debug)]
pub struct Chain {
    blocks: Vec<Block>,
    by_hash: HashMap<BlockHash, u64>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Storage key whose change counts as a runtime upgrade (bumps specVersion).
    runtime_key: Vec<u8>,
    finalized: u64,
    finality_lag: u64,
    stalled: bool,
    /// Every block number finality moved to, in order: one entry per finalized-head notification.
    finality_moves: Vec<u64>,
}

impl Chain {
    /// A chain holding only its genesis block (#0, finalized) with `genesis` as its storage.
    ///
    /// `runtime_key` is the storage key whose changes count as runtime upgrades; on Chainflip that
    /// is the release key, because a migration writes it in the first block of every new runtime.
    pub fn new(genesis: StorageMap, runtime_key: Vec<u8>, finality_lag: u64) -> Self {
        let state = Arc::new(Snapshot::new(genesis, GENESIS_SPEC_VERSION, Vec::new()));
        let header = Header {
            parent_hash: BlockHash([0; 32]),
            number: 0,
            state_root: state.root,
            extrinsics_root: extrinsics_root(0),
        };
        let hash = header.hash();
        Chain {
            blocks: vec![Block { hash, state }],
            by_hash: HashMap::from([(hash, 0)]),
            pending: BTreeMap::new(),
            runtime_key,
            finalized: 0,
            finality_lag,
            stalled: false,
            finality_moves: Vec::new(),
        }
    }

    /// Queues storage changes for the next block built; a later change to the same key wins.
    pub fn set_storage(&mut self, changes: impl IntoIterator<Item = StorageChange>) {
        self.pending.extend(changes);
    }

    /// Whether storage changes are waiting for the next block.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Builds the next block on top of the best one, applying queued storage changes.
    /// Finality is not touched: call [`Chain::follow_best`] once the block's events have fired.
    pub fn build_block(&mut self) -> BlockRef {
        let parent = self.blocks.last().expect("the chain always has genesis");
        let number = self.blocks.len() as u64;
        let state = if self.pending.is_empty() {
            Arc::clone(&parent.state)
        } else {
            let mut storage = parent.state.storage.clone();
            let before = storage.get(&self.runtime_key).cloned();
            let mut written = Vec::with_capacity(self.pending.len());
            for (key, value) in std::mem::take(&mut self.pending) {
                match value {
                    Some(value) => storage.insert(key.clone(), value),
                    None => storage.remove(&key),
                };
                written.push(key);
            }
            let upgraded = storage.get(&self.runtime_key) != before.as_ref();
            let spec_version = parent.state.spec_version + u32::from(upgraded);
            Arc::new(Snapshot::new(storage, spec_version, written))
        };
        let header = Header {
            parent_hash: parent.hash,
            number,
            state_root: state.root,
            extrinsics_root: extrinsics_root(number),
        };
        let hash = header.hash();
        self.blocks.push(Block { hash, state });
        self.by_hash.insert(hash, number);
        BlockRef { number, hash }
    }

    /// Moves finality up to `best − lag` unless finality is stalled.
    /// Returns the new finalized block when finality moved.
    pub fn follow_best(&mut self) -> Option<BlockRef> {
        if self.stalled {
            return None;
        }
        self.advance_to(self.best().number.saturating_sub(self.finality_lag))
    }

    /// Sets how many blocks finality trails the best block; takes effect at the next
    /// [`Chain::follow_best`]. A larger lag never moves finality backwards.
    pub fn set_finality_lag(&mut self, lag: u64) {
        self.finality_lag = lag;
    }

    /// Stalls or resumes finality; takes effect at the next [`Chain::follow_best`]. Resuming
    /// catches up to `best − lag` in a single move, which is what makes a finalized stream skip
    /// blocks.
    ///
    /// The setters do not move finality themselves so that a scripted step can change them
    /// before its block is built and have finality move once, after the block.
    pub fn set_stalled(&mut self, stalled: bool) {
        self.stalled = stalled;
    }

    /// Finalizes up to block `number` explicitly (even while stalled). Finality never goes
    /// backwards: a number at or below the finalized block changes nothing.
    pub fn finalize(&mut self, number: u64) -> Result<Option<BlockRef>, ChainError> {
        let best = self.best().number;
        if number > best {
            return Err(ChainError::BeyondBest {
                requested: number,
                best,
            });
        }
        Ok(self.advance_to(number))
    }

    fn advance_to(&mut self, number: u64) -> Option<BlockRef> {
        if number <= self.finalized {
            return None;
        }
        self.finalized = number;
        self.finality_moves.push(number);
        Some(self.block_ref(number).expect("finalized block exists"))
    }

    pub fn best(&self) -> BlockRef {
        let number = self.blocks.len() as u64 - 1;
        BlockRef {
            number,
            hash: self.blocks[number as usize].hash,
        }
    }

    pub fn finalized(&self) -> BlockRef {
        self.block_ref(self.finalized)
            .expect("finalized block exists")
    }

    pub fn finality_lag(&self) -> u64 {
        self.finality_lag
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// Every block number finality has moved to since genesis, in order (genesis itself is not a
    /// move). Subscribers keep an index into this list.
    pub fn finality_moves(&self) -> &[u64] {
        &self.finality_moves
    }

    /// The block with this number, if it exists.
    pub fn block_ref(&self, number: u64) -> Option<BlockRef> {
        let block = self.blocks.get(usize::try_from(number).ok()?)?;
        Some(BlockRef {
            number,
            hash: block.hash,
        })
    }

    pub fn hash_of(&self, number: u64) -> Option<BlockHash> {
        self.block_ref(number).map(|b| b.hash)
    }

    pub fn number_of(&self, hash: &BlockHash) -> Option<u64> {
        self.by_hash.get(hash).copied()
    }

    /// The header of block `number`, rebuilt from what the chain keeps.
    pub fn header(&self, number: u64) -> Option<Header> {
        let block = self.blocks.get(usize::try_from(number).ok()?)?;
        let parent_hash = match number {
            0 => BlockHash([0; 32]),
            n => self.blocks[n as usize - 1].hash,
        };
        Some(Header {
            parent_hash,
            number,
            state_root: block.state.root,
            extrinsics_root: extrinsics_root(number),
        })
    }

    /// The value under `key` at block `number`: `None` if the block does not exist,
    /// `Some(None)` if the key has no value there.
    ///
    /// `System::Number`, `ParentHash` and `BlockHash` are computed here from the block (see
    /// [`crate::system_storage`]); they win over any stored value under the same key, as a real
    /// runtime rewrites them in every block.
    pub fn storage_at(&self, number: u64, key: &[u8]) -> Option<Option<Cow<'_, [u8]>>> {
        let block = self.blocks.get(usize::try_from(number).ok()?)?;
        if let Some(item) = SystemItem::from_key(key) {
            let value = item.value_at(number, block.state.spec_version, |n| {
                self.blocks[n as usize].hash
            });
            return Some(value.map(Cow::Owned));
        }
        Some(
            block
                .state
                .storage
                .get(key)
                .map(|v| Cow::Borrowed(v.as_slice())),
        )
    }

    /// The whole storage of block `number`, sorted by key.
    pub fn storage(&self, number: u64) -> Option<&StorageMap> {
        let block = self.blocks.get(usize::try_from(number).ok()?)?;
        Some(&block.state.storage)
    }

    /// The keys block `number` wrote (set or deleted, even to the value they had), sorted:
    /// a real node's storage-change notification for that block. Genesis wrote nothing.
    pub fn written_keys(&self, number: u64) -> Option<&[Vec<u8>]> {
        let index = usize::try_from(number).ok()?;
        let block = self.blocks.get(index)?;
        let parent = index.checked_sub(1).map(|p| &self.blocks[p]);
        Some(match parent {
            Some(parent) if !Arc::ptr_eq(&parent.state, &block.state) => &block.state.written,
            _ => &[],
        })
    }

    /// The runtime's specVersion at block `number`.
    pub fn spec_version_at(&self, number: u64) -> Option<u32> {
        let block = self.blocks.get(usize::try_from(number).ok()?)?;
        Some(block.state.spec_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"release";

    fn chain(lag: u64) -> Chain {
        Chain::new(
            StorageMap::from([(KEY.to_vec(), vec![1, 0, 0])]),
            KEY.to_vec(),
            lag,
        )
    }

    /// Builds `n` blocks and lets finality follow, as the node does.
    fn build(chain: &mut Chain, n: u64) -> BlockRef {
        for _ in 0..n {
            chain.build_block();
            chain.follow_best();
        }
        chain.best()
    }

    #[test]
    fn header_encoding_matches_substrate_layout() {
        let header = Header {
            parent_hash: BlockHash([1; 32]),
            number: 69,
            state_root: [2; 32],
            extrinsics_root: [3; 32],
        };
        let bytes = header.encode();
        // 32 parent + Compact(69) in two bytes + 32 + 32 + empty digest.
        assert_eq!(bytes.len(), 32 + 2 + 32 + 32 + 1);
        assert_eq!(&bytes[32..34], &[0x15, 0x01]);
        assert_eq!(*bytes.last().unwrap(), 0);
        assert_eq!(header.hash(), BlockHash(blake2_256(&bytes)));
        let json = header.to_json();
        assert_eq!(json["number"], "0x45");
        assert_eq!(json["digest"]["logs"], serde_json::json!([]));
    }

    #[test]
    fn same_operations_give_same_hashes() {
        let run = || {
            let mut c = chain(0);
            build(&mut c, 3);
            c.set_storage([(KEY.to_vec(), Some(vec![1, 1, 0]))]);
            build(&mut c, 2);
            (0..=5).map(|n| c.hash_of(n).unwrap()).collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        let unique: std::collections::HashSet<_> = first.iter().collect();
        assert_eq!(unique.len(), first.len(), "every block has its own hash");
    }

    #[test]
    fn headers_link_to_their_parents() {
        let mut c = chain(0);
        build(&mut c, 4);
        for n in 1..=4 {
            let header = c.header(n).unwrap();
            assert_eq!(header.parent_hash, c.hash_of(n - 1).unwrap());
            assert_eq!(header.hash(), c.hash_of(n).unwrap());
            assert_eq!(c.number_of(&header.hash()), Some(n));
        }
        assert_eq!(c.header(0).unwrap().parent_hash, BlockHash([0; 32]));
    }

    #[test]
    fn storage_changes_apply_from_the_next_block_and_old_blocks_keep_old_values() {
        let mut c = chain(0);
        build(&mut c, 2);
        c.set_storage([(KEY.to_vec(), Some(vec![1, 1, 0]))]);
        assert_eq!(c.storage_at(2, KEY), Some(Some(Cow::from(&[1, 0, 0][..]))));
        build(&mut c, 1);
        assert_eq!(c.storage_at(2, KEY), Some(Some(Cow::from(&[1, 0, 0][..]))));
        assert_eq!(c.storage_at(3, KEY), Some(Some(Cow::from(&[1, 1, 0][..]))));
        c.set_storage([(KEY.to_vec(), None)]);
        build(&mut c, 1);
        assert_eq!(c.storage_at(4, KEY), Some(None));
        assert_eq!(c.storage_at(3, KEY), Some(Some(Cow::from(&[1, 1, 0][..]))));
        assert_eq!(c.storage_at(0, KEY), Some(Some(Cow::from(&[1, 0, 0][..]))));
    }

    #[test]
    fn unknown_blocks_are_not_made_up() {
        let mut c = chain(0);
        build(&mut c, 2);
        assert_eq!(c.hash_of(3), None);
        assert_eq!(c.header(3), None);
        assert_eq!(c.storage_at(3, KEY), None);
        assert_eq!(c.spec_version_at(u64::MAX), None);
        assert_eq!(c.number_of(&BlockHash([9; 32])), None);
    }

    #[test]
    fn state_root_changes_only_with_storage() {
        let mut c = chain(0);
        build(&mut c, 2);
        assert_eq!(
            c.header(1).unwrap().state_root,
            c.header(2).unwrap().state_root
        );
        c.set_storage([(b"other".to_vec(), Some(vec![7]))]);
        build(&mut c, 1);
        assert_ne!(
            c.header(2).unwrap().state_root,
            c.header(3).unwrap().state_root
        );
    }

    #[test]
    fn spec_version_bumps_when_the_runtime_key_changes() {
        let mut c = chain(0);
        c.set_storage([(b"other".to_vec(), Some(vec![7]))]);
        build(&mut c, 1);
        assert_eq!(c.spec_version_at(1), Some(GENESIS_SPEC_VERSION));
        c.set_storage([(KEY.to_vec(), Some(vec![1, 1, 0]))]);
        build(&mut c, 1);
        assert_eq!(c.spec_version_at(2), Some(GENESIS_SPEC_VERSION + 1));
        // Writing the same value again is not an upgrade.
        c.set_storage([(KEY.to_vec(), Some(vec![1, 1, 0]))]);
        build(&mut c, 1);
        assert_eq!(c.spec_version_at(3), Some(GENESIS_SPEC_VERSION + 1));
        assert_eq!(c.spec_version_at(0), Some(GENESIS_SPEC_VERSION));
    }

    #[test]
    fn finality_trails_best_by_the_lag() {
        let mut c = chain(2);
        build(&mut c, 1);
        assert_eq!(c.finalized().number, 0);
        build(&mut c, 4);
        assert_eq!(c.finalized().number, 3);
        assert_eq!(c.finality_moves(), &[1, 2, 3]);
        // A smaller lag applies at once, a larger one never moves finality back.
        c.set_finality_lag(0);
        assert_eq!(c.follow_best().map(|b| b.number), Some(5));
        c.set_finality_lag(3);
        assert_eq!(c.follow_best(), None);
        assert_eq!(c.finalized().number, 5);
    }

    #[test]
    fn resumed_finality_jumps_in_one_move() {
        let mut c = chain(0);
        build(&mut c, 2);
        c.set_stalled(true);
        build(&mut c, 5);
        assert_eq!(c.finalized().number, 2);
        c.set_stalled(false);
        let jumped = c.follow_best().unwrap();
        assert_eq!(jumped, c.best());
        assert_eq!(c.finality_moves(), &[1, 2, 7]);
    }

    #[test]
    fn explicit_finalize_works_while_stalled_and_never_goes_back() {
        let mut c = chain(0);
        c.set_stalled(true);
        build(&mut c, 5);
        assert_eq!(c.finalize(3).unwrap().map(|b| b.number), Some(3));
        assert_eq!(c.finalize(2).unwrap(), None);
        assert_eq!(
            c.finalize(6),
            Err(ChainError::BeyondBest {
                requested: 6,
                best: 5
            })
        );
        assert_eq!(c.finalized().number, 3);
    }

    #[test]
    fn system_items_read_as_the_runtime_wrote_them_without_changing_hashes() {
        let mut c = chain(0);
        let before = {
            let mut plain = chain(0);
            build(&mut plain, 3)
        };
        build(&mut c, 3);
        assert_eq!(
            c.best(),
            before,
            "computed items leave stateRoot and hashes alone"
        );
        let number = SystemItem::Number.key();
        let parent = SystemItem::ParentHash.key();
        assert_eq!(
            c.storage_at(3, &number).unwrap().as_deref(),
            Some(&[3, 0, 0, 0][..])
        );
        assert_eq!(c.storage_at(0, &number), Some(None));
        assert_eq!(
            c.storage_at(3, &parent).unwrap().as_deref(),
            Some(&c.hash_of(2).unwrap().0[..])
        );
        let genesis_entry = SystemItem::BlockHash(0).key();
        assert_eq!(
            c.storage_at(2, &genesis_entry).unwrap().as_deref(),
            Some(&c.hash_of(0).unwrap().0[..])
        );
        assert_eq!(c.storage_at(2, &SystemItem::BlockHash(2).key()), Some(None));
        assert_eq!(c.storage_at(4, &number), None, "unknown block");
    }

    #[test]
    fn a_long_chain_shares_unchanged_storage() {
        let mut c = chain(0);
        build(&mut c, 100_000);
        assert_eq!(c.best().number, 100_000);
        assert_eq!(Arc::strong_count(&c.blocks[0].state), 100_001);
        assert_eq!(c.number_of(&c.best().hash), Some(100_000));
    }
}
