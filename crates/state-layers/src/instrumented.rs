//! [`Instrumented`]: a `tracing` span and `metrics` counters and histograms per operation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::Stream;
use metrics::{Counter, Histogram, SharedString};
use state_core::checkpoint::{CheckpointSummary, RestoreSummary};
use state_core::{
    Entry, ScanStream, StateBackend, StateError, StateFuture, StateResult, StateStats,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{Instrument, Span};

use crate::Op;
use crate::forward::forward_backend;
use crate::util::poll_once;

/// Counter of finished operations, labelled `backend`, `op`, `outcome` (`ok` | `error` |
/// `cancelled`: the caller dropped the future before it finished; a write may or may not
/// have been applied).
pub const OPERATIONS_TOTAL: &str = "state_operations_total";
/// Histogram of operation latency in seconds, labelled `backend`, `op`.
pub const OPERATION_DURATION_SECONDS: &str = "state_operation_duration_seconds";
/// Counter of failed operations, labelled `backend`, `op`, `kind` (the [`state_core::ErrorKind`]
/// in snake case, e.g. `timeout`, `connection`, `outcome_unknown`).
pub const ERRORS_TOTAL: &str = "state_errors_total";
/// The `tracing` target of the spans and events (`RUST_LOG=state_layers=debug`).
pub const TRACING_TARGET: &str = "state_layers";

#[derive(Debug)]
struct OpMetrics {
    ok: Counter,
    error: Counter,
    cancelled: Counter,
    latency: Histogram,
}

/// Observes every operation of the inner backend.
///
/// - **Tracing**: a `DEBUG` span `state_op` per operation with the fields `backend`, `op`,
///   `key_len` (point operations), `items` (batches), and, when it ends, `outcome` and
///   `latency_us`, plus a `DEBUG` event with the same fields (and the error, if any) on the
///   `state_layers` target. The seed's debug mode shows one line per operation:
///   `tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).init()`. Spans of the
///   inner backend (a Redis or PostgreSQL client's) nest under it.
/// - **Metrics** through the [`metrics`] facade, so any exporter plugs in (Prometheus,
///   StatsD, OpenTelemetry): [`OPERATIONS_TOTAL`], [`OPERATION_DURATION_SECONDS`] and
///   [`ERRORS_TOTAL`], labelled with the backend name you give and the operation.
///
/// The metric handles are registered when the layer is built, with whatever recorder is
/// installed then: install the exporter (e.g. `metrics_exporter_prometheus::PrometheusBuilder::install`)
/// **before** building the layer. With no subscriber and no recorder the layer costs two
/// clock reads per operation and allocates nothing over an in-process backend.
///
/// ```
/// use std::sync::Arc;
/// use state_layers::Instrumented;
/// use state_memory::MemoryStateBackend;
///
/// let backend = Instrumented::new(Arc::new(MemoryStateBackend::new(None)), "sessions");
/// assert_eq!(backend.name(), "sessions");
/// ```
#[derive(Debug)]
pub struct Instrumented {
    inner: Arc<dyn StateBackend>,
    name: SharedString,
    ops: Box<[OpMetrics]>,
}

impl Instrumented {
    /// Wraps `inner`; `name` is the `backend` label of every span and metric
    /// (`"redis-sessions"`, `"pg-orders"`).
    pub fn new(inner: Arc<dyn StateBackend>, name: impl Into<SharedString>) -> Self {
        let name: SharedString = name.into();
        let ops = Op::ALL
            .iter()
            .map(|op| {
                let backend = name.clone();
                OpMetrics {
                    ok: metrics::counter!(OPERATIONS_TOTAL, "backend" => backend.clone(), "op" => op.name(), "outcome" => "ok"),
                    error: metrics::counter!(OPERATIONS_TOTAL, "backend" => backend.clone(), "op" => op.name(), "outcome" => "error"),
                    cancelled: metrics::counter!(OPERATIONS_TOTAL, "backend" => backend.clone(), "op" => op.name(), "outcome" => "cancelled"),
                    latency: metrics::histogram!(OPERATION_DURATION_SECONDS, "backend" => backend, "op" => op.name()),
                }
            })
            .collect();
        Self { inner, name, ops }
    }

    /// The `backend` label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn StateBackend> {
        &self.inner
    }

    #[inline]
    fn span(&self, op: Op, key_len: usize, items: usize) -> Span {
        tracing::debug_span!(
            target: TRACING_TARGET,
            "state_op",
            backend = %self.name,
            op = op.name(),
            key_len,
            items,
            outcome = tracing::field::Empty,
            latency_us = tracing::field::Empty,
        )
    }

    #[inline]
    fn finish(&self, op: Op, span: &Span, start: Instant, error: Option<&StateError>) {
        let elapsed = start.elapsed();
        let metrics = &self.ops[op.index()];
        metrics.latency.record(elapsed.as_secs_f64());
        match error {
            None => metrics.ok.increment(1),
            Some(err) => {
                metrics.error.increment(1);
                metrics::counter!(ERRORS_TOTAL, "backend" => self.name.clone(), "op" => op.name(), "kind" => kind_label(err)).increment(1);
            }
        }
        if !span.is_disabled() {
            let latency_us = elapsed.as_micros() as u64;
            let outcome = if error.is_some() { "error" } else { "ok" };
            span.record("outcome", outcome);
            span.record("latency_us", latency_us);
            match error {
                None => tracing::debug!(
                    target: TRACING_TARGET,
                    parent: span,
                    backend = %self.name,
                    op = op.name(),
                    outcome,
                    latency_us,
                    "state operation"
                ),
                Some(err) => tracing::debug!(
                    target: TRACING_TARGET,
                    parent: span,
                    backend = %self.name,
                    op = op.name(),
                    outcome,
                    latency_us,
                    error = %err,
                    retryable = err.is_retryable(),
                    "state operation failed"
                ),
            }
        }
    }

    #[inline]
    fn point<'a, T, F>(&'a self, op: Op, key: &'a [u8], f: F) -> StateFuture<'a, T>
    where
        T: Send + 'a,
        F: Fn() -> StateFuture<'a, T> + Send + Sync + 'a,
    {
        let span = self.span(op, key.len(), 1);
        let start = Instant::now();
        let polled = {
            let _entered = span.enter();
            poll_once(f())
        };
        match polled {
            Ok(result) => {
                self.finish(op, &span, start, result.as_ref().err());
                StateFuture::ready(result)
            }
            Err(pending) => StateFuture::boxed(async move {
                let watch = Unfinished::new(self, op, &span, start);
                let result = pending.instrument(span.clone()).await;
                watch.done();
                self.finish(op, &span, start, result.as_ref().err());
                result
            }),
        }
    }

    async fn call<'a, T, F, Fut>(&'a self, op: Op, items: usize, f: F) -> StateResult<T>
    where
        F: Fn() -> Fut + Send + Sync + 'a,
        Fut: Future<Output = StateResult<T>> + Send + 'a,
    {
        let span = self.span(op, 0, items);
        let start = Instant::now();
        let watch = Unfinished::new(self, op, &span, start);
        let result = f().instrument(span.clone()).await;
        watch.done();
        self.finish(op, &span, start, result.as_ref().err());
        result
    }

    /// Records an operation whose future was dropped before it finished.
    fn cancelled(&self, op: Op, span: &Span, start: Instant) {
        let elapsed = start.elapsed();
        let metrics = &self.ops[op.index()];
        metrics.cancelled.increment(1);
        metrics.latency.record(elapsed.as_secs_f64());
        if !span.is_disabled() {
            let latency_us = elapsed.as_micros() as u64;
            span.record("outcome", "cancelled");
            span.record("latency_us", latency_us);
            tracing::debug!(
                target: TRACING_TARGET,
                parent: span,
                backend = %self.name,
                op = op.name(),
                outcome = "cancelled",
                latency_us,
                "state operation cancelled"
            );
        }
    }

    fn layer_scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        let span = self.span(Op::Scan, prefix.len(), 0);
        let inner = {
            let _entered = span.enter();
            self.inner.scan(prefix)
        };
        Box::pin(ObservedScan {
            layer: self,
            inner,
            span,
            start: Instant::now(),
            done: false,
        })
    }

    async fn layer_checkpoint(
        &self,
        writer: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> StateResult<CheckpointSummary> {
        let span = self.span(Op::Checkpoint, 0, 0);
        let start = Instant::now();
        let result = self.inner.checkpoint(writer).instrument(span.clone()).await;
        self.finish(Op::Checkpoint, &span, start, result.as_ref().err());
        result
    }

    async fn layer_restore(
        &self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> StateResult<RestoreSummary> {
        let span = self.span(Op::Restore, 0, 0);
        let start = Instant::now();
        let result = self.inner.restore(reader).instrument(span.clone()).await;
        self.finish(Op::Restore, &span, start, result.as_ref().err());
        result
    }

    async fn layer_stats(&self) -> StateStats {
        self.inner.stats().await
    }
}

forward_backend!(Instrumented);

/// The `kind` label of [`ERRORS_TOTAL`].
fn kind_label(err: &StateError) -> &'static str {
    use state_core::ErrorKind as K;
    match err.kind() {
        K::InvalidInput => "invalid_input",
        K::ConfigInvalid => "config_invalid",
        K::Unsupported => "unsupported",
        K::Connection => "connection",
        K::Timeout => "timeout",
        K::OutcomeUnknown => "outcome_unknown",
        K::PermissionDenied => "permission_denied",
        K::CapacityExceeded => "capacity_exceeded",
        K::ConditionNotMatch => "condition_not_match",
        K::Serialization => "serialization",
        K::Corrupted => "corrupted",
        K::Io => "io",
        K::Closed => "closed",
        _ => "backend",
    }
}

/// A scan observed as one operation: from the call to the last entry (or the first error,
/// or the consumer dropping the stream).
struct ObservedScan<'a> {
    layer: &'a Instrumented,
    inner: ScanStream<'a>,
    span: Span,
    start: Instant,
    done: bool,
}

impl Stream for ObservedScan<'_> {
    type Item = StateResult<Entry>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let polled = {
            let _entered = this.span.enter();
            this.inner.as_mut().poll_next(cx)
        };
        if !this.done {
            match &polled {
                Poll::Ready(None) => {
                    this.done = true;
                    this.layer.finish(Op::Scan, &this.span, this.start, None);
                }
                Poll::Ready(Some(Err(err))) => {
                    this.done = true;
                    this.layer
                        .finish(Op::Scan, &this.span, this.start, Some(err));
                }
                _ => {}
            }
        }
        polled
    }
}

impl Drop for ObservedScan<'_> {
    fn drop(&mut self) {
        if !self.done {
            // The consumer stopped early: the scan did not fail.
            self.layer.finish(Op::Scan, &self.span, self.start, None);
        }
    }
}

/// Armed while an operation runs: dropped armed (the caller dropped the future), it records
/// the operation as cancelled, so metrics and logs account for every call.
struct Unfinished<'a> {
    layer: &'a Instrumented,
    op: Op,
    span: &'a Span,
    start: Instant,
    armed: bool,
}

impl<'a> Unfinished<'a> {
    fn new(layer: &'a Instrumented, op: Op, span: &'a Span, start: Instant) -> Self {
        Self {
            layer,
            op,
            span,
            start,
            armed: true,
        }
    }

    fn done(mut self) {
        self.armed = false;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.layer.cancelled(self.op, self.span, self.start);
        }
    }
}
