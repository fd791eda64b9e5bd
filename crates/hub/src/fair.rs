//! `Fair`: shares the slots for requests in the router among client connections in turn,
//! so one connection that pipelines to its budget cannot queue ahead of everyone else.
//!
//! The router takes at most `capacity` requests at once (about what the engines take at
//! once: more would only wait in an engine's queue). A request that finds every slot taken
//! waits in its connection's queue; each freed slot goes to the next connection in a ring
//! of the connections with requests waiting, the first of its queue. A connection with one
//! request waiting is served after at most one request of each other connection, however
//! many those have queued.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The shared slots and the connections waiting for one.
#[derive(Debug)]
pub(crate) struct Fair {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    capacity: usize,
    used: usize,
    /// Connections with requests waiting, in the order they are served.
    ring: VecDeque<u64>,
    /// Per connection, its waiting requests, oldest first.
    waiting: HashMap<u64, VecDeque<oneshot::Sender<Slot>>>,
}

/// A request's slot in the router; handed to the next waiting connection on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    fair: Arc<Fair>,
    /// Cleared on a slot that never reached its holder, so its drop frees nothing.
    armed: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.fair.release();
        }
    }
}

impl Fair {
    pub(crate) fn new(capacity: usize) -> Arc<Fair> {
        Arc::new(Fair {
            state: Mutex::new(State {
                capacity: capacity.max(1),
                used: 0,
                ring: VecDeque::new(),
                waiting: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock leaves the state whole: a poisoned lock is fine.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a request of `connection`: at once if one is free and nobody waits,
    /// otherwise when the ring comes round to it. Dropping the future gives up its place.
    pub(crate) async fn acquire(self: &Arc<Self>, connection: u64) -> Slot {
        let handed = {
            let mut state = self.lock();
            if state.used < state.capacity && state.ring.is_empty() {
                state.used += 1;
                return Slot {
                    fair: self.clone(),
                    armed: true,
                };
            }
            let (tx, rx) = oneshot::channel();
            let queue = state.waiting.entry(connection).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                state.ring.push_back(connection);
            }
            rx
        };
        match handed.await {
            Ok(slot) => slot,
            // The sender is only dropped unsent with the whole `Fair`, which this holds.
            Err(_) => Slot {
                fair: self.clone(),
                armed: false,
            },
        }
    }

    /// Changes how many requests the router takes at once; waiters get the new room.
    pub(crate) fn set_capacity(self: &Arc<Self>, capacity: usize) {
        let mut state = self.lock();
        state.capacity = capacity.max(1);
        while state.used < state.capacity {
            state.used += 1;
            if !self.hand_over(&mut state) {
                state.used -= 1;
                break;
            }
        }
    }

    /// A slot came free: it goes to the next connection in the ring, or back to the pool.
    fn release(self: &Arc<Self>) {
        let mut state = self.lock();
        if state.used > state.capacity || !self.hand_over(&mut state) {
            state.used -= 1;
        }
    }

    /// Hands a counted slot to the first waiter of the next connection in the ring; `false`
    /// when nobody (still) waits.
    fn hand_over(self: &Arc<Self>, state: &mut State) -> bool {
        while let Some(connection) = state.ring.pop_front() {
            let Some(queue) = state.waiting.get_mut(&connection) else {
                continue;
            };
            let next = queue.pop_front();
            if queue.is_empty() {
                state.waiting.remove(&connection);
            } else {
                state.ring.push_back(connection);
            }
            let Some(waiter) = next else { continue };
            let slot = Slot {
                fair: self.clone(),
                armed: true,
            };
            match waiter.send(slot) {
                Ok(()) => return true,
                // It stopped waiting (cancelled, timed out): not freed twice.
                Err(mut slot) => slot.armed = false,
            }
        }
        false
    }

    /// Requests holding a slot, and requests waiting for one.
    pub(crate) fn load(&self) -> (usize, usize, usize) {
        let state = self.lock();
        let waiting = state.waiting.values().map(VecDeque::len).sum();
        (state.used, state.capacity, waiting)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_next_connection_not_the_one_with_most_waiting() {
        let fair = Fair::new(1);
        let held = fair.acquire(1).await;
        // Connection 1 queues ten more, then connection 2 queues one.
        let mut order = Vec::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (connection, n) in [(1u64, 10), (2, 1)] {
            for _ in 0..n {
                let (fair, tx) = (fair.clone(), tx.clone());
                tokio::spawn(async move {
                    let slot = fair.acquire(connection).await;
                    tx.send((connection, slot)).unwrap();
                });
                tokio::task::yield_now().await; // each queues before the next
            }
        }
        assert_eq!(fair.load(), (1, 1, 11));
        drop(held);
        for _ in 0..3 {
            let (connection, slot) = rx.recv().await.unwrap();
            order.push(connection);
            drop(slot);
        }
        // Connection 2 came second in the ring: it is served after one of connection 1's.
        assert_eq!(order, [1, 2, 1]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_passes_its_turn_on() {
        let fair = Fair::new(1);
        let held = fair.acquire(1).await;
        let gave_up = tokio::spawn({
            let fair = fair.clone();
            async move { fair.acquire(2).await }
        });
        tokio::task::yield_now().await;
        gave_up.abort();
        let _ = gave_up.await;
        let next = tokio::spawn({
            let fair = fair.clone();
            async move { fair.acquire(3).await }
        });
        tokio::task::yield_now().await;
        drop(held);
        let slot = next.await.unwrap();
        assert_eq!(fair.load(), (1, 1, 0));
        drop(slot);
        assert_eq!(fair.load(), (0, 1, 0));
    }

    #[tokio::test]
    async fn more_capacity_wakes_the_waiters_at_once() {
        let fair = Fair::new(1);
        let _held = fair.acquire(1).await;
        let waiter = tokio::spawn({
            let fair = fair.clone();
            async move { fair.acquire(2).await }
        });
        tokio::task::yield_now().await;
        fair.set_capacity(2);
        let _slot = waiter.await.unwrap();
        assert_eq!(fair.load(), (2, 2, 0));
    }
}
