//! [`FaultInjector`]: scripted failures and hangs, to test how a stack of layers and the
//! application behave when the backend misbehaves.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use state_core::checkpoint::{CheckpointSummary, RestoreSummary};
use state_core::{
    ErrorKind, ScanStream, StateBackend, StateError, StateFuture, StateResult, StateStats,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Op;
use crate::forward::forward_backend;
use crate::util::poll_once;

/// What the next matching operation does instead of (or besides) its normal work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails with an error of this kind (retryable as the kind says) without reaching the
    /// inner backend.
    Fail(ErrorKind),
    /// Runs the operation on the inner backend, then reports an error of this kind: the
    /// "applied, but the answer was lost" case of a dropped connection. A backend that follows
    /// the contract reports it as [`ErrorKind::OutcomeUnknown`] for a write.
    FailAfterApply(ErrorKind),
    /// Never answers (until the caller's deadline drops the call).
    Hang,
    /// Runs the operation on the inner backend, then never answers: the "applied, but the
    /// answer came too late" case, which a [`crate::Timeout`] in front turns into
    /// [`ErrorKind::OutcomeUnknown`] for a write.
    ApplyThenHang,
}

/// Injects scripted [`Fault`]s into the operations of the inner backend, and counts calls.
///
/// Faults queue up and each is consumed by the next operation that matches its filter (any
/// operation, or one [`Op`]). Without queued faults every call goes straight through.
///
/// ```
/// use std::sync::Arc;
/// use state_core::{ErrorKind, StateBackend};
/// use state_layers::{Fault, FaultInjector, Op};
/// use state_memory::MemoryStateBackend;
///
/// # tokio_test_block_on(async {
/// let faulty = FaultInjector::new(Arc::new(MemoryStateBackend::new(None)));
/// faulty.inject(None, Fault::Fail(ErrorKind::Connection));
/// assert_eq!(faulty.get(b"k").await.unwrap_err().kind(), ErrorKind::Connection);
/// assert_eq!(faulty.get(b"k").await.unwrap(), None);
/// assert_eq!(faulty.calls(Op::Get), 2);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct FaultInjector {
    inner: Arc<dyn StateBackend>,
    queued: AtomicUsize,
    faults: Mutex<VecDeque<(Option<Op>, Fault)>>,
    calls: [AtomicU64; Op::ALL.len()],
}

impl FaultInjector {
    /// Wraps `inner` with no fault queued.
    pub fn new(inner: Arc<dyn StateBackend>) -> Self {
        Self {
            inner,
            queued: AtomicUsize::new(0),
            faults: Mutex::new(VecDeque::new()),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Queues `fault` for the next operation matching `op` (`None`: any operation).
    pub fn inject(&self, op: Option<Op>, fault: Fault) {
        let mut faults = self.faults.lock().expect("fault queue");
        faults.push_back((op, fault));
        self.queued.store(faults.len(), Ordering::SeqCst);
    }

    /// Queues `n` copies of `fault`.
    pub fn inject_n(&self, op: Option<Op>, fault: Fault, n: usize) {
        for _ in 0..n {
            self.inject(op, fault);
        }
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        let mut faults = self.faults.lock().expect("fault queue");
        faults.clear();
        self.queued.store(0, Ordering::SeqCst);
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// How many times `op` was called (faulted calls included).
    pub fn calls(&self, op: Op) -> u64 {
        self.calls[op.index()].load(Ordering::Relaxed)
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn StateBackend> {
        &self.inner
    }

    #[inline]
    fn take(&self, op: Op) -> Option<Fault> {
        self.calls[op.index()].fetch_add(1, Ordering::Relaxed);
        if self.queued.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut faults = self.faults.lock().expect("fault queue");
        let at = faults
            .iter()
            .position(|(filter, _)| filter.is_none_or(|f| f == op))?;
        let (_, fault) = faults.remove(at)?;
        self.queued.store(faults.len(), Ordering::SeqCst);
        Some(fault)
    }

    fn error(op: Op, kind: ErrorKind) -> StateError {
        StateError::new(kind, "injected fault").with_operation(op.name())
    }

    #[inline]
    fn point<'a, T, F>(&'a self, op: Op, _key: &'a [u8], f: F) -> StateFuture<'a, T>
    where
        T: Send + 'a,
        F: Fn() -> StateFuture<'a, T> + Send + Sync + 'a,
    {
        match self.take(op) {
            None => f(),
            Some(Fault::Fail(kind)) => StateFuture::ready(Err(Self::error(op, kind))),
            Some(Fault::FailAfterApply(kind)) => match poll_once(f()) {
                Ok(_) => StateFuture::ready(Err(Self::error(op, kind))),
                Err(pending) => StateFuture::boxed(async move {
                    let _ = pending.await;
                    Err(Self::error(op, kind))
                }),
            },
            Some(Fault::Hang) => StateFuture::boxed(futures_util::future::pending()),
            Some(Fault::ApplyThenHang) => StateFuture::boxed(async move {
                let _ = f().await;
                futures_util::future::pending().await
            }),
        }
    }

    async fn call<'a, T, F, Fut>(&'a self, op: Op, _items: usize, f: F) -> StateResult<T>
    where
        F: Fn() -> Fut + Send + Sync + 'a,
        Fut: Future<Output = StateResult<T>> + Send + 'a,
    {
        match self.take(op) {
            None => f().await,
            Some(Fault::Fail(kind)) => Err(Self::error(op, kind)),
            Some(Fault::FailAfterApply(kind)) => {
                let _ = f().await;
                Err(Self::error(op, kind))
            }
            Some(Fault::Hang) => futures_util::future::pending().await,
            Some(Fault::ApplyThenHang) => {
                let _ = f().await;
                futures_util::future::pending().await
            }
        }
    }

    fn layer_scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        match self.take(Op::Scan) {
            None => self.inner.scan(prefix),
            Some(Fault::Fail(kind) | Fault::FailAfterApply(kind)) => {
                Box::pin(futures_util::stream::once(async move {
                    Err(Self::error(Op::Scan, kind))
                }))
            }
            Some(Fault::Hang | Fault::ApplyThenHang) => Box::pin(futures_util::stream::pending()),
        }
    }

    async fn layer_checkpoint(
        &self,
        writer: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> StateResult<CheckpointSummary> {
        match self.take(Op::Checkpoint) {
            None => self.inner.checkpoint(writer).await,
            Some(Fault::Fail(kind)) => Err(Self::error(Op::Checkpoint, kind)),
            Some(Fault::FailAfterApply(kind)) => {
                let _ = self.inner.checkpoint(writer).await;
                Err(Self::error(Op::Checkpoint, kind))
            }
            Some(Fault::Hang) => futures_util::future::pending().await,
            Some(Fault::ApplyThenHang) => {
                let _ = self.inner.checkpoint(writer).await;
                futures_util::future::pending().await
            }
        }
    }

    async fn layer_restore(
        &self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> StateResult<RestoreSummary> {
        match self.take(Op::Restore) {
            None => self.inner.restore(reader).await,
            Some(Fault::Fail(kind)) => Err(Self::error(Op::Restore, kind)),
            Some(Fault::FailAfterApply(kind)) => {
                let _ = self.inner.restore(reader).await;
                Err(Self::error(Op::Restore, kind))
            }
            Some(Fault::Hang) => futures_util::future::pending().await,
            Some(Fault::ApplyThenHang) => {
                let _ = self.inner.restore(reader).await;
                futures_util::future::pending().await
            }
        }
    }

    async fn layer_stats(&self) -> StateStats {
        self.inner.stats().await
    }
}

forward_backend!(FaultInjector);
