//! Crash test: a child process writes sequential keys and is killed with SIGKILL at a random
//! moment; after reopening, every write it acknowledged must be there.
//!
//! The test binary re-executes itself as the child (`STATE_SLED_CRASH_CHILD_DIR` set): it
//! opens the database, writes `k00000000`, `k00000001`, ... one `put` at a time and prints
//! `<index> <microseconds since start>` after each acknowledged `put`, flushing stdout. The
//! parent reads those acknowledgements, kills the child, reopens the database and checks them.
//!
//! - 20 runs with `sync_writes(true)`, each killed 50-300 ms after its first acknowledgement:
//!   no acknowledged write may be missing.
//! - 6 runs with the default settings (`sync_writes(false)`, background flush every 500 ms),
//!   killed 0.6-1.2 s in: the acknowledged writes lost are measured (count and milliseconds of
//!   writes); they must be the newest writes (sled recovers a prefix) and span no more than the
//!   flush interval. SIGKILL kills the process, not the machine: data sled handed to the kernel
//!   survives, so this measures what sled still held in its own buffers.
//!
//! `harness = false`: this file is its own `main`; it runs as one test named
//! `sigkill_at_random_moments_loses_no_acknowledged_write` and honours a name filter.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use state_core::StateBackend;
use state_sled::{SledConfig, SledStateBackend};

const TEST_NAME: &str = "sigkill_at_random_moments_loses_no_acknowledged_write";
const CHILD_DIR: &str = "STATE_SLED_CRASH_CHILD_DIR";
const CHILD_SYNC: &str = "STATE_SLED_CRASH_CHILD_SYNC";
const SEED: &str = "STATE_SLED_CRASH_SEED";
const SYNC_RUNS: usize = 20;
const DEFAULT_FLUSH_RUNS: usize = 6;
const DEFAULT_FLUSH: Duration = Duration::from_millis(500);

fn key(i: u64) -> String {
    format!("k{i:08}")
}

fn value(i: u64) -> String {
    format!("value-{i}")
}

/// The child: writes until killed, acknowledging each write on stdout.
fn child(dir: &str, sync: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let backend = SledConfig::new(dir)
            .sync_writes(sync)
            .build()
            .expect("open sled in the child");
        let started = Instant::now();
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for i in 0u64.. {
            backend
                .put(key(i).as_bytes(), value(i).as_bytes())
                .await
                .expect("put");
            writeln!(out, "{i} {}", started.elapsed().as_micros()).expect("stdout");
            out.flush().expect("stdout");
        }
    });
}

struct Rng(u64);

impl Rng {
    fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low + 1)
    }
}

/// What one run saw.
struct Run {
    acked: usize,
    lost: usize,
    /// Milliseconds of acknowledged writes lost: from the first lost write's acknowledgement
    /// to the last acknowledgement.
    lost_ms: f64,
    /// Whether the lost writes were exactly the last ones acknowledged (a lost suffix).
    suffix: bool,
    writes_per_s: f64,
}

fn reopen(path: &Path) -> SledStateBackend {
    for _ in 0..100 {
        if let Ok(b) = SledStateBackend::new(path) {
            return b;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    SledStateBackend::new(path).expect("reopen sled after the crash")
}

/// Starts a child, kills it `kill_after` after its first acknowledgement, and checks the
/// reopened database against the acknowledgements.
fn crash_once(sync: bool, kill_after: Duration) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env(CHILD_DIR, dir.path())
        .env(CHILD_SYNC, if sync { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("child stdout");
    let (first_tx, first_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acks: Vec<(u64, u64)> = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // A line cut by the kill is not an acknowledgement the parent can trust.
            let mut parts = line.split(' ');
            let (Some(Ok(i)), Some(Ok(us))) = (
                parts.next().map(str::parse::<u64>),
                parts.next().map(str::parse::<u64>),
            ) else {
                continue;
            };
            if acks.is_empty() {
                let _ = first_tx.send(());
            }
            acks.push((i, us));
        }
        acks
    });
    first_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the child never acknowledged a write");
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    let acks = reader.join().expect("reader thread");
    assert!(
        acks.iter().enumerate().all(|(n, (i, _))| *i == n as u64),
        "acknowledgements out of order"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let backend = reopen(dir.path());
    let missing: Vec<usize> = runtime.block_on(async {
        let mut missing = Vec::new();
        for (n, (i, _)) in acks.iter().enumerate() {
            match backend.get(key(*i).as_bytes()).await.expect("get") {
                Some(v) if v == value(*i).as_bytes() => {}
                Some(v) => panic!("{} holds {v:?} after the crash", key(*i)),
                None => missing.push(n),
            }
        }
        missing
    });
    let last_us = acks.last().map_or(0, |a| a.1);
    let first_us = acks.first().map_or(0, |a| a.1);
    let lost_ms = missing
        .first()
        .map_or(0.0, |&n| (last_us - acks[n].1) as f64 / 1000.0);
    let suffix = missing
        .first()
        .is_none_or(|&n| missing.len() == acks.len() - n);
    Run {
        acked: acks.len(),
        lost: missing.len(),
        lost_ms,
        suffix,
        writes_per_s: acks.len() as f64 / ((last_us - first_us).max(1) as f64 / 1e6),
    }
}

fn crash_runs() {
    let seed = std::env::var(SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(u64::from(std::process::id()));
            h.finish() | 1
        });
    println!("crash test seed {seed} (set {SEED} to repeat)");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let mut acked = 0;
    for run in 0..SYNC_RUNS {
        let kill_after = Duration::from_millis(rng.between(50, 300));
        let r = crash_once(true, kill_after);
        println!(
            "sync_writes run {run:2}: killed {kill_after:?} in, {} acknowledged ({:.0}/s), {} lost",
            r.acked, r.writes_per_s, r.lost
        );
        assert_eq!(
            r.lost, 0,
            "run {run}: {} of {} writes acknowledged with sync_writes were lost",
            r.lost, r.acked
        );
        acked += r.acked;
    }
    println!("sync_writes: {SYNC_RUNS} SIGKILLs, {acked} acknowledged writes, 0 lost");

    let mut worst_ms: f64 = 0.0;
    for run in 0..DEFAULT_FLUSH_RUNS {
        let kill_after = Duration::from_millis(rng.between(600, 1200));
        let r = crash_once(false, kill_after);
        println!(
            "default flush run {run}: killed {kill_after:?} in, {} acknowledged ({:.0}/s), {} lost = {:.1} ms of writes{}",
            r.acked,
            r.writes_per_s,
            r.lost,
            r.lost_ms,
            if r.suffix { "" } else { " (not a suffix)" }
        );
        assert!(
            r.lost_ms <= DEFAULT_FLUSH.as_secs_f64() * 1000.0,
            "run {run}: lost {:.1} ms of acknowledged writes, over the {DEFAULT_FLUSH:?} flush interval",
            r.lost_ms
        );
        assert!(
            r.suffix,
            "run {run}: a lost write was followed by a surviving one (sled recovers a prefix)"
        );
        worst_ms = worst_ms.max(r.lost_ms);
    }
    println!(
        "default flush ({DEFAULT_FLUSH:?}): at most {worst_ms:.1} ms of acknowledged writes lost over {DEFAULT_FLUSH_RUNS} SIGKILLs; total {:?}",
        started.elapsed()
    );
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(&dir, std::env::var(CHILD_SYNC).as_deref() == Ok("1"));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{TEST_NAME}: test");
        return;
    }
    // Like libtest: a name filter that does not match runs nothing.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let exact = args.iter().any(|a| a == "--exact");
    let selected = filters.is_empty()
        || filters.iter().any(|f| {
            if exact {
                *f == TEST_NAME
            } else {
                TEST_NAME.contains(f.as_str())
            }
        });
    if !selected {
        println!("\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 1 filtered out\n");
        return;
    }
    println!("\nrunning 1 test");
    crash_runs();
    println!("test {TEST_NAME} ... ok\n\ntest result: ok. 1 passed; 0 failed\n");
}
