//! `RedisStateBackend` through `Arc<dyn StateBackend>` beside a raw fred `Client`, on the
//! standalone server and the Cluster that `cargo xtask bench redis` starts
//! (`STATE_REDIS_URL`, `STATE_REDIS_CLUSTER_URLS`).
//!
//! 16-byte keys, 64-byte values: sequential GET/SET in one spawned task, 50 concurrent tasks,
//! and batches of 100 keys. Raw batches are what a fred user writes: one `MGET`/`MSET` on a
//! standalone server; on a Cluster, keys grouped by hash slot (fred does not split
//! cross-slot commands) and sent as one pipeline. Both sides use one multiplexed connection
//! and the same spawned-task driver. Target: 0.9x.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use fred::prelude::*;
use state_benches::{Fixture, Ratios, is_bench_mode, keys, pair, runtime, shuffled, worker};
use state_core::StateBackend;
use state_redis::{RedisConfig, RedisStateBackend};

const PREFIX: &str = "bench:";
const KEYS: usize = 10_000;

/// The index a generated key encodes (`k000…0123` is 123): where a batch starts.
fn start_of(key: &[u8]) -> usize {
    std::str::from_utf8(&key[1..])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
        % (KEYS - 100)
}

fn full(key: &[u8]) -> Bytes {
    Bytes::from([PREFIX.as_bytes(), key].concat())
}

/// Raw fred: `MGET` of `keys`, split per hash slot in one pipeline on a Cluster.
async fn raw_mget(client: &Client, cluster: bool, keys: Vec<Bytes>) -> Vec<Option<Bytes>> {
    if !cluster {
        return client.mget(keys).await.expect("mget");
    }
    let groups =
        fred::util::group_by_hash_slot(keys.iter().cloned().map(Key::from)).expect("slots");
    let pipe = client.pipeline();
    for group in groups.values() {
        let () = pipe.mget(group.clone()).await.expect("queue mget");
    }
    let answers: Vec<Vec<Option<Bytes>>> = pipe.all().await.expect("mget pipeline");
    answers.into_iter().flatten().collect()
}

/// Raw fred: `MSET`, split per hash slot in one pipeline on a Cluster.
async fn raw_mset(client: &Client, cluster: bool, pairs: Vec<(Bytes, Bytes)>) {
    if !cluster {
        let () = client.mset(pairs).await.expect("mset");
        return;
    }
    let mut by_slot: std::collections::BTreeMap<u16, Vec<(Bytes, Bytes)>> =
        std::collections::BTreeMap::default();
    for (k, v) in pairs {
        by_slot
            .entry(fred::util::redis_keyslot(&k))
            .or_default()
            .push((k, v));
    }
    let pipe = client.pipeline();
    for group in by_slot.into_values() {
        let () = pipe.mset(group).await.expect("queue mset");
    }
    let _: Vec<Value> = pipe.all().await.expect("mset pipeline");
}

struct Raw {
    client: Client,
    cluster: bool,
}

fn bench_target(
    c: &mut criterion::Criterion,
    ratios: &mut Ratios,
    rt: &tokio::runtime::Runtime,
    label: &str,
    raw_config: Config,
    ours_config: RedisConfig,
) {
    let cluster = matches!(raw_config.server, ServerConfig::Clustered { .. });
    let (client, ours) = rt.block_on(async {
        let client = Builder::from_config(raw_config).build().expect("client");
        client.init().await.expect("connect raw fred");
        let ours: Arc<dyn StateBackend> =
            Arc::new(RedisStateBackend::new(ours_config).await.expect("connect"));
        (client, ours)
    });
    let value = Bytes::from(vec![7u8; 64]);
    rt.block_on(async {
        for chunk in keys("k", KEYS).chunks(500) {
            let pairs = chunk.iter().map(|k| (full(k), value.clone())).collect();
            raw_mset(&client, cluster, pairs).await;
        }
    });
    let fixture = Arc::new(Fixture {
        raw: Raw { client, cluster },
        ours,
        keys: keys("k", KEYS),
        order: shuffled(KEYS),
        value_size: 64,
    });
    let raw_get = worker!(fixture, |f, key, _v| {
        let v: Option<Bytes> = f.raw.client.get(full(key)).await.expect("get");
        black_box(v)
    });
    let ours_get = worker!(fixture, |f, key, _v| {
        black_box(f.ours.get(key).await.expect("get"))
    });
    let raw_put = worker!(fixture, |f, key, v| {
        let () = f
            .raw
            .client
            .set(full(key), Bytes::copy_from_slice(v), None, None, false)
            .await
            .expect("set");
    });
    let ours_put = worker!(fixture, |f, key, v| {
        f.ours.put(key, v).await.expect("put");
    });
    for tasks in [1usize, 50] {
        let g = format!("{label}/get/{tasks}task");
        pair(c, ratios, rt, &g, tasks, 0.9, &raw_get, &ours_get);
        let g = format!("{label}/put/{tasks}task");
        pair(c, ratios, rt, &g, tasks, 0.9, &raw_put, &ours_put);
    }
    // Batches of 100: one operation below is one whole batch.
    let raw_batch_get = worker!(fixture, |f, key, _v| {
        let start = start_of(key);
        let ks: Vec<Bytes> = f.keys[start..start + 100].iter().map(|k| full(k)).collect();
        black_box(raw_mget(&f.raw.client, f.raw.cluster, ks).await)
    });
    let ours_batch_get = worker!(fixture, |f, key, _v| {
        let start = start_of(key);
        let ks: Vec<&[u8]> = f.keys[start..start + 100]
            .iter()
            .map(Vec::as_slice)
            .collect();
        black_box(f.ours.batch_get(&ks).await.expect("batch_get"))
    });
    let raw_batch_put = worker!(fixture, |f, key, v| {
        let start = start_of(key);
        let pairs = f.keys[start..start + 100]
            .iter()
            .map(|k| (full(k), Bytes::copy_from_slice(v)))
            .collect();
        raw_mset(&f.raw.client, f.raw.cluster, pairs).await;
    });
    let ours_batch_put = worker!(fixture, |f, key, v| {
        let start = start_of(key);
        let entries: Vec<(&[u8], &[u8])> = f.keys[start..start + 100]
            .iter()
            .map(|k| (k.as_slice(), v))
            .collect();
        f.ours.batch_put(&entries).await.expect("batch_put");
    });
    let g = format!("{label}/batch-get-100/1task");
    pair(c, ratios, rt, &g, 1, 0.9, &raw_batch_get, &ours_batch_get);
    let g = format!("{label}/batch-put-100/1task");
    pair(c, ratios, rt, &g, 1, 0.9, &raw_batch_put, &ours_batch_put);
}

fn main() {
    let url = std::env::var("STATE_REDIS_URL")
        .expect("STATE_REDIS_URL is not set: run `cargo xtask bench redis` (it starts Redis)");
    let mut c = state_benches::criterion();
    let rt = runtime();
    let mut ratios = Ratios::default();
    let ours = RedisConfig::builder()
        .url(&url)
        .key_prefix(PREFIX)
        .build()
        .expect("config");
    bench_target(
        &mut c,
        &mut ratios,
        &rt,
        "redis",
        Config::from_url(&url).expect("url"),
        ours,
    );
    if let Ok(urls) = std::env::var("STATE_REDIS_CLUSTER_URLS") {
        let nodes: Vec<&str> = urls.split(',').collect();
        let hosts = nodes
            .iter()
            .map(|u| {
                let addr = u.trim_start_matches("redis://");
                let (host, port) = addr.rsplit_once(':').expect("host:port");
                (host.to_owned(), port.parse::<u16>().expect("port"))
            })
            .collect();
        let raw = Config {
            server: ServerConfig::new_clustered(hosts),
            ..Config::default()
        };
        let ours = RedisConfig::builder()
            .cluster_nodes(nodes)
            .key_prefix(PREFIX)
            .build()
            .expect("config");
        bench_target(&mut c, &mut ratios, &rt, "redis-cluster", raw, ours);
    }
    if is_bench_mode() {
        ratios.print_table("redis: RedisStateBackend via Arc<dyn StateBackend> vs raw fred Client");
    }
    c.final_summary();
}
