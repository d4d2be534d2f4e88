//! One `chainHead_v1_follow` subscription as a pure state machine: which blocks the client has
//! been told about and has pinned, which operations it has in flight, and the next event it
//! should receive. No I/O and no clock reads; the RPC shell asks for events one at a time and
//! passes time in.
//!
//! Events are generated *when the client can take them* (pull, not push), replaying the chain's
//! history block by block from where the subscription stands: a client that reads slowly makes
//! the subscription lag, never makes the node buffer. Nothing is skipped, so the guarantees of the
//! spec hold however far behind a client is:
//! - `initialized` comes first, with the finalized block and up to 15 of its ancestors (as
//!   Substrate does), all pinned;
//! - every block is announced by `newBlock` after its parent, and pinned;
//! - `bestBlockChanged` follows each new block (after the initial batch: once, for the best block);
//! - each move of finality becomes exactly one `finalized` event listing every newly finalized
//!   block in ascending order, so a finality jump arrives as one event and a stall as none;
//! - fake-node has no forks, so `prunedBlockHashes` is always empty.
//!
//! Pinned blocks are bounded by counting those at or below the finalized block (the spec's
//! advice, so a long finality stall does not kill every subscription): a move of finality that
//! would leave more than [`Limits::max_pinned_finalized`] pinned waits for the client to unpin.
//! Blocks come in bulk on a mock chain (`dev_newBlock({"count": 1000})`) and clients unpin
//! asynchronously, so waiting briefly keeps such clients following where stopping at once would
//! make them re-follow. The subscription is stopped (one `stop` event, then nothing) when the
//! client has not unpinned within [`Limits::slow_client_grace`], or when its connection has taken
//! no event for that long while events were waiting.

pub mod query;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use engine_shim::block::{BlockHash, BlockRef};

use crate::chain::Chain;
pub use query::{ItemKind, Query, QueryType, StorageItem};

/// The bounds of one subscription. The defaults are Substrate's where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Finalized blocks reported by `initialized`: the finalized block and its ancestors.
    pub initial_finalized: usize,
    /// Pinned blocks at or below the finalized block; finality waits for unpins beyond it.
    pub max_pinned_finalized: usize,
    /// Operations in flight (each storage item counts as one); the spec requires at least 16.
    pub max_operations: usize,
    /// Storage items per `operationStorageItems` event for descendant queries, before the client
    /// must call `chainHead_v1_continue`.
    pub storage_page: usize,
    /// How long events may wait for a connection that takes none, or finality for the client to
    /// unpin, before the subscription stops.
    pub slow_client_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            initial_finalized: 16,
            max_pinned_finalized: 512,
            max_operations: 16,
            storage_page: 5,
            slow_client_grace: Duration::from_secs(5),
        }
    }
}

/// What the client is told on the follow subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The finalized block last, its ancestors before it, in ascending order.
    Initialized {
        finalized: Vec<BlockRef>,
    },
    /// `new_runtime`: the block's specVersion differs from its parent's.
    NewBlock {
        block: BlockRef,
        parent: BlockHash,
        new_runtime: bool,
    },
    BestBlockChanged {
        best: BlockRef,
    },
    Finalized {
        finalized: Vec<BlockRef>,
        pruned: Vec<BlockHash>,
    },
    Operation {
        id: String,
        step: Step,
    },
    Stop,
}

/// One event of an operation, in the order the client receives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    BodyDone(Vec<Vec<u8>>),
    CallDone(Vec<u8>),
    StorageItems(Vec<StorageItem>),
    /// The operation pauses here until `chainHead_v1_continue`.
    WaitingForContinue,
    StorageDone,
    Error(String),
}

impl Step {
    /// Whether this is the operation's last event.
    fn ends(&self) -> bool {
        !matches!(self, Step::StorageItems(_) | Step::WaitingForContinue)
    }
}

/// An operation the subscription accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub id: String,
    /// Items beyond the operation limit that were not taken (storage only).
    pub discarded: usize,
}

/// Why a request on a subscription was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The spec's `{"result": "limitReached"}`.
    #[error("too many operations in flight")]
    LimitReached,
    #[error("Invalid block hash")]
    NotPinned,
    #[error("Wait for continue event was not generated for the subscription")]
    NotWaiting,
}

#[derive(Debug)]
struct Operation {
    /// Operation slots held until the operation ends.
    slots: usize,
    /// Events not yet handed to the client.
    steps: VecDeque<Step>,
    /// False until the method's response has gone out, so no event overtakes it.
    released: bool,
    waiting_for_continue: bool,
}

/// One follow subscription.
#[derive(Debug)]
pub struct Follow {
    limits: Limits,
    with_runtime: bool,
    /// Pinned blocks by number (fake-node has no forks, so a number names one block).
    pinned: BTreeMap<u64, BlockHash>,
    /// The highest block announced (by `initialized` or `newBlock`).
    announced: u64,
    /// The best block as last reported (the finalized block until a `bestBlockChanged`).
    best_reported: u64,
    finalized_reported: u64,
    /// Blocks up to here were in the node when the subscription started: they get one
    /// `bestBlockChanged` at the end instead of one each.
    initial_best: u64,
    /// Index into [`Chain::finality_moves`] of the next move to report.
    moves_cursor: usize,
    /// Since when the next finality move has waited for the client to unpin.
    unpin_wait_since: Option<Instant>,
    outbox: VecDeque<Event>,
    operations: BTreeMap<String, Operation>,
    slots_in_use: usize,
    next_operation: u64,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Live,
    /// Stopped; the `stop` event is still to be taken.
    Stopping,
    Stopped,
}

impl Follow {
    /// A subscription starting now: queues `initialized` for the chain's finalized block.
    pub fn new(chain: &Chain, with_runtime: bool, limits: Limits) -> Self {
        let finalized = chain.finalized();
        let first = (finalized.number + 1).saturating_sub(limits.initial_finalized.max(1) as u64);
        let blocks: Vec<BlockRef> = (first..=finalized.number)
            .map(|n| chain.block_ref(n).expect("finalized ancestors exist"))
            .collect();
        let mut follow = Follow {
            limits,
            with_runtime,
            pinned: blocks.iter().map(|b| (b.number, b.hash)).collect(),
            announced: finalized.number,
            best_reported: finalized.number,
            finalized_reported: finalized.number,
            initial_best: chain.best().number,
            moves_cursor: chain.finality_moves().len(),
            unpin_wait_since: None,
            outbox: VecDeque::new(),
            operations: BTreeMap::new(),
            slots_in_use: 0,
            next_operation: 0,
            state: State::Live,
        };
        follow
            .outbox
            .push_back(Event::Initialized { finalized: blocks });
        follow
    }

    pub fn with_runtime(&self) -> bool {
        self.with_runtime
    }

    /// Whether the subscription has stopped (its `stop` event may still be waiting).
    pub fn is_stopped(&self) -> bool {
        self.state != State::Live
    }

    /// The next event for the client, generating it from the chain when nothing is queued;
    /// `None` when the client is up to date (or finality waits for unpins: see
    /// [`Follow::deadline`]). After `Stop`, always `None`.
    pub fn next_event(&mut self, chain: &Chain, now: Instant) -> Option<Event> {
        match self.state {
            State::Stopped => return None,
            State::Stopping => {
                self.state = State::Stopped;
                return Some(Event::Stop);
            }
            State::Live => {}
        }
        if let Some(event) = self.outbox.pop_front() {
            return Some(event);
        }
        self.follow_chain(chain, now);
        if self.state == State::Stopping {
            return self.next_event(chain, now);
        }
        self.outbox.pop_front()
    }

    /// Queues the chain's next change: the next block, else the next move of finality (as a
    /// node imports a block before finalizing it).
    fn follow_chain(&mut self, chain: &Chain, now: Instant) {
        if self.announced < chain.best().number {
            return self.announce_next(chain);
        }
        if let Some(&target) = chain.finality_moves().get(self.moves_cursor) {
            if target <= self.finalized_reported {
                // Finality moved before this subscription started.
                self.moves_cursor += 1;
                return self.follow_chain(chain, now);
            }
            if target <= self.best_reported {
                let pinned_finalized = self.pinned.range(..=target).count();
                if pinned_finalized > self.limits.max_pinned_finalized {
                    let since = *self.unpin_wait_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= self.limits.slow_client_grace {
                        self.stop();
                    }
                    return;
                }
                self.unpin_wait_since = None;
                self.moves_cursor += 1;
                let finalized = (self.finalized_reported + 1..=target)
                    .map(|n| chain.block_ref(n).expect("finalized blocks exist"))
                    .collect();
                self.finalized_reported = target;
                self.outbox.push_back(Event::Finalized {
                    finalized,
                    pruned: Vec::new(),
                });
            }
        }
    }

    fn announce_next(&mut self, chain: &Chain) {
        let number = self.announced + 1;
        let block = chain.block_ref(number).expect("block below best exists");
        let parent = chain.hash_of(number - 1).expect("parent exists");
        let new_runtime = chain.spec_version_at(number) != chain.spec_version_at(number - 1);
        self.pinned.insert(number, block.hash);
        self.announced = number;
        self.outbox.push_back(Event::NewBlock {
            block,
            parent,
            new_runtime,
        });
        if number >= self.initial_best {
            self.best_reported = number;
            self.outbox
                .push_back(Event::BestBlockChanged { best: block });
        }
    }

    /// Stops the subscription: queued events are dropped, `stop` is next, operations end.
    pub fn stop(&mut self) {
        if self.state == State::Live {
            self.state = State::Stopping;
            self.outbox.clear();
            self.operations.clear();
            self.slots_in_use = 0;
        }
    }

    /// When the subscription stops unless the client unpins: the shell calls
    /// [`Follow::next_event`] again then.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Live => self
                .unpin_wait_since
                .map(|since| since + self.limits.slow_client_grace),
            _ => None,
        }
    }

    /// The connection has not taken an event since `waiting_since`; stops the subscription when
    /// that is longer than the grace. Returns whether it stopped.
    pub fn check_slow_client(&mut self, waiting_since: Instant, now: Instant) -> bool {
        if now.saturating_duration_since(waiting_since) >= self.limits.slow_client_grace {
            self.stop();
            true
        } else {
            false
        }
    }

    /// The number of a pinned block, if `hash` is one.
    pub fn pinned_number(&self, chain: &Chain, hash: &BlockHash) -> Option<u64> {
        let number = chain.number_of(hash)?;
        (self.pinned.get(&number) == Some(hash)).then_some(number)
    }

    /// How many blocks are pinned.
    pub fn pinned_count(&self) -> usize {
        self.pinned.len()
    }

    /// Unpins every block in `hashes`, or none if one of them is not pinned.
    pub fn unpin(&mut self, chain: &Chain, hashes: &[BlockHash]) -> Result<(), Refusal> {
        let numbers = hashes
            .iter()
            .map(|hash| self.pinned_number(chain, hash).ok_or(Refusal::NotPinned))
            .collect::<Result<Vec<_>, _>>()?;
        for number in numbers {
            self.pinned.remove(&number);
        }
        Ok(())
    }

    /// Starts an operation on pinned block `hash` needing `cost` slots; takes what is free
    /// (storage items beyond it are discarded), or refuses if nothing is. The operation's events
    /// are given with [`Follow::respond`] and held until [`Follow::release`].
    pub fn start_operation(
        &mut self,
        chain: &Chain,
        hash: &BlockHash,
        cost: usize,
    ) -> Result<(Started, u64), Refusal> {
        if self.is_stopped() {
            return Err(Refusal::LimitReached);
        }
        let number = self.pinned_number(chain, hash).ok_or(Refusal::NotPinned)?;
        let free = self.limits.max_operations - self.slots_in_use;
        let slots = cost.min(free);
        if slots == 0 && cost > 0 {
            return Err(Refusal::LimitReached);
        }
        let id = self.next_operation.to_string();
        self.next_operation += 1;
        self.slots_in_use += slots;
        self.operations.insert(
            id.clone(),
            Operation {
                slots,
                steps: VecDeque::new(),
                released: false,
                waiting_for_continue: false,
            },
        );
        Ok((
            Started {
                id,
                discarded: cost - slots,
            },
            number,
        ))
    }

    /// Sets the events of operation `id`.
    pub fn respond(&mut self, id: &str, steps: Vec<Step>) {
        if let Some(operation) = self.operations.get_mut(id) {
            operation.steps = steps.into();
        }
    }

    /// The response that started operation `id` has gone out: its events may follow.
    pub fn release(&mut self, id: &str) {
        if let Some(operation) = self.operations.get_mut(id) {
            operation.released = true;
            self.advance(id);
        }
    }

    /// `chainHead_v1_continue`: resumes an operation paused at `operationWaitingForContinue`.
    /// An unknown operation is no error (it may have ended); one that is not paused is.
    pub fn continue_operation(&mut self, id: &str) -> Result<(), Refusal> {
        match self.operations.get_mut(id) {
            None => Ok(()),
            Some(operation) if !operation.waiting_for_continue => Err(Refusal::NotWaiting),
            Some(operation) => {
                operation.waiting_for_continue = false;
                self.advance(id);
                Ok(())
            }
        }
    }

    /// `chainHead_v1_stopOperation`: forgets the operation; its remaining events are not sent.
    pub fn stop_operation(&mut self, id: &str) {
        if let Some(operation) = self.operations.remove(id) {
            self.slots_in_use -= operation.slots;
        }
    }

    /// Moves an operation's events to the outbox up to a pause or its end.
    fn advance(&mut self, id: &str) {
        let Some(operation) = self.operations.get_mut(id) else {
            return;
        };
        while let Some(step) = operation.steps.pop_front() {
            let ends = step.ends();
            let pauses = step == Step::WaitingForContinue;
            self.outbox.push_back(Event::Operation {
                id: id.to_string(),
                step,
            });
            if ends {
                break;
            }
            if pauses {
                operation.waiting_for_continue = true;
                return;
            }
        }
        if operation.steps.is_empty() && !operation.waiting_for_continue {
            let slots = operation.slots;
            self.operations.remove(id);
            self.slots_in_use -= slots;
        }
    }

    /// Operations in flight (started and not yet ended).
    pub fn operations_in_flight(&self) -> usize {
        self.operations.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::StorageMap;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const RUNTIME_KEY: &[u8] = b"runtime";

    fn chain(lag: u64) -> Chain {
        Chain::new(
            StorageMap::from([(RUNTIME_KEY.to_vec(), vec![1])]),
            RUNTIME_KEY.to_vec(),
            lag,
        )
    }

    fn build(chain: &mut Chain, n: u64) {
        for _ in 0..n {
            chain.build_block();
            chain.follow_best();
        }
    }

    fn drain(follow: &mut Follow, chain: &Chain) -> Vec<Event> {
        drain_at(follow, chain, Instant::now())
    }

    fn drain_at(follow: &mut Follow, chain: &Chain, now: Instant) -> Vec<Event> {
        std::iter::from_fn(|| follow.next_event(chain, now)).collect()
    }

    fn numbers(blocks: &[BlockRef]) -> Vec<u64> {
        blocks.iter().map(|b| b.number).collect()
    }

    #[test]
    fn initialized_names_the_finalized_block_and_up_to_fifteen_ancestors() {
        let mut c = chain(0);
        build(&mut c, 3);
        let mut f = Follow::new(&c, false, Limits::default());
        let events = drain(&mut f, &c);
        assert_eq!(events.len(), 1);
        let Event::Initialized { finalized } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(numbers(finalized), vec![0, 1, 2, 3]);
        build(&mut c, 30);
        let mut f = Follow::new(&c, false, Limits::default());
        let Some(Event::Initialized { finalized }) = f.next_event(&c, Instant::now()) else {
            panic!("initialized first")
        };
        assert_eq!(numbers(&finalized), (18..=33).collect::<Vec<_>>());
        assert_eq!(f.pinned_count(), 16);
    }

    #[test]
    fn blocks_above_finality_are_announced_then_the_best_once() {
        let mut c = chain(2);
        build(&mut c, 5);
        let mut f = Follow::new(&c, true, Limits::default());
        let events = drain(&mut f, &c);
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                Event::Initialized { .. } => "init".into(),
                Event::NewBlock { block, .. } => format!("new{}", block.number),
                Event::BestBlockChanged { best } => format!("best{}", best.number),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, vec!["init", "new4", "new5", "best5"]);
        build(&mut c, 1);
        let events = drain(&mut f, &c);
        assert!(matches!(&events[0], Event::NewBlock { block, .. } if block.number == 6));
        assert!(matches!(&events[1], Event::BestBlockChanged { best } if best.number == 6));
        assert!(
            matches!(&events[2], Event::Finalized { finalized, pruned } if numbers(finalized) == vec![4] && pruned.is_empty())
        );
        assert_eq!(events.len(), 3);
    }

    #[test]
    fn a_new_runtime_is_flagged_on_the_block_that_changes_it() {
        let mut c = chain(0);
        let mut f = Follow::new(&c, true, Limits::default());
        drain(&mut f, &c);
        c.set_storage([(RUNTIME_KEY.to_vec(), Some(vec![2]))]);
        build(&mut c, 2);
        let flags: Vec<bool> = drain(&mut f, &c)
            .into_iter()
            .filter_map(|e| match e {
                Event::NewBlock { new_runtime, .. } => Some(new_runtime),
                _ => None,
            })
            .collect();
        assert_eq!(flags, vec![true, false]);
    }

    #[test]
    fn a_finality_jump_is_one_event_and_a_stall_is_none() {
        let mut c = chain(0);
        let mut f = Follow::new(&c, false, Limits::default());
        drain(&mut f, &c);
        c.set_stalled(true);
        build(&mut c, 4);
        let stalled = drain(&mut f, &c);
        assert_eq!(stalled.len(), 8);
        assert!(!stalled.iter().any(|e| matches!(e, Event::Finalized { .. })));
        c.set_stalled(false);
        c.follow_best();
        let jump = drain(&mut f, &c);
        assert!(
            matches!(&jump[..], [Event::Finalized { finalized, .. }] if numbers(finalized) == vec![1, 2, 3, 4]),
            "{jump:?}"
        );
    }

    #[test]
    fn finality_waits_for_unpins_beyond_the_pin_limit_then_stops() {
        let limits = Limits {
            max_pinned_finalized: 4,
            ..Limits::default()
        };
        let start = Instant::now();
        let mut c = chain(0);
        let mut f = Follow::new(&c, false, limits);
        drain_at(&mut f, &c, start);
        build(&mut c, 5);
        let events = drain_at(&mut f, &c, start);
        let finalized: Vec<u64> = events
            .iter()
            .flat_map(|e| match e {
                Event::Finalized { finalized, .. } => numbers(finalized),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(finalized, vec![1, 2, 3], "{events:?}");
        assert_eq!(f.deadline(), Some(start + limits.slow_client_grace));
        // Unpinning lets finality go on...
        let genesis = c.hash_of(0).unwrap();
        f.unpin(&c, &[genesis]).unwrap();
        let events = drain_at(&mut f, &c, start);
        assert!(
            matches!(&events[..], [Event::Finalized { finalized, .. }] if numbers(finalized) == vec![4])
        );
        // ...holding on to every block stops the subscription after the grace.
        let later = start + limits.slow_client_grace / 2;
        assert_eq!(drain_at(&mut f, &c, later), vec![]);
        assert!(!f.is_stopped());
        let deadline = f.deadline().expect("waiting for unpins");
        assert_eq!(drain_at(&mut f, &c, deadline), vec![Event::Stop]);
        assert!(f.is_stopped());
        assert_eq!(f.deadline(), None);
        build(&mut c, 1);
        assert_eq!(f.next_event(&c, deadline), None);
    }

    #[test]
    fn non_finalized_blocks_do_not_count_against_the_pin_limit() {
        let limits = Limits {
            max_pinned_finalized: 4,
            ..Limits::default()
        };
        let mut c = chain(0);
        c.set_stalled(true);
        let mut f = Follow::new(&c, false, limits);
        build(&mut c, 100);
        let events = drain(&mut f, &c);
        assert!(!events.contains(&Event::Stop));
        assert_eq!(f.pinned_count(), 101);
    }

    #[test]
    fn a_client_that_takes_nothing_for_the_grace_is_stopped() {
        let c = chain(0);
        let mut f = Follow::new(&c, false, Limits::default());
        let start = Instant::now();
        let grace = Limits::default().slow_client_grace;
        assert!(!f.check_slow_client(start, start + grace / 2));
        assert!(!f.is_stopped());
        assert!(f.check_slow_client(start, start + grace));
        // The queued initialized event is dropped: stop is all that is left.
        assert_eq!(drain(&mut f, &c), vec![Event::Stop]);
    }

    #[test]
    fn unpin_is_all_or_nothing() {
        let mut c = chain(0);
        build(&mut c, 2);
        let mut f = Follow::new(&c, false, Limits::default());
        let (h1, h2) = (c.hash_of(1).unwrap(), c.hash_of(2).unwrap());
        let unknown = BlockHash([7; 32]);
        assert_eq!(f.unpin(&c, &[h1, unknown]), Err(Refusal::NotPinned));
        assert_eq!(f.pinned_number(&c, &h1), Some(1));
        f.unpin(&c, &[h1, h2]).unwrap();
        assert_eq!(f.pinned_number(&c, &h1), None);
        assert_eq!(f.unpin(&c, &[h1]), Err(Refusal::NotPinned));
    }

    #[test]
    fn operation_events_wait_for_the_response_and_pause_for_continue() {
        let c = chain(0);
        let genesis = c.hash_of(0).unwrap();
        let mut f = Follow::new(&c, false, Limits::default());
        drain(&mut f, &c);
        let (started, number) = f.start_operation(&c, &genesis, 2).unwrap();
        assert_eq!((started.discarded, number), (0, 0));
        let page = |n: u8| {
            Step::StorageItems(vec![StorageItem {
                key: vec![n],
                kind: ItemKind::Value,
                data: vec![n],
            }])
        };
        f.respond(
            &started.id,
            vec![
                page(1),
                Step::WaitingForContinue,
                page(2),
                Step::StorageDone,
            ],
        );
        assert_eq!(
            f.next_event(&c, Instant::now()),
            None,
            "nothing before the response is out"
        );
        assert_eq!(f.continue_operation(&started.id), Err(Refusal::NotWaiting));
        f.release(&started.id);
        let op = |step| Event::Operation {
            id: started.id.clone(),
            step,
        };
        assert_eq!(
            drain(&mut f, &c),
            vec![op(page(1)), op(Step::WaitingForContinue)]
        );
        assert_eq!(f.operations_in_flight(), 1);
        f.continue_operation(&started.id).unwrap();
        assert_eq!(drain(&mut f, &c), vec![op(page(2)), op(Step::StorageDone)]);
        assert_eq!(f.operations_in_flight(), 0);
        assert_eq!(
            f.continue_operation(&started.id),
            Ok(()),
            "ended: no effect"
        );
    }

    #[test]
    fn operations_take_free_slots_and_discard_the_rest() {
        let c = chain(0);
        let genesis = c.hash_of(0).unwrap();
        let mut f = Follow::new(&c, false, Limits::default());
        let (big, _) = f.start_operation(&c, &genesis, 20).unwrap();
        assert_eq!(big.discarded, 4);
        assert_eq!(
            f.start_operation(&c, &genesis, 1),
            Err(Refusal::LimitReached)
        );
        f.stop_operation(&big.id);
        let (small, _) = f.start_operation(&c, &genesis, 1).unwrap();
        assert_ne!(small.id, big.id);
        f.respond(&small.id, vec![Step::BodyDone(Vec::new())]);
        f.release(&small.id);
        assert_eq!(f.operations_in_flight(), 0);
        assert_eq!(
            f.start_operation(&c, &BlockHash([1; 32]), 1),
            Err(Refusal::NotPinned)
        );
        let (empty, _) = f.start_operation(&c, &genesis, 0).unwrap();
        assert_eq!(empty.discarded, 0);
    }

    #[test]
    fn a_stopped_subscription_refuses_operations_and_drops_their_events() {
        let c = chain(0);
        let genesis = c.hash_of(0).unwrap();
        let mut f = Follow::new(&c, false, Limits::default());
        let (op, _) = f.start_operation(&c, &genesis, 1).unwrap();
        f.stop();
        f.respond(&op.id, vec![Step::BodyDone(Vec::new())]);
        f.release(&op.id);
        assert_eq!(drain(&mut f, &c), vec![Event::Stop]);
        assert_eq!(
            f.start_operation(&c, &genesis, 1),
            Err(Refusal::LimitReached)
        );
    }

    /// What happens to the chain, or what the client does, between two looks at the events.
    #[derive(Clone, Debug)]
    enum Op {
        Build(u64),
        Stall(bool),
        Lag(u64),
        Finalize(u64),
        Upgrade,
        /// Take up to this many events.
        Read(usize),
        /// Unpin every finalized block but the last.
        UnpinFinalized,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..20).prop_map(Op::Build),
            any::<bool>().prop_map(Op::Stall),
            (0u64..5).prop_map(Op::Lag),
            (0u64..60).prop_map(Op::Finalize),
            Just(Op::Upgrade),
            (0usize..30).prop_map(Op::Read),
            Just(Op::UnpinFinalized),
        ]
    }

    /// Checks the spec's guarantees over a whole event stream, event by event.
    #[derive(Default)]
    struct Checker {
        announced: HashSet<BlockHash>,
        finalized: Option<u64>,
        stopped: bool,
        initialized: bool,
    }

    impl Checker {
        fn see(&mut self, event: &Event) {
            assert!(!self.stopped, "event after stop: {event:?}");
            if !self.initialized {
                assert!(
                    matches!(event, Event::Initialized { .. } | Event::Stop),
                    "first: {event:?}"
                );
            }
            match event {
                Event::Initialized { finalized } => {
                    assert!(!self.initialized, "initialized twice");
                    self.initialized = true;
                    assert!(!finalized.is_empty());
                    assert!(finalized.windows(2).all(|w| w[1].number == w[0].number + 1));
                    self.announced.extend(finalized.iter().map(|b| b.hash));
                    self.finalized = finalized.last().map(|b| b.number);
                }
                Event::NewBlock { block, parent, .. } => {
                    assert!(self.announced.contains(parent), "parent first: {event:?}");
                    assert!(self.announced.insert(block.hash), "announced twice");
                }
                Event::BestBlockChanged { best } => {
                    assert!(self.announced.contains(&best.hash));
                }
                Event::Finalized { finalized, pruned } => {
                    assert!(pruned.is_empty());
                    let last = self.finalized.expect("initialized");
                    assert_eq!(finalized.first().map(|b| b.number), Some(last + 1));
                    assert!(finalized.windows(2).all(|w| w[1].number == w[0].number + 1));
                    assert!(finalized.iter().all(|b| self.announced.contains(&b.hash)));
                    self.finalized = finalized.last().map(|b| b.number);
                }
                Event::Operation { .. } => {}
                Event::Stop => self.stopped = true,
            }
        }
    }

    proptest! {
        #[test]
        fn any_history_gives_a_consistent_event_stream(
            lag in 0u64..4,
            with_runtime in any::<bool>(),
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let limits = Limits { max_pinned_finalized: 40, ..Limits::default() };
            let mut c = chain(lag);
            build(&mut c, 3);
            let mut f = Follow::new(&c, with_runtime, limits);
            let mut checker = Checker::default();
            let mut version = 1u8;
            let now = Instant::now();
            for op in ops {
                match op {
                    Op::Build(n) => build(&mut c, n),
                    Op::Stall(s) => { c.set_stalled(s); c.follow_best(); }
                    Op::Lag(l) => { c.set_finality_lag(l); c.follow_best(); }
                    Op::Finalize(n) => { let _ = c.finalize(n); }
                    Op::Upgrade => { version += 1; c.set_storage([(RUNTIME_KEY.to_vec(), Some(vec![version]))]); }
                    Op::Read(n) => for _ in 0..n {
                        match f.next_event(&c, now) { Some(e) => checker.see(&e), None => break }
                    },
                    Op::UnpinFinalized => {
                        if let Some(last) = checker.finalized {
                            let old: Vec<BlockHash> = (0..last)
                                .filter_map(|n| c.hash_of(n))
                                .filter(|h| f.pinned_number(&c, h).is_some())
                                .collect();
                            f.unpin(&c, &old).unwrap();
                        }
                    }
                }
                let pinned_finalized = checker.finalized.map_or(0, |n| f.pinned.range(..=n).count());
                prop_assert!(checker.stopped || pinned_finalized <= limits.max_pinned_finalized);
            }
            // A client that reads everything ends up exactly where the chain is, or is stopped
            // for holding more pins than the limit past the grace.
            let late = now + limits.slow_client_grace;
            for e in drain_at(&mut f, &c, late) { checker.see(&e); }
            for e in drain_at(&mut f, &c, late + limits.slow_client_grace) { checker.see(&e); }
            if !checker.stopped {
                prop_assert_eq!(f.announced, c.best().number);
                prop_assert_eq!(checker.finalized, Some(c.finalized().number));
            }
        }
    }
}
