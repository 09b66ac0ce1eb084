//! Write versions per key stripe: how the L1 cache knows a cached copy may be stale.
//!
//! Every write to the inner backend (local, or announced by another instance) counts as
//! *started* before it reaches the inner backend and *finished* after, on the stripe its key
//! hashes to. A cached slot records the stripe's `started` count when its value was read or
//! written, and is served only while that count has not moved: any write to a key of the
//! stripe that started later makes the slot a miss, even if the slot was inserted after that
//! write's own invalidation (the race that makes plain cache-aside serve stale data). Fills and
//! write-through inserts also require that no write of the stripe was in flight, because a
//! write that started earlier may land in the inner backend after the one being cached.
//!
//! A global generation covers `clear`, `delete_prefix`, `restore` and lost invalidation
//! messages: bumping it turns every cached slot into a miss.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// Number of stripes (a power of two). Unrelated keys sharing a stripe only cost an
/// occasional extra miss.
const STRIPES: usize = 4096;

#[derive(Default)]
#[repr(align(64))]
struct Stripe {
    started: AtomicU64,
    finished: AtomicU64,
}

/// What a slot must match to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    started: u64,
    generation: u64,
}

/// A write in progress; see [`Versions::begin_write`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteTicket {
    stripe: usize,
    /// The stripe's `started` count including this write.
    started: u64,
    /// Whether every earlier write of the stripe had finished when this one started.
    alone: bool,
    generation: u64,
}

pub(crate) struct Versions {
    stripes: Box<[Stripe]>,
    generation: AtomicU64,
    hasher: foldhash::fast::FixedState,
}

impl std::fmt::Debug for Versions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Versions")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Versions {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            generation: AtomicU64::new(0),
            hasher: foldhash::fast::FixedState::with_seed(0x5354_4154),
        }
    }

    fn stripe_of(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) as usize) & (STRIPES - 1)
    }

    /// The stamp a slot filled now would carry, or `None` when a write of the key's stripe is
    /// in flight (a value read now must not be cached).
    pub(crate) fn fill_stamp(&self, key: &[u8]) -> Option<Stamp> {
        let stripe = &self.stripes[self.stripe_of(key)];
        let generation = self.generation.load(Ordering::Acquire);
        let started = stripe.started.load(Ordering::Acquire);
        let finished = stripe.finished.load(Ordering::Acquire);
        (started == finished).then_some(Stamp {
            started,
            generation,
        })
    }

    /// Whether a slot stamped `stamp` may still be served.
    pub(crate) fn is_current(&self, key: &[u8], stamp: Stamp) -> bool {
        let stripe = &self.stripes[self.stripe_of(key)];
        stripe.started.load(Ordering::Acquire) == stamp.started
            && self.generation.load(Ordering::Acquire) == stamp.generation
    }

    /// Marks a write of `key` as started; call before it reaches the inner backend.
    pub(crate) fn begin_write(&self, key: &[u8]) -> WriteTicket {
        let index = self.stripe_of(key);
        let stripe = &self.stripes[index];
        let generation = self.generation.load(Ordering::Acquire);
        let before = stripe.started.fetch_add(1, Ordering::AcqRel);
        let finished = stripe.finished.load(Ordering::Acquire);
        WriteTicket {
            stripe: index,
            started: before + 1,
            alone: finished == before,
            generation,
        }
    }

    /// Marks the write finished; returns the stamp under which its value may be cached
    /// (write-through), or `None` when another write of the stripe overlapped it.
    pub(crate) fn end_write(&self, ticket: WriteTicket) -> Option<Stamp> {
        let stripe = &self.stripes[ticket.stripe];
        stripe.finished.fetch_add(1, Ordering::AcqRel);
        let latest = stripe.started.load(Ordering::Acquire);
        (ticket.alone && latest == ticket.started).then_some(Stamp {
            started: ticket.started,
            generation: ticket.generation,
        })
    }

    /// Records a write another instance made (already finished): slots of its stripe turn
    /// into misses.
    pub(crate) fn remote_write(&self, key: &[u8]) {
        let stripe = &self.stripes[self.stripe_of(key)];
        stripe.started.fetch_add(1, Ordering::AcqRel);
        stripe.finished.fetch_add(1, Ordering::AcqRel);
    }

    /// Turns every cached slot into a miss.
    pub(crate) fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_writes_are_not_cached() {
        let v = Versions::new();
        let a = v.begin_write(b"k");
        let b = v.begin_write(b"k");
        assert_eq!(v.end_write(a), None, "b started after a");
        assert_eq!(v.end_write(b), None, "a was in flight when b started");
        let c = v.begin_write(b"k");
        let stamp = v.end_write(c).expect("alone");
        assert!(v.is_current(b"k", stamp));
        v.remote_write(b"k");
        assert!(!v.is_current(b"k", stamp));
    }

    #[test]
    fn fills_wait_for_writes_in_flight_and_generation_invalidates() {
        let v = Versions::new();
        let w = v.begin_write(b"k");
        assert_eq!(v.fill_stamp(b"k"), None);
        v.end_write(w);
        let stamp = v.fill_stamp(b"k").expect("no write in flight");
        assert!(v.is_current(b"k", stamp));
        v.bump_generation();
        assert!(!v.is_current(b"k", stamp));
    }
}
