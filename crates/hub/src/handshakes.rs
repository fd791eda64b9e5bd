//! The handshake budget: connections that have not yet said hello, and which of them is
//! closed to make room when too many wait.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Connections still in their handshake. They have their own budget, apart from the
/// connection cap, with a floor: every connection first has `floor` to say hello. Past it,
/// while more than the budget are waiting, the one that has waited longest is closed to make
/// room, so silent sockets can neither lock peers out nor hold more than the budget for
/// longer than the floor. A connection whose hello has been read is out of the set, so it is
/// never closed for it, however busy the hub.
#[derive(Debug)]
pub(crate) struct Handshakes {
    budget: usize,
    floor: Duration,
    waiting: std::sync::Mutex<Waiting>,
}

/// The handshakes in progress, oldest first (keys are handed out in order of arrival).
#[derive(Debug, Default)]
struct Waiting {
    next: u64,
    open: std::collections::BTreeMap<u64, (tokio::time::Instant, CancellationToken)>,
}

impl Handshakes {
    pub(crate) fn new(budget: usize, floor: Duration) -> Handshakes {
        Handshakes {
            budget: budget.max(1),
            floor,
            waiting: std::sync::Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // Single inserts and removes: a poisoned map is still consistent.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one new handshake; first makes room as [`Handshakes::trim`] does.
    /// Returns the slot and how many were evicted.
    pub(crate) fn enter(&self) -> (HandshakeSlot<'_>, u64) {
        let evicted = CancellationToken::new();
        let key = {
            let mut waiting = self.lock();
            waiting.next += 1;
            let key = waiting.next;
            let since = tokio::time::Instant::now();
            waiting.open.insert(key, (since, evicted.clone()));
            key
        };
        let made_room = self.trim();
        (
            HandshakeSlot {
                handshakes: self,
                key,
                evicted,
            },
            made_room,
        )
    }

    /// While more than the budget are waiting, closes the oldest that has had its floor;
    /// how many were closed. Called as a handshake starts and as each reaches its floor, so
    /// the set is back within the budget a floor after a flood at most.
    pub(crate) fn trim(&self) -> u64 {
        self.trim_at(tokio::time::Instant::now())
    }

    /// [`Handshakes::trim`] as of `now`.
    fn trim_at(&self, now: tokio::time::Instant) -> u64 {
        let mut waiting = self.lock();
        let mut evicted = 0;
        while waiting.open.len() > self.budget {
            let Some(entry) = waiting.open.first_entry() else {
                break;
            };
            if now.duration_since(entry.get().0) < self.floor {
                break; // the oldest is still within its floor, so is every other
            }
            entry.remove().1.cancel();
            evicted += 1;
        }
        evicted
    }

    /// Connections in their handshake now.
    pub(crate) fn len(&self) -> usize {
        self.lock().open.len()
    }
}

/// A handshake's place in the budget; freed when its hello is read, or on drop.
pub(crate) struct HandshakeSlot<'a> {
    handshakes: &'a Handshakes,
    key: u64,
    /// Cancelled when this handshake is closed to make room.
    pub(crate) evicted: CancellationToken,
}

impl HandshakeSlot<'_> {
    /// The connection's first frame was read: it leaves the set and can no longer be
    /// evicted (unless that already happened).
    pub(crate) fn greeted(&self) {
        self.handshakes.lock().open.remove(&self.key);
    }
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        self.greeted();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(100);

    #[tokio::test]
    async fn past_the_budget_only_handshakes_past_their_floor_are_evicted_oldest_first() {
        let handshakes = Handshakes::new(2, FLOOR);
        let (a, evicted) = handshakes.enter();
        assert_eq!(evicted, 0);
        let (b, _) = handshakes.enter();
        // Over the budget, but nobody has had the floor: all three stay.
        let (c, evicted) = handshakes.enter();
        assert_eq!(evicted, 0);
        assert_eq!(handshakes.len(), 3);
        let later = tokio::time::Instant::now() + FLOOR;
        // Once they have: the oldest goes, and only as many as bring it back to the budget.
        assert_eq!(handshakes.trim_at(later), 1);
        assert!(a.evicted.is_cancelled());
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        assert_eq!(handshakes.len(), 2);
        assert_eq!(handshakes.trim_at(later), 0);
        drop((a, b, c));
        assert_eq!(handshakes.len(), 0);
    }

    #[tokio::test]
    async fn a_handshake_whose_hello_was_read_is_never_evicted() {
        let handshakes = Handshakes::new(1, FLOOR);
        let (greeted, _) = handshakes.enter();
        greeted.greeted();
        let (waiting, _) = handshakes.enter();
        let (_newest, _) = handshakes.enter();
        let later = tokio::time::Instant::now() + FLOOR;
        assert_eq!(handshakes.trim_at(later), 1);
        assert!(!greeted.evicted.is_cancelled(), "evicted after its hello");
        assert!(waiting.evicted.is_cancelled());
    }
}
