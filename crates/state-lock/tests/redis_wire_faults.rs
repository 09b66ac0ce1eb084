//! RedisLock's lease calls and fenced writes with their reply lost (issue 11): a proxy in front
//! of `STATE_REDIS_URL` forwards the call, swallows the reply and resets the connection. Each
//! call answers the truth or `OutcomeUnknown`, checked against the owner key read on a direct
//! connection. Before the fix fred re-sent the script: a re-sent acquire answered "held by
//! someone else" for the caller's own lease, a re-sent release answered `false`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{env, unique};
use fred::prelude::KeysInterface;
use state_core::{ErrorKind, StateBackend, StateResult};
use state_lock::{DistributedLock, Fence, FencedWrite, FencingToken, RedisLock};
use state_redis::{RedisConfig, RedisStateBackend};
use state_test_servers::proxy::{FaultProxy, ProxyFault};

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .expect("redis://host:port with an IP host")
}

/// An applied call answers the truth (`ok` says whether the answer is it) or
/// `OutcomeUnknown`; returns whether it was unknown.
fn truth_or_unknown<T: std::fmt::Debug>(
    op: &str,
    answer: &StateResult<T>,
    ok: impl Fn(&T) -> bool,
) -> bool {
    match answer {
        Ok(value) => {
            assert!(ok(value), "{op}: a wrong definite answer {value:?}");
            false
        }
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{op}: {err:?}");
            true
        }
    }
}

async fn recovered(backend: &RedisStateBackend) {
    let until = Instant::now() + Duration::from_secs(10);
    while backend.get(b"probe").await.is_err() {
        assert!(Instant::now() < until, "no reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_calls_and_fenced_writes_with_lost_replies() {
    let url = env("STATE_REDIS_URL");
    let proxy = FaultProxy::start(addr_of(&url)).await.unwrap();
    let prefix = unique("wirelock");
    let config = |url: String| {
        RedisConfig::builder()
            .url(url)
            .key_prefix(prefix.as_str())
            .command_timeout(Duration::from_secs(3))
            .max_retries(3)
            .build()
            .unwrap()
    };
    let proxied = RedisStateBackend::new(config(format!("redis://127.0.0.1:{}", proxy.port())))
        .await
        .unwrap();
    let direct = RedisStateBackend::new(config(url.clone())).await.unwrap();
    let lock = RedisLock::from_backend(&proxied, &unique("lock")).unwrap();
    let owner_key = lock.owner_key().to_owned();
    let owner = || async {
        let v: Option<String> = direct.pool().next().get(&owner_key).await.unwrap();
        v
    };
    let ttl = Duration::from_secs(30);
    let mut unknown = 0;

    // Acquire: the script ran, so the lock is taken; the answer must not be "not acquired".
    let warm = lock.try_lease(ttl).await.unwrap().expect("free");
    assert!(lock.release_lease(&warm).await.unwrap());
    recovered(&proxied).await;
    proxy.set_fault(ProxyFault::ReplyLostThenReset);
    let acquired = lock.try_lease(ttl).await;
    assert_eq!(proxy.faults_fired(), 1);
    unknown += usize::from(truth_or_unknown("acquire", &acquired, Option::is_some));
    if let Ok(Some(lease)) = &acquired {
        assert_eq!(owner().await.as_deref(), Some(lease.owner()));
        assert!(lock.release_lease(lease).await.unwrap());
    } else {
        // Unknown: the attempt releases the lease it may hold in the background.
        let until = Instant::now() + Duration::from_secs(5);
        while owner().await.is_some() {
            assert!(
                Instant::now() < until,
                "an unknown acquisition was not released"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Renew: the script extended our lease.
    recovered(&proxied).await;
    let lease = lock.try_lease(ttl).await.unwrap().expect("free");
    proxy.set_fault(ProxyFault::ReplyLostThenReset);
    let renewed = lock.renew_lease(&lease, ttl).await;
    assert_eq!(proxy.faults_fired(), 2);
    unknown += usize::from(truth_or_unknown("renew", &renewed, |r| *r));
    assert_eq!(owner().await.as_deref(), Some(lease.owner()));

    // Release: the script deleted our lease; `false` would say it was not ours.
    recovered(&proxied).await;
    proxy.set_fault(ProxyFault::ReplyLostThenReset);
    let released = lock.release_lease(&lease).await;
    assert_eq!(proxy.faults_fired(), 3);
    unknown += usize::from(truth_or_unknown("release", &released, |r| *r));
    assert_eq!(owner().await, None);

    // A fenced write: applied.
    recovered(&proxied).await;
    let fence = Fence::new(lock.name(), FencingToken::new(7));
    assert!(proxied.put_fenced(b"warm", b"x", &fence).await.unwrap());
    proxy.set_fault(ProxyFault::ReplyLostThenReset);
    let written = proxied.put_fenced(b"data", b"v7", &fence).await;
    assert_eq!(proxy.faults_fired(), 4);
    unknown += usize::from(truth_or_unknown("put_fenced", &written, |w| *w));
    assert_eq!(
        direct.get(b"data").await.unwrap().as_deref(),
        Some(&b"v7"[..])
    );

    // Acquire and release cannot recover their answer (renew and the fenced write could be
    // re-sent harmlessly, but are written once too).
    assert_eq!(unknown, 4, "{unknown} outcomes unknown");
    direct.clear().await.unwrap();
}
