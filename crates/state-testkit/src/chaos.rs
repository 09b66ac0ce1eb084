//! A chaos soak: many tasks run atomic and plain single-key operations on a small, hot key
//! set while a fault task breaks the wire under them; at the end the recorded history must
//! show that nothing acknowledged was lost and that every answer was true.
//!
//! [`run`] drives a backend (typically connected through a fault-injecting proxy, such as
//! `state-test-servers`' `FaultProxy`) for a bounded time:
//!
//! - [`SoakConfig::tasks`] tasks (16 by default) run a mix of `get`, `put`,
//!   `compare_and_swap` (expecting the value the task last saw), `set_if_not_exists` and
//!   `get_and_delete` on [`SoakConfig::keys`] keys, and race `set_if_not_exists` on one more
//!   key that nothing ever deletes (the "SETNX key": it must have at most one winner).
//! - A fault task, every [`SoakConfig::fault_gap`] (random within the range), arms one
//!   [`WireFault`] on a random [`FaultInjector`]: a lost reply followed by a reset, a reset
//!   after a random number of bytes (1 to 4096), a latency spike (20 to 250 ms per chunk), or,
//!   rarely, a short blackhole (every call in flight then waits for its command timeout).
//! - Every operation is recorded in a [`History`] with its invocation and response times. An
//!   `OutcomeUnknown` answer is recorded as "may or may not have happened"; any other error
//!   means, by the trait contract, that the call was not applied, so it is left out (and a
//!   backend that applied it anyway is caught by the checks below).
//!
//! The keys change every [`SoakConfig::generation`] (a fresh set of the same size), so each
//! key's sub-history stays a few thousand operations with a handful of unknown outcomes: the
//! per-key linearizability search stays fast however long the soak runs, while the keys in
//! use at any moment stay few and contended.
//!
//! After the run the faults are healed, the backend must answer again, every key is read
//! through an `observer` (a direct connection that bypasses the proxy), and [`run`] checks:
//!
//! 1. **No acknowledged write lost**: for every acknowledged state change (a `put`, a
//!    `compare_and_swap` or `set_if_not_exists` that answered `true`, a `get_and_delete` that
//!    removed a value), either the key's final value is what it wrote, or some other state
//!    change (acknowledged, or of unknown outcome) could have come after it.
//! 2. **No SETNX key has two winners.**
//! 3. **The history is linearizable** ([`crate::linearizability::check`], per key), with the
//!    final reads appended after every other operation.
//! 4. **No stall, no unknown read**: no operation outlives [`SoakConfig::op_deadline`], and no
//!    read answers `OutcomeUnknown` (the contract keeps that answer for writes).
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use state_testkit::ReferenceBackend;
//! use state_testkit::chaos::{self, FaultInjector, NoFaults, SoakConfig};
//!
//! let backend = Arc::new(ReferenceBackend::new());
//! let config = SoakConfig {
//!     duration: Duration::from_millis(100),
//!     tasks: 4,
//!     ..SoakConfig::default()
//! };
//! let faults: Vec<Arc<dyn FaultInjector>> = vec![Arc::new(NoFaults)];
//! let report = chaos::run("reference", backend.clone(), backend, faults, &config)
//!     .await
//!     .unwrap_or_else(|failure| panic!("{failure}"));
//! assert_eq!(report.lost_writes, 0);
//! println!("{report}");
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use state_core::{ErrorKind, StateBackend};

use crate::linearizability::{self, Completion, History, Op, Operation, Ret};

/// A fault on the wire, as a [`FaultInjector`] applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFault {
    /// One shot: the next request is delivered, its reply is lost, the connection is reset.
    ReplyLostThenReset,
    /// One shot: after this many more bytes (either direction), the connection is reset.
    ResetAfterBytes(u64),
    /// Every chunk is delayed by this much until [`FaultInjector::heal`].
    Latency(Duration),
    /// Requests are delivered, nothing comes back, until [`FaultInjector::heal`].
    Blackhole,
}

/// Something that breaks the wire between a backend and its server on demand: a proxy, or a
/// simulation in a test.
pub trait FaultInjector: Send + Sync {
    /// Arms `fault`, replacing whatever was armed.
    fn inject(&self, fault: WireFault);
    /// Ends every fault: traffic flows untouched again.
    fn heal(&self);
    /// How many one-shot faults have actually fired so far (a one-shot fault armed while no
    /// traffic passed may be replaced before it fires).
    fn fired(&self) -> u64;
}

/// A [`FaultInjector`] that does nothing: a soak of a healthy backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFaults;

impl FaultInjector for NoFaults {
    fn inject(&self, _fault: WireFault) {}
    fn heal(&self) {}
    fn fired(&self) -> u64 {
        0
    }
}

/// How a soak runs. [`SoakConfig::default`] reads `STATE_CHAOS_SECS` (duration, default 30)
/// and `STATE_CHAOS_SEED` (default random; every report prints it).
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// How long the operations run.
    pub duration: Duration,
    /// Concurrent tasks.
    pub tasks: u64,
    /// Keys the mixed operations use at any moment (plus one SETNX key).
    pub keys: u64,
    /// How long one key set is used before the tasks move to a fresh one.
    pub generation: Duration,
    /// The pause between two faults is random within this range.
    pub fault_gap: (Duration, Duration),
    /// How long a latency spike or a blackhole lasts, random within this range.
    pub fault_length: (Duration, Duration),
    /// Include blackholes among the faults (1 in 20).
    pub blackholes: bool,
    /// An operation running longer than this is a stall (a defect: every backend has a
    /// command timeout well below it).
    pub op_deadline: Duration,
    /// How long the backend may take to answer again once the faults are healed.
    pub recovery: Duration,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for SoakConfig {
    fn default() -> Self {
        let secs = std::env::var("STATE_CHAOS_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(30.0);
        let seed = std::env::var("STATE_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        Self {
            duration: Duration::from_secs_f64(secs.max(0.1)),
            tasks: 16,
            keys: 4,
            generation: Duration::from_secs(2),
            fault_gap: (Duration::from_millis(100), Duration::from_millis(500)),
            fault_length: (Duration::from_millis(50), Duration::from_millis(400)),
            blackholes: true,
            op_deadline: Duration::from_secs(30),
            recovery: Duration::from_secs(20),
            seed,
        }
    }
}

/// What a soak did and found.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// The name the soak was run under (the backend and its topology).
    pub name: String,
    /// The seed (`STATE_CHAOS_SEED` repeats the run's random choices).
    pub seed: u64,
    /// How long the operations ran.
    pub elapsed: Duration,
    /// Operations run (the final reads not included).
    pub operations: u64,
    /// Faults armed by the fault task.
    pub faults_injected: u64,
    /// One-shot faults that fired, as the injectors count them.
    pub faults_fired: u64,
    /// Injected lost-reply-then-reset faults.
    pub replies_lost: u64,
    /// Injected reset-after-N-bytes faults.
    pub resets_after_bytes: u64,
    /// Injected latency spikes.
    pub latency_spikes: u64,
    /// Injected blackholes.
    pub blackholes: u64,
    /// Writes answered `OutcomeUnknown`.
    pub unknown_outcomes: u64,
    /// Calls answered with a definite error (not applied, by the contract).
    pub definite_errors: u64,
    /// Acknowledged state changes (puts; `compare_and_swap` and `set_if_not_exists` that
    /// answered `true`; `get_and_delete` that removed a value).
    pub acknowledged_writes: u64,
    /// Acknowledged state changes neither present at the end nor possibly superseded.
    pub lost_writes: u64,
    /// SETNX keys raced on.
    pub setnx_keys: u64,
    /// SETNX keys with more than one acknowledged winner.
    pub setnx_two_winners: u64,
    /// Operations that outlived [`SoakConfig::op_deadline`].
    pub stalls: u64,
    /// Reads that answered `OutcomeUnknown`.
    pub unknown_reads: u64,
    /// Keys (independent histories) checked for linearizability.
    pub keys_checked: usize,
    /// Operations checked for linearizability (final reads included).
    pub operations_checked: usize,
    /// Operations of the longest single-key history.
    pub largest_key_history: usize,
    /// How long the linearizability check took.
    pub check_time: Duration,
}

impl SoakReport {
    /// Operations per second over the run.
    pub fn ops_per_sec(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos soak {} (STATE_CHAOS_SEED={}): {} operations in {:.1?} ({:.0} ops/s)",
            self.name,
            self.seed,
            self.operations,
            self.elapsed,
            self.ops_per_sec()
        )?;
        writeln!(
            f,
            "  faults injected {} (reply lost + reset {}, reset after N bytes {}, one-shots fired \
             {}; latency spikes {}; blackholes {}); outcomes unknown {}; definite errors {}",
            self.faults_injected,
            self.replies_lost,
            self.resets_after_bytes,
            self.faults_fired,
            self.latency_spikes,
            self.blackholes,
            self.unknown_outcomes,
            self.definite_errors
        )?;
        writeln!(
            f,
            "  acknowledged writes {}, lost {}; SETNX keys {}, with two winners {}; stalls {}; \
             unknown reads {}",
            self.acknowledged_writes,
            self.lost_writes,
            self.setnx_keys,
            self.setnx_two_winners,
            self.stalls,
            self.unknown_reads
        )?;
        write!(
            f,
            "  linearizability: {} keys, {} operations (longest key history {}) checked in {:.1?}",
            self.keys_checked, self.operations_checked, self.largest_key_history, self.check_time
        )
    }
}

/// A soak that found a defect: what it found, with the run's report.
#[derive(Debug)]
pub struct SoakFailure {
    /// The figures of the run.
    pub report: SoakReport,
    /// Each defect found, described with the operations involved.
    pub violations: Vec<String>,
}

impl fmt::Display for SoakFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.report)?;
        writeln!(f, "{} violation(s):", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "- {v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SoakFailure {}

/// A small, fast, seeded generator (xorshift64*); the soak needs reproducible choices, not
/// cryptographic ones.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }

    fn within(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(self.below(span + 1))
    }
}

fn key_of(generation: u64, k: u64) -> Bytes {
    Bytes::from(format!("g{generation}.k{k}"))
}

fn setnx_key_of(generation: u64) -> Bytes {
    Bytes::from(format!("g{generation}.nx"))
}

async fn apply(backend: &dyn StateBackend, key: &[u8], op: &Op) -> state_core::StateResult<Ret> {
    Ok(match op {
        Op::Get => Ret::Value(backend.get(key).await?),
        Op::Put(v) => {
            backend.put(key, v).await?;
            Ret::Written
        }
        Op::Delete => Ret::Flag(backend.delete(key).await?),
        Op::CompareAndSwap { expected, new } => Ret::Flag(
            backend
                .compare_and_swap(key, expected.as_deref(), new.as_deref())
                .await?,
        ),
        Op::SetIfNotExists(v) => Ret::Flag(backend.set_if_not_exists(key, v, None).await?),
        Op::GetAndDelete => Ret::Value(backend.get_and_delete(key).await?),
    })
}

#[derive(Default)]
struct Counters {
    operations: AtomicU64,
    unknown: AtomicU64,
    definite: AtomicU64,
    stalls: AtomicU64,
    unknown_reads: AtomicU64,
    /// Values of writes answered with a definite error (so, by the contract, not applied),
    /// with a description of the call.
    refused: std::sync::Mutex<BTreeMap<Bytes, String>>,
}

/// One task's loop: random operations on the current generation's keys until `stop`.
async fn worker(
    task: u64,
    backend: Arc<dyn StateBackend>,
    history: Arc<History>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    config: SoakConfig,
    started: Instant,
) {
    let mut rng = Rng::new(config.seed ^ (task + 1).wrapping_mul(0xd1b5_4a32_d192_ed03));
    let mut last_seen: BTreeMap<Bytes, Bytes> = BTreeMap::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // An in-process backend never suspends: let the timers and the fault task run.
        tokio::task::yield_now().await;
        let generation =
            (started.elapsed().as_micros() / config.generation.as_micros().max(1)) as u64;
        let mine = Bytes::from(format!("t{task}.{i}"));
        i += 1;
        let (key, op) = if rng.below(8) == 0 {
            (setnx_key_of(generation), Op::SetIfNotExists(mine))
        } else {
            let key = key_of(generation, rng.below(config.keys));
            let op = match rng.below(20) {
                0..=5 => Op::Get,
                6..=10 => Op::Put(mine),
                11..=14 => Op::CompareAndSwap {
                    expected: if rng.below(4) == 0 {
                        None
                    } else {
                        last_seen.get(&key).cloned()
                    },
                    new: Some(mine),
                },
                15..=17 => Op::SetIfNotExists(mine),
                _ => Op::GetAndDelete,
            };
            (key, op)
        };
        let read = op == Op::Get;
        let call = history.invoke(task, key.clone(), op.clone());
        let answer = tokio::time::timeout(config.op_deadline, apply(&*backend, &key, &op)).await;
        counters.operations.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok(Ok(ret)) => {
                if let Ret::Value(Some(v)) = &ret {
                    last_seen.insert(key.clone(), v.clone());
                }
                if let (Op::CompareAndSwap { new: Some(v), .. }, Ret::Flag(true)) = (&op, &ret) {
                    last_seen.insert(key.clone(), v.clone());
                }
                history.returned(call, ret);
            }
            Ok(Err(err)) if err.kind() == ErrorKind::OutcomeUnknown => {
                if read {
                    counters.unknown_reads.fetch_add(1, Ordering::Relaxed);
                    history.failed(call);
                } else {
                    counters.unknown.fetch_add(1, Ordering::Relaxed);
                    history.unknown(call);
                }
            }
            Ok(Err(err)) => {
                // Definite: not applied (the checks catch a backend for which that is false).
                counters.definite.fetch_add(1, Ordering::Relaxed);
                history.failed(call);
                if let Effect::Leaves(Some(value)) = effect(&op, None) {
                    counters
                        .refused
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(value, format!("client {task} {op:?} on {key:?}: {err}"));
                }
            }
            Err(_elapsed) => {
                // The future was dropped: a write may or may not have been applied.
                counters.stalls.fetch_add(1, Ordering::Relaxed);
                if read {
                    history.failed(call);
                } else {
                    history.unknown(call);
                }
            }
        }
    }
}

/// How many faults of each kind the fault task injected.
#[derive(Debug, Default, Clone, Copy)]
struct Injected {
    replies_lost: u64,
    resets_after_bytes: u64,
    latency_spikes: u64,
    blackholes: u64,
}

/// The fault task: arms a random fault on a random injector every `fault_gap` until `stop`.
/// A blackhole stalls every call in flight until its command timeout, so it is rarer (1 in
/// 20) than the others.
async fn fault_loop(
    faults: Vec<Arc<dyn FaultInjector>>,
    stop: Arc<AtomicBool>,
    config: SoakConfig,
) -> Injected {
    let mut rng = Rng::new(config.seed ^ 0xfa17);
    let mut injected = Injected::default();
    if faults.is_empty() {
        return injected;
    }
    loop {
        tokio::time::sleep(rng.within(config.fault_gap)).await;
        if stop.load(Ordering::Relaxed) {
            return injected;
        }
        let target = &faults[rng.below(faults.len() as u64) as usize];
        let kinds = if config.blackholes { 20 } else { 19 };
        let fault = match rng.below(kinds) {
            0..=5 => WireFault::ReplyLostThenReset,
            6..=11 => WireFault::ResetAfterBytes(1 + rng.below(4096)),
            12..=18 => WireFault::Latency(Duration::from_millis(20 + rng.below(230))),
            _ => WireFault::Blackhole,
        };
        target.inject(fault);
        match fault {
            WireFault::ReplyLostThenReset => injected.replies_lost += 1,
            WireFault::ResetAfterBytes(_) => injected.resets_after_bytes += 1,
            WireFault::Latency(_) => injected.latency_spikes += 1,
            WireFault::Blackhole => injected.blackholes += 1,
        }
        match fault {
            WireFault::Latency(_) | WireFault::Blackhole => {
                tokio::time::sleep(rng.within(config.fault_length)).await;
                target.heal();
            }
            WireFault::ReplyLostThenReset | WireFault::ResetAfterBytes(_) => {
                // A one-shot fault fires on the next traffic; give it time before another
                // replaces it.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// What a call did to its key.
enum Effect {
    /// Nothing (a read, a failed condition).
    Unchanged,
    /// It left this value (`None`: the key is absent).
    Leaves(Option<Bytes>),
}

/// The effect of `op` answered `ret` (`None`: unknown outcome, counted as if it applied).
fn effect(op: &Op, ret: Option<&Ret>) -> Effect {
    match (op, ret) {
        (Op::Put(v), _) | (Op::SetIfNotExists(v), Some(Ret::Flag(true)) | None) => {
            Effect::Leaves(Some(v.clone()))
        }
        (Op::CompareAndSwap { new, .. }, Some(Ret::Flag(true)) | None) => {
            Effect::Leaves(new.clone())
        }
        (Op::GetAndDelete, Some(Ret::Value(Some(_))) | None)
        | (Op::Delete, Some(Ret::Flag(true)) | None) => Effect::Leaves(None),
        _ => Effect::Unchanged,
    }
}

fn returned_at(op: &Operation) -> Duration {
    match &op.completion {
        Completion::Returned { at, .. } => *at,
        Completion::Unknown => Duration::MAX,
    }
}

/// Check 1: every acknowledged state change is the final state, or some other state change
/// could have been ordered after it. Returns (acknowledged, lost descriptions).
fn lost_writes(ops: &[Operation], finals: &BTreeMap<Bytes, Option<Bytes>>) -> (u64, Vec<String>) {
    let mut by_key: BTreeMap<&Bytes, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut acknowledged = 0;
    let mut lost = Vec::new();
    for (key, key_ops) in by_key {
        // Every state change: (operation, the value it leaves).
        let changes: Vec<(&Operation, Option<Bytes>)> = key_ops
            .iter()
            .filter_map(|op| {
                let ret = match &op.completion {
                    Completion::Returned { ret, .. } => Some(ret),
                    Completion::Unknown => None,
                };
                match effect(&op.op, ret) {
                    Effect::Leaves(value) => Some((*op, value)),
                    Effect::Unchanged => None,
                }
            })
            .collect();
        let final_value = finals.get(key).cloned().flatten();
        for (i, (w, value)) in changes.iter().enumerate() {
            if w.completion == Completion::Unknown {
                continue;
            }
            acknowledged += 1;
            if *value == final_value {
                continue;
            }
            let superseded = changes
                .iter()
                .enumerate()
                .any(|(j, (x, _))| j != i && returned_at(x) > w.invoked);
            if !superseded {
                lost.push(format!(
                    "acknowledged write lost: {w}; nothing could come after it, yet the key \
                     holds {final_value:?} at the end"
                ));
            }
        }
    }
    (acknowledged, lost)
}

/// Runs the soak (see the module docs) on `backend` while `faults` break its wire; reads the
/// final state through `observer` (a backend on the same namespace that bypasses the
/// faults; `backend` itself when there is no such path).
///
/// # Errors
///
/// A [`SoakFailure`] listing every violation found, with the run's figures.
pub async fn run(
    name: &str,
    backend: Arc<dyn StateBackend>,
    observer: Arc<dyn StateBackend>,
    faults: Vec<Arc<dyn FaultInjector>>,
    config: &SoakConfig,
) -> Result<SoakReport, Box<SoakFailure>> {
    let history = Arc::new(History::new());
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let fired_before: u64 = faults.iter().map(|f| f.fired()).sum();
    let started = Instant::now();
    let workers: Vec<_> = (0..config.tasks)
        .map(|task| {
            tokio::spawn(worker(
                task,
                backend.clone(),
                history.clone(),
                counters.clone(),
                stop.clone(),
                config.clone(),
                started,
            ))
        })
        .collect();
    let fault_task = tokio::spawn(fault_loop(faults.clone(), stop.clone(), config.clone()));
    tokio::time::sleep(config.duration).await;
    stop.store(true, Ordering::Relaxed);
    let injected = fault_task.await.expect("the fault task panicked");
    for f in &faults {
        f.heal();
    }
    for w in workers {
        w.await.expect("a soak task panicked");
    }
    let elapsed = started.elapsed();
    let faults_fired = faults.iter().map(|f| f.fired()).sum::<u64>() - fired_before;

    let mut violations = Vec::new();
    // The backend answers again once healed.
    let until = Instant::now() + config.recovery;
    loop {
        match backend.get(b"probe").await {
            Ok(_) => break,
            Err(err) if Instant::now() >= until => {
                violations.push(format!(
                    "the backend did not recover within {:?} after the faults were healed: {err}",
                    config.recovery
                ));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }

    // The final state of every key used, read past the faults.
    let ops = history.operations();
    let keys: BTreeSet<Bytes> = ops.iter().map(|op| op.key.clone()).collect();
    let keys: Vec<Bytes> = keys.into_iter().collect();
    let mut finals = BTreeMap::new();
    for chunk in keys.chunks(64) {
        let refs: Vec<&[u8]> = chunk.iter().map(|k| &k[..]).collect();
        match observer.batch_get(&refs).await {
            Ok(values) => {
                for (key, value) in chunk.iter().zip(values) {
                    let call = history.invoke(u64::MAX, key.clone(), Op::Get);
                    history.returned(call, Ret::Value(value.clone()));
                    finals.insert(key.clone(), value);
                }
            }
            Err(err) => violations.push(format!("the final read failed: {err}")),
        }
    }
    // A value written only by a call answered with a definite error must never be seen.
    {
        let refused = counters
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut seen: Vec<(Bytes, String)> = finals
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (v, format!("the final read of {k:?}"))))
            .collect();
        for op in &ops {
            match (&op.op, &op.completion) {
                (
                    Op::CompareAndSwap {
                        expected: Some(v), ..
                    },
                    Completion::Returned {
                        ret: Ret::Flag(true),
                        ..
                    },
                )
                | (
                    _,
                    Completion::Returned {
                        ret: Ret::Value(Some(v)),
                        ..
                    },
                ) => seen.push((v.clone(), op.to_string())),
                _ => {}
            }
        }
        for (value, by) in seen {
            if let Some(call) = refused.get(&value) {
                violations.push(format!(
                    "a write answered with a definite error (not applied) took effect: {call}; \
                     its value was seen by {by}"
                ));
            }
        }
    }
    let (acknowledged_writes, lost) = lost_writes(&ops, &finals);
    let lost_count = lost.len() as u64;
    violations.extend(lost);

    // SETNX keys: at most one winner each.
    let mut winners: BTreeMap<&Bytes, Vec<&Operation>> = BTreeMap::new();
    for op in &ops {
        if op.key.ends_with(b".nx") {
            let entry = winners.entry(&op.key).or_default();
            if let Completion::Returned {
                ret: Ret::Flag(true),
                ..
            } = op.completion
            {
                entry.push(op);
            }
        }
    }
    let setnx_keys = winners.len() as u64;
    let mut two_winners = 0;
    for (key, w) in &winners {
        if w.len() > 1 {
            two_winners += 1;
            let list: Vec<String> = w.iter().map(ToString::to_string).collect();
            violations.push(format!(
                "SETNX key {key:?} has {} winners: {}",
                w.len(),
                list.join("; ")
            ));
        }
    }

    let stalls = counters.stalls.load(Ordering::Relaxed);
    if stalls > 0 {
        violations.push(format!(
            "{stalls} operation(s) ran longer than {:?}",
            config.op_deadline
        ));
    }
    let unknown_reads = counters.unknown_reads.load(Ordering::Relaxed);
    if unknown_reads > 0 {
        violations.push(format!(
            "{unknown_reads} read(s) answered OutcomeUnknown (reserved for writes)"
        ));
    }

    let checked_ops = history.operations();
    let mut per_key: BTreeMap<&Bytes, usize> = BTreeMap::new();
    for op in &checked_ops {
        *per_key.entry(&op.key).or_default() += 1;
    }
    let check_started = Instant::now();
    let check = linearizability::check(&history);
    let check_time = check_started.elapsed();
    let (keys_checked, operations_checked) = match &check {
        Ok(summary) => (summary.keys, summary.operations),
        Err(report) => {
            violations.push(format!("the history is {report}"));
            (0, 0)
        }
    };

    let report = SoakReport {
        name: name.to_owned(),
        seed: config.seed,
        elapsed,
        operations: counters.operations.load(Ordering::Relaxed),
        faults_injected: injected.replies_lost
            + injected.resets_after_bytes
            + injected.latency_spikes
            + injected.blackholes,
        faults_fired,
        replies_lost: injected.replies_lost,
        resets_after_bytes: injected.resets_after_bytes,
        latency_spikes: injected.latency_spikes,
        blackholes: injected.blackholes,
        unknown_outcomes: counters.unknown.load(Ordering::Relaxed),
        definite_errors: counters.definite.load(Ordering::Relaxed),
        acknowledged_writes,
        lost_writes: lost_count,
        setnx_keys,
        setnx_two_winners: two_winners,
        stalls,
        unknown_reads,
        keys_checked,
        operations_checked,
        largest_key_history: per_key.values().copied().max().unwrap_or(0),
        check_time,
    };
    // Leave nothing behind on a shared server.
    let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    for chunk in refs.chunks(64) {
        let _ = observer.batch_delete(chunk).await;
    }
    if violations.is_empty() {
        Ok(report)
    } else {
        Err(Box::new(SoakFailure { report, violations }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReferenceBackend;
    use async_trait::async_trait;
    use state_core::{Capabilities, StateError, StateFuture, StateResult};

    /// What a simulated backend gets wrong.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Defect {
        None,
        /// Every third `put` is acknowledged without being written.
        AckWithoutWriting,
        /// `set_if_not_exists` answers `true` even when the key existed.
        SetIfNotExistsAlwaysWins,
        /// A write whose reply was lost is reported as a definite (not applied) error.
        LostReplyAsDefiniteError,
        /// A fault wipes every key and the write's reply arrives (a failover to a replica
        /// that missed every acknowledged write).
        ForgetOnReset,
    }

    /// A [`ReferenceBackend`] behind a simulated wire: a reply-lost fault applies the next
    /// write and answers `OutcomeUnknown`, as a correct networked backend does.
    #[derive(Debug)]
    struct Wire {
        inner: ReferenceBackend,
        armed: AtomicBool,
        fired: AtomicU64,
        puts: AtomicU64,
        defect: Defect,
    }

    impl Wire {
        fn new(defect: Defect) -> Arc<Self> {
            Arc::new(Self {
                inner: ReferenceBackend::new(),
                armed: AtomicBool::new(false),
                fired: AtomicU64::new(0),
                puts: AtomicU64::new(0),
                defect,
            })
        }

        /// Ends a write that was applied: its answer, or the lost reply's error.
        fn reply<T>(&self, answer: StateResult<T>) -> StateResult<T> {
            if self.armed.swap(false, Ordering::SeqCst) {
                self.fired.fetch_add(1, Ordering::SeqCst);
                if self.defect == Defect::ForgetOnReset {
                    let keys = futures::executor::block_on(self.inner.list_keys(b""))?;
                    let keys: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
                    futures::executor::block_on(self.inner.batch_delete(&keys))?;
                    return answer;
                }
                return Err(if self.defect == Defect::LostReplyAsDefiniteError {
                    StateError::connection("reset")
                } else {
                    StateError::outcome_unknown("reply lost")
                });
            }
            answer
        }
    }

    impl FaultInjector for Wire {
        fn inject(&self, fault: WireFault) {
            if matches!(
                fault,
                WireFault::ReplyLostThenReset | WireFault::ResetAfterBytes(_)
            ) {
                self.armed.store(true, Ordering::SeqCst);
            }
        }
        fn heal(&self) {}
        fn fired(&self) -> u64 {
            self.fired.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl StateBackend for Wire {
        fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
            StateFuture::boxed(async move {
                round_trip().await;
                self.inner.get(key).await
            })
        }
        fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
            StateFuture::boxed(async move {
                round_trip().await;
                let n = self.puts.fetch_add(1, Ordering::SeqCst);
                if self.defect == Defect::AckWithoutWriting && n % 3 == 2 {
                    return Ok(());
                }
                let answer = self.inner.put(key, value).await;
                self.reply(answer)
            })
        }
        fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
            self.inner.delete(key)
        }
        fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
            self.inner.contains(key)
        }
        async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
            self.inner.list_keys(prefix).await
        }
        async fn clear(&self) -> StateResult<()> {
            self.inner.clear().await
        }
        async fn count(&self) -> StateResult<usize> {
            self.inner.count().await
        }
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
        async fn compare_and_swap(
            &self,
            key: &[u8],
            expected: Option<&[u8]>,
            new: Option<&[u8]>,
        ) -> StateResult<bool> {
            round_trip().await;
            let answer = self.inner.compare_and_swap(key, expected, new).await;
            self.reply(answer)
        }
        async fn set_if_not_exists(
            &self,
            key: &[u8],
            value: &[u8],
            ttl: Option<Duration>,
        ) -> StateResult<bool> {
            round_trip().await;
            let answer = self.inner.set_if_not_exists(key, value, ttl).await;
            if self.defect == Defect::SetIfNotExistsAlwaysWins {
                return answer.map(|_| true);
            }
            self.reply(answer)
        }
        async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
            round_trip().await;
            let answer = self.inner.get_and_delete(key).await;
            self.reply(answer)
        }
    }

    /// A simulated network round trip, so histories have a networked backend's size.
    async fn round_trip() {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }

    fn quick() -> SoakConfig {
        SoakConfig {
            duration: Duration::from_millis(600),
            generation: Duration::from_millis(200),
            fault_gap: (Duration::from_micros(200), Duration::from_millis(2)),
            fault_length: (Duration::from_micros(100), Duration::from_millis(1)),
            seed: 7,
            ..SoakConfig::default()
        }
    }

    async fn soak(defect: Defect) -> Result<SoakReport, Box<SoakFailure>> {
        let wire = Wire::new(defect);
        run(
            "simulated",
            wire.clone(),
            wire.clone(),
            vec![wire as Arc<dyn FaultInjector>],
            &quick(),
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn correct_backend_with_lost_replies_passes_and_counts_them() {
        let report = soak(Defect::None).await.unwrap_or_else(|f| panic!("{f}"));
        assert!(report.operations > 1000, "{report}");
        assert!(report.faults_injected > 20, "{report}");
        assert!(report.unknown_outcomes > 10, "{report}");
        assert_eq!(report.faults_fired, report.unknown_outcomes, "{report}");
        assert_eq!(report.lost_writes, 0);
        assert!(report.setnx_keys >= 3, "{report}");
        assert!(report.keys_checked > 10, "{report}");
        assert!(
            report.operations_checked as u64 > report.operations,
            "{report}"
        );
        let text = report.to_string();
        assert!(text.contains("STATE_CHAOS_SEED=7"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_put_never_written_is_not_linearizable() {
        let failure = soak(Defect::AckWithoutWriting).await.unwrap_err();
        let text = failure.to_string();
        assert!(text.contains("not linearizable"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_writes_wiped_later_are_reported_lost() {
        let failure = soak(Defect::ForgetOnReset).await.unwrap_err();
        assert!(failure.report.lost_writes > 0, "{failure}");
        let text = failure.to_string();
        assert!(text.contains("acknowledged write lost"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_setnx_winners_are_reported() {
        let failure = soak(Defect::SetIfNotExistsAlwaysWins).await.unwrap_err();
        assert!(failure.report.setnx_two_winners > 0, "{failure}");
        assert!(failure.to_string().contains("winners"), "{failure}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applied_write_reported_as_definite_error_is_caught() {
        let failure = soak(Defect::LostReplyAsDefiniteError).await.unwrap_err();
        assert!(
            failure
                .violations
                .iter()
                .any(|v| v.contains("definite error (not applied) took effect")),
            "{failure}"
        );
    }

    #[test]
    fn write_superseded_by_a_later_or_unknown_change_is_not_lost() {
        let k = Bytes::from_static(b"k");
        let at = |from: u64, to: Option<u64>, op: Op, ret: Ret| Operation {
            client: 1,
            key: k.clone(),
            op,
            invoked: Duration::from_millis(from),
            completion: to.map_or(Completion::Unknown, |to| Completion::Returned {
                at: Duration::from_millis(to),
                ret,
            }),
        };
        let v = |s: &'static str| Bytes::from_static(s.as_bytes());
        let put_a = at(0, Some(1), Op::Put(v("a")), Ret::Written);
        let put_b = at(2, Some(3), Op::Put(v("b")), Ret::Written);
        let finals = |value: Option<&'static str>| {
            BTreeMap::from([(k.clone(), value.map(|s| Bytes::from_static(s.as_bytes())))])
        };
        // b came last: "a" superseded, "b" present.
        let ops = vec![put_a.clone(), put_b.clone()];
        assert_eq!(lost_writes(&ops, &finals(Some("b"))), (2, vec![]));
        // b is missing at the end and nothing could follow it.
        let (acked, lost) = lost_writes(&ops, &finals(Some("a")));
        assert_eq!((acked, lost.len()), (2, 1));
        assert!(lost[0].contains("put(b\"k\", b\"b\")"), "{lost:?}");
        // An unknown get_and_delete invoked later explains an absent key.
        let mut ops = ops;
        ops.push(at(5, None, Op::GetAndDelete, Ret::Written));
        assert_eq!(lost_writes(&ops, &finals(None)).1.len(), 0);
        // A failed compare_and_swap changes nothing, so it explains nothing.
        let ops = vec![
            put_a,
            put_b,
            at(
                4,
                Some(5),
                Op::CompareAndSwap {
                    expected: None,
                    new: Some(v("c")),
                },
                Ret::Flag(false),
            ),
        ];
        assert_eq!(lost_writes(&ops, &finals(Some("c"))).1.len(), 1);
    }
}
