//! The legacy head subscriptions (`chain_subscribeNewHeads`, `chain_subscribeAllHeads`,
//! `chain_subscribeFinalizedHeads`), and the loop that serves every subscription ([`follow`]).
//!
//! Each subscription keeps a cursor into the chain (new and all heads: the next block number;
//! finalized heads: the next finality move; storage: the next block) and sends everything past
//! it, so a slow client delays only itself, nothing is dropped, and nothing is buffered beyond
//! what the chain already holds.
//! Recent header JSON is cached, so a hundred subscribers cost one serialization per block, and each
//! notification is serialized around the shared header without copying it first.

use std::borrow::Cow;
use std::sync::Arc;

use jsonrpsee::server::{PendingSubscriptionSink, RpcModule, SubscriptionMessage};
use jsonrpsee::types::SubscriptionId;
use serde_json::value::RawValue;
use serde_json::Value;

use super::params::injected;
use super::{Inner, Shared};
use crate::chain::Chain;
use crate::fault::FaultMode;

/// How many notifications a subscription task takes per lock.
pub(super) const BATCH: usize = 64;

/// Header JSON shared by every subscription: a direct-mapped cache (slot = number mod size), so
/// subscribers that lag each other by up to `SLOTS` blocks still share one serialization per block,
/// in bounded memory and without any per-block work over the whole chain.
#[derive(Debug, Default)]
pub(super) struct HeaderCache {
    slots: Vec<Option<(u64, Arc<RawValue>)>>,
}

impl HeaderCache {
    const SLOTS: usize = 2048;

    fn get(&mut self, chain: &Chain, number: u64) -> Option<Arc<RawValue>> {
        if self.slots.is_empty() {
            self.slots.resize(Self::SLOTS, None);
        }
        let slot = &mut self.slots[(number % Self::SLOTS as u64) as usize];
        match slot {
            Some((cached, json)) if *cached == number => Some(json.clone()),
            _ => {
                let json: Arc<RawValue> = header_json(chain, number)?.into();
                *slot = Some((number, Arc::clone(&json)));
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
    /// Every new best block (`chain_subscribeNewHeads`).
    New,
    /// Every imported block (`chain_subscribeAllHeads`). fake-node has no forks, so every block
    /// it imports becomes the best block: the same blocks as [`Heads::New`].
    All,
    /// Every finality move (`chain_subscribeFinalizedHeads`).
    Finalized,
}

/// What one subscription sends: the notifications due on subscribe, then whatever the chain adds
/// past the subscription's cursor. Implemented for head and storage subscriptions; [`follow`]
/// serves any of them.
pub(super) trait Feed: Send + 'static {
    /// The notifications sent right after the subscription is accepted.
    fn first(&mut self, inner: &mut Inner) -> Vec<Arc<RawValue>>;

    /// Appends at most one batch of notifications past the cursor to `out`, advancing it.
    /// Returns whether the feed has caught up with the chain (nothing more until it changes).
    fn next(&mut self, inner: &mut Inner, out: &mut Vec<Arc<RawValue>>) -> bool;
}

/// A head subscription's position: new/all heads keep the next block number, finalized heads
/// the index of the next finality move.
#[derive(Debug)]
pub(super) struct HeadFeed {
    heads: Heads,
    cursor: u64,
}

impl HeadFeed {
    pub(super) fn new(heads: Heads) -> Self {
        HeadFeed { heads, cursor: 0 }
    }
}

impl Feed for HeadFeed {
    fn first(&mut self, inner: &mut Inner) -> Vec<Arc<RawValue>> {
        let chain = inner.node.chain();
        let number = match self.heads {
            Heads::New | Heads::All => {
                self.cursor = chain.best().number + 1;
                chain.best().number
            }
            Heads::Finalized => {
                self.cursor = chain.finality_moves().len() as u64;
                chain.finalized().number
            }
        };
        vec![inner.headers.get(chain, number).expect("head exists")]
    }

    fn next(&mut self, inner: &mut Inner, out: &mut Vec<Arc<RawValue>>) -> bool {
        let chain = inner.node.chain();
        let (numbers, caught_up): (Vec<u64>, bool) = match self.heads {
            Heads::New | Heads::All => {
                let best = chain.best().number;
                let numbers: Vec<u64> = (self.cursor..=best).take(BATCH).collect();
                self.cursor = numbers.last().map_or(self.cursor, |n| n + 1);
                (numbers, self.cursor > best)
            }
            Heads::Finalized => {
                let moves = chain.finality_moves();
                let numbers: Vec<u64> = moves
                    .iter()
                    .skip(self.cursor as usize)
                    .take(BATCH)
                    .copied()
                    .collect();
                self.cursor += numbers.len() as u64;
                (numbers, self.cursor >= moves.len() as u64)
            }
        };
        out.extend(
            numbers
                .into_iter()
                .map(|n| inner.headers.get(chain, n).expect("head exists")),
        );
        caught_up
    }
}

/// Serves one subscription: after any injected fault, accepts it, sends the feed's first
/// notifications (read at acceptance), then every later one, until the client unsubscribes or
/// goes away.
pub(super) async fn follow(
    shared: Arc<Shared>,
    pending: PendingSubscriptionSink,
    method: &str,
    mut feed: impl Feed,
) {
    if shared.fault_after_hang(method).await == FaultMode::Error {
        pending.reject(injected(&shared, method)).await;
        return;
    }
    let Ok(sink) = pending.accept().await else {
        return;
    };
    let id = sink.subscription_id();
    let mut changed = shared.changed.subscribe();
    let (mut batch, mut mode) = {
        let mut inner = shared.lock();
        (feed.first(&mut inner), inner.node.fault(method))
    };
    let mut caught_up = false;
    loop {
        for json in batch.drain(..) {
            let message = match mode {
                FaultMode::Garbage | FaultMode::NonHex => serde_json::value::to_raw_value(
                    &mode.corrupt(Value::Object(Default::default())),
                )
                .expect("garbage serializes")
                .into(),
                _ => json,
            };
            // The same bytes jsonrpsee builds from `sink.send(result)`, serialized straight from
            // the shared header instead of from a copy of it.
            let message = SubscriptionMessage::new(sink.method_name(), borrowed(&id), &&*message)
                .expect("raw JSON serializes");
            if sink.send(message).await.is_err() {
                return;
            }
        }
        // Caught up when the batch was read: wait for the chain to change. A change since that
        // read was marked before it, so the wait then returns at once.
        if caught_up {
            tokio::select! {
                woke = changed.changed() => if woke.is_err() { return },
                _ = sink.closed() => return,
            }
        }
        changed.borrow_and_update();
        // One lock per batch: the next notifications and the fault that applies to them.
        (mode, caught_up) = {
            let mut inner = shared.lock();
            (inner.node.fault(method), feed.next(&mut inner, &mut batch))
        };
    }
}

/// `id` without copying its string (a notification only serializes it).
fn borrowed<'a>(id: &'a SubscriptionId<'_>) -> SubscriptionId<'a> {
    match id {
        SubscriptionId::Num(n) => SubscriptionId::Num(*n),
        SubscriptionId::Str(s) => SubscriptionId::Str(Cow::Borrowed(s)),
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
                    "chain_subscribeFinalizedHeads",
                    HeadFeed::new(Heads::Finalized),
                )
            },
        )
        .expect(ok);
    module
        .register_subscription(
            "chain_subscribeNewHeads",
            "chain_newHead",
            "chain_unsubscribeNewHeads",
            |_, pending, shared, _| {
                follow(
                    shared,
                    pending,
                    "chain_subscribeNewHeads",
                    HeadFeed::new(Heads::New),
                )
            },
        )
        .expect(ok);
    module
        .register_subscription(
            "chain_subscribeAllHeads",
            "chain_allHead",
            "chain_unsubscribeAllHeads",
            |_, pending, shared, _| {
                follow(
                    shared,
                    pending,
                    "chain_subscribeAllHeads",
                    HeadFeed::new(Heads::All),
                )
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_subscription_id_serializes_as_the_original() {
        for id in [
            SubscriptionId::Str(Cow::Owned("aBcD1234efGH5678".to_string())),
            SubscriptionId::Str(Cow::Owned("with \"quotes\"".to_string())),
            SubscriptionId::Num(7),
        ] {
            assert_eq!(
                serde_json::to_string(&borrowed(&id)).unwrap(),
                serde_json::to_string(&id).unwrap()
            );
        }
    }
}
