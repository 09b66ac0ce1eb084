//! `PostgresStateBackend` through `Arc<dyn StateBackend>` beside raw prepared tokio-postgres,
//! on the primary that `cargo xtask bench postgres` starts (`STATE_POSTGRES_URL`).
//!
//! Both sides use the same table (created by our migrations: `key bytea PRIMARY KEY, value
//! bytea, expires_at timestamptz`), 16-byte keys and 64-byte values, and 8 connections: raw
//! gives each task its own `tokio_postgres::Client` with statements prepared once; ours is its
//! deadpool pool of 8 (a sequential caller keeps using one connection of it). Sharing clients
//! between tasks would pipeline queries on one connection, which deadpool's exclusive
//! checkout does not do, so it is not the comparison here. (Rotating one sequential caller over 8 connections ran ~25%
//! faster on this 2-core loopback machine, a scheduling effect of client and server sharing
//! the cores; both sides are driven alike here.) Raw statements are what a tokio-postgres user writes for a
//! key/value table (`SELECT value .. WHERE key = $1`, `INSERT .. ON CONFLICT DO UPDATE`,
//! `INSERT .. SELECT FROM UNNEST($1, $2) ON CONFLICT DO UPDATE`); ours also checks expiry and
//! writes `expires_at`. Workloads: point get and upsert with 1 and 8 tasks, and a batch
//! upsert of 10,000 rows. Targets: 0.9x raw, and at least 100k rows/s for the batch.

use std::hint::black_box;
use std::sync::Arc;

use state_benches::{
    Fixture, Ratios, is_bench_mode, keys, median_ns, pair, runtime, shuffled, worker,
};
use state_core::StateBackend;
use state_postgres::{PostgresConfig, PostgresStateBackend};
use tokio_postgres::{Client, NoTls, Statement};

const TABLE: &str = "bench_state";
const KEYS: usize = 10_000;
const BATCH: usize = 10_000;
const CONNECTIONS: usize = 8;

struct Raw {
    clients: Vec<(Client, Statement, Statement, Statement)>,
}

impl Raw {
    /// Task `t`'s own connection, as a tokio-postgres user gives each worker its client.
    fn pick(&self, task: usize) -> &(Client, Statement, Statement, Statement) {
        &self.clients[task % self.clients.len()]
    }
}

async fn connect_raw(url: &str) -> Raw {
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        let get = client
            .prepare(&format!("SELECT value FROM {TABLE} WHERE key = $1"))
            .await
            .expect("prepare get");
        let put = client
            .prepare(&format!(
                "INSERT INTO {TABLE} (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ))
            .await
            .expect("prepare put");
        let batch = client
            .prepare(&format!(
                "INSERT INTO {TABLE} (key, value) SELECT * FROM UNNEST($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ))
            .await
            .expect("prepare batch");
        clients.push((client, get, put, batch));
    }
    Raw { clients }
}

fn main() {
    let url = std::env::var("STATE_POSTGRES_URL").expect(
        "STATE_POSTGRES_URL is not set: run `cargo xtask bench postgres` (it starts PostgreSQL)",
    );
    let mut c = state_benches::criterion();
    let rt = runtime();
    let mut ratios = Ratios::default();
    let (raw, ours, admin) = rt.block_on(async {
        let config = PostgresConfig::builder()
            .url(&url)
            .table(TABLE)
            .pool_size(CONNECTIONS)
            .build()
            .expect("config");
        let backend = PostgresStateBackend::with_config(config)
            .await
            .expect("connect");
        backend.clear().await.expect("clear");
        // Autovacuum waking up in the middle of one side's measurement (after the upsert
        // groups leave dead rows) skewed single runs by up to 25%; vacuum explicitly, untimed,
        // before every pair instead.
        backend
            .pool()
            .get()
            .await
            .expect("connection")
            .batch_execute(&format!(
                "ALTER TABLE {TABLE} SET (autovacuum_enabled = false)"
            ))
            .await
            .expect("disable autovacuum");
        let ours: Arc<dyn StateBackend> = Arc::new(backend.clone());
        (connect_raw(&url).await, ours, backend)
    });
    let settle = || rt.block_on(async { admin.vacuum().await.expect("vacuum") });
    let all_keys = keys("k", KEYS);
    let value = vec![7u8; 64];
    rt.block_on(async {
        let entries: Vec<(&[u8], &[u8])> = all_keys
            .iter()
            .map(|k| (k.as_slice(), value.as_slice()))
            .collect();
        ours.batch_put(&entries).await.expect("load");
    });
    let fixture = Arc::new(Fixture {
        raw,
        ours,
        keys: all_keys,
        order: shuffled(KEYS),
        value_size: 64,
    });
    let raw_get = worker!(fixture, |f, key, _v, task| {
        let (client, get, _, _) = f.raw.pick(task);
        black_box(client.query_opt(get, &[&key]).await.expect("get"))
    });
    let ours_get = worker!(fixture, |f, key, _v| {
        black_box(f.ours.get(key).await.expect("get"))
    });
    let raw_put = worker!(fixture, |f, key, v, task| {
        let (client, _, put, _) = f.raw.pick(task);
        client.execute(put, &[&key, &v]).await.expect("put");
    });
    let ours_put = worker!(fixture, |f, key, v| {
        f.ours.put(key, v).await.expect("put");
    });
    for tasks in [1usize, 8] {
        settle();
        pair(
            &mut c,
            &mut ratios,
            &rt,
            &format!("postgres/get/{tasks}task"),
            tasks,
            0.9,
            &raw_get,
            &ours_get,
        );
        settle();
        pair(
            &mut c,
            &mut ratios,
            &rt,
            &format!("postgres/upsert/{tasks}task"),
            tasks,
            0.9,
            &raw_put,
            &ours_put,
        );
    }
    // One operation below is one batch of 10,000 rows (the whole key set, new values).
    let raw_batch = worker!(fixture, |f, _key, v, task| {
        let (client, _, _, batch) = f.raw.pick(task);
        let ks: Vec<&[u8]> = f.keys.iter().take(BATCH).map(Vec::as_slice).collect();
        let vs: Vec<&[u8]> = vec![v; ks.len()];
        client.execute(batch, &[&ks, &vs]).await.expect("batch");
    });
    let ours_batch = worker!(fixture, |f, _key, v| {
        let entries: Vec<(&[u8], &[u8])> = f
            .keys
            .iter()
            .take(BATCH)
            .map(|k| (k.as_slice(), v))
            .collect();
        f.ours.batch_put(&entries).await.expect("batch_put");
    });
    settle();
    let group = "postgres/batch-upsert-10k/1task";
    pair(
        &mut c,
        &mut ratios,
        &rt,
        group,
        1,
        0.9,
        &raw_batch,
        &ours_batch,
    );
    if is_bench_mode() {
        if let (Some(raw), Some(ours)) = (
            median_ns(&format!("{group}/raw")),
            median_ns(&format!("{group}/ours")),
        ) {
            let rows = |ns: f64| BATCH as f64 * 1e9 / ns;
            println!(
                "ROWS {group}: raw {:.0} rows/s, ours {:.0} rows/s (target >= 100000 rows/s)",
                rows(raw),
                rows(ours)
            );
        }
        ratios.print_table(
            "postgres: PostgresStateBackend via Arc<dyn StateBackend> vs raw prepared tokio-postgres",
        );
    }
    c.final_summary();
}
