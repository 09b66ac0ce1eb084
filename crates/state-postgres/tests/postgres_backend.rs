//! PostgreSQL-specific behaviour against the primary and streaming replica that
//! `cargo xtask test` starts (`STATE_POSTGRES_URL`, `STATE_POSTGRES_REPLICA_URLS`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use state_core::{ErrorKind, StateBackend};
use state_postgres::tokio_postgres::{self, NoTls};
use state_postgres::{
    IsolationLevel, PostgresConfig, PostgresStateBackend, ReadConsistency, schema,
};

fn url() -> String {
    std::env::var("STATE_POSTGRES_URL").expect("STATE_POSTGRES_URL: run `cargo xtask test`")
}

fn replica_url() -> String {
    std::env::var("STATE_POSTGRES_REPLICA_URLS")
        .expect("STATE_POSTGRES_REPLICA_URLS: run `cargo xtask test`")
        .split(',')
        .next()
        .expect("one replica")
        .to_owned()
}

fn table(tag: &str) -> String {
    format!("{tag}_{}", state_testkit::unique_namespace())
}

async fn backend(table: &str) -> PostgresStateBackend {
    PostgresStateBackend::new(url(), table).await.unwrap()
}

/// A plain tokio-postgres connection for checking what the backend did.
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Hostile table names are refused before any SQL runs; the tables they try to drop survive.
#[tokio::test]
async fn hostile_table_names_are_invalid_input() {
    let victim = table("victim");
    let b = backend(&victim).await;
    b.put(b"k", b"v").await.unwrap();
    for name in [
        format!("{victim}; DROP TABLE {victim}"),
        format!("x\"; DROP TABLE \"{victim}\"; --"),
        format!("{victim}\" CASCADE --"),
        "a b".to_owned(),
        "1table".to_owned(),
        String::new(),
        "a.b.c".to_owned(),
        "x".repeat(64),
    ] {
        let err = PostgresStateBackend::new(url(), name.as_str())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name:?}: {err}");
    }
    assert_eq!(b.get(b"k").await.unwrap(), Some(Bytes::from_static(b"v")));
}

/// Two tables on one database: `clear` and `count` on one leave the other alone.
#[tokio::test]
async fn two_tables_stay_isolated_under_clear() {
    let a = backend(&table("iso_a")).await;
    let b = backend(&table("iso_b")).await;
    for i in 0..50u8 {
        a.put(&[i], b"a").await.unwrap();
        b.put(&[i], b"b").await.unwrap();
    }
    a.clear().await.unwrap();
    assert_eq!(a.count().await.unwrap(), 0);
    assert_eq!(b.count().await.unwrap(), 50);
    assert_eq!(b.get(&[7]).await.unwrap(), Some(Bytes::from_static(b"b")));
}

/// A schema-qualified table is created in its schema.
#[tokio::test]
async fn schema_qualified_table_works() {
    let schema_name = table("sch");
    let name = format!("{schema_name}.kv");
    let b = backend(&name).await;
    b.put(b"k", b"v").await.unwrap();
    let client = raw(&url()).await;
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'kv'",
            &[&schema_name],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(
        b.list_keys(b"").await.unwrap(),
        vec![Bytes::from_static(b"k")]
    );
}

/// Four tasks migrating one fresh table at once all succeed and each version is applied once;
/// ten more restarts apply nothing and keep the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_each_version_once() {
    let name = table("mig");
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let name = name.clone();
            tokio::spawn(async move { PostgresStateBackend::new(url(), name).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let client = raw(&url()).await;
    let rows = client
        .query(
            "SELECT version FROM state_schema_migrations WHERE table_name = $1 ORDER BY version",
            &[&name],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, (1..=schema::SCHEMA_VERSION).collect::<Vec<_>>());
    let first = backend(&name).await;
    first.put(b"kept", b"1").await.unwrap();
    for _ in 0..10 {
        let again = backend(&name).await;
        assert_eq!(
            again.get(b"kept").await.unwrap(),
            Some(Bytes::from_static(b"1"))
        );
    }
    let count: i64 = client
        .query_one(
            "SELECT count(*) FROM state_schema_migrations WHERE table_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, i64::from(schema::SCHEMA_VERSION));
}

/// No index predicate calls `now()`, and the primary key serves prefix ranges.
#[tokio::test]
async fn indexes_are_immutable_and_serve_prefix_ranges() {
    let name = table("idx");
    let b = backend(&name).await;
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..2000u32)
        .map(|i| (format!("p{i:05}").into_bytes(), b"v".to_vec()))
        .collect();
    let refs: Vec<(&[u8], &[u8])> = entries
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    b.batch_put(&refs).await.unwrap();
    b.analyze().await.unwrap();
    let client = raw(&url()).await;
    let defs: Vec<String> = client
        .query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(defs.len(), 2, "{defs:?}");
    assert!(
        defs.iter().all(|d| !d.to_lowercase().contains("now()")),
        "{defs:?}"
    );
    let plan: Vec<String> = client
        .query(
            &format!(
                "EXPLAIN SELECT key FROM \"{name}\" WHERE key >= '\\x70303031'::bytea AND key < '\\x70303032'::bytea"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|line| line.contains("Index")),
        "prefix range not served by an index: {plan:?}"
    );
    assert_eq!(b.list_keys(b"p001").await.unwrap().len(), 100);
}

/// A statement held up past `statement_timeout` (here by a row lock) fails with a retryable
/// `Timeout` error, and the backend keeps working afterwards.
#[tokio::test]
async fn statement_timeout_is_a_retryable_timeout() {
    let name = table("stmt");
    let config = PostgresConfig::builder()
        .url(url())
        .table(name.as_str())
        .statement_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let b = PostgresStateBackend::with_config(config).await.unwrap();
    b.put(b"locked", b"0").await.unwrap();
    let tx = b.begin_transaction().await.unwrap();
    tx.get_for_update(b"locked").await.unwrap();
    let started = Instant::now();
    let err = b.put(b"locked", b"1").await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_retryable());
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    tx.rollback().await.unwrap();
    b.put(b"locked", b"2").await.unwrap();
    assert_eq!(
        b.get(b"locked").await.unwrap(),
        Some(Bytes::from_static(b"2"))
    );
}

/// A server that does not listen gives a retryable connection error quickly, without the
/// password.
#[tokio::test]
async fn unreachable_server_is_a_clear_retryable_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = PostgresConfig::builder()
        .url(format!("postgres://app:hunter2@127.0.0.1:{port}/db"))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = PostgresStateBackend::with_config(config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_retryable());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains(&port.to_string()), "{shown}");
}

/// Batches: duplicates keep the last value, several chunks commit together, 10,000 rows go
/// in one statement.
#[tokio::test]
async fn batches_keep_last_duplicate_and_span_chunks() {
    let name = table("batch");
    let config = PostgresConfig::builder()
        .url(url())
        .table(name.as_str())
        .batch_chunk_rows(1000)
        .build()
        .unwrap();
    let b = PostgresStateBackend::with_config(config).await.unwrap();
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = (0..2500u32)
        .map(|i| (i.to_be_bytes().to_vec(), b"first".to_vec()))
        .collect();
    entries.push((7u32.to_be_bytes().to_vec(), b"last".to_vec()));
    let refs: Vec<(&[u8], &[u8])> = entries
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    b.batch_put(&refs).await.unwrap();
    assert_eq!(b.count().await.unwrap(), 2500);
    assert_eq!(
        b.get(&7u32.to_be_bytes()).await.unwrap(),
        Some(Bytes::from_static(b"last"))
    );
    let ten_k: Vec<(Vec<u8>, Vec<u8>)> = (0..10_000u32)
        .map(|i| (format!("big{i}").into_bytes(), i.to_le_bytes().to_vec()))
        .collect();
    let refs: Vec<(&[u8], &[u8])> = ten_k
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let big = backend(&table("batch10k")).await;
    big.batch_upsert(&refs).await.unwrap();
    assert_eq!(big.count().await.unwrap(), 10_000);
    let keys: Vec<&[u8]> = refs.iter().map(|(k, _)| *k).rev().collect();
    let values = big.batch_get(&keys).await.unwrap();
    assert!(values.iter().all(Option::is_some));
    assert_eq!(values[0].as_deref(), Some(&9999u32.to_le_bytes()[..]));
    assert_eq!(big.batch_delete(&keys).await.unwrap(), 10_000);
}

/// A transaction sees its own writes; others see nothing until commit; rollback and drop
/// discard; the pooled connection is clean afterwards.
#[tokio::test]
async fn transactions_are_isolated_until_commit() {
    let name = table("tx");
    let config = PostgresConfig::builder()
        .url(url())
        .table(name.as_str())
        .pool_size(2)
        .build()
        .unwrap();
    let b = PostgresStateBackend::with_config(config).await.unwrap();
    b.put(b"a", b"100").await.unwrap();

    let tx = b.begin_transaction().await.unwrap();
    tx.put(b"a", b"90").await.unwrap();
    tx.put(b"b", b"10").await.unwrap();
    assert_eq!(tx.get(b"a").await.unwrap(), Some(Bytes::from_static(b"90")));
    assert_eq!(tx.list_keys(b"").await.unwrap().len(), 2);
    // Concurrent readers see the old state.
    assert_eq!(b.get(b"a").await.unwrap(), Some(Bytes::from_static(b"100")));
    assert_eq!(b.get(b"b").await.unwrap(), None);
    b.commit_transaction(tx).await.unwrap();
    assert_eq!(b.get(b"a").await.unwrap(), Some(Bytes::from_static(b"90")));
    assert_eq!(b.get(b"b").await.unwrap(), Some(Bytes::from_static(b"10")));

    let tx = b.begin_transaction().await.unwrap();
    assert!(tx.delete(b"a").await.unwrap());
    assert!(!tx.contains(b"a").await.unwrap());
    b.rollback_transaction(tx).await.unwrap();
    assert!(b.contains(b"a").await.unwrap());

    {
        let tx = b.begin_transaction().await.unwrap();
        tx.put(b"dropped", b"x").await.unwrap();
    }
    // Every pooled connection is usable and none carries the dropped transaction.
    for _ in 0..20 {
        assert_eq!(b.get(b"dropped").await.unwrap(), None);
        b.put(b"after", b"ok").await.unwrap();
    }
    let tx = b.begin_transaction().await.unwrap();
    assert_eq!(tx.get(b"dropped").await.unwrap(), None);
    tx.commit().await.unwrap();
}

/// Two serializable transactions that read and write the same key: one commits, the other
/// gets an error saying to retry the whole transaction, and wrote nothing.
#[tokio::test]
async fn serializable_conflict_is_retryable() {
    let b = backend(&table("ser")).await;
    b.put(b"n", b"0").await.unwrap();
    let t1 = b
        .begin_transaction_with(IsolationLevel::Serializable)
        .await
        .unwrap();
    let t2 = b
        .begin_transaction_with(IsolationLevel::Serializable)
        .await
        .unwrap();
    assert!(t1.get(b"n").await.unwrap().is_some());
    assert!(t2.get(b"n").await.unwrap().is_some());
    t1.put(b"n", b"1").await.unwrap();
    t1.commit().await.unwrap();
    let second = async {
        t2.put(b"n", b"2").await?;
        t2.commit().await
    }
    .await;
    let err = second.unwrap_err();
    // The whole transaction can be run again, not the failed call alone.
    assert_eq!(err.kind(), ErrorKind::ConditionNotMatch, "{err}");
    assert!(
        err.to_string().contains("retry the whole transaction"),
        "{err}"
    );
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(b.get(b"n").await.unwrap(), Some(Bytes::from_static(b"1")));
}

/// Replica routing against the real streaming replica, with replay paused to create lag:
/// `Replica` reads are stale as documented, `ReadYourWrites` reads fall back to the primary
/// and see the write, and once replay resumes the replica serves both.
#[tokio::test]
async fn replica_lag_is_handled_as_documented() {
    let _replay = REPLAY.lock().await;
    let name = table("repl");
    let open = |mode, name: &str| {
        let config = PostgresConfig::builder()
            .url(url())
            .replica_urls([replica_url()])
            .read_consistency(mode)
            .table(name)
            .build()
            .unwrap();
        PostgresStateBackend::with_config(config)
    };
    let ryw = open(ReadConsistency::ReadYourWrites, &name).await.unwrap();
    let replica = open(ReadConsistency::Replica, &name).await.unwrap();
    let replica_sql = raw(&replica_url()).await;

    // Replication works: the replica catches up, and read-your-writes reads use it.
    ryw.put(b"warm", b"1").await.unwrap();
    let started = Instant::now();
    while replica.get(b"warm").await.unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lag = started.elapsed();
    eprintln!("replication visible after {lag:?}");
    let (served_before, _) = ryw.replica_read_counts();
    for _ in 0..20 {
        assert_eq!(
            ryw.get(b"warm").await.unwrap(),
            Some(Bytes::from_static(b"1"))
        );
    }
    let (served_after, _) = ryw.replica_read_counts();
    assert!(
        served_after > served_before,
        "no read served by the replica"
    );

    // Pause replay: the replica falls behind.
    replica_sql
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    let resume = scopeguard(replica_sql);
    ryw.put(b"fresh", b"2").await.unwrap();
    assert_eq!(
        replica.get(b"fresh").await.unwrap(),
        None,
        "Replica mode reads the lagging replica (stale read, as documented)"
    );
    let (_, fallbacks_before) = ryw.replica_read_counts();
    assert_eq!(
        ryw.get(b"fresh").await.unwrap(),
        Some(Bytes::from_static(b"2"))
    );
    let (_, fallbacks_after) = ryw.replica_read_counts();
    assert!(
        fallbacks_after > fallbacks_before,
        "read-your-writes did not fall back"
    );
    // Writes always go to the primary, even through a Replica-mode backend.
    replica.put(b"via-replica-mode", b"3").await.unwrap();
    // A table created while the replica lags: reads fall back instead of failing with
    // "relation does not exist" on the replica.
    let fresh = table("repl_fresh");
    for mode in [ReadConsistency::ReadYourWrites, ReadConsistency::Replica] {
        let b = open(mode, &fresh).await.unwrap();
        assert_eq!(b.get(b"x").await.unwrap(), None, "{mode:?}");
        assert_eq!(b.count().await.unwrap(), 0, "{mode:?}");
    }

    resume.resume().await;
    let started = Instant::now();
    while replica.get(b"fresh").await.unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replay did not resume"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = ryw.replication_status().await.unwrap();
    assert!(!status.is_empty(), "primary lists no replica");
    assert!(ryw.replica_health().await.iter().all(|ok| *ok));
}

/// Tests that pause the shared replica's replay take turns: one test's resume must not
/// end another's pause.
static REPLAY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until the replica serves `key` as `value` to `b` (a read counted as served by a
/// replica), so the replica has replayed every write `b` made so far.
async fn replica_serves(b: &PostgresStateBackend, key: &[u8], value: &[u8]) {
    let started = Instant::now();
    loop {
        let (before, _) = b.replica_read_counts();
        let got = b.get(key).await.unwrap();
        let (after, _) = b.replica_read_counts();
        if after > before && got.as_deref() == Some(value) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Read-your-writes covers transactions: right after `commit`, a `get` through the same
/// backend sees the committed value although the replica has stopped replaying (it read
/// the old value there before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_covers_committed_transactions() {
    let _replay = REPLAY.lock().await;
    let name = table("ryw_tx");
    let config = PostgresConfig::builder()
        .url(url())
        .replica_urls([replica_url()])
        .read_consistency(ReadConsistency::ReadYourWrites)
        .table(name.as_str())
        .sweep_interval(None)
        .build()
        .unwrap();
    let b = PostgresStateBackend::with_config(config).await.unwrap();
    b.put(b"k", b"old").await.unwrap();
    replica_serves(&b, b"k", b"old").await;

    let replica_sql = raw(&replica_url()).await;
    replica_sql
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    let resume = scopeguard(replica_sql);
    let tx = b.begin_transaction().await.unwrap();
    tx.put(b"k", b"new").await.unwrap();
    tx.put(b"k2", b"also").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        b.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"new")),
        "a read after commit missed the transaction"
    );
    assert_eq!(
        b.get(b"k2").await.unwrap(),
        Some(Bytes::from_static(b"also"))
    );
    resume.resume().await;
    b.clear().await.unwrap();
}

/// The expiry sweep deletes in bounded batches, each its own transaction: while it works
/// through 200,000 expired rows, a `put` to an expired key never waits for the backlog
/// (p99 and max under 50 ms), and `purge_expired` still removes and counts every expired row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeping_a_large_backlog_does_not_block_puts_to_expired_keys() {
    const ROWS: i64 = 200_000;
    let name = table("sweep_big");
    let config = PostgresConfig::builder()
        .url(url())
        .table(name.as_str())
        .pool_size(4)
        .sweep_interval(None)
        .build()
        .unwrap();
    let b = PostgresStateBackend::with_config(config).await.unwrap();
    let sql = raw(&url()).await;
    let filled = Instant::now();
    sql.execute(
        &format!(
            "INSERT INTO \"{name}\" (key, value, expires_at)
             SELECT convert_to('exp:' || g, 'UTF8'), '\\x00'::bytea, now() - interval '1 hour'
               FROM generate_series(1, $1::int8) g"
        ),
        &[&ROWS],
    )
    .await
    .unwrap();
    sql.batch_execute(&format!("ANALYZE \"{name}\""))
        .await
        .unwrap();
    eprintln!("{ROWS} expired rows inserted in {:?}", filled.elapsed());
    assert_eq!(b.count().await.unwrap(), 0, "expired rows are invisible");

    // Two open connections, each with the put prepared, so no put below waits for a new
    // connection (that is the pool's cost, not the sweep's).
    {
        let pool = b.pool();
        let (one, two) = (pool.get().await.unwrap(), pool.get().await.unwrap());
        drop((one, two));
        let warm = [b"warm:1".as_slice(), b"warm:2"];
        futures_util::future::try_join_all(warm.iter().map(|k| b.put(k, b"x")))
            .await
            .unwrap();
        b.batch_delete(&warm).await.unwrap();
    }
    let sweeping = Instant::now();
    let sweeper = tokio::spawn({
        let b = b.clone();
        async move { b.purge_expired().await }
    });
    // Puts to expired keys, spread over the backlog, measured while the sweep runs.
    let mut latencies = Vec::new();
    let mut put_keys = std::collections::HashSet::new();
    let mut i: i64 = 0;
    while !sweeper.is_finished() && latencies.len() < 5_000 {
        let key = format!("exp:{}", 1 + (i * 7_919) % ROWS);
        let started = Instant::now();
        b.put(key.as_bytes(), b"new").await.unwrap();
        // Every put started while the sweep ran counts, also one it held up to its end.
        let took = started.elapsed();
        latencies.push(took);
        if took > Duration::from_millis(20) {
            eprintln!("put #{i} took {took:?}");
        }
        put_keys.insert(key);
        i += 1;
    }
    let removed = sweeper.await.unwrap().unwrap();
    let swept_in = sweeping.elapsed();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let (p50, p99, max) = (pick(0.5), pick(0.99), *latencies.last().unwrap());
    eprintln!(
        "sweep of {ROWS} expired rows: {removed} removed in {swept_in:?}; {} puts to expired \
         keys meanwhile: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        latencies.len()
    );
    assert!(
        latencies.len() >= 100,
        "the sweep ended before enough puts were measured"
    );
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");
    // On a shared two-core test machine single puts stall 20-30 ms on CPU scheduling with
    // no sweep at all, and up to ~90 ms with the server busy sweeping (with 200- and
    // 5,000-row batches alike); one transaction over the backlog made them wait ~1 s.
    assert!(max < Duration::from_millis(200), "max {max:?}");

    // Every expired row is gone, counted once; every put is there.
    let left: i64 = sql
        .query_one(
            &format!("SELECT count(*) FROM \"{name}\" WHERE expires_at <= now()"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let removed = i64::try_from(removed).unwrap();
    let put = i64::try_from(put_keys.len()).unwrap();
    assert!(
        removed <= ROWS && removed >= ROWS - put,
        "removed {removed} of {ROWS} with {put} overwritten"
    );
    assert_eq!(b.count().await.unwrap(), put_keys.len());
    assert_eq!(b.purge_expired().await.unwrap(), 0);
    b.clear().await.unwrap();
}

/// Resumes WAL replay when dropped, so a failing assertion never leaves the shared replica
/// paused.
struct Paused(Option<tokio_postgres::Client>);

fn scopeguard(client: tokio_postgres::Client) -> Paused {
    Paused(Some(client))
}

impl Paused {
    async fn resume(mut self) {
        if let Some(client) = self.0.take() {
            client
                .execute("SELECT pg_wal_replay_resume()", &[])
                .await
                .unwrap();
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            // A fresh connection on a plain thread: this may run during a panic unwind.
            let url = replica_url();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let client = raw(&url).await;
                    let _ = client.execute("SELECT pg_wal_replay_resume()", &[]).await;
                });
            })
            .join()
            .ok();
        }
    }
}

/// LISTEN/NOTIFY: any bytes arrive in order; channels are namespaced by table.
#[tokio::test]
async fn publish_subscribe_delivers_and_isolates_tables() {
    let a = backend(&table("ps_a")).await;
    let b = backend(&table("ps_b")).await;
    let mut sub_a = a.subscribe("invalidate").await.unwrap();
    let mut sub_b = b.subscribe("invalidate").await.unwrap();
    a.publish("invalidate", &[0, 1, 255, b'k']).await.unwrap();
    a.publish("invalidate", b"second").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), sub_a.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first, Bytes::from_static(&[0, 1, 255, b'k']));
    let second = tokio::time::timeout(Duration::from_secs(5), sub_a.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second, Bytes::from_static(b"second"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub_b.next())
            .await
            .is_err(),
        "table b heard table a's message"
    );
    let too_big = vec![0u8; state_postgres::MAX_MESSAGE_BYTES + 1];
    assert_eq!(
        a.publish("invalidate", &too_big).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// Maintenance and figures: vacuum, analyze, table stats, pool stats, health.
#[tokio::test]
async fn maintenance_and_statistics() {
    let b = backend(&table("ops")).await;
    for i in 0..200u32 {
        b.put(&i.to_be_bytes(), &[7; 100]).await.unwrap();
    }
    for i in 0..100u32 {
        b.delete(&i.to_be_bytes()).await.unwrap();
    }
    for _ in 0..5 {
        b.get(&150u32.to_be_bytes()).await.unwrap();
    }
    b.vacuum().await.unwrap();
    b.analyze().await.unwrap();
    let table = b.table_stats().await.unwrap();
    assert!(table.table_size_bytes > 0 && table.database_size_bytes > table.table_size_bytes);
    let stats = b.stats().await;
    assert!(stats.details.contains_key("dead_tuples"), "{stats:?}");
    assert!(stats.details["table_size_bytes"] > 0.0);
    assert!(stats.hit_rate() > 0.99);
    let pool = b.pool_stats();
    assert!(
        pool.max_connections >= 1 && pool.idle_connections >= 1,
        "{pool:?}"
    );
    assert!(b.health_check().await.unwrap());
    assert!(b.memory_usage().await.unwrap() > 0);
}

/// Expired rows are deleted by the sweep, by one instance at a time.
#[tokio::test]
async fn expired_rows_are_swept_by_one_instance_at_a_time() {
    let name = table("sweep");
    let b = backend(&name).await;
    for i in 0..300u32 {
        b.put_with_ttl(&i.to_be_bytes(), b"v", Duration::from_millis(50))
            .await
            .unwrap();
    }
    b.put(b"stays", b"v").await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    // Another instance holds the sweep lock: this one skips.
    let holder = raw(&url()).await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&0x5354_4155_i32, &name],
        )
        .await
        .unwrap();
    assert_eq!(b.purge_expired().await.unwrap(), 0);
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(b.purge_expired().await.unwrap(), 300);
    let rows: i64 = holder
        .query_one(&format!("SELECT count(*) FROM \"{name}\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

/// Concurrent writers on one key through several handles: the last write wins, nothing is
/// lost or torn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handles_share_one_table() {
    let name = table("shared");
    let handles: Vec<Arc<PostgresStateBackend>> = futures_util::future::join_all(
        (0..3).map(|_| PostgresStateBackend::new(url(), name.clone())),
    )
    .await
    .into_iter()
    .map(|b| Arc::new(b.unwrap()))
    .collect();
    let mut tasks = Vec::new();
    for (h, b) in handles.iter().enumerate() {
        let b = Arc::clone(b);
        tasks.push(tokio::spawn(async move {
            for i in 0..100u32 {
                b.put(format!("{h}:{i}").as_bytes(), &i.to_le_bytes())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(handles[0].count().await.unwrap(), 300);
}

/// TLS that the server cannot provide is an error, never a silent plaintext fallback; a
/// missing CA file is a configuration error.
#[tokio::test]
async fn required_tls_against_a_plain_server_fails_clearly() {
    let config = PostgresConfig::builder()
        .url(url())
        .table(table("tls").as_str())
        .tls(state_postgres::TlsMode::Require)
        .build()
        .unwrap();
    let err = PostgresStateBackend::with_config(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    let config = PostgresConfig::builder()
        .url(url())
        .tls(state_postgres::TlsMode::RequireWithCa(
            "/nonexistent/ca.pem".into(),
        ))
        .build()
        .unwrap();
    let err = PostgresStateBackend::with_config(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
    // `sslmode=disable` in the URL and the default mode connect in plain text.
    let b = PostgresStateBackend::new(format!("{}?sslmode=disable", url()), table("plain"))
        .await
        .unwrap();
    assert!(b.health_check().await.unwrap());
}
