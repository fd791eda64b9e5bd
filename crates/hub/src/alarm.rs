//! `Alarms`: wakes a task at an instant to within the scheduler's slack (tens of µs), for
//! request deadlines; tokio's timer rounds every sleep up to a whole millisecond.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// The alarms of one hub and the thread that rings them; dropping this ends the thread and
/// waits for it.
#[derive(Debug)]
pub(crate) struct Alarms {
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the thread: an alarm sooner than the one it sleeps for, or the end.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The tasks to wake, soonest first; the key tells apart alarms of one instant.
    due: BTreeMap<(Instant, u64), Waker>,
    next_key: u64,
    stopped: bool,
    /// When the thread wakes by itself next (`None`: only when told). An alarm no sooner
    /// than that needs no wake-up: with one request at a time every alarm is the soonest,
    /// and telling the thread each time cost two context switches per request.
    wakes_at: Option<Instant>,
    /// How many times an alarm woke the thread (for the tests).
    told: u64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Single inserts and removes: a poisoned map is still whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sleeps until the soonest alarm, wakes every task that is due, until stopped.
    fn run(&self) {
        let mut state = self.lock();
        while !state.stopped {
            let now = Instant::now();
            while let Some(entry) = state.due.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                entry.remove().wake();
            }
            // With none due, it still sleeps until the instant it was told last: the next
            // request's alarm, as late or later, then needs no wake-up either.
            let next = state
                .due
                .first_key_value()
                .map(|(&(at, _), _)| at)
                .or(state.wakes_at.filter(|&at| at > now));
            state = match next {
                // A condvar's timed wait is a futex with a nanosecond timeout.
                Some(at) => {
                    state.wakes_at = Some(at);
                    let wait = at.saturating_duration_since(Instant::now());
                    self.changed
                        .wait_timeout(state, wait)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
                None => {
                    state.wakes_at = None;
                    self.changed
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                }
            };
        }
    }
}

impl Alarms {
    /// Starts the thread that rings the alarms.
    pub(crate) fn start() -> std::io::Result<Alarms> {
        let inner = Arc::new(Inner::default());
        let ringer = inner.clone();
        let thread = std::thread::Builder::new()
            .name("qnllm-alarms".into())
            .spawn(move || ringer.run())?;
        Ok(Alarms {
            inner,
            thread: Some(thread),
        })
    }

    /// A future that is ready at `at` (at once if `at` has passed).
    pub(crate) fn at(&self, at: Instant) -> Alarm {
        Alarm {
            inner: self.inner.clone(),
            at,
            key: None,
        }
    }
}

impl Drop for Alarms {
    fn drop(&mut self) {
        self.inner.lock().stopped = true;
        self.inner.changed.notify_one();
        // The thread only wakes tasks (it never runs them), so it ends at once: a hub that
        // stopped leaves no thread behind.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Ready at its instant; see [`Alarms::at`]. Dropping it cancels it.
#[derive(Debug)]
pub(crate) struct Alarm {
    inner: Arc<Inner>,
    at: Instant,
    /// Set while it is registered with the thread.
    key: Option<u64>,
}

impl Future for Alarm {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut state = this.inner.lock();
        if Instant::now() >= this.at {
            if let Some(key) = this.key.take() {
                state.due.remove(&(this.at, key));
            }
            return Poll::Ready(());
        }
        if let Some(key) = this.key {
            // Polled again (its task woke for something else): the thread still holds it,
            // and only a waker for another task needs storing.
            if let Some(waker) = state.due.get_mut(&(this.at, key)) {
                // A no-op when it is the same task's (`clone_from` checks `will_wake`).
                waker.clone_from(cx.waker());
                return Poll::Pending;
            }
        }
        let key = match this.key {
            Some(key) => key,
            None => {
                let key = state.next_key;
                state.next_key += 1;
                this.key = Some(key);
                key
            }
        };
        // The thread holds the lock except while it waits, so it is waiting now, to wake
        // at `wakes_at`; only a sooner alarm has to wake it.
        let sooner = state.wakes_at.is_none_or(|wakes| this.at < wakes);
        if sooner {
            state.wakes_at = Some(this.at);
            state.told += 1;
        }
        state.due.insert((this.at, key), cx.waker().clone());
        drop(state);
        if sooner {
            this.inner.changed.notify_one();
        }
        Poll::Pending
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.inner.lock().due.remove(&(self.at, key));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn alarms_ring_in_the_order_of_their_instants_and_a_dropped_one_never() {
        let alarms = Alarms::start().unwrap();
        let t0 = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut dropped = Box::pin(alarms.at(t0 + Duration::from_millis(2)));
        assert!(futures::poll!(dropped.as_mut()).is_pending());
        for (name, ms) in [("c", 9), ("a", 3), ("b", 6)] {
            let (alarm, tx) = (alarms.at(t0 + Duration::from_millis(ms)), tx.clone());
            tokio::spawn(async move {
                alarm.await;
                tx.send(name).unwrap();
            });
        }
        drop(dropped);
        drop(tx);
        let mut rang = Vec::new();
        while let Some(name) = rx.recv().await {
            rang.push(name);
        }
        assert_eq!(rang, ["a", "b", "c"]);
        assert!(
            alarms.inner.lock().due.is_empty(),
            "an alarm was left behind"
        );
        assert!(
            Instant::now() >= t0 + Duration::from_millis(9),
            "rang early"
        );
    }

    #[tokio::test]
    async fn alarms_later_than_the_one_the_thread_waits_for_do_not_wake_it() {
        let alarms = Alarms::start().unwrap();
        let t0 = Instant::now() + Duration::from_secs(60);
        // One request at a time, each with the same budget: every alarm is the only one
        // and later than the last, and only the first has to wake the thread.
        for ms in 0..50 {
            let mut alarm = Box::pin(alarms.at(t0 + Duration::from_millis(ms)));
            assert!(futures::poll!(alarm.as_mut()).is_pending());
        }
        assert_eq!(alarms.inner.lock().told, 1);
        let mut sooner = Box::pin(alarms.at(Instant::now() + Duration::from_millis(1)));
        assert!(futures::poll!(sooner.as_mut()).is_pending());
        assert_eq!(
            alarms.inner.lock().told,
            2,
            "a sooner alarm wakes the thread"
        );
        sooner.await;
    }

    #[tokio::test]
    async fn dropping_the_alarms_ends_their_thread_before_it_returns() {
        let alarms = Alarms::start().unwrap();
        let mut alarm = Box::pin(alarms.at(Instant::now() + Duration::from_secs(60)));
        assert!(futures::poll!(alarm.as_mut()).is_pending());
        drop(alarm);
        let inner = Arc::downgrade(&alarms.inner);
        drop(alarms);
        // The thread's own reference went with it.
        assert!(
            inner.upgrade().is_none(),
            "the alarm thread outlived its alarms"
        );
    }

    /// A waker that sends its name when woken.
    struct Named(&'static str, std::sync::mpsc::Sender<&'static str>);

    impl std::task::Wake for Named {
        fn wake(self: Arc<Self>) {
            let _ = self.1.send(self.0);
        }
    }

    #[test]
    fn an_alarm_polled_again_by_another_task_wakes_that_one_once() {
        let alarms = Alarms::start().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let first = Waker::from(Arc::new(Named("first", tx.clone())));
        let second = Waker::from(Arc::new(Named("second", tx)));
        // Far enough off that the three polls come before it, even on a loaded machine.
        let mut alarm = Box::pin(alarms.at(Instant::now() + Duration::from_secs(1)));
        for waker in [&first, &first, &second] {
            let poll = alarm.as_mut().poll(&mut Context::from_waker(waker));
            assert!(poll.is_pending());
        }
        assert_eq!(
            alarms.inner.lock().due.len(),
            1,
            "one entry, polled three times"
        );
        assert_eq!(rx.recv().unwrap(), "second");
        assert!(
            matches!(
                alarm.as_mut().poll(&mut Context::from_waker(&second)),
                Poll::Ready(())
            ),
            "woken, it is ready"
        );
        drop((first, second));
        // Both wakers are gone and the thread rang once: nothing else was sent.
        assert_eq!(rx.iter().collect::<Vec<_>>(), Vec::<&str>::new());
    }

    #[tokio::test]
    async fn an_alarm_whose_instant_has_passed_is_ready_at_once() {
        let alarms = Alarms::start().unwrap();
        let mut alarm = Box::pin(alarms.at(Instant::now()));
        assert!(futures::poll!(alarm.as_mut()).is_ready());
    }
}
