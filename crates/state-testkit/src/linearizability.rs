//! Linearizability of recorded concurrent histories of single-key operations.
//!
//! A [`History`] records, for every operation some task ran, when it was invoked and when it
//! returned (a monotonic clock), with what it returned. [`check`] decides whether some total
//! order of the operations (a) respects real time: an operation that returned before another
//! was invoked comes first, and (b) explains every result by running the operations one at a
//! time against a map of registers. If no such order exists, it reports the key and the
//! operations that cannot be ordered.
//!
//! # Why a checker of our own
//!
//! `stateright`'s `LinearizabilityTester` was evaluated: it takes invocations and returns as an
//! ordered event feed rather than timestamps, searches interleavings of whole threads by
//! recursion without memoisation or partitioning (exponential on the 6-8 task histories the
//! suite records), answers only `None` for a bad history (no report of which operations), and
//! pulls a model checker with an HTTP explorer into every test build. No maintained Rust crate
//! implements the timestamped, partitioned algorithm, so this module does, after the design of
//! Porcupine (Athalye, Go):
//!
//! - **Wing–Gong with Lowe's memoisation** ("Testing for linearizability", Lowe 2017): walk
//!   the call/return events in time order; at a call, try to linearize that operation next
//!   (it must be explained by the model state); at a return whose operation is not yet
//!   linearized, backtrack. A cache of (set of linearized operations, model state) prunes
//!   every configuration seen before, which keeps the search polynomial in practice.
//! - **Per-key partitioning** (P-compositionality, Horn and Kroening 2015): a map of
//!   independent registers is linearizable exactly when each key's sub-history is, so each key
//!   is checked alone, and a failure names its key.
//! - **Unknown outcomes**: an operation marked [`History::unknown`] (a timeout or a lost
//!   connection: it may or may not have taken effect), or one never completed, is pending
//!   forever: its return is at the end of time and any result is accepted, so it may take
//!   effect at any point after its invocation, or never.
//!
//! ```
//! use bytes::Bytes;
//! use state_testkit::linearizability::{History, Op, Ret, check};
//!
//! let history = History::new();
//! let put = history.invoke(1, "k", Op::Put(Bytes::from_static(b"v")));
//! let get = history.invoke(2, "k", Op::Get);
//! history.returned(put, Ret::Written);
//! // The get overlapped the put, so it may see the old value (none) or the new one.
//! history.returned(get, Ret::Value(None));
//! assert!(check(&history).is_ok());
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// One single-key operation of the [`crate::ReferenceBackend`] contract.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// `get(key)`; returns [`Ret::Value`].
    Get,
    /// `put(key, value)`; returns [`Ret::Written`].
    Put(Bytes),
    /// `delete(key)`; returns [`Ret::Flag`]: whether a live entry was removed.
    Delete,
    /// `compare_and_swap(key, expected, new)`; returns [`Ret::Flag`]: whether it swapped.
    CompareAndSwap {
        /// The value the key must hold (`None`: absent).
        expected: Option<Bytes>,
        /// The value to store (`None`: delete).
        new: Option<Bytes>,
    },
    /// `set_if_not_exists(key, value, None)`; returns [`Ret::Flag`]: whether it stored.
    SetIfNotExists(Bytes),
    /// `get_and_delete(key)`; returns [`Ret::Value`]: what it removed.
    GetAndDelete,
}

/// What an [`Op`] returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ret {
    /// The value read (`get`) or removed (`get_and_delete`).
    Value(Option<Bytes>),
    /// A `put` was acknowledged.
    Written,
    /// The boolean answer of `delete`, `compare_and_swap` or `set_if_not_exists`.
    Flag(bool),
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// It returned `ret` at `at` (time since the history started).
    Returned {
        /// When the answer arrived.
        at: Duration,
        /// The answer.
        ret: Ret,
    },
    /// Its outcome is unknown: it may or may not have taken effect, at any time after its
    /// invocation (a timeout, a connection lost in flight, a caller that gave up).
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Who ran it (a task or process number); only shown in reports.
    pub client: u64,
    /// The key it touched.
    pub key: Bytes,
    /// What it did.
    pub op: Op,
    /// When it was invoked, as time since the history started.
    pub invoked: Duration,
    /// How it ended.
    pub completion: Completion,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        let key = &self.key;
        match &self.op {
            Op::Get => write!(f, "get({key:?})")?,
            Op::Put(v) => write!(f, "put({key:?}, {v:?})")?,
            Op::Delete => write!(f, "delete({key:?})")?,
            Op::CompareAndSwap { expected, new } => {
                write!(f, "compare_and_swap({key:?}, {expected:?}, {new:?})")?;
            }
            Op::SetIfNotExists(v) => write!(f, "set_if_not_exists({key:?}, {v:?})")?,
            Op::GetAndDelete => write!(f, "get_and_delete({key:?})")?,
        }
        match &self.completion {
            Completion::Returned { at, ret } => {
                let ret = match ret {
                    Ret::Value(v) => format!("{v:?}"),
                    Ret::Written => "ok".to_owned(),
                    Ret::Flag(b) => b.to_string(),
                };
                write!(f, " -> {ret}  [{:?} .. {at:?}]", self.invoked)
            }
            Completion::Unknown => write!(f, " -> unknown outcome  [{:?} .. ]", self.invoked),
        }
    }
}

/// A handle on an invoked operation; pass it to [`History::returned`], [`History::unknown`]
/// or [`History::failed`]. An operation never completed counts as [`Completion::Unknown`].
#[derive(Debug)]
#[must_use = "record how the operation ended"]
pub struct Call(usize);

/// A concurrent history, recorded from any number of tasks (`&self` methods; share it in an
/// `Arc`), or built from [`Operation`]s with explicit times ([`History::push`]).
#[derive(Debug)]
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Option<Operation>>>,
    initial: Mutex<BTreeMap<Bytes, Bytes>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose clock starts now; every key starts absent.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            initial: Mutex::new(BTreeMap::new()),
        }
    }

    /// Declares the value `key` held before the history started (default: absent).
    pub fn set_initial(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        lock(&self.initial).insert(key.into(), value.into());
    }

    /// Records that `client` invokes `op` on `key` now. Call it right before starting the
    /// operation.
    pub fn invoke(&self, client: u64, key: impl Into<Bytes>, op: Op) -> Call {
        let key = key.into();
        let mut ops = lock(&self.ops);
        let invoked = self.start.elapsed();
        ops.push(Some(Operation {
            client,
            key,
            op,
            invoked,
            completion: Completion::Unknown,
        }));
        Call(ops.len() - 1)
    }

    /// Records that the operation returned `ret` now. Call it right after the answer arrived.
    #[allow(clippy::needless_pass_by_value)] // Taking the handle ends the call.
    pub fn returned(&self, call: Call, ret: Ret) {
        let mut ops = lock(&self.ops);
        let at = self.start.elapsed();
        if let Some(op) = ops[call.0].as_mut() {
            op.completion = Completion::Returned { at, ret };
        }
    }

    /// Records that the operation's outcome is unknown: it may or may not have taken effect.
    #[allow(clippy::needless_pass_by_value)] // Taking the handle ends the call.
    pub fn unknown(&self, call: Call) {
        if let Some(op) = lock(&self.ops)[call.0].as_mut() {
            op.completion = Completion::Unknown;
        }
    }

    /// Records that the operation failed without taking effect (a definite error such as
    /// invalid input): it is left out of the history.
    #[allow(clippy::needless_pass_by_value)] // Taking the handle ends the call.
    pub fn failed(&self, call: Call) {
        lock(&self.ops)[call.0] = None;
    }

    /// Adds an operation with explicit times (for histories recorded elsewhere, or tests).
    pub fn push(&self, operation: Operation) {
        lock(&self.ops).push(Some(operation));
    }

    /// The recorded operations, in invocation order of recording.
    pub fn operations(&self) -> Vec<Operation> {
        lock(&self.ops).iter().flatten().cloned().collect()
    }

    /// How many operations the history holds.
    pub fn len(&self) -> usize {
        lock(&self.ops).iter().flatten().count()
    }

    /// Whether the history holds no operation.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a successful [`check`] examined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linearized {
    /// Operations checked.
    pub operations: usize,
    /// Keys (independent sub-histories) checked.
    pub keys: usize,
    /// Operations whose outcome was unknown.
    pub unknown: usize,
}

/// A history with no valid order: the report names the key and the operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLinearizable {
    /// The key whose sub-history has no valid order.
    pub key: Bytes,
    /// The longest prefix of a valid order the search found, in that order.
    pub linearized: Vec<Operation>,
    /// The value the key held after that prefix.
    pub state: Option<Bytes>,
    /// The operations none of which can come next: every one not yet ordered that was invoked
    /// before the earliest return among them (one of them had to be next).
    pub stuck: Vec<Operation>,
    /// How many operations the key's sub-history holds.
    pub operations_on_key: usize,
    /// `true` when the search gave up (it examined [`SearchBudget::configurations`]
    /// configurations of this key without finding a valid order or exhausting them): the
    /// history was not shown linearizable, and not shown otherwise either.
    pub undecided: bool,
}

/// How much a [`check_within`] may search per key before it gives up undecided.
///
/// The search is polynomial on linearizable histories in practice, but proving that a
/// history has *no* valid order means examining every configuration (set of operations
/// ordered, register value) reachable before the violation, which grows quickly with the
/// number of overlapping operations. A budget turns a pathological search into an
/// `undecided` report instead of exhausting memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchBudget {
    /// Configurations memoised per key before the search gives up.
    pub configurations: usize,
}

impl Default for SearchBudget {
    /// Four million configurations per key (about 200 MB of memo at most).
    fn default() -> Self {
        Self {
            configurations: 4_000_000,
        }
    }
}

impl fmt::Display for NotLinearizable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.undecided {
            writeln!(
                f,
                "undecided: the search over the {} operations on key {:?} gave up (budget \
                 spent) before finding an order that explains their results",
                self.operations_on_key, self.key
            )?;
        } else {
            writeln!(
                f,
                "not linearizable: no order of the {} operations on key {:?} explains their \
                 results",
                self.operations_on_key, self.key
            )?;
        }
        writeln!(
            f,
            "longest valid prefix ({} operations), after which the key holds {:?}:",
            self.linearized.len(),
            self.state
        )?;
        let skip = self.linearized.len().saturating_sub(12);
        if skip > 0 {
            writeln!(f, "  ... {skip} earlier operations")?;
        }
        for op in &self.linearized[skip..] {
            writeln!(f, "  {op}")?;
        }
        writeln!(f, "none of these can come next:")?;
        for op in &self.stuck {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NotLinearizable {}

/// Checks `history` for linearizability against a map of registers (see the module docs),
/// within the default [`SearchBudget`].
pub fn check(history: &History) -> Result<Linearized, Box<NotLinearizable>> {
    check_within(history, SearchBudget::default())
}

/// Like [`check`], giving up (a report with [`NotLinearizable::undecided`]) on a key whose
/// search exceeds `budget`.
pub fn check_within(
    history: &History,
    budget: SearchBudget,
) -> Result<Linearized, Box<NotLinearizable>> {
    let ops = history.operations();
    let initial = lock(&history.initial).clone();
    let mut by_key: BTreeMap<Bytes, Vec<Operation>> = BTreeMap::new();
    for op in &ops {
        by_key.entry(op.key.clone()).or_default().push(op.clone());
    }
    let unknown = ops
        .iter()
        .filter(|op| op.completion == Completion::Unknown)
        .count();
    for (key, key_ops) in &by_key {
        check_register(key, initial.get(key).cloned(), key_ops, budget)?;
    }
    Ok(Linearized {
        operations: ops.len(),
        keys: by_key.len(),
        unknown,
    })
}

/// The register's value after a step.
struct Next(Option<Bytes>);

/// Applies `op` to a register holding `state`; `None` when `ret` (if known) cannot be its
/// answer, else the new state.
fn step(state: Option<&Bytes>, op: &Op, ret: Option<&Ret>) -> Option<Next> {
    let state = state.cloned();
    let (answer, next) = match op {
        Op::Get => (Ret::Value(state.clone()), state),
        Op::Put(v) => (Ret::Written, Some(v.clone())),
        Op::Delete => (Ret::Flag(state.is_some()), None),
        Op::CompareAndSwap { expected, new } => {
            if state == *expected {
                (Ret::Flag(true), new.clone())
            } else {
                (Ret::Flag(false), state)
            }
        }
        Op::SetIfNotExists(v) => {
            if state.is_some() {
                (Ret::Flag(false), state)
            } else {
                (Ret::Flag(true), Some(v.clone()))
            }
        }
        Op::GetAndDelete => (Ret::Value(state), None),
    };
    match ret {
        Some(ret) if *ret != answer => None,
        _ => Some(Next(next)),
    }
}

const NIL: usize = usize::MAX;

/// Wing–Gong–Lowe search over one key's operations.
fn check_register(
    key: &Bytes,
    initial: Option<Bytes>,
    ops: &[Operation],
    budget: SearchBudget,
) -> Result<(), Box<NotLinearizable>> {
    let n = ops.len();
    // Events: index 2i is the call of op i, 2i + 1 its return; sorted by time, calls first on
    // ties (equal times overlap).
    let ret_time = |op: &Operation| match &op.completion {
        Completion::Returned { at, .. } => *at,
        Completion::Unknown => Duration::MAX,
    };
    let mut events: Vec<usize> = (0..2 * n).collect();
    events.sort_by_key(|&e| {
        let op = &ops[e / 2];
        let time = if e % 2 == 0 { op.invoked } else { ret_time(op) };
        (time, e % 2)
    });
    // A doubly linked list over the sorted events; node 0 is the head sentinel, node j + 1 is
    // events[j].
    let len = 2 * n + 1;
    let mut next = vec![NIL; len];
    let mut prev = vec![NIL; len];
    let mut node_of_event = vec![0; 2 * n];
    for (j, &e) in events.iter().enumerate() {
        node_of_event[e] = j + 1;
    }
    for i in 0..len {
        next[i] = if i + 1 < len { i + 1 } else { NIL };
        prev[i] = if i == 0 { NIL } else { i - 1 };
    }
    let event_of_node = |node: usize| events[node - 1];

    // The set of linearized operations, as a Zobrist hash: a random 128-bit tag per operation,
    // XOR-ed in and out, so a step costs O(1) time and a memoised configuration 16 bytes plus
    // the value, whatever the history's length (a bitset per configuration made memory grow
    // with the square of the history). Two different sets collide with probability 2^-128.
    let tags: Vec<u128> = (0..n as u64).map(zobrist_tag).collect();
    let mut linearized: u128 = 0;
    let mut cache: HashSet<(u128, Option<Bytes>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<Bytes>)> = Vec::new();
    let mut state = initial;
    let mut best: (Vec<usize>, Option<Bytes>) = (Vec::new(), state.clone());
    let mut node = next[0];

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = nx;
        if nx != NIL {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = x;
        if nx != NIL {
            prev[nx] = x;
        }
    };

    while next[0] != NIL {
        let event = event_of_node(node);
        let op_index = event / 2;
        if event % 2 == 0 {
            let op = &ops[op_index];
            let ret = match &op.completion {
                Completion::Returned { ret, .. } => Some(ret),
                Completion::Unknown => None,
            };
            let mut moved = false;
            if let Some(Next(new_state)) = step(state.as_ref(), &op.op, ret) {
                let with = linearized ^ tags[op_index];
                if cache.len() >= budget.configurations {
                    if stack.len() > best.0.len() {
                        best = (stack.iter().map(|(i, _)| *i).collect(), state.clone());
                    }
                    let mut report = report(key, ops, &best);
                    report.undecided = true;
                    return Err(Box::new(report));
                }
                if cache.insert((with, new_state.clone())) {
                    stack.push((op_index, std::mem::replace(&mut state, new_state)));
                    linearized = with;
                    // Lift the call and its return out of the list.
                    let ret_node = node_of_event[event + 1];
                    unlink(&mut next, &mut prev, node);
                    unlink(&mut next, &mut prev, ret_node);
                    node = next[0];
                    moved = true;
                }
            }
            if !moved {
                node = next[node];
            }
        } else {
            // A return whose operation is not linearized yet: undo the last choice. The stack
            // is at a peak here, so this is where the longest valid prefix is kept (copying it
            // at every push would make a long linearizable history quadratic).
            if stack.len() > best.0.len() {
                best = (stack.iter().map(|(i, _)| *i).collect(), state.clone());
            }
            let Some((op_index, old_state)) = stack.pop() else {
                return Err(Box::new(report(key, ops, &best)));
            };
            state = old_state;
            linearized ^= tags[op_index];
            let call_node = node_of_event[2 * op_index];
            let ret_node = node_of_event[2 * op_index + 1];
            relink(&mut next, &mut prev, ret_node);
            relink(&mut next, &mut prev, call_node);
            node = next[call_node];
        }
    }
    Ok(())
}

/// The Zobrist tag of operation `i`: two rounds of splitmix64, fixed so reports repeat.
fn zobrist_tag(i: u64) -> u128 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let a = mix(i
        .wrapping_mul(2)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let b = mix(i
        .wrapping_mul(2)
        .wrapping_add(2)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (u128::from(a) << 64) | u128::from(b)
}

fn report(key: &Bytes, ops: &[Operation], best: &(Vec<usize>, Option<Bytes>)) -> NotLinearizable {
    let done: HashSet<usize> = best.0.iter().copied().collect();
    let ret_time = |op: &Operation| match &op.completion {
        Completion::Returned { at, .. } => *at,
        Completion::Unknown => Duration::MAX,
    };
    let first_return = (0..ops.len())
        .filter(|i| !done.contains(i))
        .map(|i| ret_time(&ops[i]))
        .min()
        .unwrap_or(Duration::MAX);
    let mut stuck: Vec<Operation> = (0..ops.len())
        .filter(|i| !done.contains(i) && ops[*i].invoked <= first_return)
        .map(|i| ops[i].clone())
        .collect();
    stuck.sort_by_key(|op| op.invoked);
    NotLinearizable {
        key: key.clone(),
        linearized: best.0.iter().map(|&i| ops[i].clone()).collect(),
        state: best.1.clone(),
        stuck,
        operations_on_key: ops.len(),
        undecided: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// An operation on key "k" by `client`, invoked at `from` ms and returned at `to` ms.
    fn op(client: u64, op: Op, from: u64, to: u64, ret: Ret) -> Operation {
        Operation {
            client,
            key: v("k"),
            op,
            invoked: ms(from),
            completion: Completion::Returned { at: ms(to), ret },
        }
    }

    fn history(ops: Vec<Operation>) -> History {
        let h = History::new();
        for o in ops {
            h.push(o);
        }
        h
    }

    #[test]
    fn sequential_put_then_get_is_linearizable() {
        let h = history(vec![
            op(1, Op::Put(v("a")), 0, 1, Ret::Written),
            op(2, Op::Get, 2, 3, Ret::Value(Some(v("a")))),
        ]);
        let summary = check(&h).unwrap();
        assert_eq!(summary.operations, 2);
        assert_eq!(summary.keys, 1);
    }

    #[test]
    fn overlapping_reads_may_see_old_or_new_value_in_a_consistent_order() {
        // put(a) overlaps two gets: the first sees a, the second (after it) must too.
        let h = history(vec![
            op(1, Op::Put(v("a")), 0, 10, Ret::Written),
            op(2, Op::Get, 1, 2, Ret::Value(Some(v("a")))),
            op(3, Op::Get, 3, 4, Ret::Value(None)),
        ]);
        let err = check(&h).unwrap_err();
        assert_eq!(err.key, v("k"));
        // The new value was seen, then the old one again: not linearizable.
        let text = err.to_string();
        assert!(text.contains("client 3 get"), "{text}");

        let ok = history(vec![
            op(1, Op::Put(v("a")), 0, 10, Ret::Written),
            op(2, Op::Get, 1, 2, Ret::Value(None)),
            op(3, Op::Get, 3, 4, Ret::Value(Some(v("a")))),
        ]);
        check(&ok).unwrap();
    }

    #[test]
    fn stale_read_after_acknowledged_write_fails_and_names_the_operations() {
        let h = history(vec![
            op(1, Op::Put(v("a")), 0, 1, Ret::Written),
            op(1, Op::Put(v("b")), 2, 3, Ret::Written),
            op(2, Op::Get, 4, 5, Ret::Value(Some(v("a")))),
        ]);
        let err = check(&h).unwrap_err();
        assert_eq!(err.linearized.len(), 2);
        assert_eq!(err.state, Some(v("b")));
        assert_eq!(err.stuck.len(), 1);
        assert_eq!(err.stuck[0].client, 2);
        let text = err.to_string();
        assert!(text.contains("put(b\"k\", b\"b\")"), "{text}");
        assert!(
            text.contains("client 2 get(b\"k\") -> Some(b\"a\")"),
            "{text}"
        );
    }

    #[test]
    fn a_search_over_budget_is_reported_undecided_not_passed() {
        let h = history(vec![
            op(1, Op::Put(v("a")), 0, 1, Ret::Written),
            op(1, Op::Put(v("b")), 2, 3, Ret::Written),
            op(2, Op::Get, 4, 5, Ret::Value(Some(v("a")))),
        ]);
        let err = check_within(&h, SearchBudget { configurations: 1 }).unwrap_err();
        assert!(err.undecided);
        assert!(err.to_string().starts_with("undecided"), "{err}");
        let err = check(&h).unwrap_err();
        assert!(!err.undecided);
        assert!(err.to_string().starts_with("not linearizable"), "{err}");
        // A linearizable history within budget is decided.
        let ok = history(vec![op(1, Op::Put(v("a")), 0, 1, Ret::Written)]);
        check_within(&ok, SearchBudget { configurations: 1 }).unwrap();
    }

    #[test]
    fn two_winners_of_set_if_not_exists_are_caught() {
        let h = history(vec![
            op(1, Op::SetIfNotExists(v("a")), 0, 5, Ret::Flag(true)),
            op(2, Op::SetIfNotExists(v("b")), 1, 6, Ret::Flag(true)),
        ]);
        assert!(check(&h).is_err());
        let one = history(vec![
            op(1, Op::SetIfNotExists(v("a")), 0, 5, Ret::Flag(true)),
            op(2, Op::SetIfNotExists(v("b")), 1, 6, Ret::Flag(false)),
            op(3, Op::Get, 7, 8, Ret::Value(Some(v("a")))),
        ]);
        check(&one).unwrap();
    }

    #[test]
    fn compare_and_swap_and_get_and_delete_follow_the_register() {
        let h = history(vec![
            op(1, Op::Put(v("1")), 0, 1, Ret::Written),
            op(
                2,
                Op::CompareAndSwap {
                    expected: Some(v("1")),
                    new: Some(v("2")),
                },
                2,
                5,
                Ret::Flag(true),
            ),
            op(
                3,
                Op::CompareAndSwap {
                    expected: Some(v("1")),
                    new: Some(v("3")),
                },
                3,
                6,
                Ret::Flag(false),
            ),
            op(1, Op::GetAndDelete, 7, 8, Ret::Value(Some(v("2")))),
            op(2, Op::Delete, 9, 10, Ret::Flag(false)),
        ]);
        check(&h).unwrap();
        // Both swaps from "1" cannot succeed.
        let bad = history(vec![
            op(1, Op::Put(v("1")), 0, 1, Ret::Written),
            op(
                2,
                Op::CompareAndSwap {
                    expected: Some(v("1")),
                    new: Some(v("2")),
                },
                2,
                5,
                Ret::Flag(true),
            ),
            op(
                3,
                Op::CompareAndSwap {
                    expected: Some(v("1")),
                    new: Some(v("3")),
                },
                3,
                6,
                Ret::Flag(true),
            ),
        ]);
        assert!(check(&bad).is_err());
    }

    #[test]
    fn unknown_outcome_may_or_may_not_take_effect_but_only_once() {
        let unknown_put = |from| Operation {
            client: 9,
            key: v("k"),
            op: Op::Put(v("x")),
            invoked: ms(from),
            completion: Completion::Unknown,
        };
        // Taken effect (seen later) is fine.
        check(&history(vec![
            unknown_put(0),
            op(1, Op::Get, 5, 6, Ret::Value(Some(v("x")))),
        ]))
        .unwrap();
        // Never taken effect is fine.
        check(&history(vec![
            unknown_put(0),
            op(1, Op::Get, 5, 6, Ret::Value(None)),
        ]))
        .unwrap();
        // Seen, then gone without any delete: not fine.
        let err = check(&history(vec![
            unknown_put(0),
            op(1, Op::Get, 5, 6, Ret::Value(Some(v("x")))),
            op(1, Op::Get, 7, 8, Ret::Value(None)),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("unknown outcome"), "{err}");
        // An effect can never precede the invocation.
        assert!(
            check(&history(vec![
                op(1, Op::Get, 0, 1, Ret::Value(Some(v("x")))),
                unknown_put(2),
            ]))
            .is_err()
        );
    }

    #[test]
    fn keys_are_checked_independently_and_initial_values_count() {
        let h = History::new();
        h.set_initial("k", "init");
        h.push(op(1, Op::Get, 0, 1, Ret::Value(Some(v("init")))));
        h.push(Operation {
            key: v("other"),
            ..op(2, Op::Get, 0, 1, Ret::Value(None))
        });
        let s = check(&h).unwrap();
        assert_eq!(s.keys, 2);
        h.push(Operation {
            key: v("other"),
            ..op(2, Op::Get, 2, 3, Ret::Value(Some(v("init"))))
        });
        let err = check(&h).unwrap_err();
        assert_eq!(err.key, v("other"));
    }

    #[test]
    fn recording_through_calls_marks_unfinished_operations_unknown() {
        let h = History::new();
        let put = h.invoke(1, "k", Op::Put(v("a")));
        let failed = h.invoke(2, "k", Op::Put(v("b")));
        h.failed(failed);
        let get = h.invoke(3, "k", Op::Get);
        h.returned(get, Ret::Value(Some(v("a"))));
        drop(put);
        assert_eq!(h.len(), 2);
        let s = check(&h).unwrap();
        assert_eq!(s.unknown, 1);
        // The failed put of "b" is gone: reading it cannot be explained.
        let get = h.invoke(3, "k", Op::Get);
        h.returned(get, Ret::Value(Some(v("b"))));
        assert!(check(&h).is_err());
    }

    /// A long single-key history (100,000 sequential operations) checks in linear memory:
    /// the memo holds a fixed-size hash of each configuration, not a bitset of the history.
    #[test]
    fn a_long_history_checks_quickly() {
        let h = History::new();
        for i in 0..100_000u64 {
            let (op, ret) = if i % 2 == 0 {
                (Op::Put(v(&i.to_string())), Ret::Written)
            } else {
                (Op::Get, Ret::Value(Some(v(&(i - 1).to_string()))))
            };
            h.push(Operation {
                client: i % 4,
                key: v("k"),
                op,
                invoked: Duration::from_micros(10 * i),
                completion: Completion::Returned {
                    at: Duration::from_micros(10 * i + 5),
                    ret,
                },
            });
        }
        let started = Instant::now();
        assert_eq!(check(&h).unwrap().operations, 100_000);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    /// A simulated linearizable register with 8 clients and heavy overlap: every history
    /// passes, and the check stays fast (memoisation).
    #[test]
    fn random_linearizable_histories_of_800_operations_pass_quickly() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let started = Instant::now();
        for round in 0..5 {
            let h = History::new();
            let mut state: Option<Bytes> = None;
            // Each op has a linearization point at time t (10 us steps); its interval
            // stretches randomly around it.
            for t in 0..800u64 {
                let client = rand(8);
                let op = match rand(6) {
                    0 => Op::Get,
                    1 => Op::Put(v(&format!("{round}.{t}"))),
                    2 => Op::Delete,
                    3 => Op::CompareAndSwap {
                        expected: if rand(2) == 0 { state.clone() } else { None },
                        new: Some(v(&format!("c{t}"))),
                    },
                    4 => Op::SetIfNotExists(v(&format!("s{t}"))),
                    _ => Op::GetAndDelete,
                };
                let Some(Next(next)) = step(state.as_ref(), &op, None) else {
                    unreachable!("an operation without a known answer always applies")
                };
                let ret = match &op {
                    Op::Get | Op::GetAndDelete => Ret::Value(state.clone()),
                    Op::Put(_) => Ret::Written,
                    Op::Delete => Ret::Flag(state.is_some()),
                    Op::CompareAndSwap { expected, .. } => Ret::Flag(*expected == state),
                    Op::SetIfNotExists(_) => Ret::Flag(state.is_none()),
                };
                state = next;
                let point = t * 10;
                let from = point.saturating_sub(rand(40));
                let to = point + rand(40);
                h.push(Operation {
                    client,
                    key: v("k"),
                    op,
                    invoked: Duration::from_micros(from),
                    completion: Completion::Returned {
                        at: Duration::from_micros(to),
                        ret,
                    },
                });
            }
            let s = check(&h).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.operations, 800);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }
}
