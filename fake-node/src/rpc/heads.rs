//! The legacy head subscriptions (`chain_subscribeNewHeads`, `chain_subscribeAllHeads`,
//! `chain_subscribeFinalizedHeads`), and the loop that serves every subscription ([`follow`]).
//!
//! Each subscription keeps a cursor into the chain (new and all heads: the next block number;
//! finalized heads: the next finality move; storage: the next block) and sends everything past
//! it, so a slow client delays only itself, nothing is dropped, and nothing is buffered beyond
//! what the chain already holds.
//! Recent header JSON is cached, so a hundred subscribers cost one serialization per block. Each
//! notification is framed around the shared header straight into its connection's writes
//! ([`crate::net::Injector`]): jsonrpsee answers the subscription calls (accept, unsubscribe, errors),
//! fake-node writes the notifications, the same bytes jsonrpsee would write.

use std::borrow::Cow;
use std::sync::Arc;

use jsonrpsee::server::{
    PendingSubscriptionSink, RpcModule, SubscriptionMessage, SubscriptionSink,
};
use jsonrpsee::types::response::{SubscriptionPayload, SubscriptionResponse};
use jsonrpsee::types::SubscriptionId;
use serde_json::value::RawValue;
use serde_json::Value;

use super::params::injected;
use super::{Inner, Shared};
use crate::chain::Chain;
use crate::fault::FaultMode;
use crate::net::{push_text_frame, Injector, Watched};

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
    /// Subscribers on loopback can drift apart by what their socket buffers hold (thousands of
    /// notifications); a smaller cache made the node render most headers several times.
    const SLOTS: usize = 8192;

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
    Some(RawValue::from_string(header.to_json_text()).expect("header text is JSON"))
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
    let direct = Direct::prepare(&shared, &pending);
    let Ok(sink) = pending.accept().await else {
        return;
    };
    let mut outlet = match direct {
        Some((direct, accepted)) => {
            // The answer naming the subscription goes out first, as from jsonrpsee.
            tokio::select! {
                seen = accepted.seen() => if seen.is_err() { return },
                _ = sink.closed() => return,
            }
            Outlet::Direct(direct)
        }
        None => Outlet::Sink,
    };
    let mut changed = shared.changed.subscribe();
    let (mut batch, mut mode) = {
        let mut inner = shared.lock();
        (feed.first(&mut inner), inner.node.fault(method))
    };
    let mut caught_up = false;
    loop {
        if outlet.send(&sink, &mut batch, mode).await.is_err() {
            return;
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

/// Where a subscription's notifications go.
enum Outlet {
    /// Framed here, straight into the connection's writes.
    Direct(Direct),
    /// Through jsonrpsee's sink: for a connection the registry does not know, or a numeric
    /// subscription id (which could not be told apart in the server's answers).
    Sink,
}

/// The subscription was closed (unsubscribed, or its connection is gone).
struct Closed;

impl Outlet {
    /// Sends (and drains) one batch of notifications, each as its own message.
    async fn send(
        &mut self,
        sink: &SubscriptionSink,
        batch: &mut Vec<Arc<RawValue>>,
        mode: FaultMode,
    ) -> Result<(), Closed> {
        match self {
            Outlet::Direct(direct) => {
                if sink.is_closed() {
                    return Err(Closed);
                }
                let envelope = &direct.envelope;
                let sent = direct.injector.send(|out| {
                    for json in batch.drain(..) {
                        let result = faulted(mode, json);
                        push_text_frame(
                            out,
                            &[
                                envelope.prefix(),
                                result.get().as_bytes(),
                                envelope.suffix(),
                            ],
                        );
                    }
                });
                sent.await.map_err(|_| Closed)
            }
            Outlet::Sink => {
                let id = sink.subscription_id();
                for json in batch.drain(..) {
                    let result = faulted(mode, json);
                    // The same bytes jsonrpsee builds from `sink.send(result)`, serialized straight
                    // from the shared header instead of from a copy of it.
                    let message =
                        SubscriptionMessage::new(sink.method_name(), borrowed(&id), &&*result)
                            .expect("raw JSON serializes");
                    sink.send(message).await.map_err(|_| Closed)?;
                }
                Ok(())
            }
        }
    }
}

/// A notification's result under the method's fault: the shared header, or garbage.
fn faulted(mode: FaultMode, json: Arc<RawValue>) -> Arc<RawValue> {
    match mode {
        FaultMode::Garbage | FaultMode::NonHex => {
            serde_json::value::to_raw_value(&mode.corrupt(Value::Object(Default::default())))
                .expect("garbage serializes")
                .into()
        }
        _ => json,
    }
}

/// The direct way for one subscription's notifications into its connection.
struct Direct {
    injector: Injector,
    envelope: Envelope,
}

impl Direct {
    /// Before the subscription is accepted: finds its connection and watches the server's
    /// messages for the subscription id, which the acceptance answer carries.
    fn prepare(shared: &Shared, pending: &PendingSubscriptionSink) -> Option<(Self, Watched)> {
        let id = pending.subscription_id();
        if !matches!(id, SubscriptionId::Str(_)) {
            return None;
        }
        let injector = shared.conns.injector(pending.connection_id().0)?;
        let quoted = serde_json::to_vec(&id).expect("subscription id serializes");
        let accepted = injector.watch(&quoted);
        let envelope = Envelope::new(pending.method_name(), &id);
        Some((Direct { injector, envelope }, accepted))
    }
}

/// A notification's JSON around its result, rendered once per subscription:
/// `{"jsonrpc":"2.0","method":M,"params":{"subscription":ID,"result":` … `}}`, the bytes
/// jsonrpsee writes.
struct Envelope {
    text: String,
    /// Where the result goes in `text`.
    at: usize,
}

impl Envelope {
    fn new(method: &str, id: &SubscriptionId<'_>) -> Self {
        const PLACEHOLDER: &str = "null";
        let placeholder = RawValue::from_string(PLACEHOLDER.into()).expect("null is JSON");
        let text = serde_json::to_string(&SubscriptionResponse::new(
            method.into(),
            SubscriptionPayload {
                subscription: borrowed(id),
                result: placeholder,
            },
        ))
        .expect("notification serializes");
        let at = text
            .rfind(PLACEHOLDER)
            .expect("the result is the last member");
        let text = format!("{}{}", &text[..at], &text[at + PLACEHOLDER.len()..]);
        Envelope { text, at }
    }

    fn prefix(&self) -> &[u8] {
        &self.text.as_bytes()[..self.at]
    }

    fn suffix(&self) -> &[u8] {
        &self.text.as_bytes()[self.at..]
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
    fn an_envelope_around_a_result_is_what_jsonrpsee_writes() {
        let header = RawValue::from_string(r#"{"number":"0x1","note":"null"}"#.into()).unwrap();
        for id in [
            SubscriptionId::Str(Cow::Owned("aBcD1234efGH5678".to_string())),
            SubscriptionId::Str(Cow::Owned("null".to_string())),
        ] {
            let envelope = Envelope::new("chain_finalizedHead", &id);
            let framed = [
                envelope.prefix(),
                header.get().as_bytes(),
                envelope.suffix(),
            ]
            .concat();
            let expected = serde_json::to_string(&SubscriptionResponse::new(
                "chain_finalizedHead".into(),
                SubscriptionPayload {
                    subscription: id.clone(),
                    result: &*header,
                },
            ))
            .unwrap();
            assert_eq!(String::from_utf8(framed).unwrap(), expected);
        }
    }

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
