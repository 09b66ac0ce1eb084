//! `state-lock` on Redis and PostgreSQL, on the servers `cargo xtask bench lock` starts
//! (`STATE_REDIS_URL`, `STATE_POSTGRES_URL`).
//!
//! One operation is one acquire + release pair.
//!
//! - Uncontended (1 task): `RedisLock` beside the honest raw baseline, a fred `SET NX PX`
//!   plus an owner-checked Lua `DEL` (a careful hand-written lock, without fencing counter,
//!   renewal task or guard); `PostgresLock` (lease table) and `PostgresAdvisoryLock` beside a
//!   raw `pg_try_advisory_lock` + `pg_advisory_unlock` pair on one pooled connection. In bench
//!   mode the table shows p50/p99 latency of each.
//! - Contended (8 tasks on one lock, polling every 1 ms): throughput of handovers.
//!
//! The design sets no ratio target for locks (a lock with fencing tokens, renewal and a
//! durable lease does more than the raw pair), so the table's target column is 0: the ratio
//! is the price of those guarantees.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use state_benches::{Fixture, Ratios, is_bench_mode, pair, runtime, worker};
use state_core::StateBackend;
use state_lock::{DistributedLock, LockOptions, PostgresAdvisoryLock, PostgresLock, RedisLock};
use state_memory::MemoryStateBackend;
use state_postgres::PostgresStateBackend;
use state_redis::{RedisConfig, RedisStateBackend};

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";
const TTL: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(1);

/// The raw side and our lock, shared by a pair's tasks.
struct Side {
    redis: Option<(Client, Script, String)>,
    pg: Option<(state_postgres::deadpool_postgres::Pool, String)>,
    lock: Arc<dyn DistributedLock>,
}

fn fixture(side: Side) -> Arc<Fixture<Side>> {
    // The harness wants a key set and a backend; a lock bench uses neither.
    let ours: Arc<dyn StateBackend> = Arc::new(MemoryStateBackend::new(None));
    Arc::new(Fixture {
        raw: side,
        ours,
        keys: vec![b"lock".to_vec()],
        order: vec![0],
        value_size: 8,
    })
}

fn options() -> LockOptions {
    LockOptions::default()
        .retry_interval(POLL)
        .expect("options")
}

async fn raw_redis_cycle(client: &Client, release: &Script, key: &str, owner: &str) {
    loop {
        let ok: Option<String> = client
            .set(
                key,
                owner,
                Some(Expiration::PX(10_000)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .expect("SET NX PX");
        if ok.is_some() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let n: i64 = release
        .evalsha_with_reload(client, vec![key], vec![owner])
        .await
        .expect("release");
    assert_eq!(n, 1, "raw lock released by its owner");
}

async fn raw_pg_cycle(pool: &state_postgres::deadpool_postgres::Pool, name: &str) {
    let client = pool.get().await.expect("pooled connection");
    loop {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock(1, hashtext($1))", &[&name])
            .await
            .expect("try lock")
            .get(0);
        if got {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let released: bool = client
        .query_one("SELECT pg_advisory_unlock(1, hashtext($1))", &[&name])
        .await
        .expect("unlock")
        .get(0);
    assert!(released);
}

fn bench_redis(c: &mut criterion::Criterion, ratios: &mut Ratios, rt: &tokio::runtime::Runtime) {
    let url = std::env::var("STATE_REDIS_URL")
        .expect("STATE_REDIS_URL is not set: run `cargo xtask bench lock` (it starts Redis)");
    let (client, backend) = rt.block_on(async {
        let client = Builder::from_config(Config::from_url(&url).expect("url"))
            .build()
            .expect("client");
        client.init().await.expect("connect raw fred");
        let backend =
            RedisStateBackend::new(RedisConfig::builder().url(&url).build().expect("config"))
                .await
                .expect("connect");
        (client, backend)
    });
    for tasks in [1usize, 8] {
        let name = format!("bench-{}-{tasks}", std::process::id());
        let lock = RedisLock::from_backend(&backend, &name)
            .expect("lock")
            .with_options(options());
        let f = fixture(Side {
            redis: Some((
                client.clone(),
                Script::from_lua(RELEASE),
                format!("raw-lock:{name}"),
            )),
            pg: None,
            lock: Arc::new(lock),
        });
        let raw = worker!(f, |f, _k, _v| {
            let (client, release, key) = f.raw.redis.as_ref().expect("redis side");
            let owner = state_lock::new_owner_token();
            raw_redis_cycle(client, release, key, &owner).await;
        });
        let ours = worker!(f, |f, _k, _v| {
            let guard = f.raw.lock.acquire(TTL).await.expect("acquire");
            assert!(guard.release().await.expect("release"));
        });
        let group = format!("lock/redis/acquire-release/{tasks}task");
        pair(c, ratios, rt, &group, tasks, 0.0, &raw, &ours);
    }
}

fn bench_postgres(c: &mut criterion::Criterion, ratios: &mut Ratios, rt: &tokio::runtime::Runtime) {
    let url = std::env::var("STATE_POSTGRES_URL").expect(
        "STATE_POSTGRES_URL is not set: run `cargo xtask bench lock` (it starts PostgreSQL)",
    );
    let backend = rt.block_on(async {
        PostgresStateBackend::new(&url, "bench_lock")
            .await
            .expect("connect")
    });
    for tasks in [1usize, 8] {
        for advisory in [false, true] {
            let name = format!("bench-{}-{tasks}-{advisory}", std::process::id());
            let lock: Arc<dyn DistributedLock> = rt.block_on(async {
                if advisory {
                    Arc::new(
                        PostgresAdvisoryLock::from_backend(&backend, &name)
                            .await
                            .expect("lock")
                            .with_options(options()),
                    ) as Arc<dyn DistributedLock>
                } else {
                    Arc::new(
                        PostgresLock::from_backend(&backend, &name)
                            .await
                            .expect("lock")
                            .with_options(options()),
                    )
                }
            });
            let f = fixture(Side {
                redis: None,
                pg: Some((backend.pool().clone(), format!("raw-{name}"))),
                lock,
            });
            let raw = worker!(f, |f, _k, _v| {
                let (pool, name) = f.raw.pg.as_ref().expect("pg side");
                raw_pg_cycle(pool, name).await;
            });
            let ours = worker!(f, |f, _k, _v| {
                let guard = f.raw.lock.acquire(TTL).await.expect("acquire");
                assert!(guard.release().await.expect("release"));
            });
            let kind = if advisory { "advisory" } else { "lease" };
            let group = format!("lock/postgres-{kind}/acquire-release/{tasks}task");
            pair(c, ratios, rt, &group, tasks, 0.0, &raw, &ours);
        }
    }
}

fn main() {
    let mut c = state_benches::criterion();
    let rt = runtime();
    let mut ratios = Ratios::default();
    bench_redis(&mut c, &mut ratios, &rt);
    bench_postgres(&mut c, &mut ratios, &rt);
    if is_bench_mode() {
        ratios.print_table(
            "lock: acquire + release (ours: state-lock guard with fencing token; raw: SET NX PX + Lua DEL / pg_try_advisory_lock + unlock)",
        );
    }
    c.final_summary();
}
