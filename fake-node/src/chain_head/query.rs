//! `chainHead_v1_storage` queries answered from a block's storage, as the events the client
//! receives. Pure: the chain in, the operation's steps out.

use std::str::FromStr;

use parity_scale_codec::Encode;

use super::Step;
use crate::chain::{blake2_256, Chain};
use crate::storage_query;

/// What a query item asks for (the spec's `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryType {
    Value,
    Hash,
    ClosestDescendantMerkleValue,
    DescendantsValues,
    DescendantsHashes,
}

impl QueryType {
    pub const NAMES: &'static str =
        "value, hash, closestDescendantMerkleValue, descendantsValues, descendantsHashes";

    fn is_descendants(self) -> bool {
        matches!(
            self,
            QueryType::DescendantsValues | QueryType::DescendantsHashes
        )
    }
}

impl FromStr for QueryType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "value" => QueryType::Value,
            "hash" => QueryType::Hash,
            "closestDescendantMerkleValue" => QueryType::ClosestDescendantMerkleValue,
            "descendantsValues" => QueryType::DescendantsValues,
            "descendantsHashes" => QueryType::DescendantsHashes,
            other => {
                return Err(format!(
                    "storage item type '{other}' is unknown; use one of: {}",
                    Self::NAMES
                ))
            }
        })
    }
}

/// One requested item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub key: Vec<u8>,
    pub kind: QueryType,
}

/// Which field of a result item is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    Value,
    Hash,
    ClosestDescendantMerkleValue,
}

impl ItemKind {
    /// The JSON field name.
    pub fn field(self) -> &'static str {
        match self {
            ItemKind::Value => "value",
            ItemKind::Hash => "hash",
            ItemKind::ClosestDescendantMerkleValue => "closestDescendantMerkleValue",
        }
    }
}

/// One result item: `key` and the requested field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageItem {
    pub key: Vec<u8>,
    pub kind: ItemKind,
    pub data: Vec<u8>,
}

/// The events answering `queries` at block `number` (which must exist), storage items in pages
/// of `page` when a descendants query is among them (each page but the last followed by
/// `operationWaitingForContinue`), all at once otherwise, then `operationStorageDone`.
///
/// `child_trie`: fake-node keeps no child tries, so every query of one finds nothing, as a
/// real node answers for a child trie that does not exist.
pub fn answer(
    chain: &Chain,
    number: u64,
    queries: &[Query],
    child_trie: bool,
    page: usize,
) -> Vec<Step> {
    let items: Vec<StorageItem> = if child_trie {
        Vec::new()
    } else {
        queries
            .iter()
            .flat_map(|query| items_for(chain, number, query))
            .collect()
    };
    let paged = queries.iter().any(|q| q.kind.is_descendants());
    let mut steps = Vec::new();
    if paged {
        let mut pages = items.chunks(page.max(1)).peekable();
        while let Some(chunk) = pages.next() {
            steps.push(Step::StorageItems(chunk.to_vec()));
            if pages.peek().is_some() {
                steps.push(Step::WaitingForContinue);
            }
        }
    } else if !items.is_empty() {
        steps.push(Step::StorageItems(items));
    }
    steps.push(Step::StorageDone);
    steps
}

fn items_for(chain: &Chain, number: u64, query: &Query) -> Vec<StorageItem> {
    let item = |key: &[u8], kind, data| StorageItem {
        key: key.to_vec(),
        kind,
        data,
    };
    let value = || storage_query::value(chain, number, &query.key);
    let descendants = || storage_query::entries(chain, number, &query.key).into_iter();
    match query.kind {
        QueryType::Value => value()
            .map(|v| item(&query.key, ItemKind::Value, v))
            .into_iter()
            .collect(),
        QueryType::Hash => value()
            .map(|v| item(&query.key, ItemKind::Hash, blake2_256(&v).to_vec()))
            .into_iter()
            .collect(),
        QueryType::ClosestDescendantMerkleValue => merkle_value(descendants().collect())
            .map(|m| {
                item(
                    &query.key,
                    ItemKind::ClosestDescendantMerkleValue,
                    m.to_vec(),
                )
            })
            .into_iter()
            .collect(),
        QueryType::DescendantsValues => descendants()
            .map(|(k, v)| item(&k, ItemKind::Value, v))
            .collect(),
        QueryType::DescendantsHashes => descendants()
            .map(|(k, v)| item(&k, ItemKind::Hash, blake2_256(&v).to_vec()))
            .collect(),
    }
}

/// fake-node's stand-in for a trie Merkle value: `blake2_256` of the SCALE-encoded entries under
/// the key, so it changes exactly when one of them does (what clients watch it for); `None`
/// when nothing is stored under the key.
fn merkle_value(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Option<[u8; 32]> {
    (!entries.is_empty()).then(|| blake2_256(&entries.encode()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::StorageMap;

    fn chain() -> Chain {
        let storage = StorageMap::from([
            (b"a".to_vec(), vec![1]),
            (b"ab1".to_vec(), vec![2]),
            (b"ab2".to_vec(), vec![3]),
            (b"ab3".to_vec(), vec![4]),
            (b"b".to_vec(), vec![5]),
        ]);
        Chain::new(storage, b"a".to_vec(), 0)
    }

    fn query(key: &[u8], kind: QueryType) -> Query {
        Query {
            key: key.to_vec(),
            kind,
        }
    }

    #[test]
    fn values_and_hashes_come_in_one_event() {
        let steps = answer(
            &chain(),
            0,
            &[
                query(b"a", QueryType::Value),
                query(b"b", QueryType::Hash),
                query(b"missing", QueryType::Value),
            ],
            false,
            1,
        );
        assert_eq!(
            steps,
            vec![
                Step::StorageItems(vec![
                    StorageItem {
                        key: b"a".to_vec(),
                        kind: ItemKind::Value,
                        data: vec![1]
                    },
                    StorageItem {
                        key: b"b".to_vec(),
                        kind: ItemKind::Hash,
                        data: blake2_256(&[5]).to_vec()
                    },
                ]),
                Step::StorageDone
            ]
        );
    }

    #[test]
    fn a_missing_key_gives_only_done() {
        let steps = answer(&chain(), 0, &[query(b"zz", QueryType::Value)], false, 5);
        assert_eq!(steps, vec![Step::StorageDone]);
    }

    #[test]
    fn descendants_are_paged_with_waits_between_pages() {
        let steps = answer(
            &chain(),
            0,
            &[query(b"ab", QueryType::DescendantsValues)],
            false,
            2,
        );
        assert_eq!(steps.len(), 4);
        let Step::StorageItems(first) = &steps[0] else {
            panic!("items first: {steps:?}")
        };
        assert_eq!(
            first.iter().map(|i| i.key.clone()).collect::<Vec<_>>(),
            vec![b"ab1".to_vec(), b"ab2".to_vec()]
        );
        assert_eq!(steps[1], Step::WaitingForContinue);
        assert!(matches!(&steps[2], Step::StorageItems(last) if last.len() == 1));
        assert_eq!(steps[3], Step::StorageDone);
    }

    #[test]
    fn the_prefix_includes_the_key_itself() {
        let steps = answer(
            &chain(),
            0,
            &[query(b"a", QueryType::DescendantsHashes)],
            false,
            10,
        );
        let Step::StorageItems(items) = &steps[0] else {
            panic!("items first")
        };
        assert_eq!(items.len(), 4);
        assert!(items.iter().all(|i| i.kind == ItemKind::Hash));
    }

    #[test]
    fn merkle_value_changes_with_any_descendant() {
        let mut c = chain();
        let before = answer(
            &c,
            0,
            &[query(b"ab", QueryType::ClosestDescendantMerkleValue)],
            false,
            5,
        );
        c.set_storage([(b"ab2".to_vec(), Some(vec![9]))]);
        c.build_block();
        let after = answer(
            &c,
            1,
            &[query(b"ab", QueryType::ClosestDescendantMerkleValue)],
            false,
            5,
        );
        assert_ne!(before, after);
        assert_eq!(before.len(), 2);
        let none = answer(
            &c,
            1,
            &[query(b"zz", QueryType::ClosestDescendantMerkleValue)],
            false,
            5,
        );
        assert_eq!(none, vec![Step::StorageDone]);
    }

    #[test]
    fn child_tries_hold_nothing() {
        let steps = answer(&chain(), 0, &[query(b"a", QueryType::Value)], true, 5);
        assert_eq!(steps, vec![Step::StorageDone]);
    }

    #[test]
    fn query_types_parse_by_spec_name() {
        assert_eq!(
            "closestDescendantMerkleValue".parse(),
            Ok(QueryType::ClosestDescendantMerkleValue)
        );
        assert!("values"
            .parse::<QueryType>()
            .unwrap_err()
            .contains("descendantsValues"));
    }
}
