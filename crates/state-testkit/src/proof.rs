//! The proof cases: model-based sequences, cancellation at every poll and linearizable
//! concurrent histories. [`crate::conformance_suite!`] runs them on every backend as
//! `proof_model_based_sequences_match_reference`,
//! `proof_cancelled_operations_leave_before_or_after_state` and
//! `proof_concurrent_histories_are_linearizable`.
//!
//! Knobs (environment variables, read when a case starts):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `STATE_PROOF_CASES` | 64 | model-based sequences per backend |
//! | `STATE_PROOF_STEPS` | 30 | longest sequence (operations) |
//! | `STATE_PROOF_SHRINK_ITERS` | 2048 | most shrinking runs after a failure |
//! | `STATE_PROOF_SEED` | random | seed of the sequences (printed by every run) |
//! | `STATE_PROOF_HISTORIES` | 4 | concurrent histories per backend |
//! | `STATE_PROOF_TASKS` | 6 | tasks per history |
//! | `STATE_PROOF_OPS` | 40 | operations per task |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use state_core::checkpoint::CheckpointReader;
use state_core::{Capabilities, ErrorKind, StateBackend, StateResult};

use crate::linearizability::{self, History, Op as LinOp, Ret};
use crate::support::open;
use crate::{BackendFactory, ReferenceBackend, unique_namespace};

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------------
// Steps: every trait operation, on a small key space
// ---------------------------------------------------------------------------------------------

/// Keys share prefixes (`a`/`ab`, `b`/`b\0`, `\xff`/`\xff\xff`) so prefix operations overlap.
const KEYS: [&[u8]; 6] = [b"a", b"ab", b"b", b"b\x00", b"\xff", b"\xff\xff"];
/// Few values, so compare-and-swap finds its expected value often; one is empty.
const VALUES: [&[u8]; 4] = [b"1", b"2", b"", b"\x00\xff"];
/// `c` matches nothing; the empty prefix matches everything.
const PREFIXES: [&[u8]; 6] = [b"", b"a", b"ab", b"b", b"\xff", b"c"];
/// TTLs far beyond a test run, so expiry never races the clock: only presence and rough size
/// are compared.
const TTL_HOURS: [u64; 3] = [1, 2, 3];
/// How far two remaining TTLs may differ and still match (a step takes far less).
const TTL_SLACK: Duration = Duration::from_secs(600);

/// One operation of a model-based sequence.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    Get(Bytes),
    Put(Bytes, Bytes),
    PutWithTtl(Bytes, Bytes, u64),
    Delete(Bytes),
    Contains(Bytes),
    BatchGet(Vec<Bytes>),
    BatchPut(Vec<(Bytes, Bytes)>),
    BatchDelete(Vec<Bytes>),
    CompareAndSwap(Bytes, Option<Bytes>, Option<Bytes>),
    SetIfNotExists(Bytes, Bytes, Option<u64>),
    GetAndDelete(Bytes),
    DeletePrefix(Bytes),
    ListKeys(Bytes),
    Count,
    Scan(Bytes),
    Ttl(Bytes),
    GetWithTtl(Bytes),
    /// Checkpoint into the saved slot (the checkpoint's entries are the answer).
    Checkpoint,
    /// Restore the saved checkpoint (if any), after clearing when `true`.
    Restore(bool),
    Clear,
}

fn key() -> impl Strategy<Value = Bytes> {
    prop::sample::select(KEYS.map(Bytes::from_static).to_vec())
}

fn value() -> impl Strategy<Value = Bytes> {
    prop::sample::select(VALUES.map(Bytes::from_static).to_vec())
}

fn prefix() -> impl Strategy<Value = Bytes> {
    prop::sample::select(PREFIXES.map(Bytes::from_static).to_vec())
}

fn hours() -> impl Strategy<Value = u64> {
    prop::sample::select(TTL_HOURS.to_vec())
}

/// Every operation the backend declares, weighted towards writes on the shared keys.
fn step_strategy(caps: Capabilities) -> BoxedStrategy<Step> {
    let mut choices: Vec<(u32, BoxedStrategy<Step>)> = vec![
        (4, key().prop_map(Step::Get).boxed()),
        (
            6,
            (key(), value()).prop_map(|(k, v)| Step::Put(k, v)).boxed(),
        ),
        (3, key().prop_map(Step::Delete).boxed()),
        (2, key().prop_map(Step::Contains).boxed()),
        (
            2,
            prop::collection::vec(key(), 0..4)
                .prop_map(Step::BatchGet)
                .boxed(),
        ),
        (
            3,
            prop::collection::vec((key(), value()), 0..4)
                .prop_map(Step::BatchPut)
                .boxed(),
        ),
        (
            2,
            prop::collection::vec(key(), 0..4)
                .prop_map(Step::BatchDelete)
                .boxed(),
        ),
        (1, prefix().prop_map(Step::DeletePrefix).boxed()),
        (1, prefix().prop_map(Step::ListKeys).boxed()),
        (1, Just(Step::Count).boxed()),
        (1, prefix().prop_map(Step::Scan).boxed()),
        (2, key().prop_map(Step::Ttl).boxed()),
        (1, key().prop_map(Step::GetWithTtl).boxed()),
        (1, Just(Step::Checkpoint).boxed()),
        (1, any::<bool>().prop_map(Step::Restore).boxed()),
        (1, Just(Step::Clear).boxed()),
    ];
    if caps.ttl {
        choices.push((
            3,
            (key(), value(), hours())
                .prop_map(|(k, v, h)| Step::PutWithTtl(k, v, h))
                .boxed(),
        ));
    }
    if caps.atomic {
        choices.push((
            4,
            (key(), prop::option::of(value()), prop::option::of(value()))
                .prop_map(|(k, e, n)| Step::CompareAndSwap(k, e, n))
                .boxed(),
        ));
        let ttl = if caps.ttl {
            prop::option::of(hours()).boxed()
        } else {
            Just(None).boxed()
        };
        choices.push((
            3,
            (key(), value(), ttl)
                .prop_map(|(k, v, h)| Step::SetIfNotExists(k, v, h))
                .boxed(),
        ));
        choices.push((2, key().prop_map(Step::GetAndDelete).boxed()));
    }
    prop::strategy::Union::new_weighted(choices).boxed()
}

/// One live entry as the comparisons see it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    key: Bytes,
    value: Bytes,
    ttl: Option<Duration>,
}

/// What a step answered, in a form two backends can be compared on.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    Done,
    Flag(bool),
    Number(usize),
    Value(Option<Bytes>),
    Values(Vec<Option<Bytes>>),
    Keys(Vec<Bytes>),
    Entries(Vec<Seen>),
    Ttl(Option<Duration>),
    ValueTtl(Option<(Bytes, Option<Duration>)>),
    Failed(ErrorKind),
}

fn ttl_matches(a: Option<Duration>, b: Option<Duration>, compare_ttl: bool) -> bool {
    if !compare_ttl {
        return true;
    }
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.abs_diff(b) <= TTL_SLACK,
        _ => false,
    }
}

fn entries_match(a: &[Seen], b: &[Seen], compare_ttl: bool) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.key == y.key && x.value == y.value && ttl_matches(x.ttl, y.ttl, compare_ttl)
        })
}

impl Answer {
    fn matches(&self, other: &Answer, compare_ttl: bool) -> bool {
        match (self, other) {
            (Answer::Done, Answer::Done) => true,
            (Answer::Flag(a), Answer::Flag(b)) => a == b,
            (Answer::Number(a), Answer::Number(b)) => a == b,
            (Answer::Value(a), Answer::Value(b)) => a == b,
            (Answer::Values(a), Answer::Values(b)) => a == b,
            (Answer::Keys(a), Answer::Keys(b)) => a == b,
            (Answer::Entries(a), Answer::Entries(b)) => entries_match(a, b, compare_ttl),
            (Answer::Ttl(a), Answer::Ttl(b)) => ttl_matches(*a, *b, compare_ttl),
            (Answer::ValueTtl(a), Answer::ValueTtl(b)) => match (a, b) {
                (None, None) => true,
                (Some((va, ta)), Some((vb, tb))) => va == vb && ttl_matches(*ta, *tb, compare_ttl),
                _ => false,
            },
            (Answer::Failed(a), Answer::Failed(b)) => a == b,
            _ => false,
        }
    }
}

fn answer<T>(result: StateResult<T>, f: impl FnOnce(T) -> Answer) -> Answer {
    match result {
        Ok(value) => f(value),
        Err(err) => Answer::Failed(err.kind()),
    }
}

fn sorted_entries(mut entries: Vec<Seen>) -> Vec<Seen> {
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
}

async fn scan_entries(backend: &dyn StateBackend, prefix: &[u8]) -> StateResult<Vec<Seen>> {
    let mut stream = backend.scan(prefix);
    let mut out = Vec::new();
    while let Some(entry) = stream.next().await {
        let entry = entry?;
        out.push(Seen {
            key: entry.key,
            value: entry.value,
            ttl: entry.ttl,
        });
    }
    Ok(sorted_entries(out))
}

async fn checkpoint_entries(bytes: &[u8]) -> StateResult<Vec<Seen>> {
    let mut reader = CheckpointReader::new(bytes).await?;
    let mut out = Vec::new();
    while let Some(entry) = reader.next_entry().await? {
        out.push(Seen {
            key: entry.key,
            value: entry.value,
            ttl: entry.ttl,
        });
    }
    Ok(sorted_entries(out))
}

fn hours_ttl(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

/// Runs `step` on `backend`. `saved` is the checkpoint slot of [`Step::Checkpoint`] and
/// [`Step::Restore`].
pub(crate) async fn apply(
    backend: &dyn StateBackend,
    step: &Step,
    saved: &mut Option<Vec<u8>>,
) -> Answer {
    match step {
        Step::Get(k) => answer(backend.get(k).await, Answer::Value),
        Step::Put(k, v) => answer(backend.put(k, v).await, |()| Answer::Done),
        Step::PutWithTtl(k, v, h) => {
            answer(backend.put_with_ttl(k, v, hours_ttl(*h)).await, |()| {
                Answer::Done
            })
        }
        Step::Delete(k) => answer(backend.delete(k).await, Answer::Flag),
        Step::Contains(k) => answer(backend.contains(k).await, Answer::Flag),
        Step::BatchGet(keys) => {
            let refs: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
            answer(backend.batch_get(&refs).await, Answer::Values)
        }
        Step::BatchPut(entries) => {
            let refs: Vec<(&[u8], &[u8])> = entries
                .iter()
                .map(|(k, v)| (k.as_ref(), v.as_ref()))
                .collect();
            answer(backend.batch_put(&refs).await, |()| Answer::Done)
        }
        Step::BatchDelete(keys) => {
            let refs: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
            answer(backend.batch_delete(&refs).await, Answer::Number)
        }
        Step::CompareAndSwap(k, e, n) => answer(
            backend
                .compare_and_swap(k, e.as_deref(), n.as_deref())
                .await,
            Answer::Flag,
        ),
        Step::SetIfNotExists(k, v, h) => answer(
            backend.set_if_not_exists(k, v, h.map(hours_ttl)).await,
            Answer::Flag,
        ),
        Step::GetAndDelete(k) => answer(backend.get_and_delete(k).await, Answer::Value),
        Step::DeletePrefix(p) => answer(backend.delete_prefix(p).await, Answer::Number),
        Step::ListKeys(p) => answer(backend.list_keys(p).await, |mut keys| {
            keys.sort();
            Answer::Keys(keys)
        }),
        Step::Count => answer(backend.count().await, Answer::Number),
        Step::Scan(p) => answer(scan_entries(backend, p).await, Answer::Entries),
        Step::Ttl(k) => answer(backend.ttl(k).await, Answer::Ttl),
        Step::GetWithTtl(k) => answer(backend.get_with_ttl(k).await, Answer::ValueTtl),
        Step::Checkpoint => {
            let mut buf = Vec::new();
            match backend.checkpoint(&mut buf).await {
                Ok(_) => {
                    let entries = checkpoint_entries(&buf).await;
                    *saved = Some(buf);
                    answer(entries, Answer::Entries)
                }
                Err(err) => Answer::Failed(err.kind()),
            }
        }
        Step::Restore(clear_first) => {
            let Some(buf) = saved.as_ref() else {
                return Answer::Done;
            };
            if *clear_first {
                if let Err(err) = backend.clear().await {
                    return Answer::Failed(err.kind());
                }
            }
            answer(backend.restore(&mut &buf[..]).await, |summary| {
                Answer::Number(summary.entries as usize)
            })
        }
        Step::Clear => answer(backend.clear().await, |()| Answer::Done),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Model-based sequences
// ---------------------------------------------------------------------------------------------

async fn run_sequence(
    backend: &dyn StateBackend,
    compare_ttl: bool,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    // Only the six keys are ever written: deleting them resets the case without walking the
    // whole keyspace of a shared server (what `clear` does on Redis).
    let all: Vec<&[u8]> = KEYS.to_vec();
    backend
        .batch_delete(&all)
        .await
        .map_err(|e| TestCaseError::fail(format!("reset before the case failed: {e}")))?;
    let model = ReferenceBackend::new();
    let (mut saved, mut model_saved) = (None, None);
    for (i, step) in steps.iter().enumerate() {
        let got = apply(backend, step, &mut saved).await;
        let want = apply(&model, step, &mut model_saved).await;
        if !got.matches(&want, compare_ttl) {
            return Err(TestCaseError::fail(format!(
                "step {i} {step:?}: the backend answered {got:?}, the model {want:?}"
            )));
        }
    }
    let keys: Vec<Bytes> = KEYS.map(Bytes::from_static).to_vec();
    let got = read_keys(backend, &keys, &keys).await;
    let want = read_keys(&model, &keys, &keys).await;
    let (got, want) = (answer(got, Answer::Entries), answer(want, Answer::Entries));
    if !got.matches(&want, compare_ttl) {
        return Err(TestCaseError::fail(format!(
            "after the last step the backend holds {got:?}, the model {want:?}"
        )));
    }
    Ok(())
}

/// Random sequences of every trait operation (point operations, batches, compare-and-swap,
/// set-if-not-exists, get-and-delete, prefix deletes, listings, counts, scans, TTL reads,
/// checkpoint then restore, clear) on 6 overlapping keys, compared step by step with
/// [`ReferenceBackend`], and the whole state compared at the end. A failure is shrunk to a
/// minimal failing sequence, printed with the seed that reproduces it.
///
/// Needs a multi-threaded runtime (it drives the backend from a blocking section).
pub async fn proof_model_based_sequences_match_reference(factory: &dyn BackendFactory) {
    let cases = env_or("STATE_PROOF_CASES", 64) as u32;
    let seed = env_or("STATE_PROOF_SEED", rand::random::<u32>().into());
    model_based_sequences(factory, cases, seed).await;
}

/// [`proof_model_based_sequences_match_reference`] with its case count and seed given
/// (instead of read from `STATE_PROOF_CASES` / `STATE_PROOF_SEED`).
pub async fn model_based_sequences(factory: &dyn BackendFactory, cases: u32, seed: u64) {
    let backend = open(factory).await;
    let caps = backend.capabilities();
    let compare_ttl = caps.default_ttl.is_none();
    let max_steps = env_or("STATE_PROOF_STEPS", 30).max(1) as usize;
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: env_or("STATE_PROOF_SHRINK_ITERS", 2048) as u32,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = prop::collection::vec(step_strategy(caps), 1..=max_steps);
    let handle = tokio::runtime::Handle::current();
    let started = Instant::now();
    let result = tokio::task::block_in_place(|| {
        runner.run(&strategy, |steps| {
            handle.block_on(run_sequence(&*backend, compare_ttl, &steps))
        })
    });
    match result {
        Ok(()) => eprintln!(
            "proof: {cases} model-based sequences of up to {max_steps} steps matched the \
             reference in {:?} (STATE_PROOF_SEED={seed})",
            started.elapsed()
        ),
        Err(TestError::Fail(reason, steps)) => panic!(
            "a sequence diverged from the reference model (STATE_PROOF_SEED={seed} \
             reproduces it). Minimal failing sequence, {} steps:\n{steps:#?}\n{reason}",
            steps.len()
        ),
        Err(TestError::Abort(reason)) => panic!("the model-based run aborted: {reason}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Cancellation at every poll
// ---------------------------------------------------------------------------------------------

/// Polls the wrapped future at most `left` times, then gives up (`None`): the future is
/// dropped with the awaiting caller, right after a poll that returned `Pending`.
struct PollLimit<F> {
    future: Pin<Box<F>>,
    left: usize,
}

impl<F: Future> Future for PollLimit<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        match self.future.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending if self.left == 0 => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The keys a cancelled operation's follow-up write targets: one the operation touches.
fn follow_key(step: &Step) -> Bytes {
    match step {
        Step::Get(k)
        | Step::Put(k, _)
        | Step::PutWithTtl(k, _, _)
        | Step::Delete(k)
        | Step::Contains(k)
        | Step::CompareAndSwap(k, _, _)
        | Step::SetIfNotExists(k, _, _)
        | Step::GetAndDelete(k)
        | Step::Ttl(k)
        | Step::GetWithTtl(k) => k.clone(),
        Step::BatchGet(keys) | Step::BatchDelete(keys) => keys[0].clone(),
        Step::BatchPut(entries) => entries[0].0.clone(),
        Step::DeletePrefix(_)
        | Step::ListKeys(_)
        | Step::Scan(_)
        | Step::Checkpoint
        | Step::Count
        | Step::Restore(_)
        | Step::Clear => Bytes::from_static(b"p:007"),
    }
}

/// Whether a cancelled `step` may leave a mix of before and after per key (a multi-key write
/// that is not atomic), rather than exactly one of the two states.
fn per_key(step: &Step, caps: Capabilities) -> bool {
    match step {
        Step::BatchPut(_) | Step::BatchDelete(_) => !caps.atomic_batch,
        Step::DeletePrefix(_) | Step::Restore(_) | Step::Clear => true,
        _ => false,
    }
}

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

/// The operations dropped at every poll: every write (each way it can go) and a read of each
/// kind.
fn cancellation_steps(caps: Capabilities) -> Vec<Step> {
    let mut steps = vec![
        Step::Put(b(b"a"), b(b"new")),
        Step::Put(b(b"zz"), b(b"new")),
        Step::Delete(b(b"ab")),
        Step::BatchPut(vec![
            (b(b"a"), b(b"n1")),
            (b(b"zz"), b(b"n2")),
            (b(b"b"), b(b"n3")),
        ]),
        Step::BatchDelete(vec![b(b"a"), b(b"b"), b(b"missing")]),
        Step::DeletePrefix(b(b"p:")),
        Step::Clear,
        Step::Restore(false),
        Step::Get(b(b"a")),
        Step::Contains(b(b"b")),
        Step::BatchGet(vec![b(b"a"), b(b"zz"), b(b"b")]),
        Step::ListKeys(b(b"p:")),
        Step::Count,
        Step::Scan(b(b"")),
        Step::Checkpoint,
    ];
    if caps.ttl {
        steps.push(Step::PutWithTtl(b(b"b"), b(b"new"), 2));
        steps.push(Step::Ttl(b(b"\xff")));
        steps.push(Step::GetWithTtl(b(b"\xff")));
    }
    if caps.atomic {
        steps.push(Step::CompareAndSwap(
            b(b"a"),
            Some(b(b"1")),
            Some(b(b"swapped")),
        ));
        steps.push(Step::CompareAndSwap(b(b"ab"), Some(b(b"2")), None));
        steps.push(Step::CompareAndSwap(b(b"a"), Some(b(b"wrong")), None));
        steps.push(Step::SetIfNotExists(
            b(b"zz"),
            b(b"set"),
            caps.ttl.then_some(1),
        ));
        steps.push(Step::SetIfNotExists(b(b"a"), b(b"set"), None));
        steps.push(Step::GetAndDelete(b(b"b")));
    }
    steps
}

/// The state every cancellation attempt starts from: four keys (one with a TTL when the
/// backend has TTLs) and 32 keys under `p:`.
async fn seed_state(
    backend: &dyn StateBackend,
    caps: Capabilities,
    universe: &[Bytes],
) -> StateResult<()> {
    // Every key a cancelled operation can write is in `universe`: deleting those resets the
    // state without walking the whole keyspace of a shared server.
    let all: Vec<&[u8]> = universe.iter().map(AsRef::as_ref).collect();
    backend.batch_delete(&all).await?;
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"a".to_vec(), b"1".to_vec()),
        (b"ab".to_vec(), b"2".to_vec()),
        (b"b".to_vec(), b"3".to_vec()),
    ];
    for i in 0..32 {
        entries.push((format!("p:{i:03}").into_bytes(), vec![b'v'; i]));
    }
    let refs: Vec<(&[u8], &[u8])> = entries
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    backend.batch_put(&refs).await?;
    if caps.ttl {
        backend
            .put_with_ttl(b"\xff", b"4", Duration::from_secs(3600))
            .await?;
    } else {
        backend.put(b"\xff", b"4").await?;
    }
    Ok(())
}

/// The checkpoint a cancelled restore applies: overlaps the seeded state and adds keys.
async fn restore_source(caps: Capabilities) -> Vec<u8> {
    let source = ReferenceBackend::new();
    source.put(b"a", b"from-checkpoint").await.unwrap();
    source.put(b"new-key", b"x").await.unwrap();
    for i in 0..8 {
        source
            .put(format!("p:{i:03}").as_bytes(), b"restored")
            .await
            .unwrap();
    }
    if caps.ttl {
        source
            .put_with_ttl(b"zz", b"t", Duration::from_secs(7200))
            .await
            .unwrap();
    }
    let mut buf = Vec::new();
    source.checkpoint(&mut buf).await.unwrap();
    buf
}

/// A state as key -> (value, remaining TTL).
type SlotMap = BTreeMap<Bytes, (Bytes, Option<Duration>)>;

fn as_map(entries: &[Seen]) -> SlotMap {
    entries
        .iter()
        .map(|e| (e.key.clone(), (e.value.clone(), e.ttl)))
        .collect()
}

fn same_slot(
    a: Option<&(Bytes, Option<Duration>)>,
    b: Option<&(Bytes, Option<Duration>)>,
    compare_ttl: bool,
) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some((va, ta)), Some((vb, tb))) => va == vb && ttl_matches(*ta, *tb, compare_ttl),
        _ => false,
    }
}

fn with_follow(entries: &[Seen], key: &Bytes) -> BTreeMap<Bytes, (Bytes, Option<Duration>)> {
    let mut map = as_map(entries);
    map.insert(key.clone(), (Bytes::from_static(FOLLOW_VALUE), None));
    map
}

const FOLLOW_VALUE: &[u8] = b"follow-up";
/// A key no cancelled operation touches.
const UNTOUCHED: &[u8] = b"untouched";

/// Keys that may carry a TTL in the cancellation cases (the others are read without one).
const TTL_KEYS: [&[u8]; 3] = [b"\xff", b"b", b"zz"];

/// Every key a cancellation case can write: the seeded keys, the restored checkpoint's keys,
/// the follow-up keys and the keys the operations name.
async fn universe(caps: Capabilities, source: &[u8]) -> Vec<Bytes> {
    let model = ReferenceBackend::new();
    seed_state(&model, caps, &[]).await.unwrap();
    let mut keys: Vec<Bytes> = model.list_keys(b"").await.unwrap();
    keys.extend(
        checkpoint_entries(source)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key),
    );
    let named: [&'static [u8]; 3] = [b"zz", b"missing", UNTOUCHED];
    keys.extend(named.map(Bytes::from_static));
    keys.sort();
    keys.dedup();
    keys
}

/// The live entries among `keys`, read with one `batch_get`, and the remaining TTL of those in
/// `ttl_keys` (the others are reported without one).
async fn read_keys(
    backend: &dyn StateBackend,
    keys: &[Bytes],
    ttl_keys: &[Bytes],
) -> StateResult<Vec<Seen>> {
    let refs: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
    let values = backend.batch_get(&refs).await?;
    let mut out = Vec::new();
    for (key, value) in keys.iter().zip(values) {
        if let Some(value) = value {
            let ttl = if ttl_keys.contains(key) {
                backend.ttl(key).await?
            } else {
                None
            };
            out.push(Seen {
                key: key.clone(),
                value,
                ttl,
            });
        }
    }
    Ok(sorted_entries(out))
}

/// The state of the `universe` keys after a drop, read by `batch_get` (TTLs of [`TTL_KEYS`]);
/// a point `get` of `follow` must agree with it, so a cache tier that answers point reads
/// differently from batches is caught.
async fn observe(
    backend: &dyn StateBackend,
    universe: &[Bytes],
    follow: &Bytes,
    step: &Step,
    k: usize,
) -> Vec<Seen> {
    let ttl_keys = TTL_KEYS.map(Bytes::from_static);
    let seen = read_keys(backend, universe, &ttl_keys)
        .await
        .expect("reading the state after a drop");
    let point = backend.get(follow).await.expect("get after a drop");
    let batched = seen
        .iter()
        .find(|e| e.key == *follow)
        .map(|e| e.value.clone());
    assert_eq!(
        point, batched,
        "{step:?} dropped after {k} polls: get of {follow:?} disagrees with batch_get"
    );
    seen
}

/// The keys where `seen` is neither `before` nor `after`, for failure messages.
fn diff(seen: &SlotMap, before: &SlotMap, after: &SlotMap) -> String {
    let keys: std::collections::BTreeSet<&Bytes> = seen
        .keys()
        .chain(before.keys())
        .chain(after.keys())
        .collect();
    let mut out = String::new();
    for key in keys {
        let (s, b, a) = (seen.get(key), before.get(key), after.get(key));
        if !same_slot(s, b, true) && !same_slot(s, a, true) {
            let _ = writeln!(out, "  {key:?}: before {b:?}, after {a:?}, seen {s:?}");
        }
    }
    out
}

/// Whether `seen` is `before` or `after` (each with the follow-up write applied), as a whole
/// or, for `per_key`, key by key.
fn before_or_after(
    seen: &[Seen],
    before: &[Seen],
    after: &[Seen],
    follow: &Bytes,
    per_key: bool,
    compare_ttl: bool,
) -> bool {
    let seen = as_map(seen);
    let before = with_follow(before, follow);
    let after = with_follow(after, follow);
    let same = |x: &BTreeMap<Bytes, (Bytes, Option<Duration>)>| {
        x.len() == seen.len()
            && x.iter()
                .all(|(k, slot)| same_slot(Some(slot), seen.get(k), compare_ttl))
    };
    if !per_key {
        return same(&before) || same(&after);
    }
    let keys: std::collections::BTreeSet<&Bytes> = seen
        .keys()
        .chain(before.keys())
        .chain(after.keys())
        .collect();
    keys.into_iter().all(|k| {
        same_slot(seen.get(k), before.get(k), compare_ttl)
            || same_slot(seen.get(k), after.get(k), compare_ttl)
    })
}

/// How long the cancellation case waits, after each operation's last attempt, for late work
/// of the attempts dropped before it.
const SETTLE: Duration = Duration::from_millis(40);

/// Every operation's future is dropped after k polls, for every k until it completes, over a
/// backend slowed by [`crate::Yielding`] under its wrappers (see
/// [`BackendFactory::open_slowed`]) so every await point is reached. After each drop a
/// follow-up `put` on a key the operation touches is acknowledged, and then the state must be
/// the state before the operation or after it (key by key for multi-key writes that are not
/// atomic: batches without `atomic_batch`, `delete_prefix`, `clear`, `restore`), with the
/// follow-up write in place; and it must stay so: nothing the dropped operation started may
/// land later. A completed attempt must answer what the reference model answers.
pub async fn proof_cancelled_operations_leave_before_or_after_state(factory: &dyn BackendFactory) {
    let name = unique_namespace();
    let backend = factory
        .open_slowed(&name)
        .await
        .unwrap_or_else(|err| panic!("the factory could not open namespace {name}: {err:?}"));
    let caps = backend.capabilities();
    let compare_ttl = caps.default_ttl.is_none();
    let source = restore_source(caps).await;
    let started = Instant::now();
    let mut points = 0usize;
    let steps = cancellation_steps(caps);
    let universe = universe(caps, &source).await;
    for step in &steps {
        let follow = follow_key(step);
        let mut k = 0usize;
        loop {
            seed_state(&*backend, caps, &universe)
                .await
                .expect("seeding the state");
            let model = ReferenceBackend::new();
            seed_state(&model, caps, &universe).await.unwrap();
            let ttl_keys = TTL_KEYS.map(Bytes::from_static);
            let before = read_keys(&model, &universe, &ttl_keys).await.unwrap();
            let mut model_saved = Some(source.clone());
            let want = apply(&model, step, &mut model_saved).await;
            let after = read_keys(&model, &universe, &ttl_keys).await.unwrap();

            let mut saved = Some(source.clone());
            let limited = PollLimit {
                future: Box::pin(apply(&*backend, step, &mut saved)),
                left: k,
            };
            let outcome = tokio::time::timeout(Duration::from_secs(60), limited)
                .await
                .unwrap_or_else(|_| panic!("{step:?} did not finish within 60 s"));
            if let Some(got) = outcome {
                assert!(
                    got.matches(&want, compare_ttl),
                    "{step:?} completed after {k} polls with {got:?}; the model answered {want:?}"
                );
                let state = observe(&*backend, &universe, &follow, step, k).await;
                assert!(
                    entries_match(&state, &after, compare_ttl),
                    "{step:?} completed, but the state is {state:?}, not the model's {after:?}"
                );
                // Work a dropped attempt left behind (a re-send, a background task) may land
                // later than the few milliseconds each attempt waits: an acknowledged write on
                // the touched key, time for such work to land, and then nothing may have
                // changed.
                backend
                    .put(&follow, FOLLOW_VALUE)
                    .await
                    .expect("the follow-up put after the completed operation");
                tokio::time::sleep(SETTLE).await;
                let settled = observe(&*backend, &universe, &follow, step, k).await;
                let mut expected = as_map(&state);
                expected.insert(follow.clone(), (Bytes::from_static(FOLLOW_VALUE), None));
                let settled_map = as_map(&settled);
                let stable = settled_map.len() == expected.len()
                    && expected.iter().all(|(key, slot)| {
                        same_slot(Some(slot), settled_map.get(key), compare_ttl)
                    });
                assert!(
                    stable,
                    "{step:?}: the state changed {SETTLE:?} after a later acknowledged put of \
                     {follow:?} (work of an attempt dropped earlier landed late):\nexpected: \
                     {expected:?}\nlater: {settled:?}"
                );
                break;
            }
            points += 1;
            // An acknowledged write elsewhere, then the state, read by scan and by batch_get.
            let untouched = Bytes::from_static(UNTOUCHED);
            backend
                .put(&untouched, FOLLOW_VALUE)
                .await
                .expect("the follow-up put after a cancelled operation");
            let seen = observe(&*backend, &universe, &follow, step, k).await;
            assert!(
                before_or_after(
                    &seen,
                    &before,
                    &after,
                    &untouched,
                    per_key(step, caps),
                    compare_ttl
                ),
                "{step:?} dropped after {k} polls left neither the state before nor after it \
                 (with the follow-up put of {untouched:?}):\n{}",
                diff(
                    &as_map(&seen),
                    &with_follow(&before, &untouched),
                    &with_follow(&after, &untouched)
                )
            );
            // An acknowledged write on a key the operation touches: it must stick, and
            // nothing else may change any more.
            backend
                .put(&follow, FOLLOW_VALUE)
                .await
                .expect("the second follow-up put");
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let later = observe(&*backend, &universe, &follow, step, k).await;
            let mut expected = as_map(&seen);
            expected.insert(follow.clone(), (Bytes::from_static(FOLLOW_VALUE), None));
            let later_map = as_map(&later);
            let stable = later_map.len() == expected.len()
                && expected
                    .iter()
                    .all(|(key, slot)| same_slot(Some(slot), later_map.get(key), compare_ttl));
            assert!(
                stable,
                "{step:?} dropped after {k} polls changed the state after later acknowledged \
                 puts (of {untouched:?}, then {follow:?}):\nexpected: {expected:?}\nlater: {later:?}"
            );
            k += 1;
            assert!(k < 100_000, "{step:?} never completes");
        }
    }
    eprintln!(
        "proof: {} operations dropped at {points} cancellation points, each left before or \
         after, in {:?}",
        steps.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Linearizable concurrent histories
// ---------------------------------------------------------------------------------------------

const HISTORY_KEYS: [&[u8]; 3] = [b"x", b"y", b"z"];

async fn run_lin_op(backend: &dyn StateBackend, key: &[u8], op: &LinOp) -> StateResult<Ret> {
    Ok(match op {
        LinOp::Get => Ret::Value(backend.get(key).await?),
        LinOp::Put(v) => {
            backend.put(key, v).await?;
            Ret::Written
        }
        LinOp::Delete => Ret::Flag(backend.delete(key).await?),
        LinOp::CompareAndSwap { expected, new } => Ret::Flag(
            backend
                .compare_and_swap(key, expected.as_deref(), new.as_deref())
                .await?,
        ),
        LinOp::SetIfNotExists(v) => Ret::Flag(backend.set_if_not_exists(key, v, None).await?),
        LinOp::GetAndDelete => Ret::Value(backend.get_and_delete(key).await?),
    })
}

/// Records one history: `tasks` tasks of `ops` random operations each on three keys, all
/// running at once.
async fn record_history(
    backends: &[Arc<dyn StateBackend>],
    stale_reads: bool,
    atomic: bool,
    tasks: u64,
    ops: u64,
    seed: u64,
) -> Arc<History> {
    let history = Arc::new(History::new());
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks as usize));
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let backend = Arc::clone(&backends[task as usize % backends.len()]);
            let (history, barrier) = (history.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut x = (seed ^ (task + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
                let mut rand = move |n: u64| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % n
                };
                let mut last_seen: Option<Bytes> = None;
                barrier.wait().await;
                for i in 0..ops {
                    let key = HISTORY_KEYS[rand(HISTORY_KEYS.len() as u64) as usize];
                    let mine = Bytes::from(format!("{task}.{i}"));
                    let op = match rand(if atomic { 8 } else { 3 }) {
                        0 => LinOp::Get,
                        1 => LinOp::Put(mine),
                        2 => LinOp::Delete,
                        3 | 4 => LinOp::CompareAndSwap {
                            expected: if rand(3) == 0 {
                                None
                            } else {
                                last_seen.clone()
                            },
                            new: if rand(4) == 0 { None } else { Some(mine) },
                        },
                        5 | 6 => LinOp::SetIfNotExists(mine),
                        _ => LinOp::GetAndDelete,
                    };
                    let call = history.invoke(task, key, op.clone());
                    let result = run_lin_op(&*backend, key, &op).await;
                    match result {
                        Ok(ret) => {
                            if let Ret::Value(Some(v)) = &ret {
                                last_seen = Some(v.clone());
                            }
                            if stale_reads && op == LinOp::Get {
                                // A replica read promises no recency: not part of the check.
                                history.failed(call);
                            } else {
                                history.returned(call, ret);
                            }
                        }
                        Err(err) => panic!("{op:?} on {key:?} failed on a healthy backend: {err}"),
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("a history task panicked");
    }
    history
}

/// Records one concurrent history of `tasks` tasks x `ops` operations on the history keys
/// (`x`, `y`, `z`, reset first), the tasks spread round-robin over `backends` (for instance two
/// instances of a cache over one shared store, or one backend while a reshard runs), and
/// checks it for linearizability. With `stale_reads` the `get`s run but are left out of the
/// check (what instances with private caches promise). Returns the operations checked, or
/// the checker's report naming the operations.
pub async fn concurrent_history_over(
    backends: &[Arc<dyn StateBackend>],
    stale_reads: bool,
    tasks: u64,
    ops: u64,
    seed: u64,
) -> Result<usize, String> {
    assert!(!backends.is_empty(), "at least one backend");
    let keys: Vec<&[u8]> = HISTORY_KEYS.to_vec();
    backends[0]
        .batch_delete(&keys)
        .await
        .map_err(|err| format!("resetting the history keys: {err}"))?;
    let atomic = backends.iter().all(|b| b.capabilities().atomic);
    let history = record_history(backends, stale_reads, atomic, tasks.max(1), ops, seed).await;
    linearizability::check(&history)
        .map(|summary| summary.operations)
        .map_err(|report| {
            format!(
                "history of {} operations (seed {seed}) is {report}",
                history.len()
            )
        })
}

/// Concurrent histories: several tasks run get, put, delete and (when the backend declares
/// `atomic`) compare-and-swap, set-if-not-exists and get-and-delete on three keys at once;
/// every invocation and answer is recorded with its time, and the history must be
/// linearizable ([`crate::linearizability::check`]); a failure names the operations. For a
/// configuration that documents stale replica reads ([`BackendFactory::reads_may_be_stale`])
/// the `get`s are left out of the check.
///
/// Needs a multi-threaded runtime for real parallelism.
pub async fn proof_concurrent_histories_are_linearizable(factory: &dyn BackendFactory) {
    let backend = open(factory).await;
    let atomic = backend.capabilities().atomic;
    let histories = env_or("STATE_PROOF_HISTORIES", 4);
    let tasks = env_or("STATE_PROOF_TASKS", 6).max(1);
    let ops = env_or("STATE_PROOF_OPS", 40);
    let seed = env_or("STATE_PROOF_SEED", rand::random::<u32>().into());
    let started = Instant::now();
    let mut checked = 0;
    for round in 0..histories {
        let keys: Vec<&[u8]> = HISTORY_KEYS.to_vec();
        backend
            .batch_delete(&keys)
            .await
            .expect("reset between histories");
        let history = record_history(
            std::slice::from_ref(&backend),
            factory.reads_may_be_stale(),
            atomic,
            tasks,
            ops,
            seed.wrapping_add(round),
        )
        .await;
        match linearizability::check(&history) {
            Ok(summary) => checked += summary.operations,
            Err(report) => panic!(
                "history {round} of {} operations (STATE_PROOF_SEED={seed}) is {report}",
                history.len()
            ),
        }
    }
    eprintln!(
        "proof: {histories} histories of {tasks} tasks x {ops} operations ({checked} operations) \
         linearizable in {:?}",
        started.elapsed()
    );
}
