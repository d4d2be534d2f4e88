//! The storage questions clients ask beyond one value: key listings, sizes and hashes, changes
//! over a range of blocks, and storage subscriptions. Answered over the [`Chain`] with no I/O, with
//! the semantics of Substrate's `state_*` methods.
//!
//! Every read goes through [`value`], [`keys`] and [`written`]: storage that the chain does not
//! hold in its map (keys derived from the block itself) is added in those three places only.

use std::collections::BTreeSet;
use std::ops::Bound;

use engine_shim::block::BlockHash;
use serde_json::{json, Value};

use crate::chain::{blake2_256, Chain, StorageChange};
use crate::system_storage;

/// The most keys `state_getKeysPaged` returns per call; Substrate refuses a larger `count`.
pub const MAX_KEYS_PER_PAGE: u32 = 1000;

/// Storage values at one block: Substrate's `StorageChangeSet`, the shape of
/// `state_queryStorage*` answers and `state_storage` notifications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSet {
    pub block: BlockHash,
    /// `(key, value)` pairs; `None` means the key has no value at that block.
    pub changes: Vec<StorageChange>,
}

impl ChangeSet {
    /// `{"block": hash, "changes": [[key, value | null], …]}` with `0x` hex.
    pub fn to_json(&self) -> Value {
        let changes: Vec<Value> = self
            .changes
            .iter()
            .map(|(key, value)| json!([hex(key), value.as_deref().map(hex)]))
            .collect();
        json!({ "block": self.block.to_string(), "changes": changes })
    }
}

fn hex(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// The value under `key` at block `number`; `None` when the key has no value or the block does
/// not exist (callers check the block first).
pub fn value(chain: &Chain, number: u64, key: &[u8]) -> Option<Vec<u8>> {
    chain
        .storage_at(number, key)
        .flatten()
        .map(std::borrow::Cow::into_owned)
}

/// The keys at block `number` that start with `prefix` and sort strictly after `after`, in
/// order, at most `limit` of them (Substrate's paged key iteration: the start key itself is
/// never repeated, so a client pages on with the last key it got).
pub fn keys(
    chain: &Chain,
    number: u64,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Vec<Vec<u8>> {
    let Some(storage) = chain.storage(number) else {
        return Vec::new();
    };
    let start = match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    let stored = storage
        .range::<[u8], _>((start, Bound::Unbounded))
        .map(|(key, _)| key.clone())
        .take_while(|key| key.starts_with(prefix));
    let computed = system_storage::keys_at(number)
        .into_iter()
        .filter(|key| in_range(key, start) && key.starts_with(prefix));
    merge_sorted(stored, computed).take(limit).collect()
}

fn in_range(key: &[u8], start: Bound<&[u8]>) -> bool {
    match start {
        Bound::Excluded(after) => key > after,
        Bound::Included(from) => key >= from,
        Bound::Unbounded => true,
    }
}

/// Two sorted key streams as one sorted stream without duplicates (a computed key shadows a
/// stored one, as it does for reads).
fn merge_sorted(
    a: impl Iterator<Item = Vec<u8>>,
    b: impl Iterator<Item = Vec<u8>>,
) -> impl Iterator<Item = Vec<u8>> {
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x == y => {
            a.next();
            b.next()
        }
        (Some(x), Some(y)) if x < y => a.next(),
        (Some(_), Some(_)) | (None, Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, None) => None,
    })
}

/// The keys block `number` wrote, each with its value after the block: what a real node's
/// storage-change notification for that block carries.
pub fn written(chain: &Chain, number: u64) -> Vec<StorageChange> {
    let runtime_changed =
        number > 0 && chain.spec_version_at(number) != chain.spec_version_at(number - 1);
    let stored = chain
        .written_keys(number)
        .unwrap_or_default()
        .iter()
        .cloned();
    let computed = system_storage::written_at(number, runtime_changed).into_iter();
    merge_sorted(stored, computed)
        .map(|key| {
            let value = value(chain, number, &key);
            (key, value)
        })
        .collect()
}

/// Every key under `prefix` at block `number` with its value, in key order (stored and computed
/// storage alike).
pub fn entries(chain: &Chain, number: u64, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    keys(chain, number, prefix, None, usize::MAX)
        .into_iter()
        .filter_map(|key| {
            let value = value(chain, number, &key)?;
            Some((key, value))
        })
        .collect()
}

/// `state_getStorageSize`: the length of the value under `key`, or else the total length of the
/// values under `key` taken as a prefix (a whole map); `None` when that is nothing.
pub fn size(chain: &Chain, number: u64, key: &[u8]) -> Option<u64> {
    if let Some(value) = value(chain, number, key) {
        return Some(value.len() as u64);
    }
    let total: u64 = entries(chain, number, key)
        .iter()
        .map(|(_, v)| v.len() as u64)
        .sum();
    (total > 0).then_some(total)
}

/// `state_getStorageHash`: blake2-256 of the value (Substrate's hashing), `None` without a value.
pub fn hash(chain: &Chain, number: u64, key: &[u8]) -> Option<[u8; 32]> {
    value(chain, number, key).map(|v| blake2_256(&v))
}

/// `state_queryStorage` over blocks `from..=to` (both exist, `from <= to`): the first block
/// reports every key, each later block only the keys whose value differs from the block before,
/// and blocks where nothing differs are left out.
pub fn query(chain: &Chain, from: u64, to: u64, keys: &[Vec<u8>]) -> Vec<ChangeSet> {
    let mut sets = Vec::new();
    let mut last: Vec<Option<Option<Vec<u8>>>> = vec![None; keys.len()];
    for number in from..=to {
        let Some(block) = chain.hash_of(number) else {
            break;
        };
        let mut changes = Vec::new();
        for (key, last) in keys.iter().zip(&mut last) {
            let now = value(chain, number, key);
            if last.as_ref() != Some(&now) {
                changes.push((key.clone(), now.clone()));
                *last = Some(now);
            }
        }
        if !changes.is_empty() {
            sets.push(ChangeSet { block, changes });
        }
    }
    sets
}

/// What a storage subscription watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    /// Every key (`state_subscribeStorage` without keys): no initial values, then every write.
    All,
    /// These keys, in the client's order: their current values first, then their writes.
    Keys(Vec<Vec<u8>>),
}

/// A storage subscription's position in the chain: the next block to report on.
///
/// Each block past the cursor that wrote a watched key gives one [`ChangeSet`] carrying only the
/// watched keys it wrote, so blocks built in one batch are each reported, even when a later
/// block undoes a change. The cursor is all the state a subscription keeps: a slow client costs
/// no memory in the node.
#[derive(Clone, Debug)]
pub struct StorageWatch {
    filter: Option<BTreeSet<Vec<u8>>>,
    next_block: u64,
}

/// The result of [`StorageWatch::advance`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advanced {
    pub sets: Vec<ChangeSet>,
    /// Whether the watch reached the best block (else call again before waiting).
    pub caught_up: bool,
}

impl StorageWatch {
    /// Starts watching after the best block. Returns the watch and the initial notification: the
    /// current values of the watched keys at the best block (none when watching everything or no
    /// key at all, as in Substrate).
    pub fn start(chain: &Chain, watched: Watched) -> (StorageWatch, Option<ChangeSet>) {
        let best = chain.best();
        let (filter, initial) = match watched {
            Watched::All => (None, None),
            Watched::Keys(keys) => {
                let changes: Vec<StorageChange> = keys
                    .iter()
                    .map(|key| (key.clone(), value(chain, best.number, key)))
                    .collect();
                let initial = (!changes.is_empty()).then_some(ChangeSet {
                    block: best.hash,
                    changes,
                });
                (Some(keys.into_iter().collect()), initial)
            }
        };
        let watch = StorageWatch {
            filter,
            next_block: best.number + 1,
        };
        (watch, initial)
    }

    /// Reports the blocks past the cursor, looking at no more than `max_blocks` of them (so one
    /// call holds the node's lock only briefly), and moves the cursor past them.
    pub fn advance(&mut self, chain: &Chain, max_blocks: u64) -> Advanced {
        let best = chain.best().number;
        let last = best.min(self.next_block.saturating_add(max_blocks.max(1) - 1));
        let mut sets = Vec::new();
        for number in self.next_block..=last {
            let changes: Vec<StorageChange> = match &self.filter {
                None => written(chain, number),
                Some(filter) => written(chain, number)
                    .into_iter()
                    .filter(|(key, _)| filter.contains(key))
                    .collect(),
            };
            if !changes.is_empty() {
                let block = chain.hash_of(number).expect("block up to best exists");
                sets.push(ChangeSet { block, changes });
            }
        }
        self.next_block = self.next_block.max(last + 1);
        Advanced {
            sets,
            caught_up: self.next_block > best,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::StorageMap;
    use crate::system_storage::SystemItem;

    const RUNTIME: &[u8] = b"release";

    fn chain_with(pairs: &[(&[u8], &[u8])]) -> Chain {
        let genesis: StorageMap = pairs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        Chain::new(genesis, RUNTIME.to_vec(), 0)
    }

    fn build(chain: &mut Chain, changes: &[(&[u8], Option<&[u8]>)]) -> u64 {
        chain.set_storage(
            changes
                .iter()
                .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))),
        );
        chain.build_block().number
    }

    fn owned(keys: &[&[u8]]) -> Vec<Vec<u8>> {
        keys.iter().map(|k| k.to_vec()).collect()
    }

    #[test]
    fn keys_are_sorted_by_prefix_and_page_after_the_start_key() {
        let chain = chain_with(&[
            (b"ab1", b"x"),
            (b"ab2", b"x"),
            (b"ab3", b"x"),
            (b"ac", b"x"),
            (b"a", b"x"),
        ]);
        assert_eq!(
            keys(&chain, 0, b"ab", None, 10),
            owned(&[b"ab1", b"ab2", b"ab3"])
        );
        assert_eq!(keys(&chain, 0, b"ab", None, 2), owned(&[b"ab1", b"ab2"]));
        assert_eq!(keys(&chain, 0, b"ab", Some(b"ab2"), 10), owned(&[b"ab3"]));
        // A start key before the prefix starts at the prefix, one after it ends the listing.
        assert_eq!(keys(&chain, 0, b"ab", Some(b"a"), 1), owned(&[b"ab1"]));
        assert!(keys(&chain, 0, b"ab", Some(b"ab3"), 10).is_empty());
        assert!(keys(&chain, 0, b"ab", Some(b"b"), 10).is_empty());
        // Everything: the five stored keys and genesis' computed ones (ParentHash, BlockHash(0),
        // :code), merged in order.
        let all = keys(&chain, 0, b"", None, 10);
        assert_eq!(all.len(), 5 + system_storage::keys_at(0).len());
        assert!(
            all.windows(2).all(|w| w[0] < w[1]),
            "sorted without duplicates"
        );
        assert!(all.contains(&b":code".to_vec()));
        assert!(keys(&chain, 7, b"", None, 10).is_empty(), "unknown block");
    }

    #[test]
    fn size_of_a_value_or_of_everything_under_a_prefix() {
        let chain = chain_with(&[(b"map1", b"abc"), (b"map2", b"de"), (b"other", b"")]);
        assert_eq!(size(&chain, 0, b"map1"), Some(3));
        assert_eq!(size(&chain, 0, b"map"), Some(5));
        assert_eq!(size(&chain, 0, b"none"), None);
        // An empty value exists and has size 0; an empty map has no size.
        assert_eq!(size(&chain, 0, b"other"), Some(0));
        assert_eq!(hash(&chain, 0, b"map1"), Some(blake2_256(b"abc")));
        assert_eq!(hash(&chain, 0, b"map"), None);
    }

    #[test]
    fn query_reports_everything_first_then_only_differences() {
        let mut chain = chain_with(&[(b"a", b"1")]);
        build(&mut chain, &[(b"b", Some(b"1"))]); // #1: a unchanged
        build(&mut chain, &[]); // #2: nothing
        build(&mut chain, &[(b"a", Some(b"2"))]); // #3
        build(&mut chain, &[(b"a", Some(b"2"))]); // #4: same value written again
        let sets = query(&chain, 0, 4, &owned(&[b"a", b"z"]));
        assert_eq!(
            sets,
            vec![
                ChangeSet {
                    block: chain.hash_of(0).unwrap(),
                    changes: vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"z".to_vec(), None)],
                },
                ChangeSet {
                    block: chain.hash_of(3).unwrap(),
                    changes: vec![(b"a".to_vec(), Some(b"2".to_vec()))],
                },
            ]
        );
        assert!(query(&chain, 0, 4, &[]).is_empty());
        assert_eq!(query(&chain, 2, 2, &owned(&[b"a"])).len(), 1);
    }

    #[test]
    fn a_watch_starts_with_current_values_and_reports_each_block_of_a_batch() {
        let mut chain = chain_with(&[(b"k", b"0")]);
        let (mut watch, initial) =
            StorageWatch::start(&chain, Watched::Keys(owned(&[b"k", b"absent"])));
        let initial = initial.unwrap();
        assert_eq!(initial.block, chain.best().hash);
        assert_eq!(
            initial.changes,
            vec![
                (b"k".to_vec(), Some(b"0".to_vec())),
                (b"absent".to_vec(), None)
            ]
        );
        build(&mut chain, &[(b"k", Some(b"1"))]); // #1
        build(&mut chain, &[(b"other", Some(b"1"))]); // #2: not watched
        build(&mut chain, &[]); // #3: nothing written
        build(&mut chain, &[(b"k", Some(b"0")), (b"other", None)]); // #4: undoes #1
        build(&mut chain, &[(b"absent", None)]); // #5: deleting an absent key is a write
        let advanced = watch.advance(&chain, 100);
        assert!(advanced.caught_up);
        let reported: Vec<(BlockHash, Vec<StorageChange>)> = advanced
            .sets
            .into_iter()
            .map(|s| (s.block, s.changes))
            .collect();
        assert_eq!(
            reported,
            vec![
                (
                    chain.hash_of(1).unwrap(),
                    vec![(b"k".to_vec(), Some(b"1".to_vec()))]
                ),
                (
                    chain.hash_of(4).unwrap(),
                    vec![(b"k".to_vec(), Some(b"0".to_vec()))]
                ),
                (chain.hash_of(5).unwrap(), vec![(b"absent".to_vec(), None)]),
            ]
        );
        assert_eq!(
            watch.advance(&chain, 100),
            Advanced {
                sets: vec![],
                caught_up: true
            }
        );
    }

    #[test]
    fn a_watch_scans_a_bounded_number_of_blocks_per_call() {
        let mut chain = chain_with(&[]);
        let (mut watch, initial) = StorageWatch::start(&chain, Watched::All);
        assert_eq!(initial, None, "watching everything sends no initial values");
        for n in 0..10u8 {
            build(&mut chain, &[(b"k", Some(&[n]))]);
        }
        let first = watch.advance(&chain, 4);
        assert_eq!((first.sets.len(), first.caught_up), (4, false));
        assert_eq!(first.sets[0].block, chain.hash_of(1).unwrap());
        let rest = watch.advance(&chain, 100);
        assert_eq!((rest.sets.len(), rest.caught_up), (6, true));
        let last: Vec<_> = rest.sets[5]
            .changes
            .iter()
            .filter(|(key, _)| key == b"k")
            .collect();
        assert_eq!(last, vec![&(b"k".to_vec(), Some(vec![9]))]);
        assert!(
            rest.sets[5]
                .changes
                .iter()
                .any(|(key, _)| SystemItem::from_key(key) == Some(SystemItem::Number)),
            "every block writes System::Number, as a runtime does"
        );
    }

    #[test]
    fn watching_an_empty_key_list_sends_nothing() {
        let mut chain = chain_with(&[(b"k", b"0")]);
        let (mut watch, initial) = StorageWatch::start(&chain, Watched::Keys(Vec::new()));
        assert_eq!(initial, None);
        build(&mut chain, &[(b"k", Some(b"1"))]);
        assert!(watch.advance(&chain, 10).sets.is_empty());
    }

    #[test]
    fn change_set_json_has_substrate_shape() {
        let set = ChangeSet {
            block: BlockHash([1; 32]),
            changes: vec![(vec![0xab], Some(vec![1, 2])), (vec![0xcd], None)],
        };
        assert_eq!(
            set.to_json(),
            json!({
                "block": BlockHash([1; 32]).to_string(),
                "changes": [["0xab", "0x0102"], ["0xcd", null]],
            })
        );
    }
}
