//! [`Timeout`]: per-operation deadlines.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use state_core::checkpoint::{CheckpointSummary, RestoreSummary};
use state_core::{ScanStream, StateBackend, StateError, StateFuture, StateResult, StateStats};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;

use crate::Op;
use crate::forward::forward_backend;
use crate::util::poll_once;

/// Gives every operation of the inner backend a deadline, so a hung server or a lost
/// connection surfaces as an error instead of a task that waits forever: a retryable
/// [`state_core::ErrorKind::Timeout`] for an operation that changes nothing (reads,
/// `health_check`, `flush`), and [`state_core::ErrorKind::OutcomeUnknown`] for one that
/// changes state ([`Op::changes_state`]), since the dropped call may have been applied.
///
/// One deadline applies to every operation except `checkpoint` and `restore`, which scale
/// with the size of the state and have none unless set with [`Timeout::with_op_timeout`].
/// For `scan` the deadline bounds the wait for each entry, not the whole scan.
///
/// When the deadline passes, the inner call is dropped. Its effect is then unknown: a write
/// may or may not have been applied, which is why it is reported as `OutcomeUnknown` and
/// [`crate::Retry`] does not send it again unless told to. Put `Timeout` *inside* `Retry` (`Retry::new(Timeout::new(..))`)
/// so each attempt gets its own deadline.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use state_layers::{Op, Timeout};
/// use state_memory::MemoryStateBackend;
///
/// let inner = Arc::new(MemoryStateBackend::new(None));
/// let backend = Timeout::new(inner, Duration::from_millis(250))
///     .with_op_timeout(Op::Clear, Some(Duration::from_secs(30)));
/// assert_eq!(backend.op_timeout(Op::Get), Some(Duration::from_millis(250)));
/// ```
#[derive(Debug)]
pub struct Timeout {
    inner: Arc<dyn StateBackend>,
    deadlines: [Option<Duration>; Op::ALL.len()],
    expired: AtomicU64,
}

impl Timeout {
    /// Wraps `inner` with `deadline` on every operation but `checkpoint` and `restore`.
    pub fn new(inner: Arc<dyn StateBackend>, deadline: Duration) -> Self {
        let mut deadlines = [Some(deadline); Op::ALL.len()];
        deadlines[Op::Checkpoint.index()] = None;
        deadlines[Op::Restore.index()] = None;
        Self {
            inner,
            deadlines,
            expired: AtomicU64::new(0),
        }
    }

    /// Sets the deadline of one operation (`None`: no deadline).
    #[must_use]
    pub fn with_op_timeout(mut self, op: Op, deadline: Option<Duration>) -> Self {
        self.deadlines[op.index()] = deadline;
        self
    }

    /// The deadline of `op`, if it has one.
    pub fn op_timeout(&self, op: Op) -> Option<Duration> {
        self.deadlines[op.index()]
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn StateBackend> {
        &self.inner
    }

    /// How many operations ran past their deadline.
    pub fn expired(&self) -> u64 {
        self.expired.load(Relaxed)
    }

    fn expire(&self, op: Op, deadline: Duration) -> StateError {
        self.expired.fetch_add(1, Relaxed);
        tracing::debug!(op = op.name(), ?deadline, "state operation timed out");
        if op.changes_state() {
            StateError::outcome_unknown(format!(
                "no answer within {deadline:?}; the call may or may not have been applied"
            ))
            .with_operation(op.name())
        } else {
            StateError::timeout(format!("no answer within {deadline:?}")).with_operation(op.name())
        }
    }

    #[inline]
    fn point<'a, T, F>(&'a self, op: Op, _key: &'a [u8], f: F) -> StateFuture<'a, T>
    where
        T: Send + 'a,
        F: Fn() -> StateFuture<'a, T> + Send + Sync + 'a,
    {
        let fut = f();
        let Some(deadline) = self.deadlines[op.index()] else {
            return fut;
        };
        match poll_once(fut) {
            Ok(result) => StateFuture::ready(result),
            Err(pending) => StateFuture::boxed(async move {
                match tokio::time::timeout(deadline, pending).await {
                    Ok(result) => result,
                    Err(_) => Err(self.expire(op, deadline)),
                }
            }),
        }
    }

    async fn call<'a, T, F, Fut>(&'a self, op: Op, _items: usize, f: F) -> StateResult<T>
    where
        F: Fn() -> Fut + Send + Sync + 'a,
        Fut: Future<Output = StateResult<T>> + Send + 'a,
    {
        let Some(deadline) = self.deadlines[op.index()] else {
            return f().await;
        };
        match tokio::time::timeout(deadline, f()).await {
            Ok(result) => result,
            Err(_) => Err(self.expire(op, deadline)),
        }
    }

    fn layer_scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        let inner = self.inner.scan(prefix);
        match self.deadlines[Op::Scan.index()] {
            None => inner,
            Some(deadline) => Box::pin(DeadlineStream {
                layer: self,
                inner,
                deadline,
                sleep: None,
            }),
        }
    }

    async fn layer_checkpoint(
        &self,
        writer: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> StateResult<CheckpointSummary> {
        let deadline = self.deadlines[Op::Checkpoint.index()];
        let fut = self.inner.checkpoint(writer);
        match deadline {
            None => fut.await,
            Some(d) => tokio::time::timeout(d, fut)
                .await
                .unwrap_or_else(|_| Err(self.expire(Op::Checkpoint, d))),
        }
    }

    async fn layer_restore(
        &self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> StateResult<RestoreSummary> {
        let deadline = self.deadlines[Op::Restore.index()];
        let fut = self.inner.restore(reader);
        match deadline {
            None => fut.await,
            Some(d) => tokio::time::timeout(d, fut)
                .await
                .unwrap_or_else(|_| Err(self.expire(Op::Restore, d))),
        }
    }

    async fn layer_stats(&self) -> StateStats {
        let mut stats = self.inner.stats().await;
        stats
            .details
            .insert("timeout.expired".into(), self.expired() as f64);
        stats
    }
}

forward_backend!(Timeout);

/// A scan whose every entry must arrive within the deadline; after a timeout it ends.
struct DeadlineStream<'a> {
    layer: &'a Timeout,
    inner: ScanStream<'a>,
    deadline: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Stream for DeadlineStream<'_> {
    type Item = StateResult<state_core::Entry>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Poll::Ready(item) = this.inner.as_mut().poll_next(cx) {
            this.sleep = None;
            return Poll::Ready(item);
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.sleep = None;
            // End the stream after the error: the inner cursor's position is unknown.
            this.inner = Box::pin(futures_util::stream::empty());
            return Poll::Ready(Some(Err(this.layer.expire(Op::Scan, deadline))));
        }
        Poll::Pending
    }
}
