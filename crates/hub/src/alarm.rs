//! `Alarms`: wakes a task at an instant to within the scheduler's slack (tens of µs), for
//! request deadlines; tokio's timer rounds every sleep up to a whole millisecond. An alarm
//! can also run an action on its own thread at that instant, before the task is woken:
//! a saturated runtime can take milliseconds to poll the woken task, and a deadline's
//! answer should not wait for that.

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

/// What the thread does at one alarm's instant.
#[derive(Default)]
struct Entry {
    /// Run first, on the alarm thread; it must not block.
    action: Option<Box<dyn FnOnce() + Send>>,
    /// The task to wake, once one has polled the alarm.
    waker: Option<Waker>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("action", &self.action.is_some())
            .field("waker", &self.waker)
            .finish()
    }
}

#[derive(Debug, Default)]
struct State {
    /// What to do, soonest first; the key tells apart alarms of one instant.
    due: BTreeMap<(Instant, u64), Entry>,
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

    /// Sleeps until the soonest alarm, rings every one that is due, until stopped.
    fn run(&self) {
        let mut state = self.lock();
        let mut rung = Vec::new();
        while !state.stopped {
            let now = Instant::now();
            while let Some(entry) = state.due.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                rung.push(entry.remove());
            }
            if !rung.is_empty() {
                // Outside the lock: an action writes to a socket, and new alarms need not
                // wait for that.
                drop(state);
                for entry in rung.drain(..) {
                    if let Some(action) = entry.action {
                        action();
                    }
                    if let Some(waker) = entry.waker {
                        waker.wake();
                    }
                }
                state = self.lock();
                continue;
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

    /// Adds `entry` at `at` under a new key; whether the thread must be told, because it
    /// sleeps until later (then the caller notifies `changed` once the lock is released).
    fn register(state: &mut State, at: Instant, entry: Entry) -> (u64, bool) {
        let key = state.next_key;
        state.next_key += 1;
        // The thread holds the lock except while it waits, so it is waiting now, to wake
        // at `wakes_at`; only a sooner alarm has to wake it.
        let sooner = state.wakes_at.is_none_or(|wakes| at < wakes);
        if sooner {
            state.wakes_at = Some(at);
            state.told += 1;
        }
        state.due.insert((at, key), entry);
        (key, sooner)
    }
}

/// Asks the kernel to run the calling thread before others at normal priority (nice -10)
/// when it wakes: an alarm is late by however long its thread waits for a CPU. Allowed with
/// CAP_SYS_NICE (or a raised RLIMIT_NICE); elsewhere the thread stays at normal priority.
fn raise_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority reads only its integer arguments; on Linux, PRIO_PROCESS with
        // 0 names the calling thread.
        let raised = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) } == 0;
        tracing::debug!(raised, "alarm thread priority");
    }
}

impl Alarms {
    /// Starts the thread that rings the alarms.
    pub(crate) fn start() -> std::io::Result<Alarms> {
        let inner = Arc::new(Inner::default());
        let ringer = inner.clone();
        let thread = std::thread::Builder::new()
            .name("qnllm-alarms".into())
            .spawn(move || {
                raise_priority();
                ringer.run()
            })?;
        Ok(Alarms {
            inner,
            thread: Some(thread),
        })
    }

    /// A future that is ready at `at` (at once if `at` has passed), registered when first
    /// polled. The hub uses [`Alarms::answer_at`]; this one is for the tests.
    #[cfg(test)]
    pub(crate) fn at(&self, at: Instant) -> Alarm {
        Alarm {
            inner: self.inner.clone(),
            at,
            key: None,
        }
    }

    /// [`Alarms::at`] that also runs `action` on the alarm thread at `at`, before it wakes
    /// the task that polls the alarm; registered now, so it runs at its instant even if
    /// no task polls the alarm before. A task that polls the alarm at or after `at`, before
    /// the thread got to it, finds it ready and takes it: `action` then never runs, and
    /// neither does it if the alarm is dropped first.
    pub(crate) fn answer_at(&self, at: Instant, action: impl FnOnce() + Send + 'static) -> Alarm {
        let entry = Entry {
            action: Some(Box::new(action)),
            waker: None,
        };
        let (key, sooner) = Inner::register(&mut self.inner.lock(), at, entry);
        if sooner {
            self.inner.changed.notify_one();
        }
        Alarm {
            inner: self.inner.clone(),
            at,
            key: Some(key),
        }
    }
}

impl Drop for Alarms {
    fn drop(&mut self) {
        self.inner.lock().stopped = true;
        self.inner.changed.notify_one();
        // The thread only wakes tasks (it never runs them) and runs actions that do not
        // block, so it ends at once: a hub that stopped leaves no thread behind.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Ready at its instant; see [`Alarms::at`] and [`Alarms::answer_at`]. Dropping it cancels
/// it.
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
            // Polled again (its task woke for something else), or first polled after
            // `answer_at` registered it: the thread still holds it, and only a waker for
            // another task needs storing.
            if let Some(entry) = state.due.get_mut(&(this.at, key)) {
                match &mut entry.waker {
                    // A no-op when it is the same task's (`clone_from` checks `will_wake`).
                    Some(waker) => waker.clone_from(cx.waker()),
                    None => entry.waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
        }
        let entry = Entry {
            action: None,
            waker: Some(cx.waker().clone()),
        };
        let (key, sooner) = Inner::register(&mut state, this.at, entry);
        this.key = Some(key);
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

    #[test]
    fn an_answering_alarm_runs_its_action_at_its_instant_unpolled_then_wakes_its_task() {
        let alarms = Alarms::start().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t0 = Instant::now();
        let at = t0 + Duration::from_millis(5);
        let unpolled = {
            let tx = tx.clone();
            alarms.answer_at(at, move || tx.send(("unpolled", Instant::now())).unwrap())
        };
        let mut polled = {
            let tx = tx.clone();
            Box::pin(alarms.answer_at(at, move || tx.send(("action", Instant::now())).unwrap()))
        };
        let (woken_tx, woken) = std::sync::mpsc::channel();
        let waker = Waker::from(Arc::new(Named("woken", woken_tx)));
        let poll = polled.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(poll.is_pending(), "polled before its instant");
        drop(tx);
        // Bounded: the thread rings both within milliseconds; a minute means it never did.
        let wait = Duration::from_secs(60);
        let mut rang: Vec<_> = (0..2).map(|_| rx.recv_timeout(wait).unwrap()).collect();
        rang.sort_by_key(|(name, _)| *name);
        assert_eq!(
            rang.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            ["action", "unpolled"]
        );
        assert!(
            rang.iter().all(|(_, when)| *when >= at),
            "rang early: {rang:?}"
        );
        // The task is woken after its action ran, and then finds the alarm ready.
        assert_eq!(woken.recv_timeout(wait).unwrap(), "woken");
        let poll = polled.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(matches!(poll, Poll::Ready(())));
        drop(unpolled);
        assert!(
            alarms.inner.lock().due.is_empty(),
            "an alarm was left behind"
        );
    }

    #[test]
    fn an_answering_alarm_its_task_takes_first_or_drops_never_runs_its_action() {
        let mut alarms = Alarms::start().unwrap();
        // The thread is stopped, so the task is first to see the instant pass.
        alarms.inner.lock().stopped = true;
        alarms.inner.changed.notify_one();
        alarms.thread.take().unwrap().join().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<&str>();
        let passed = Instant::now()
            .checked_sub(Duration::from_millis(1))
            .unwrap();
        let mut taken = {
            let tx = tx.clone();
            Box::pin(alarms.answer_at(passed, move || tx.send("taken").unwrap()))
        };
        let later = Instant::now() + Duration::from_secs(60);
        let dropped = alarms.answer_at(later, move || tx.send("dropped").unwrap());
        assert!(futures::executor::block_on(futures::future::poll_fn(
            |cx| { Poll::Ready(taken.as_mut().poll(cx).is_ready()) }
        )));
        drop(dropped);
        assert!(
            alarms.inner.lock().due.is_empty(),
            "an alarm was left behind"
        );
        // Both actions are gone with their senders, and neither ran.
        assert_eq!(rx.iter().collect::<Vec<_>>(), Vec::<&str>::new());
    }

    #[tokio::test]
    async fn an_alarm_whose_instant_has_passed_is_ready_at_once() {
        let alarms = Alarms::start().unwrap();
        let mut alarm = Box::pin(alarms.at(Instant::now()));
        assert!(futures::poll!(alarm.as_mut()).is_ready());
    }
}
