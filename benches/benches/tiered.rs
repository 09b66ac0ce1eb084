//! `CachedStateBackend` beside what it competes with.
//!
//! 1. An L1 hit through `Arc<dyn StateBackend>` beside a raw `moka::future::Cache<Bytes,
//!    Bytes>` `get` of the same 1k hot keys (16-byte keys, 64-byte values), 1 and 2 tasks.
//!    Target: 0.7x.
//! 2. A read-heavy workload (95% `get`, 5% `put`, keys drawn from a Zipf(1.0) distribution
//!    over 10k keys) on plain `RedisStateBackend` ("raw" column) and on `CachedStateBackend`
//!    over it with Redis pub/sub invalidation ("ours"), 1 and 8 tasks: the ratio is the
//!    speed-up; the L1 hit rate is printed. Needs `STATE_REDIS_URL` (`cargo xtask bench
//!    tiered` starts Redis).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use state_benches::{Fixture, Ratios, is_bench_mode, keys, pair, runtime, shuffled, worker};
use state_core::StateBackend;
use state_memory::MemoryStateBackend;
use state_redis::{RedisConfig, RedisStateBackend};
use state_tiered::CachedStateBackend;

const HOT: usize = 1_000;
const KEYS: usize = 10_000;

/// The operation number the worker wrote into the value's first 8 bytes.
fn op_index(value: &[u8]) -> u64 {
    u64::from_le_bytes(value[..8].try_into().expect("8 bytes"))
}

fn main() {
    let mut c = state_benches::criterion();
    let rt = runtime();
    let mut ratios = Ratios::default();

    // 1. L1 hit vs raw moka.
    let hot = keys("h", HOT);
    let value = Bytes::from(vec![7u8; 64]);
    let (moka, ours) = rt.block_on(async {
        let moka: moka::future::Cache<Bytes, Bytes> =
            moka::future::Cache::builder().max_capacity(10_000).build();
        let inner = Arc::new(MemoryStateBackend::new(None));
        let cached = CachedStateBackend::new(inner, 10_000, Some(Duration::from_secs(3600)));
        for k in &hot {
            moka.insert(Bytes::copy_from_slice(k), value.clone()).await;
            cached.put(k, &value).await.expect("put");
        }
        let ours: Arc<dyn StateBackend> = Arc::new(cached);
        (moka, ours)
    });
    let fixture = Arc::new(Fixture {
        raw: moka,
        ours,
        keys: hot,
        order: shuffled(HOT),
        value_size: 64,
    });
    let raw_hit = worker!(fixture, |f, key, _v| {
        black_box(f.raw.get(key).await.expect("cached"))
    });
    let ours_hit = worker!(fixture, |f, key, _v| {
        black_box(f.ours.get(key).await.expect("get").expect("cached"))
    });
    for tasks in [1usize, 2] {
        let group = format!("tiered/l1-hit-vs-moka/{tasks}task");
        pair(
            &mut c,
            &mut ratios,
            &rt,
            &group,
            tasks,
            0.7,
            &raw_hit,
            &ours_hit,
        );
    }

    // 2. Read-heavy Zipf workload over Redis.
    let url = std::env::var("STATE_REDIS_URL")
        .expect("STATE_REDIS_URL is not set: run `cargo xtask bench tiered` (it starts Redis)");
    let all = keys("z", KEYS);
    let zipf = Zipf::new(KEYS as f64, 1.0).expect("zipf");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let order: Vec<u32> = (0..100_000)
        .map(|_| (zipf.sample(&mut rng) as u32).saturating_sub(1))
        .collect();
    let (plain, cached) = rt.block_on(async {
        let redis = Arc::new(
            RedisStateBackend::new(
                RedisConfig::builder()
                    .url(&url)
                    .key_prefix("bench-tiered:")
                    .build()
                    .expect("config"),
            )
            .await
            .expect("connect"),
        );
        let entries: Vec<(&[u8], &[u8])> = all.iter().map(|k| (k.as_slice(), &value[..])).collect();
        redis.batch_put(&entries).await.expect("load");
        let cached = CachedStateBackend::builder(redis.clone())
            .max_items(2_000)
            .ttl(Duration::from_secs(60))
            .invalidation(redis.clone())
            .build()
            .await
            .expect("cache");
        let plain: Arc<dyn StateBackend> = redis;
        let cached = Arc::new(cached);
        (plain, cached)
    });
    let cached_dyn: Arc<dyn StateBackend> = cached.clone();
    let fixture = Arc::new(Fixture {
        raw: plain,
        ours: cached_dyn,
        keys: all,
        order,
        value_size: 64,
    });
    let raw_mix = worker!(fixture, |f, key, v| {
        if op_index(v) % 20 == 0 {
            f.raw.put(key, v).await.expect("put");
        } else {
            black_box(f.raw.get(key).await.expect("get"));
        }
    });
    let ours_mix = worker!(fixture, |f, key, v| {
        if op_index(v) % 20 == 0 {
            f.ours.put(key, v).await.expect("put");
        } else {
            black_box(f.ours.get(key).await.expect("get"));
        }
    });
    for tasks in [1usize, 8] {
        let group = format!("tiered/zipf-95read-over-redis/{tasks}task");
        pair(
            &mut c,
            &mut ratios,
            &rt,
            &group,
            tasks,
            1.0,
            &raw_mix,
            &ours_mix,
        );
    }
    if is_bench_mode() {
        let stats = rt.block_on(cached.stats());
        println!(
            "HITRATE tiered/zipf-95read-over-redis: L1 hit rate {:.1}% over {} reads ({} entries cached, 2,000 max)",
            stats.hit_rate() * 100.0,
            stats.gets,
            stats.details["l1_entries"]
        );
        ratios.print_table(
            "tiered: L1 hit vs raw moka, and CachedStateBackend over Redis vs plain Redis (ratio = speed-up)",
        );
    }
    c.final_summary();
}
