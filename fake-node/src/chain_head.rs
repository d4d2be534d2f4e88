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
//! The subscription is stopped (one `stop` event, then nothing) when the client pins more
//! finalized blocks than [`Limits::max_pinned_finalized`] (the spec's advice: count only finalized
//! blocks, so a long finality stall does not kill every subscription), or when its connection
//! has taken no event for [`Limits::slow_client_grace`] while events were waiting.

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
    /// Pinned blocks at or below the finalized block; one more stops the subscription.
    pub max_pinned_finalized: usize,
    /// Operations in flight (each storage item counts as one); the spec requires at least 16.
    pub max_operations: usize,
    /// Storage items per `operationStorageItems` event for descendant queries, before the client
    /// must call `chainHead_v1_continue`.
    pub storage_page: usize,
    /// How long events may wait for a connection that takes none before the subscription stops.
    pub slow_client_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            initial_finalized: 16,
            max_pinned_finalized: 512,
            max_operations: 16,
            storage_page: 5,
            slow_client_grace: Duration::from_secs(3),
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
    /// `None` when the client is up to date. After `Stop`, always `None`.
    pub fn next_event(&mut self, chain: &Chain) -> Option<Event> {
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
        self.follow_chain(chain);
        if self.state == State::Stopping {
            return self.next_event(chain);
        }
        self.outbox.pop_front()
    }

    /// Queues the chain's next change: the next block, else the next move of finality (as a
    /// node imports a block before finalizing it).
    fn follow_chain(&mut self, chain: &Chain) {
        if self.announced < chain.best().number {
            return self.announce_next(chain);
        }
        if let Some(&target) = chain.finality_moves().get(self.moves_cursor) {
            if target <= self.finalized_reported {
                // Finality moved before this subscription started.
                self.moves_cursor += 1;
                return self.follow_chain(chain);
            }
            if target <= self.best_reported {
                self.moves_cursor += 1;
                let pinned_finalized = self.pinned.range(..=target).count();
                if pinned_finalized > self.limits.max_pinned_finalized {
                    self.stop();
                    return;
                }
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
