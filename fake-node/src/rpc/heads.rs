//! The legacy head subscriptions (`chain_subscribeNewHeads`, `chain_subscribeFinalizedHeads`).
//!
//! Each subscription keeps a cursor into the chain (new heads: the next block number; finalized
//! heads: the next finality move) and sends everything past it, so a slow client delays only
//! itself, nothing is dropped, and nothing is buffered beyond what the chain already holds.
//! Recent header JSON is cached, so a hundred subscribers cost one serialization per block.

use std::sync::Arc;

use jsonrpsee::server::{PendingSubscriptionSink, RpcModule};
use serde_json::value::RawValue;
use serde_json::Value;

use super::params::injected;
use super::{Inner, Shared};
use crate::chain::Chain;
use crate::fault::FaultMode;

/// How many notifications a subscription task takes per lock.
const BATCH: usize = 64;

/// Header JSON shared by every subscription: a direct-mapped cache (slot = number mod size), so
/// subscribers that lag each other by up to `SLOTS` blocks still share one serialization per block,
/// in bounded memory and without any per-block work over the whole chain.
#[derive(Debug, Default)]
pub(super) struct HeaderCache {
    slots: Vec<Option<(u64, Box<RawValue>)>>,
}

impl HeaderCache {
    const SLOTS: usize = 2048;

    fn get(&mut self, chain: &Chain, number: u64) -> Option<Box<RawValue>> {
        if self.slots.is_empty() {
            self.slots.resize(Self::SLOTS, None);
        }
        let slot = &mut self.slots[(number % Self::SLOTS as u64) as usize];
        match slot {
            Some((cached, json)) if *cached == number => Some(json.clone()),
            _ => {
                let json = header_json(chain, number)?;
                *slot = Some((number, json.clone()));
                Some(json)
            }
        }
    }
}

pub(super) fn header_json(chain: &Chain, number: u64) -> Option<Box<RawValue>> {
    let header = chain.header(number)?;
    Some(serde_json::value::to_raw_value(&header.to_json()).expect("header JSON serializes"))
}

/// Which head stream a subscription follows.
#[derive(Clone, Copy, Debug)]
pub(super) enum Heads {
    New,
    Finalized,
}

impl Inner {
    /// The head sent first on subscribe, and the cursor just past it.
    fn first_head(&mut self, heads: Heads) -> (Box<RawValue>, u64) {
        let chain = self.node.chain();
        let (number, cursor) = match heads {
            Heads::New => (chain.best().number, chain.best().number + 1),
            Heads::Finalized => (
                chain.finalized().number,
                chain.finality_moves().len() as u64,
            ),
        };
        let json = self.headers.get(chain, number).expect("head exists");
        (json, cursor)
    }

    /// Up to [`BATCH`] headers past `cursor`, advancing it.
    fn next_heads(&mut self, heads: Heads, cursor: &mut u64) -> Vec<Box<RawValue>> {
        let chain = self.node.chain();
        let numbers: Vec<u64> = match heads {
            Heads::New => (*cursor..=chain.best().number).take(BATCH).collect(),
            Heads::Finalized => chain
                .finality_moves()
                .iter()
                .skip(*cursor as usize)
                .take(BATCH)
                .copied()
                .collect(),
        };
        *cursor = match heads {
            Heads::New => numbers.last().map_or(*cursor, |n| n + 1),
            Heads::Finalized => *cursor + numbers.len() as u64,
        };
        numbers
            .into_iter()
            .map(|n| self.headers.get(chain, n).expect("head exists"))
            .collect()
    }
}

/// Serves one head subscription: the current head first, then every later one, until the client
/// unsubscribes or goes away.
pub(super) async fn follow(
    shared: Arc<Shared>,
    pending: PendingSubscriptionSink,
    heads: Heads,
    method: &str,
) {
    if shared.fault_after_hang(method).await == FaultMode::Error {
        pending.reject(injected(&shared, method)).await;
        return;
    }
    let Ok(sink) = pending.accept().await else {
        return;
    };
    let mut changed = shared.changed.subscribe();
    let (first, mut cursor) = shared.lock().first_head(heads);
    let mut batch = vec![first];
    loop {
        let mode = shared.lock().node.fault(method);
        for json in batch {
            let message = match mode {
                FaultMode::Garbage | FaultMode::NonHex => serde_json::value::to_raw_value(
                    &mode.corrupt(Value::Object(Default::default())),
                )
                .expect("garbage serializes"),
                _ => json,
            };
            if sink.send(message).await.is_err() {
                return;
            }
        }
        changed.borrow_and_update();
        batch = shared.lock().next_heads(heads, &mut cursor);
        if batch.is_empty() {
            tokio::select! {
                woke = changed.changed() => if woke.is_err() { return },
                _ = sink.closed() => return,
            }
            batch = shared.lock().next_heads(heads, &mut cursor);
        }
    }
}

/// Registers the head subscriptions and their aliases.
pub(super) fn register(module: &mut RpcModule<Shared>) {
    let ok = "subscription names are unique";
    module
        .register_subscription(
            "chain_subscribeFinalizedHeads",
            "chain_finalizedHead",
            "chain_unsubscribeFinalizedHeads",
            |_, pending, shared, _| {
                follow(
                    shared,
                    pending,
                    Heads::Finalized,
                    "chain_subscribeFinalizedHeads",
                )
            },
        )
        .expect(ok);
    module
        .register_subscription(
            "chain_subscribeNewHeads",
            "chain_newHead",
            "chain_unsubscribeNewHeads",
            |_, pending, shared, _| follow(shared, pending, Heads::New, "chain_subscribeNewHeads"),
        )
        .expect(ok);
    for (alias, existing) in [
        (
            "chain_subscribeFinalisedHeads",
            "chain_subscribeFinalizedHeads",
        ),
        (
            "chain_unsubscribeFinalisedHeads",
            "chain_unsubscribeFinalizedHeads",
        ),
        ("chain_subscribeNewHead", "chain_subscribeNewHeads"),
        ("chain_unsubscribeNewHead", "chain_unsubscribeNewHeads"),
        ("subscribe_newHead", "chain_subscribeNewHeads"),
        ("unsubscribe_newHead", "chain_unsubscribeNewHeads"),
    ] {
        module.register_alias(alias, existing).expect(ok);
    }
}
