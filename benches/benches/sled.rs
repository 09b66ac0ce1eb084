//! `SledStateBackend` through `Arc<dyn StateBackend>` beside a raw `sled::Tree` doing the same
//! get and insert, each on its own database with the same settings.
//!
//! 16-byte keys; 64 B and 4 KiB values (varied every write: sled skips identical writes);
//! a 100k-key set visited in random order and a 1k-key hot set; 1 and 2 tasks. Target: ours
//! at least 0.9x raw. Run with `cargo xtask bench sled`.

use std::hint::black_box;
use std::sync::Arc;

use state_benches::{Fixture, Ratios, is_bench_mode, keys, pair, runtime, shuffled, worker};
use state_core::StateBackend;
use state_sled::SledStateBackend;

const CACHE: u64 = 512 << 20;

fn main() {
    let mut c = state_benches::criterion();
    let rt = runtime();
    let mut ratios = Ratios::default();
    for value_size in [64usize, 4096] {
        for (set, n) in [("100k-random", 100_000usize), ("1k-hot", 1_000)] {
            let raw_dir = tempfile::tempdir().expect("temp dir");
            let ours_dir = tempfile::tempdir().expect("temp dir");
            let raw = sled::Config::new()
                .path(raw_dir.path())
                .cache_capacity(CACHE)
                .open()
                .expect("raw sled")
                .open_tree("state")
                .expect("raw tree");
            let ours: Arc<dyn StateBackend> = Arc::new(
                SledStateBackend::builder(ours_dir.path())
                    .cache_capacity(CACHE)
                    .build()
                    .expect("sled backend"),
            );
            let keys = keys("k", n);
            let value = vec![7u8; value_size];
            rt.block_on(async {
                for chunk in keys.chunks(1000) {
                    let mut batch = sled::Batch::default();
                    let entries: Vec<(&[u8], &[u8])> =
                        chunk.iter().map(|k| (&k[..], &value[..])).collect();
                    for k in chunk {
                        batch.insert(&k[..], &value[..]);
                    }
                    raw.apply_batch(batch).expect("raw batch");
                    ours.batch_put(&entries).await.expect("batch_put");
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
                black_box(f.raw.get(key).expect("get"))
            });
            let ours_get = worker!(fixture, |f, key, _v| {
                black_box(f.ours.get(key).await.expect("get"))
            });
            let raw_put = worker!(fixture, |f, key, v| {
                black_box(f.raw.insert(key, v).expect("insert"))
            });
            let ours_put = worker!(fixture, |f, key, v| {
                f.ours.put(key, v).await.expect("put");
            });
            for tasks in [1usize, 2] {
                let g = format!("sled/get/{set}/{value_size}B/{tasks}task");
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
                let g = format!("sled/put/{set}/{value_size}B/{tasks}task");
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
            drop(fixture);
            drop((raw_dir, ours_dir));
        }
    }
    if is_bench_mode() {
        ratios.print_table("sled: SledStateBackend via Arc<dyn StateBackend> vs raw sled");
    }
    c.final_summary();
}
