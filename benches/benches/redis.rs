//! `RedisStateBackend` through `Arc<dyn StateBackend>` beside a raw fred `Client` on the
//! standalone server `cargo xtask bench redis` starts (`STATE_REDIS_URL`).
//!
//! 16-byte keys, 64-byte values: sequential GET/SET in one spawned task, 50 concurrent tasks,
//! and batches of 100 keys (`MGET`/`MSET` raw vs `batch_get`/`batch_put`). Both sides use one
//! multiplexed connection and are driven by the same spawned-task driver. Target: 0.9x.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use fred::prelude::*;
use state_benches::{Fixture, Ratios, is_bench_mode, keys, pair, runtime, shuffled, worker};
use state_core::StateBackend;
use state_redis::{RedisConfig, RedisStateBackend};

const PREFIX: &str = "bench:";

/// The index a generated key encodes (`k000…0123` is 123): where a batch starts.
fn start_of(key: &[u8]) -> usize {
    std::str::from_utf8(&key[1..])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let url = std::env::var("STATE_REDIS_URL")
        .expect("STATE_REDIS_URL is not set: run `cargo xtask bench redis` (it starts Redis)");
    let mut c = state_benches::criterion();
    let rt = runtime();
    let mut ratios = Ratios::default();
    let (raw, ours) = rt.block_on(async {
        let raw = Builder::from_config(Config::from_url(&url).expect("url"))
            .build()
            .expect("client");
        raw.init().await.expect("connect raw fred");
        let config = RedisConfig::builder()
            .url(&url)
            .key_prefix(PREFIX)
            .build()
            .expect("config");
        let ours: Arc<dyn StateBackend> =
            Arc::new(RedisStateBackend::new(config).await.expect("connect"));
        (raw, ours)
    });
    let n = 10_000;
    // Raw fred reads and writes the same prefixed keys our backend uses.
    let raw_keys: Vec<Vec<u8>> = keys("k", n)
        .into_iter()
        .map(|k| [PREFIX.as_bytes(), &k].concat())
        .collect();
    let value = Bytes::from(vec![7u8; 64]);
    rt.block_on(async {
        for chunk in raw_keys.chunks(500) {
            let pairs: Vec<(Bytes, Bytes)> = chunk
                .iter()
                .map(|k| (Bytes::copy_from_slice(k), value.clone()))
                .collect();
            let () = raw.mset(pairs).await.expect("mset");
        }
    });
    let fixture = Arc::new(Fixture {
        raw,
        ours,
        keys: keys("k", n),
        order: shuffled(n),
        value_size: 64,
    });
    let full = |k: &[u8]| Bytes::from([PREFIX.as_bytes(), k].concat());
    let raw_get = worker!(fixture, |f, key, _v| {
        let v: Option<Bytes> = f.raw.get(full(key)).await.expect("get");
        black_box(v)
    });
    let ours_get = worker!(fixture, |f, key, _v| {
        black_box(f.ours.get(key).await.expect("get"))
    });
    let raw_put = worker!(fixture, |f, key, v| {
        let () = f
            .raw
            .set(full(key), Bytes::copy_from_slice(v), None, None, false)
            .await
            .expect("set");
    });
    let ours_put = worker!(fixture, |f, key, v| {
        f.ours.put(key, v).await.expect("put");
    });
    for tasks in [1usize, 50] {
        let g = format!("redis/get/{tasks}task");
        pair(
            &mut c,
            &mut ratios,
            &rt,
            &g,
            tasks,
            0.9,
            &raw_get,
            &ours_get,
        );
        let g = format!("redis/put/{tasks}task");
        pair(
            &mut c,
            &mut ratios,
            &rt,
            &g,
            tasks,
            0.9,
            &raw_put,
            &ours_put,
        );
    }
    // Batches of 100: one operation below is one whole batch.
    let raw_mget = worker!(fixture, |f, key, _v| {
        let start = start_of(key) % (f.keys.len() - 100);
        let ks: Vec<Bytes> = f.keys[start..start + 100].iter().map(|k| full(k)).collect();
        let v: Vec<Option<Bytes>> = f.raw.mget(ks).await.expect("mget");
        black_box(v)
    });
    let ours_mget = worker!(fixture, |f, key, _v| {
        let start = start_of(key) % (f.keys.len() - 100);
        let ks: Vec<&[u8]> = f.keys[start..start + 100]
            .iter()
            .map(Vec::as_slice)
            .collect();
        black_box(f.ours.batch_get(&ks).await.expect("batch_get"))
    });
    let raw_mset = worker!(fixture, |f, key, v| {
        let start = start_of(key) % (f.keys.len() - 100);
        let pairs: Vec<(Bytes, Bytes)> = f.keys[start..start + 100]
            .iter()
            .map(|k| (full(k), Bytes::copy_from_slice(v)))
            .collect();
        let () = f.raw.mset(pairs).await.expect("mset");
    });
    let ours_mset = worker!(fixture, |f, key, v| {
        let start = start_of(key) % (f.keys.len() - 100);
        let entries: Vec<(&[u8], &[u8])> = f.keys[start..start + 100]
            .iter()
            .map(|k| (k.as_slice(), v))
            .collect();
        f.ours.batch_put(&entries).await.expect("batch_put");
    });
    pair(
        &mut c,
        &mut ratios,
        &rt,
        "redis/mget-100/1task",
        1,
        0.9,
        &raw_mget,
        &ours_mget,
    );
    pair(
        &mut c,
        &mut ratios,
        &rt,
        "redis/mset-100/1task",
        1,
        0.9,
        &raw_mset,
        &ours_mset,
    );
    if is_bench_mode() {
        ratios.print_table("redis: RedisStateBackend via Arc<dyn StateBackend> vs raw fred Client");
    }
    c.final_summary();
}
