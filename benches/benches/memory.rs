//! `MemoryStateBackend` through `Arc<dyn StateBackend>` beside a raw `DashMap<Bytes, Bytes>`
//! doing the same owned-value get and insert (same hasher, foldhash, on both).
//!
//! 16-byte keys; 64 B and 4 KiB values; a 100k-key set visited in random order and a 1k-key
//! hot set; 1 and 2 tasks. Target: ours at least 0.7x raw. Run with `cargo xtask bench memory`.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use state_benches::{Fixture, Ratios, is_bench_mode, keys, pair, runtime, shuffled, worker};
use state_core::StateBackend;
use state_memory::MemoryStateBackend;

type RawMap = DashMap<Bytes, Bytes, foldhash::fast::RandomState>;

fn main() {
    let mut c = state_benches::criterion();
    let rt = runtime();
    let mut ratios = Ratios::default();
    for value_size in [64usize, 4096] {
        for (set, n) in [("100k-random", 100_000usize), ("1k-hot", 1_000)] {
            let raw = RawMap::with_hasher(foldhash::fast::RandomState::default());
            let ours: Arc<dyn StateBackend> = Arc::new(MemoryStateBackend::with_capacity(n));
            let keys = keys("k", n);
            let value = vec![7u8; value_size];
            rt.block_on(async {
                for k in &keys {
                    raw.insert(Bytes::copy_from_slice(k), Bytes::copy_from_slice(&value));
                    ours.put(k, &value).await.expect("put");
                }
            });
            let fixture = Arc::new(Fixture {
                raw,
                ours,
                keys,
                order: shuffled(n),
                value_size,
            });
            let raw_get = worker!(fixture, |f, key, _v| {
                black_box(f.raw.get(key).map(|v| v.value().clone()))
            });
            let ours_get = worker!(fixture, |f, key, _v| {
                black_box(f.ours.get(key).await.expect("get"))
            });
            let raw_put = worker!(fixture, |f, key, v| {
                black_box(
                    f.raw
                        .insert(Bytes::copy_from_slice(key), Bytes::copy_from_slice(v)),
                )
            });
            let ours_put = worker!(fixture, |f, key, v| {
                f.ours.put(key, v).await.expect("put");
            });
            for tasks in [1usize, 2] {
                let g = format!("memory/get/{set}/{value_size}B/{tasks}task");
                pair(
                    &mut c,
                    &mut ratios,
                    &rt,
                    &g,
                    tasks,
                    0.7,
                    &raw_get,
                    &ours_get,
                );
                let g = format!("memory/put/{set}/{value_size}B/{tasks}task");
                pair(
                    &mut c,
                    &mut ratios,
                    &rt,
                    &g,
                    tasks,
                    0.7,
                    &raw_put,
                    &ours_put,
                );
            }
        }
    }
    if is_bench_mode() {
        ratios.print_table("memory: MemoryStateBackend via Arc<dyn StateBackend> vs raw DashMap");
    }
    c.final_summary();
}
