use bytes::Bytes;
use state_core::StateBackend;
use state_memory::MemoryStateBackend;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
fn main() {
    let which = std::env::args().nth(1).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = 100_000usize;
    let keys = state_benches::keys("k", n);
    let order = state_benches::shuffled(n);
    let iters = 5_000_000u64;
    if which == "raw" {
        let raw = dashmap::DashMap::<Bytes, Bytes, foldhash::fast::RandomState>::with_hasher(
            Default::default(),
        );
        for k in &keys {
            raw.insert(
                Bytes::copy_from_slice(k),
                Bytes::copy_from_slice(&[7u8; 64]),
            );
        }
        rt.block_on(async move {
            tokio::spawn(async move {
                for _ in 0..3 {
                    let s = Instant::now();
                    for i in 0..iters {
                        let k = &keys[order[(i as usize) % n] as usize];
                        black_box(raw.get(&k[..]).map(|v| v.value().clone()));
                    }
                    println!("raw {:.0} ns", s.elapsed().as_nanos() as f64 / iters as f64);
                }
            })
            .await
            .unwrap()
        });
    } else {
        let mem = MemoryStateBackend::with_capacity(if which == "ourscap" { n } else { 0 });
        rt.block_on(async {
            for k in &keys {
                mem.put(k, &[7u8; 64]).await.unwrap();
            }
        });
        let ours: Arc<dyn StateBackend> = Arc::new(mem);
        rt.block_on(async move {
            tokio::spawn(async move {
                for _ in 0..3 {
                    let s = Instant::now();
                    for i in 0..iters {
                        let k = &keys[order[(i as usize) % n] as usize];
                        black_box(ours.get(k).await.unwrap());
                    }
                    println!(
                        "{which} {:.0} ns",
                        s.elapsed().as_nanos() as f64 / iters as f64
                    );
                }
            })
            .await
            .unwrap()
        });
    }
}
