//! A PostgreSQL server killed (SIGKILL) mid-run and restarted, on a throwaway server of this
//! test's own (the `state-test-servers` harness, with the binaries `cargo xtask test` found):
//! operations fail with retryable errors during the outage, never hang, the pool recovers on
//! its own, and every acknowledged write survives the crash.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use state_core::StateBackend;
use state_postgres::{PostgresConfig, PostgresStateBackend};
use state_test_servers::postgres::PostgresServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_then_restart_pool_recovers_and_acknowledged_writes_survive() {
    let mut server = tokio::task::spawn_blocking(|| PostgresServer::temp("pg-restart"))
        .await
        .unwrap()
        .expect("start a throwaway PostgreSQL (binaries from STATE_POSTGRES_BIN_DIR or PATH)");
    let config = PostgresConfig::builder()
        .url(server.url())
        .table("restart")
        .pool_size(4)
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let backend = Arc::new(PostgresStateBackend::with_config(config).await.unwrap());

    // Writers run through the crash; each records the keys the server acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u8 {
        let backend = Arc::clone(&backend);
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut errors = 0u32;
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}:{i}");
                match backend.put(key.as_bytes(), &i.to_le_bytes()).await {
                    Ok(()) => acknowledged.push(key),
                    Err(err) => {
                        // A put in flight when the server died may or may not have been
                        // applied: OutcomeUnknown. Any other outage error is retryable.
                        assert!(
                            err.is_retryable() || err.is_outcome_unknown(),
                            "outage error neither retryable nor unknown: {err}"
                        );
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                i += 1;
            }
            (acknowledged, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.kill();
    // During the outage: a retryable error within the timeouts, never a hang.
    let started = Instant::now();
    let err = backend.get(b"w0:0").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!backend.health_check().await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let server = tokio::task::spawn_blocking(move || {
        server.start().expect("restart");
        server
    })
    .await
    .unwrap();
    // The pool replaces dead connections by itself.
    let started = Instant::now();
    loop {
        match backend.get(b"w0:0").await {
            Ok(_) => break,
            Err(err) => {
                assert!(err.is_retryable(), "{err}");
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "no recovery: {err}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let recovered = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut total_errors = 0;
    for writer in writers {
        let (acknowledged, errors) = writer.await.unwrap();
        total_errors += errors;
        let keys: Vec<&[u8]> = acknowledged.iter().map(String::as_bytes).collect();
        for (chunk_keys, values) in keys.chunks(500).zip(
            futures_util::future::join_all(keys.chunks(500).map(|c| backend.batch_get(c))).await,
        ) {
            let values = values.unwrap();
            for (k, v) in chunk_keys.iter().zip(values) {
                assert!(
                    v.is_some(),
                    "acknowledged write lost: {}",
                    String::from_utf8_lossy(k)
                );
            }
        }
        total += acknowledged.len();
    }
    assert!(
        total > 0 && total_errors > 0,
        "{total} writes, {total_errors} errors"
    );
    assert!(backend.health_check().await.unwrap());
    eprintln!(
        "{total} acknowledged writes survived; {total_errors} retryable errors during the outage; \
         recovered {recovered:?} after restart"
    );
    assert_eq!(
        backend.get(b"w0:0").await.unwrap(),
        Some(Bytes::copy_from_slice(&0u32.to_le_bytes()))
    );
    drop(server);
}

/// A server killed (SIGKILL) in the middle of a transaction, with some statements done and
/// `COMMIT` not yet sent, leaves nothing of it: after the restart none of its writes are
/// there, and `commit` fails with an error saying the transaction was rolled back (a definite
/// answer, not `OutcomeUnknown`: the `COMMIT` was never sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_mid_transaction_leaves_no_half_applied_transaction() {
    let mut server = tokio::task::spawn_blocking(|| PostgresServer::temp("pg-midtx"))
        .await
        .unwrap()
        .expect("start a throwaway PostgreSQL (binaries from STATE_POSTGRES_BIN_DIR or PATH)");
    let config = PostgresConfig::builder()
        .url(server.url())
        .table("midtx")
        .pool_size(2)
        .sweep_interval(None)
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let backend = PostgresStateBackend::with_config(config).await.unwrap();
    backend.put(b"before", b"kept").await.unwrap();

    let tx = backend.begin_transaction().await.unwrap();
    tx.put(b"tx:1", b"a").await.unwrap();
    tx.put_with_ttl(b"tx:2", b"b", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(tx.delete(b"before").await.unwrap());

    server.kill();
    let server = tokio::task::spawn_blocking(move || {
        server.start().expect("restart");
        server
    })
    .await
    .unwrap();

    let err = tx.commit().await.unwrap_err();
    assert!(
        !err.is_outcome_unknown(),
        "COMMIT was never sent, yet: {err}"
    );
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("rolled back"), "{err}");

    let started = Instant::now();
    let values = loop {
        match backend.batch_get(&[b"tx:1", b"tx:2", b"before"]).await {
            Ok(values) => break values,
            Err(err) => {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "no recovery: {err}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(
        values,
        vec![None, None, Some(Bytes::from_static(b"kept"))],
        "a half-applied transaction"
    );
    drop(server);
}
