//! `state-layers` wrappers beside the backend they wrap.
//!
//! 1. Overhead over memory: `MemoryStateBackend` through `Arc<dyn StateBackend>` ("raw")
//!    beside each layer over a memory backend ("ours"), `get` and `put` of 1k hot 16-byte keys
//!    with 64-byte values, one task. Printed as nanoseconds added per operation
//!    (`1e9/ours - 1e9/raw`); target under 100 ns for `Namespaced`, `Instrumented` (no
//!    subscriber, no recorder) and `Retry` on the success path.
//! 2. Sharded Redis throughput: `get` and `put` of 10k keys from 32 tasks on one Redis server
//!    ("raw": a plain `RedisStateBackend`) beside `Sharded` over 1, 2 and 3 standalone servers
//!    (`STATE_REDIS_SHARD_URLS`; `cargo xtask bench layers` starts them). The ratio is the
//!    scaling factor. All servers share this machine's cores, so the figure is a floor of
//!    what separate hosts give.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use state_benches::{
    Fixture, Ratios, is_bench_mode, keys, median_ns, pair, runtime, shuffled, worker,
};
use state_core::StateBackend;
use state_layers::{Instrumented, Namespaced, Retry, Sharded, Timeout};
use state_memory::MemoryStateBackend;
use state_redis::{RedisConfig, RedisStateBackend};

const HOT: usize = 1_000;
const REDIS_KEYS: usize = 10_000;

fn memory() -> Arc<dyn StateBackend> {
    Arc::new(MemoryStateBackend::with_capacity(HOT))
}

type Wrap = fn(Arc<dyn StateBackend>) -> Arc<dyn StateBackend>;

fn layers() -> Vec<(&'static str, Wrap)> {
    vec![
        ("namespaced", |m| {
            Arc::new(Namespaced::new(m, "tenant:").expect("a valid namespace"))
        }),
        ("instrumented", |m| Arc::new(Instrumented::new(m, "bench"))),
        ("retry", |m| Arc::new(Retry::new(m))),
        ("timeout", |m| {
            Arc::new(Timeout::new(m, Duration::from_secs(1)))
        }),
        ("sharded-3", |_| {
            Arc::new(Sharded::new(vec![memory(), memory(), memory()]).expect("shards"))
        }),
        ("stack", |m| {
            let timed = Arc::new(Timeout::new(m, Duration::from_secs(1)));
            let retried = Arc::new(Retry::new(timed));
            Arc::new(Instrumented::new(retried, "bench"))
        }),
    ]
}

async fn redis(url: &str) -> Arc<dyn StateBackend> {
    let config = RedisConfig::builder()
        .url(url)
        .key_prefix("bench-layers:")
        .build()
        .expect("redis config");
    Arc::new(RedisStateBackend::new(config).await.expect("redis"))
}

fn main() {
    let mut c = state_benches::criterion();
    let rt = runtime();
    let mut ratios = Ratios::default();
    let mut overheads = Vec::new();

    for (name, wrap) in layers() {
        let hot = keys("h", HOT);
        let raw = memory();
        let ours = wrap(memory());
        rt.block_on(async {
            for k in &hot {
                raw.put(k, &[7u8; 64]).await.expect("put");
                ours.put(k, &[7u8; 64]).await.expect("put");
            }
        });
        let fixture = Arc::new(Fixture {
            raw,
            ours,
            keys: hot,
            order: shuffled(HOT),
            value_size: 64,
        });
        let raw_get = worker!(fixture, |f, key, _v| {
            black_box(f.raw.get(key).await.expect("get"))
        });
        let ours_get = worker!(fixture, |f, key, _v| {
            black_box(f.ours.get(key).await.expect("get"))
        });
        let raw_put = worker!(fixture, |f, key, v| {
            f.raw.put(key, v).await.expect("put");
        });
        let ours_put = worker!(fixture, |f, key, v| {
            f.ours.put(key, v).await.expect("put");
        });
        for op in ["get", "put"] {
            let g = format!("layers/{name}/{op}/1k-hot/64B/1task");
            if op == "get" {
                pair(&mut c, &mut ratios, &rt, &g, 1, 0.5, &raw_get, &ours_get);
            } else {
                pair(&mut c, &mut ratios, &rt, &g, 1, 0.5, &raw_put, &ours_put);
            }
            if let (Some(raw), Some(ours)) = (
                median_ns(&format!("{g}/raw")),
                median_ns(&format!("{g}/ours")),
            ) {
                overheads.push((format!("{name} {op}"), raw, ours));
            }
        }
    }

    // Sharded Redis scaling. In criterion's test mode (`cargo xtask test`) each routine runs
    // once, so the setup stays small there.
    let urls: Vec<String> = std::env::var("STATE_REDIS_SHARD_URLS")
        .expect("STATE_REDIS_SHARD_URLS is not set: run `cargo xtask bench layers`")
        .split(',')
        .map(str::to_owned)
        .collect();
    let n_keys = if is_bench_mode() { REDIS_KEYS } else { 100 };
    let tasks = 32;
    let servers: Vec<Arc<dyn StateBackend>> =
        rt.block_on(async { futures_join(urls.iter().map(|u| redis(u))).await });
    for shard_count in 1..=servers.len().min(3) {
        let raw = servers[0].clone();
        let ours: Arc<dyn StateBackend> =
            Arc::new(Sharded::new(servers[..shard_count].to_vec()).expect("shards"));
        let ks = keys("r", n_keys);
        rt.block_on(async {
            for chunk in ks.chunks(500) {
                let entries: Vec<(&[u8], &[u8])> = chunk
                    .iter()
                    .map(|k| (k.as_slice(), &[7u8; 64][..]))
                    .collect();
                raw.batch_put(&entries).await.expect("batch_put");
                ours.batch_put(&entries).await.expect("batch_put");
            }
        });
        let fixture = Arc::new(Fixture {
            raw,
            ours,
            keys: ks,
            order: shuffled(n_keys),
            value_size: 64,
        });
        let raw_get = worker!(fixture, |f, key, _v| {
            black_box(f.raw.get(key).await.expect("get"))
        });
        let ours_get = worker!(fixture, |f, key, _v| {
            black_box(f.ours.get(key).await.expect("get"))
        });
        let raw_put = worker!(fixture, |f, key, v| {
            f.raw.put(key, v).await.expect("put");
        });
        let ours_put = worker!(fixture, |f, key, v| {
            f.ours.put(key, v).await.expect("put");
        });
        let target = if shard_count == 1 { 0.9 } else { 1.0 };
        let g = format!("layers/sharded-redis/get/{shard_count}shard/{tasks}tasks");
        pair(
            &mut c,
            &mut ratios,
            &rt,
            &g,
            tasks,
            target,
            &raw_get,
            &ours_get,
        );
        let g = format!("layers/sharded-redis/put/{shard_count}shard/{tasks}tasks");
        pair(
            &mut c,
            &mut ratios,
            &rt,
            &g,
            tasks,
            target,
            &raw_put,
            &ours_put,
        );
    }

    if is_bench_mode() {
        println!("\n### state-layers: overhead per operation over memory (1 task)\n");
        println!("| layer / op | raw ns/op | ours ns/op | overhead ns/op | target |");
        println!("|---|---:|---:|---:|---|");
        for (name, raw, ours) in &overheads {
            let target = if name.starts_with("namespaced")
                || name.starts_with("instrumented")
                || name.starts_with("retry")
            {
                if ours - raw < 100.0 {
                    "< 100 ns: ok"
                } else {
                    "< 100 ns: ABOVE"
                }
            } else {
                "-"
            };
            println!(
                "| {name} | {raw:.1} | {ours:.1} | {:.1} | {target} |",
                ours - raw
            );
        }
        ratios.print_table("state-layers: wrappers vs the backend they wrap");
    }
    c.final_summary();
}

async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}
