//! Retry, Timeout, FaultInjector and Instrumented behaviour beyond the conformance suite.

// Stats details are whole counts stored as f64: exact comparison is correct.
#![allow(clippy::float_cmp)]

use std::sync::Arc;
use std::time::Duration;

use backon::ExponentialBuilder;
use bytes::Bytes;
use state_core::{ErrorKind, StateBackend};
use state_layers::{
    Fault, FaultInjector, Instrumented, Namespaced, Op, Retry, RetryBudget, Timeout,
};
use state_memory::MemoryStateBackend;

fn faulty() -> Arc<FaultInjector> {
    Arc::new(FaultInjector::new(Arc::new(MemoryStateBackend::new(None))))
}

fn fast_backoff(times: usize) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(1))
        .with_max_delay(Duration::from_millis(5))
        .with_max_times(times)
        .with_jitter()
}

/// Two transient connection failures are retried away: the caller sees success.
#[tokio::test]
async fn retry_recovers_from_transient_failures() {
    let faults = faulty();
    let retry = Retry::new(faults.clone()).with_backoff(fast_backoff(3));
    faults.inject_n(None, Fault::Fail(ErrorKind::Connection), 2);
    retry.put(b"k", b"v").await.unwrap();
    assert_eq!(faults.calls(Op::Put), 3);
    faults.inject(Some(Op::BatchGet), Fault::Fail(ErrorKind::Timeout));
    assert_eq!(
        retry.batch_get(&[b"k", b"x"]).await.unwrap(),
        vec![Some(Bytes::from_static(b"v")), None]
    );
    assert_eq!(faults.calls(Op::BatchGet), 2);
    assert_eq!(retry.retries(), 3);
    let stats = retry.stats().await;
    assert_eq!(stats.details["retry.retries"], 3.0);
}

/// Retries stop after the backoff's attempts; the last error comes back.
#[tokio::test]
async fn retry_gives_up_after_max_times() {
    let faults = faulty();
    let retry = Retry::new(faults.clone()).with_backoff(fast_backoff(2));
    faults.inject_n(None, Fault::Fail(ErrorKind::Connection), 5);
    let err = retry.get(b"k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert_eq!(faults.calls(Op::Get), 3, "one call and two retries");
    assert_eq!(retry.stats().await.details["retry.gave_up"], 1.0);
}

/// Errors a retry cannot fix (invalid input, unsupported) are returned at once.
#[tokio::test]
async fn retry_never_retries_non_retryable_errors() {
    let faults = faulty();
    let retry = Retry::new(faults.clone()).with_backoff(fast_backoff(3));
    faults.inject(None, Fault::Fail(ErrorKind::PermissionDenied));
    assert_eq!(
        retry.get(b"k").await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        retry.put(b"", b"v").await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(faults.calls(Op::Get), 1);
    assert_eq!(faults.calls(Op::Put), 1);
    assert_eq!(retry.retries(), 0);
}

/// By default an atomic operation is never sent twice: after a fault that applied the write
/// but lost the answer, the caller gets the error, not a misleading `false`.
#[tokio::test]
async fn retry_never_retries_non_idempotent_ops_by_default() {
    let faults = faulty();
    let retry = Retry::new(faults.clone()).with_backoff(fast_backoff(3));
    for op in [Op::SetIfNotExists, Op::CompareAndSwap, Op::GetAndDelete] {
        faults.inject(Some(op), Fault::Fail(ErrorKind::Connection));
    }
    assert_eq!(
        retry
            .set_if_not_exists(b"lock", b"me", None)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Connection
    );
    assert!(
        retry
            .compare_and_swap(b"k", None, Some(b"v"))
            .await
            .is_err()
    );
    assert!(retry.get_and_delete(b"k").await.is_err());
    assert_eq!(faults.calls(Op::SetIfNotExists), 1);
    assert_eq!(faults.calls(Op::CompareAndSwap), 1);
    assert_eq!(faults.calls(Op::GetAndDelete), 1);
    assert_eq!(retry.retries(), 0);
    assert_eq!(faults.pending_faults(), 0);
}

/// Opting in retries atomic operations too, and shows why it is off by default: a
/// `set_if_not_exists` whose write landed but whose answer was lost is retried, and the
/// retry answers `false` although this caller's value is the one stored.
#[tokio::test]
async fn retry_non_idempotent_opt_in_retries_and_shows_the_ambiguity() {
    let faults = faulty();
    let retry = Retry::new(faults.clone())
        .with_backoff(fast_backoff(3))
        .retry_non_idempotent(true);
    faults.inject(Some(Op::SetIfNotExists), Fault::Fail(ErrorKind::Timeout));
    assert!(retry.set_if_not_exists(b"a", b"me", None).await.unwrap());
    assert_eq!(faults.calls(Op::SetIfNotExists), 2);

    faults.inject(
        Some(Op::SetIfNotExists),
        Fault::FailAfterApply(ErrorKind::Timeout),
    );
    let won = retry.set_if_not_exists(b"b", b"me", None).await.unwrap();
    assert!(
        !won,
        "the retry is refused by the first attempt's own write"
    );
    assert_eq!(
        retry.get(b"b").await.unwrap(),
        Some(Bytes::from_static(b"me"))
    );
}

/// An empty budget stops retries until successes refill it.
#[tokio::test]
async fn retry_budget_limits_retries() {
    let faults = faulty();
    let retry = Retry::new(faults.clone())
        .with_backoff(fast_backoff(5))
        .with_budget(RetryBudget {
            max_tokens: 2,
            refill_per_success: 0.5,
        });
    faults.inject_n(None, Fault::Fail(ErrorKind::Connection), 10);
    assert!(retry.get(b"k").await.is_err());
    assert_eq!(faults.calls(Op::Get), 3, "two tokens, two retries");
    assert_eq!(retry.stats().await.details["retry.budget_exhausted"], 1.0);
    faults.clear_faults();
    for _ in 0..2 {
        retry.get(b"k").await.unwrap();
    }
    faults.inject_n(None, Fault::Fail(ErrorKind::Connection), 10);
    assert!(retry.get(b"k").await.is_err());
    assert_eq!(
        faults.calls(Op::Get),
        5 + 2,
        "one refilled token, one retry"
    );
}

/// A hung read becomes a retryable Timeout error after the deadline.
#[tokio::test]
async fn timeout_turns_a_hang_into_a_retryable_timeout() {
    let faults = faulty();
    let timeout = Timeout::new(faults.clone(), Duration::from_millis(50));
    faults.inject(Some(Op::Get), Fault::Hang);
    let started = std::time::Instant::now();
    let err = timeout.get(b"k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_retryable());
    assert_eq!(err.operation(), Some("get"));
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(started.elapsed() < Duration::from_secs(5));
    faults.inject(Some(Op::Count), Fault::Hang);
    assert_eq!(
        timeout.count().await.unwrap_err().kind(),
        ErrorKind::Timeout
    );
    assert_eq!(timeout.expired(), 2);
    // Calls that answer are untouched.
    timeout.put(b"k", b"v").await.unwrap();
    assert_eq!(timeout.count().await.unwrap(), 1);
}

/// A scan whose next entry never comes ends with a Timeout error.
#[tokio::test]
async fn timeout_bounds_each_scan_entry() {
    use futures_util::StreamExt;
    let faults = faulty();
    let timeout = Timeout::new(faults.clone(), Duration::from_millis(30));
    faults.inject(Some(Op::Scan), Fault::Hang);
    let items: Vec<_> = timeout.scan(b"").collect().await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].as_ref().unwrap_err().kind(), ErrorKind::Timeout);
}

/// Retry over Timeout: each attempt has its own deadline, and a hung read is retried away.
#[tokio::test]
async fn retry_over_timeout_recovers_from_a_hung_read() {
    let faults = faulty();
    let timeout = Arc::new(Timeout::new(faults.clone(), Duration::from_millis(30)));
    let retry = Retry::new(timeout).with_backoff(fast_backoff(2));
    retry.put(b"k", b"v").await.unwrap();
    faults.inject(Some(Op::Get), Fault::Hang);
    assert_eq!(
        retry.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"v"))
    );
    assert_eq!(faults.calls(Op::Get), 2);
}

/// A write that hangs past the Timeout's deadline has an unknown outcome: Timeout says so,
/// and Retry does not send it again.
#[tokio::test]
async fn retry_over_timeout_does_not_resend_a_hung_write() {
    let faults = faulty();
    let timeout = Arc::new(Timeout::new(faults.clone(), Duration::from_millis(30)));
    let retry = Retry::new(timeout).with_backoff(fast_backoff(2));
    faults.inject(Some(Op::Put), Fault::Hang);
    let err = retry.put(b"k", b"v").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
    assert!(!err.is_retryable());
    assert_eq!(faults.calls(Op::Put), 1);
    assert_eq!(retry.retries(), 0);
}

/// Issue 12, point 9: `put(k, v1)` is applied but its answer is lost (a deadline, a dropped
/// connection); another writer's `put(k, v2)` is acknowledged; a re-sent `put(k, v1)` would
/// overwrite v2. Retry no longer re-sends it: the caller gets `OutcomeUnknown` and v2 stays.
/// With the explicit opt-in the old behaviour (and why it is off) shows.
#[tokio::test]
async fn retry_never_resends_a_put_whose_outcome_is_unknown() {
    for (fault, via_timeout) in [
        (Fault::FailAfterApply(ErrorKind::OutcomeUnknown), false),
        (Fault::ApplyThenHang, true),
    ] {
        for opt_in in [false, true] {
            let memory = Arc::new(MemoryStateBackend::new(None));
            let faults = Arc::new(FaultInjector::new(memory.clone()));
            let inner: Arc<dyn StateBackend> = if via_timeout {
                Arc::new(Timeout::new(faults.clone(), Duration::from_millis(50)))
            } else {
                faults.clone()
            };
            // A long first delay leaves room for the other writer between the attempts.
            let retry = Arc::new(
                Retry::new(inner)
                    .with_backoff(
                        ExponentialBuilder::default()
                            .with_min_delay(Duration::from_millis(300))
                            .with_max_times(2),
                    )
                    .retry_unknown_outcomes(opt_in),
            );
            faults.inject(Some(Op::Put), fault);
            let writer = tokio::spawn({
                let retry = retry.clone();
                async move { retry.put(b"k", b"v1").await }
            });
            // Wait until the first copy landed, then another writer's put is acknowledged.
            while memory.get(b"k").await.unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            memory.put(b"k", b"v2").await.unwrap();
            let result = writer.await.unwrap();
            let end = memory.get(b"k").await.unwrap();
            if opt_in {
                result.unwrap();
                assert_eq!(faults.calls(Op::Put), 2, "opted in: re-sent");
                assert_eq!(
                    end,
                    Some(Bytes::from_static(b"v1")),
                    "the re-send overwrote the acknowledged v2"
                );
            } else {
                let err = result.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
                assert_eq!(faults.calls(Op::Put), 1, "{fault:?}: not re-sent");
                assert_eq!(end, Some(Bytes::from_static(b"v2")), "{fault:?}");
                assert_eq!(retry.retries(), 0);
            }
        }
    }
}

/// No operation that changes state is re-sent after an unknown outcome, idempotent or not
/// (even with `retry_non_idempotent`); reads are.
#[tokio::test]
async fn retry_resends_no_write_after_an_unknown_outcome() {
    let faults = faulty();
    let retry = Retry::new(faults.clone())
        .with_backoff(fast_backoff(3))
        .retry_non_idempotent(true);
    let unknown = Fault::FailAfterApply(ErrorKind::OutcomeUnknown);
    let ops = [
        Op::Put,
        Op::PutWithTtl,
        Op::BatchPut,
        Op::Delete,
        Op::BatchDelete,
        Op::DeletePrefix,
        Op::Clear,
        Op::CompareAndSwap,
        Op::SetIfNotExists,
        Op::GetAndDelete,
    ];
    for op in ops {
        faults.inject(Some(op), unknown);
    }
    let errors = [
        retry.put(b"a", b"1").await.unwrap_err(),
        retry
            .put_with_ttl(b"b", b"1", Duration::from_secs(60))
            .await
            .unwrap_err(),
        retry.batch_put(&[(b"c", b"1")]).await.unwrap_err(),
        retry.delete(b"a").await.unwrap_err(),
        retry.batch_delete(&[b"b"]).await.unwrap_err(),
        retry.delete_prefix(b"c").await.unwrap_err(),
        retry.clear().await.unwrap_err(),
        retry
            .compare_and_swap(b"d", None, Some(b"1"))
            .await
            .unwrap_err(),
        retry.set_if_not_exists(b"e", b"1", None).await.unwrap_err(),
        retry.get_and_delete(b"d").await.unwrap_err(),
    ];
    for (op, err) in ops.iter().zip(&errors) {
        assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{op}");
        assert_eq!(faults.calls(*op), 1, "{op} was re-sent");
    }
    assert_eq!(retry.retries(), 0);
    // A read reported as unknown (a backend being careful) is simply read again.
    faults.inject(Some(Op::Get), Fault::Fail(ErrorKind::OutcomeUnknown));
    assert_eq!(
        retry.get(b"e").await.unwrap(),
        Some(Bytes::from_static(b"1"))
    );
    assert_eq!(faults.calls(Op::Get), 2);
}

/// Two namespaces over one shared backend never see each other's keys, and `clear` of one
/// leaves the other (and un-prefixed keys) alone.
#[tokio::test]
async fn namespaced_isolates_tenants_on_one_backend() {
    let shared: Arc<dyn StateBackend> = Arc::new(MemoryStateBackend::new(None));
    shared.put(b"outside", b"x").await.unwrap();
    let a = Namespaced::new(shared.clone(), "a:").unwrap();
    let b = Namespaced::new(shared.clone(), "b:").unwrap();
    a.put(b"k", b"1").await.unwrap();
    b.put(b"k", b"2").await.unwrap();
    assert_eq!(a.get(b"k").await.unwrap(), Some(Bytes::from_static(b"1")));
    assert_eq!(a.count().await.unwrap(), 1);
    a.clear().await.unwrap();
    assert_eq!(b.get(b"k").await.unwrap(), Some(Bytes::from_static(b"2")));
    assert_eq!(shared.count().await.unwrap(), 2);
    let max = shared.capabilities().limits.max_key_size;
    assert_eq!(a.capabilities().limits.max_key_size, max - 2);
    assert_eq!(
        a.put(&vec![b'k'; max - 1], b"v").await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// Metrics through the facade: one counter per op and outcome, a latency histogram, and an
/// error counter by kind.
#[tokio::test]
async fn instrumented_records_metrics_per_operation() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let faults = faulty();
    let layer =
        metrics::with_local_recorder(&recorder, || Instrumented::new(faults.clone(), "unit"));
    layer.put(b"k", b"v").await.unwrap();
    layer.get(b"k").await.unwrap();
    layer.get(b"k").await.unwrap();
    faults.inject(Some(Op::Get), Fault::Fail(ErrorKind::Timeout));
    metrics::with_local_recorder(&recorder, || {
        // Error counters are registered on first error, with the recorder in scope.
        futures_util::FutureExt::now_or_never(layer.get(b"k"))
            .expect("memory answers at once")
            .unwrap_err();
    });
    let mut counters = std::collections::BTreeMap::new();
    let mut histogram_samples = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        match value {
            DebugValue::Counter(n) if n > 0 => {
                counters.insert(format!("{} {}", key.key().name(), labels.join(",")), n);
            }
            DebugValue::Histogram(samples)
                if key.key().name() == "state_operation_duration_seconds" =>
            {
                histogram_samples += samples.len();
            }
            _ => {}
        }
    }
    assert_eq!(
        counters.get("state_operations_total backend=unit,op=get,outcome=ok"),
        Some(&2),
        "{counters:?}"
    );
    assert_eq!(
        counters.get("state_operations_total backend=unit,op=get,outcome=error"),
        Some(&1)
    );
    assert_eq!(
        counters.get("state_operations_total backend=unit,op=put,outcome=ok"),
        Some(&1)
    );
    assert_eq!(
        counters.get("state_errors_total backend=unit,op=get,kind=timeout"),
        Some(&1),
        "{counters:?}"
    );
    assert_eq!(histogram_samples, 4);
}

/// A call whose future is dropped before it finishes is counted as `cancelled` (issue 12
/// point 11: it was not recorded at all).
#[tokio::test]
async fn instrumented_records_cancelled_calls() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let faults = faulty();
    let layer =
        metrics::with_local_recorder(&recorder, || Instrumented::new(faults.clone(), "cut"));
    faults.inject(Some(Op::Put), Fault::Hang);
    faults.inject(Some(Op::BatchPut), Fault::Hang);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), layer.put(b"k", b"v"))
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(
            Duration::from_millis(20),
            layer.batch_put(&[(&b"a"[..], &b"1"[..])])
        )
        .await
        .is_err()
    );
    let cancelled: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            match value {
                DebugValue::Counter(n) if n > 0 && labels.contains(&"outcome=cancelled".into()) => {
                    Some((labels.join(","), n))
                }
                _ => None,
            }
        })
        .collect();
    let mut cancelled = cancelled;
    cancelled.sort();
    assert_eq!(
        cancelled,
        vec![
            ("backend=cut,op=batch_put,outcome=cancelled".to_owned(), 1),
            ("backend=cut,op=put,outcome=cancelled".to_owned(), 1),
        ]
    );
}
