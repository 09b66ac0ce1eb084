//! [`Retry`]: exponential backoff with jitter and a retry budget.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use state_core::checkpoint::{CheckpointSummary, RestoreSummary};
use state_core::{ScanStream, StateBackend, StateError, StateFuture, StateResult, StateStats};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Op;
use crate::forward::forward_backend;
use crate::util::poll_once;

/// Retries that may be spent, refilled by successes: a token bucket that stops a struggling
/// backend from being hammered by every caller's retries at once (a retry storm).
///
/// The bucket starts full with `max_tokens`; each retry takes one token and each successful
/// call adds `refill_per_success` (0.1: at most one retry per ten successes in the long run).
/// An empty bucket turns retries off until successes refill it; the error is returned as is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Tokens the bucket holds when full (the burst of retries allowed after a quiet period).
    pub max_tokens: u32,
    /// Tokens one successful call adds.
    pub refill_per_success: f64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            max_tokens: 100,
            refill_per_success: 0.1,
        }
    }
}

impl RetryBudget {
    /// A budget that never runs out (use in tests, or where the backend is private).
    pub fn unlimited() -> Self {
        Self {
            max_tokens: u32::MAX,
            refill_per_success: 0.0,
        }
    }
}

/// Token bucket in thousandths of a token.
#[derive(Debug)]
struct Bucket {
    milli: AtomicU64,
    max: u64,
    refill: u64,
    unlimited: bool,
}

impl Bucket {
    fn new(budget: RetryBudget) -> Self {
        let max = u64::from(budget.max_tokens) * 1000;
        Self {
            milli: AtomicU64::new(max),
            max,
            refill: (budget.refill_per_success.max(0.0) * 1000.0) as u64,
            unlimited: budget.max_tokens == u32::MAX,
        }
    }

    #[inline]
    fn deposit(&self) {
        // At steady state the bucket is full: one shared load, no write.
        if self.refill != 0 && self.milli.load(Relaxed) < self.max {
            let _ = self
                .milli
                .fetch_update(Relaxed, Relaxed, |t| Some((t + self.refill).min(self.max)));
        }
    }

    fn withdraw(&self) -> bool {
        self.unlimited
            || self
                .milli
                .fetch_update(Relaxed, Relaxed, |t| t.checked_sub(1000))
                .is_ok()
    }
}

/// Retries failed operations of the inner backend with exponential backoff and jitter
/// (the [`backon`] crate's `ExponentialBuilder`), within a [`RetryBudget`].
///
/// An attempt is repeated only when
///
/// 1. the error is definite and says a retry can help ([`StateError::is_retryable`]:
///    connection loss or a timeout *before* the call took effect, a server refusing it for
///    now; never invalid input, auth or corruption), and
/// 2. the operation is idempotent ([`Op::is_idempotent`]), unless
///    [`Retry::retry_non_idempotent`] opted in, and
/// 3. the backoff has attempts left and the budget has a token.
///
/// **A write whose outcome is unknown is never sent again by default.** When the error is
/// [`state_core::ErrorKind::OutcomeUnknown`] (the connection dropped with the command in
/// flight, a [`crate::Timeout`] deadline passed after it was sent), an operation that changes
/// state ([`Op::changes_state`]: `put`, `put_with_ttl`, `delete`, the batches, `clear`,
/// `delete_prefix`, the atomic operations) is returned to the caller as is, even the
/// idempotent ones. The first copy may have landed and another writer's `put(k, v2)` may have
/// been acknowledged since; a re-sent `put(k, v1)` would then overwrite it (an acknowledged
/// write lost), a re-sent `delete` or `clear` would remove it. Reads (and `flush`,
/// `health_check`) are re-sent whatever the error, since they change nothing.
/// [`Retry::retry_unknown_outcomes`] opts in, for callers whose writes cannot race (a single
/// writer per key) or carry their own version.
///
/// **Why atomic operations are not retried by default.** A timeout or a dropped connection
/// reported by a backend that does not follow the contract's outcome rule says nothing about
/// whether the server applied the call. A `set_if_not_exists` that stored
/// its value but whose answer was lost is, when retried, refused by its own earlier write:
/// the retry answers `false`, and a caller taking a lock concludes another process holds the
/// lock it holds itself (the lock then leaks until its TTL). `get_and_delete` retried after
/// a lost answer returns `None` and the value is gone; `compare_and_swap` reports a swap it
/// made as failed. So these surface the error and let the caller decide (read the key back,
/// use a fencing token). `checkpoint` and `restore` are never retried: their writer or reader
/// has been consumed.
///
/// Idempotent writes keep their *effect* when retried after a definite error, not always
/// their *answer*: a backend that reports a lost reply as `Connection` (against the contract)
/// makes a retried `delete` report `false` (or a smaller count for `batch_delete`,
/// `delete_prefix`), because the key is already gone.
///
/// The success path costs one budget load; an in-process inner backend is called without
/// boxing a future. Put [`crate::Timeout`] inside the retry so each attempt has a deadline.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use backon::ExponentialBuilder;
/// use state_layers::{Retry, RetryBudget, Timeout};
/// use state_memory::MemoryStateBackend;
///
/// let inner = Arc::new(MemoryStateBackend::new(None));
/// let backend = Retry::new(Arc::new(Timeout::new(inner, Duration::from_millis(200))))
///     .with_backoff(
///         ExponentialBuilder::default()
///             .with_min_delay(Duration::from_millis(5))
///             .with_max_delay(Duration::from_millis(500))
///             .with_max_times(4)
///             .with_jitter(),
///     )
///     .with_budget(RetryBudget { max_tokens: 50, refill_per_success: 0.1 });
/// # let _ = backend;
/// ```
#[derive(Debug)]
pub struct Retry {
    inner: Arc<dyn StateBackend>,
    backoff: ExponentialBuilder,
    budget: Bucket,
    non_idempotent: bool,
    unknown_outcomes: bool,
    retries: AtomicU64,
    gave_up: AtomicU64,
    budget_exhausted: AtomicU64,
}

impl Retry {
    /// Wraps `inner` with the default policy: up to 3 retries, delays from 10 ms doubling to
    /// at most 1 s, each delay plus a random extra of up to
    /// 100% (backon's jitter), the default [`RetryBudget`], idempotent operations only.
    pub fn new(inner: Arc<dyn StateBackend>) -> Self {
        Self {
            inner,
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(10))
                .with_max_delay(Duration::from_secs(1))
                .with_factor(2.0)
                .with_max_times(3)
                .with_jitter(),
            budget: Bucket::new(RetryBudget::default()),
            non_idempotent: false,
            unknown_outcomes: false,
            retries: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            budget_exhausted: AtomicU64::new(0),
        }
    }

    /// Replaces the backoff (delays, factor, jitter and the number of retries).
    #[must_use]
    pub fn with_backoff(mut self, backoff: ExponentialBuilder) -> Self {
        self.backoff = backoff;
        self
    }

    /// Replaces the retry budget.
    #[must_use]
    pub fn with_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Bucket::new(budget);
        self
    }

    /// Also retries `set_if_not_exists`, `compare_and_swap` and `get_and_delete` after a
    /// definite retryable error (never `checkpoint`/`restore`). Only safe when a repeated
    /// answer can be told apart, e.g. the value written carries a unique token the caller
    /// reads back; see the type docs. After an unknown outcome they are re-sent only when
    /// [`Retry::retry_unknown_outcomes`] is also on.
    #[must_use]
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.non_idempotent = yes;
        self
    }

    /// Also re-sends operations that change state after
    /// [`state_core::ErrorKind::OutcomeUnknown`] (off by default): the idempotent writes
    /// (`put`, `put_with_ttl`, `batch_put`, deletes, `delete_prefix`, `clear`), and the
    /// atomic ones when [`Retry::retry_non_idempotent`] is on too.
    ///
    /// Only safe when no other writer can write the same keys in between: a re-sent
    /// `put(k, v1)` whose first copy landed overwrites another writer's `put(k, v2)`
    /// acknowledged meanwhile, and the store ends at `v1` although `v2` was acknowledged
    /// after `v1` was first applied.
    #[must_use]
    pub fn retry_unknown_outcomes(mut self, yes: bool) -> Self {
        self.unknown_outcomes = yes;
        self
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn StateBackend> {
        &self.inner
    }

    /// Retries sent so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }

    /// Whether a failure of `op` with `err` may be retried under this policy (ignoring the
    /// backoff and the budget).
    pub fn may_retry(&self, op: Op, err: &StateError) -> bool {
        if !op.is_replayable() {
            return false;
        }
        let allowed_op = self.non_idempotent || op.is_idempotent();
        if err.is_outcome_unknown() {
            // A read changed nothing, so it may be sent again whatever the backend said.
            return !op.changes_state() || (self.unknown_outcomes && allowed_op);
        }
        err.is_retryable() && allowed_op
    }

    async fn retry_loop<'a, T, F, Fut>(&'a self, op: Op, f: F, first: StateError) -> StateResult<T>
    where
        F: Fn() -> Fut + Send + Sync + 'a,
        Fut: Future<Output = StateResult<T>> + Send + 'a,
    {
        let mut backoff = self.backoff.build();
        let mut err = first;
        let mut attempt = 1u32;
        loop {
            if !self.may_retry(op, &err) {
                return Err(err);
            }
            let Some(delay) = backoff.next() else {
                self.gave_up.fetch_add(1, Relaxed);
                tracing::debug!(op = op.name(), attempt, error = %err, "state retries exhausted");
                return Err(err);
            };
            if !self.budget.withdraw() {
                self.budget_exhausted.fetch_add(1, Relaxed);
                tracing::debug!(op = op.name(), error = %err, "state retry budget exhausted");
                return Err(err);
            }
            self.retries.fetch_add(1, Relaxed);
            tracing::debug!(op = op.name(), attempt, ?delay, error = %err, "retrying state operation");
            tokio::time::sleep(delay).await;
            attempt += 1;
            match f().await {
                Ok(value) => {
                    self.budget.deposit();
                    return Ok(value);
                }
                Err(next) => err = next,
            }
        }
    }

    #[inline]
    fn point<'a, T, F>(&'a self, op: Op, _key: &'a [u8], f: F) -> StateFuture<'a, T>
    where
        T: Send + 'a,
        F: Fn() -> StateFuture<'a, T> + Send + Sync + 'a,
    {
        match poll_once(f()) {
            Ok(Ok(value)) => {
                self.budget.deposit();
                StateFuture::ready(Ok(value))
            }
            Ok(Err(err)) if !self.may_retry(op, &err) => StateFuture::ready(Err(err)),
            Ok(Err(err)) => StateFuture::boxed(self.retry_loop(op, f, err)),
            Err(pending) => StateFuture::boxed(async move {
                match pending.await {
                    Ok(value) => {
                        self.budget.deposit();
                        Ok(value)
                    }
                    Err(err) => self.retry_loop(op, f, err).await,
                }
            }),
        }
    }

    async fn call<'a, T, F, Fut>(&'a self, op: Op, _items: usize, f: F) -> StateResult<T>
    where
        F: Fn() -> Fut + Send + Sync + 'a,
        Fut: Future<Output = StateResult<T>> + Send + 'a,
    {
        match f().await {
            Ok(value) => {
                self.budget.deposit();
                Ok(value)
            }
            Err(err) => self.retry_loop(op, f, err).await,
        }
    }

    /// A scan is passed through: once entries have been handed out, a restarted scan would
    /// repeat them. Retry the whole scan in the caller if needed.
    fn layer_scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        self.inner.scan(prefix)
    }

    async fn layer_checkpoint(
        &self,
        writer: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> StateResult<CheckpointSummary> {
        self.inner.checkpoint(writer).await
    }

    async fn layer_restore(
        &self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> StateResult<RestoreSummary> {
        self.inner.restore(reader).await
    }

    async fn layer_stats(&self) -> StateStats {
        let mut stats = self.inner.stats().await;
        let d = &mut stats.details;
        d.insert("retry.retries".into(), self.retries() as f64);
        d.insert("retry.gave_up".into(), self.gave_up.load(Relaxed) as f64);
        d.insert(
            "retry.budget_exhausted".into(),
            self.budget_exhausted.load(Relaxed) as f64,
        );
        stats
    }
}

forward_backend!(Retry);

#[cfg(test)]
mod tests {
    use super::*;
    use state_core::ErrorKind;

    #[test]
    fn unknown_outcomes_of_writes_are_not_retried_unless_opted_in() {
        let unknown = StateError::outcome_unknown("reply lost");
        let lost = StateError::connection("refused");
        let inner: Arc<dyn StateBackend> = Arc::new(state_memory::MemoryStateBackend::new(None));
        let default = Retry::new(inner.clone());
        for op in Op::ALL {
            let expected = op.is_replayable() && !op.changes_state();
            assert_eq!(default.may_retry(op, &unknown), expected, "{op}");
            assert_eq!(
                default.may_retry(op, &lost),
                op.is_replayable() && op.is_idempotent(),
                "{op}"
            );
        }
        let opted = Retry::new(inner.clone()).retry_unknown_outcomes(true);
        assert!(opted.may_retry(Op::Put, &unknown));
        assert!(opted.may_retry(Op::Clear, &unknown));
        assert!(!opted.may_retry(Op::SetIfNotExists, &unknown));
        assert!(!opted.may_retry(Op::Restore, &unknown));
        let both = Retry::new(inner)
            .retry_unknown_outcomes(true)
            .retry_non_idempotent(true);
        assert!(both.may_retry(Op::CompareAndSwap, &unknown));
        assert!(!both.may_retry(Op::Checkpoint, &unknown));
        let refused = StateError::new(ErrorKind::InvalidInput, "empty key");
        assert!(!both.may_retry(Op::Get, &refused));
    }

    #[test]
    fn budget_spends_and_refills() {
        let bucket = Bucket::new(RetryBudget {
            max_tokens: 2,
            refill_per_success: 0.5,
        });
        assert!(bucket.withdraw());
        assert!(bucket.withdraw());
        assert!(!bucket.withdraw());
        bucket.deposit();
        assert!(!bucket.withdraw(), "half a token is not a retry");
        bucket.deposit();
        assert!(bucket.withdraw());
        for _ in 0..10 {
            bucket.deposit();
        }
        assert!(bucket.withdraw() && bucket.withdraw());
        assert!(!bucket.withdraw(), "refills stop at max_tokens");
    }
}
