//! Leadership under a stalled runtime, against the real Redis `cargo xtask test` starts
//! (`STATE_REDIS_URL`): what the handles report must stay true when no task of their own can
//! run (issue 12 point 10). A stalled lock holder is a case of the shared lock suite
//! (`tests/lock_suite.rs`), run on every lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use state_lock::{LeaderElection, LockOptions, RedisLock};

use common::env;

mod common;
use common::unique;

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn lock(name: &str) -> RedisLock {
    let options = LockOptions::default()
        .retry_interval(Duration::from_millis(20))
        .unwrap();
    RedisLock::new(&env("STATE_REDIS_URL"), name)
        .await
        .unwrap()
        .with_options(options)
}

/// A leader whose runtime stalls past its lease stops answering `is_leader()` at its local
/// deadline (asked from another thread), and is never leader at the same time as the
/// candidate that takes over (sampled every 5 ms).
#[test]
fn stalled_leader_stops_claiming_leadership_in_time() {
    let name = unique("leader-stall");
    let ttl = Duration::from_millis(400);
    let stalled_rt = Arc::new(current_thread());
    let a = {
        let name = name.clone();
        stalled_rt.block_on(async move {
            let election = LeaderElection::start(Arc::new(lock(&name).await), ttl).unwrap();
            election.wait_for_leadership().await.unwrap();
            election
        })
    };
    // A's runtime runs on a thread of its own, which then stalls for 3 TTLs.
    let driver = {
        let rt = Arc::clone(&stalled_rt);
        std::thread::spawn(move || {
            rt.block_on(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::thread::sleep(Duration::from_millis(1200));
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        })
    };
    let b_rt = Arc::new(tokio::runtime::Runtime::new().unwrap());
    let b = {
        let name = name.clone();
        b_rt.block_on(
            async move { LeaderElection::start(Arc::new(lock(&name).await), ttl).unwrap() },
        )
    };
    let started = Instant::now();
    let mut both = 0;
    let mut b_led = false;
    while started.elapsed() < Duration::from_millis(1300) {
        let (a_leads, b_leads) = (a.is_leader(), b.is_leader());
        both += usize::from(a_leads && b_leads);
        b_led |= b_leads;
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(b_led, "the other candidate never led");
    assert_eq!(both, 0, "samples with two leaders");
    driver.join().unwrap();
    b_rt.block_on(async move { b.step_down().await.unwrap() });
    drop(a);
}

/// When the campaign task is gone (its runtime shut down), the handle stops answering
/// `true`.
#[test]
fn election_whose_task_is_gone_is_not_leader() {
    let rt = current_thread();
    let name = unique("leader-gone");
    let election = rt.block_on(async {
        let election =
            LeaderElection::start(Arc::new(lock(&name).await), Duration::from_secs(5)).unwrap();
        election.wait_for_leadership().await.unwrap();
        election
    });
    assert!(election.is_leader());
    rt.shutdown_background();
    assert!(!election.is_leader());
    assert!(!election.leadership().is_leader());
}
