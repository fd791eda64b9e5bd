//! `RetryBudget`: retries may add at most a share of recent traffic (plus a small floor per
//! second), so a sick fleet is not hammered by retry storms.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled_at: Instant,
}

/// A token bucket: each request deposits `ratio` tokens, each retry withdraws one, and
/// `min_per_second` tokens drip in over time so a quiet router can still retry.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    cap: f64,
    state: Mutex<State>,
}

impl RetryBudget {
    /// Retries up to `ratio` of requests (e.g. 0.2), and at least `min_per_second`.
    pub fn new(ratio: f64, min_per_second: f64) -> RetryBudget {
        let cap = (min_per_second * 10.0).max(10.0);
        RetryBudget {
            ratio,
            min_per_second,
            cap,
            state: Mutex::new(State {
                tokens: min_per_second,
                refilled_at: Instant::now(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Two floats updated together: a poisoned lock still holds usable numbers.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refill(&self, state: &mut State) {
        let now = Instant::now();
        let elapsed: Duration = now.saturating_duration_since(state.refilled_at);
        state.tokens = (state.tokens + elapsed.as_secs_f64() * self.min_per_second).min(self.cap);
        state.refilled_at = now;
    }

    /// A request was made.
    pub fn deposit(&self) {
        let mut state = self.state();
        self.refill(&mut state);
        state.tokens = (state.tokens + self.ratio).min(self.cap);
    }

    /// Whether a retry may be made now (and takes its token if so).
    pub fn withdraw(&self) -> bool {
        let mut state = self.state();
        self.refill(&mut state);
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_limited_to_a_share_of_requests() {
        let budget = RetryBudget::new(0.2, 0.0);
        let mut allowed = 0;
        for _ in 0..1_000 {
            budget.deposit();
            if budget.withdraw() {
                allowed += 1;
            }
        }
        assert!(
            (195..=200).contains(&allowed),
            "{allowed} retries for 1000 requests"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_floor_per_second_lets_a_quiet_router_retry() {
        let budget = RetryBudget::new(0.2, 5.0);
        let drained = (0..100).take_while(|_| budget.withdraw()).count();
        assert_eq!(drained, 5);
        assert!(!budget.withdraw());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..100).take_while(|_| budget.withdraw()).count(), 5);
    }
}
