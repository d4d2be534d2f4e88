//! The storage a runtime writes in every block (`System::Number`, `ParentHash`, `BlockHash`) and
//! the runtime's own `:code`, computed on read from the block a query is about. Pure.
//!
//! A real runtime writes these in every block (`frame_system::initialize`), and clients read them
//! through the metadata like any other storage. Storing them per block would give every block its
//! own snapshot and make a long chain expensive, so they are derived from the block number and
//! the chain's hashes instead, and kept out of the stored map (and so out of `stateRoot`, which
//! keeps every hash the same as before these items existed).
//!
//! What a block's state holds, as `frame_system` leaves it:
//! - genesis (#0): `ParentHash` = `BlockHash(0)` = `0x4545…45` (the genesis builder's
//!   placeholder), no `Number`;
//! - block #n ≥ 1: `Number` = n (u32 LE), `ParentHash` = hash of #n−1, `BlockHash(m)` = hash of
//!   #m for m < n, pruned to the last [`BLOCK_HASH_COUNT`] blocks (genesis' entry is kept).
//! - every block: `:code` = the stand-in [`code`] of its runtime. fake-node runs no Wasm, but
//!   clients tell runtimes apart by this value's hash (polkadot-api caches metadata per `:code`
//!   hash), so it must change exactly when the runtime does: with `specVersion`.

use std::sync::LazyLock;

use engine_shim::block::BlockHash;
use engine_shim::storage_key::{storage_value_key, twox128};

/// How many recent block hashes `System::BlockHash` keeps (Chainflip's `BlockHashCount`).
pub const BLOCK_HASH_COUNT: u32 = 2400;

/// The placeholder hash `frame_system`'s genesis builder stores for `ParentHash` and
/// `BlockHash(0)`.
const GENESIS_PLACEHOLDER: [u8; 32] = [69; 32];

/// One of the computed `System` items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemItem {
    Number,
    ParentHash,
    /// `BlockHash(n)`: a `Twox64Concat` map from u32 block numbers.
    BlockHash(u32),
    /// The well-known `:code` key (not a `System` item, but written by the same runtime upgrade
    /// machinery and computed the same way).
    Code,
}

/// The well-known key of the runtime's code.
pub const CODE_KEY: &[u8] = b":code";

/// What `:code` holds for a runtime with `spec_version`: a readable stand-in, not Wasm. It says
/// so, so that a client trying to execute it fails with a message naming the reason.
pub fn code(spec_version: u32) -> Vec<u8> {
    format!("fake-node runtime, specVersion {spec_version}: not Wasm, read metadata with state_getMetadata or state_call Metadata_*").into_bytes()
}

/// The fixed keys, hashed once: [`SystemItem::from_key`] runs on every storage read.
struct FixedKeys {
    number: Vec<u8>,
    parent_hash: Vec<u8>,
    block_hash_prefix: Vec<u8>,
}

static FIXED_KEYS: LazyLock<FixedKeys> = LazyLock::new(|| FixedKeys {
    number: storage_value_key("System", "Number"),
    parent_hash: storage_value_key("System", "ParentHash"),
    block_hash_prefix: storage_value_key("System", "BlockHash"),
});

/// `twox64(x)` = xxh64(x, seed 0), little-endian: the first half of twox128.
fn twox64(data: &[u8]) -> [u8; 8] {
    let full = twox128(data);
    let mut out = [0; 8];
    out.copy_from_slice(&full[..8]);
    out
}

impl SystemItem {
    /// The storage key, as Substrate computes it.
    pub fn key(self) -> Vec<u8> {
        match self {
            SystemItem::Number => FIXED_KEYS.number.clone(),
            SystemItem::ParentHash => FIXED_KEYS.parent_hash.clone(),
            SystemItem::BlockHash(n) => {
                let encoded = n.to_le_bytes();
                let mut key = FIXED_KEYS.block_hash_prefix.clone();
                key.extend_from_slice(&twox64(&encoded));
                key.extend_from_slice(&encoded);
                key
            }
            SystemItem::Code => CODE_KEY.to_vec(),
        }
    }

    /// Which computed item `key` names, if any.
    pub fn from_key(key: &[u8]) -> Option<SystemItem> {
        if key == CODE_KEY {
            return Some(SystemItem::Code);
        }
        let fixed = &*FIXED_KEYS;
        if key == fixed.number {
            return Some(SystemItem::Number);
        }
        if key == fixed.parent_hash {
            return Some(SystemItem::ParentHash);
        }
        let rest = key.strip_prefix(fixed.block_hash_prefix.as_slice())?;
        let (hash, encoded) = (rest.get(..8)?, rest.get(8..)?);
        let n = u32::from_le_bytes(encoded.try_into().ok()?);
        (hash == twox64(encoded)).then_some(SystemItem::BlockHash(n))
    }

    /// The value at block `number`, or `None` where that block's state has none. `hash_of` gives
    /// the hash of any block up to `number`; `spec_version` is the runtime's at `number`.
    pub fn value_at(
        self,
        number: u64,
        spec_version: u32,
        hash_of: impl Fn(u64) -> BlockHash,
    ) -> Option<Vec<u8>> {
        match self {
            SystemItem::Code => Some(code(spec_version)),
            SystemItem::Number => (number > 0).then(|| (number as u32).to_le_bytes().to_vec()),
            SystemItem::ParentHash => Some(match number {
                0 => GENESIS_PLACEHOLDER.to_vec(),
                n => hash_of(n - 1).0.to_vec(),
            }),
            SystemItem::BlockHash(m) => {
                let m = u64::from(m);
                if number == 0 {
                    return (m == 0).then(|| GENESIS_PLACEHOLDER.to_vec());
                }
                let kept = m == 0 || (oldest_kept_block_hash(number)..number).contains(&m);
                kept.then(|| hash_of(m).0.to_vec())
            }
        }
    }
}

/// The block numbers whose `BlockHash` entry block `number` still holds, ascending.
fn kept_block_hashes(number: u64) -> impl Iterator<Item = u64> {
    std::iter::once(0).chain(oldest_kept_block_hash(number)..number)
}

/// The oldest block after genesis whose `BlockHash` entry block `number` (≥ 1) still holds:
/// block #k's `finalize` removes entry k − count − 1.
fn oldest_kept_block_hash(number: u64) -> u64 {
    number.saturating_sub(u64::from(BLOCK_HASH_COUNT)).max(1)
}

/// Every computed key block `number` holds, sorted by key bytes: what a key listing at that
/// block must merge with the stored keys (at most [`BLOCK_HASH_COUNT`] + 3 keys).
pub fn keys_at(number: u64) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    if number > 0 {
        keys.push(SystemItem::Number.key());
    }
    keys.push(SystemItem::ParentHash.key());
    keys.extend(kept_block_hashes(number).map(|m| SystemItem::BlockHash(m as u32).key()));
    keys.push(CODE_KEY.to_vec());
    keys.sort_unstable();
    keys
}

/// The computed keys block `number` wrote, sorted: `frame_system` writes `Number`, `ParentHash`
/// and the parent's `BlockHash` entry in every block after genesis (and removes the entry that
/// falls out of [`BLOCK_HASH_COUNT`]), and a block whose runtime changed wrote `:code`.
pub fn written_at(number: u64, runtime_changed: bool) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    if number > 0 {
        keys.push(SystemItem::Number.key());
        keys.push(SystemItem::ParentHash.key());
        keys.push(SystemItem::BlockHash((number - 1) as u32).key());
        let pruned = number.checked_sub(u64::from(BLOCK_HASH_COUNT) + 1);
        if let Some(pruned) = pruned.filter(|&p| p > 0) {
            keys.push(SystemItem::BlockHash(pruned as u32).key());
        }
    }
    if runtime_changed {
        keys.push(CODE_KEY.to_vec());
    }
    keys.sort_unstable();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u64) -> BlockHash {
        let mut hash = [0xaa; 32];
        hash[..8].copy_from_slice(&n.to_le_bytes());
        BlockHash(hash)
    }

    #[test]
    fn keys_are_substrates() {
        assert_eq!(
            hex::encode(SystemItem::Number.key()),
            "26aa394eea5630e07c48ae0c9558cef702a5c1b19ab7a04f536c519aca4983ac"
        );
        // BlockHash(0): prefix ++ twox64(0u32) ++ 0u32, as every Substrate chain's genesis hash key.
        assert_eq!(
            hex::encode(SystemItem::BlockHash(0).key()),
            "26aa394eea5630e07c48ae0c9558cef7a44704b568d21667356a5a050c118746\
             b4def25cfda6ef3a00000000"
        );
    }

    #[test]
    fn keys_round_trip_and_strangers_are_not_system_items() {
        for item in [
            SystemItem::Number,
            SystemItem::ParentHash,
            SystemItem::BlockHash(7),
        ] {
            assert_eq!(SystemItem::from_key(&item.key()), Some(item));
        }
        let mut wrong_hash = SystemItem::BlockHash(7).key();
        wrong_hash[33] ^= 1;
        assert_eq!(SystemItem::from_key(&wrong_hash), None);
        assert_eq!(SystemItem::from_key(&[0; 32]), None);
        assert_eq!(SystemItem::from_key(b"short"), None);
    }

    #[test]
    fn values_follow_frame_system() {
        assert_eq!(SystemItem::Number.value_at(0, 100, hash), None);
        assert_eq!(
            SystemItem::Number.value_at(5, 100, hash),
            Some(vec![5, 0, 0, 0])
        );
        assert_eq!(
            SystemItem::ParentHash.value_at(0, 100, hash),
            Some(vec![69; 32])
        );
        assert_eq!(
            SystemItem::ParentHash.value_at(5, 100, hash),
            Some(hash(4).0.to_vec())
        );
        assert_eq!(
            SystemItem::BlockHash(0).value_at(0, 100, hash),
            Some(vec![69; 32])
        );
        assert_eq!(
            SystemItem::BlockHash(0).value_at(1, 100, hash),
            Some(hash(0).0.to_vec())
        );
        assert_eq!(SystemItem::BlockHash(5).value_at(5, 100, hash), None);
        let n = u64::from(BLOCK_HASH_COUNT) + 10;
        assert_eq!(
            SystemItem::BlockHash(9).value_at(n, 100, hash),
            None,
            "pruned"
        );
        assert_eq!(
            SystemItem::BlockHash(10).value_at(n, 100, hash),
            Some(hash(10).0.to_vec())
        );
        assert!(SystemItem::BlockHash(0).value_at(n, 100, hash).is_some());
    }

    #[test]
    fn keys_at_lists_exactly_the_items_with_values() {
        assert_eq!(keys_at(0).len(), 3, "ParentHash, BlockHash(0), :code");
        let n = u64::from(BLOCK_HASH_COUNT) + 10;
        let keys = keys_at(n);
        assert_eq!(keys.len(), 3 + 1 + BLOCK_HASH_COUNT as usize);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted");
        for key in keys {
            let item = SystemItem::from_key(&key).unwrap();
            assert!(item.value_at(n, 100, hash).is_some(), "{item:?}");
        }
    }

    #[test]
    fn code_names_the_runtime_and_changes_with_it() {
        let code = SystemItem::from_key(b":code").unwrap();
        assert_eq!(code, SystemItem::Code);
        let v100 = code.value_at(0, 100, hash).unwrap();
        let v101 = code.value_at(0, 101, hash).unwrap();
        assert_ne!(v100, v101);
        assert!(String::from_utf8(v100).unwrap().contains("not Wasm"));
    }

    #[test]
    fn every_block_after_genesis_writes_number_parent_hash_and_the_parents_entry() {
        assert!(written_at(0, false).is_empty());
        assert_eq!(written_at(0, true), vec![CODE_KEY.to_vec()]);
        let written = written_at(7, false);
        assert_eq!(written.len(), 3);
        assert!(written.contains(&SystemItem::BlockHash(6).key()));
        let n = u64::from(BLOCK_HASH_COUNT) + 5;
        let pruned = SystemItem::BlockHash((n - u64::from(BLOCK_HASH_COUNT) - 1) as u32).key();
        assert!(
            written_at(n, true).contains(&pruned),
            "the pruned entry is written (removed)"
        );
        assert!(written_at(n, true).contains(&CODE_KEY.to_vec()));
    }
}
