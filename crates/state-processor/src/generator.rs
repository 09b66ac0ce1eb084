//! The deterministic synthetic event stream.
//!
//! Every event is a pure function of `(stream parameters, offset)`: its random draws come from
//! a SplitMix64 generator seeded with a hash of the seed and the offset. So event N is the same
//! in every run, and a resumed run jumps straight to its stored offset without replaying the
//! events before it. SplitMix64 is written out here (rather than taken from `rand`) because
//! resuming depends on the stream never changing: a `rand` upgrade that changed an algorithm
//! would silently make stored state disagree with the regenerated stream.

use serde::{Deserialize, Serialize};

/// Event-time milliseconds between two consecutive source events (event N happens at N ms).
pub(crate) const EVENT_INTERVAL_MS: u64 = 1;

/// How far back, in source events, a redelivered event can come from.
pub(crate) const REDELIVERY_LOOKBACK: u64 = 2_000;

/// The parameters that define the stream; a resumed run must use the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct StreamSpec {
    /// Seed of every random draw.
    pub(crate) seed: u64,
    /// Number of distinct keys (users).
    pub(crate) keys: u32,
    /// Fraction of source events that re-deliver an earlier event.
    pub(crate) dup_rate: f64,
}

impl StreamSpec {
    /// Whether two specs generate the same stream (bitwise comparison of the rate).
    pub(crate) fn same_stream(&self, other: &Self) -> bool {
        self.seed == other.seed
            && self.keys == other.keys
            && self.dup_rate.to_bits() == other.dup_rate.to_bits()
    }
}

/// One event as delivered by the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Event {
    /// Position in the source stream (what the processor's offset counts).
    pub(crate) offset: u64,
    /// The event's unique id; a redelivery carries the id of the event it repeats.
    pub(crate) id: u64,
    /// The key (user) the event belongs to, `0..keys`.
    pub(crate) key: u32,
    /// Event time in milliseconds since the start of the stream.
    pub(crate) ts_ms: u64,
    /// Whether the source re-delivered an earlier event here (ground truth for the report).
    pub(crate) redelivery: bool,
}

/// SplitMix64's output function: a bijection on `u64` with good avalanche.
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: a tiny, fast, portable pseudo-random generator.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    /// The generator's state.
    state: u64,
}

impl SplitMix64 {
    /// SplitMix64's increment (the golden ratio in 64-bit fixed point).
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    /// A generator starting at `seed`.
    pub(crate) const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        mix64(self.state)
    }

    /// A uniform float in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Generates the events of a [`StreamSpec`] at any offset.
#[derive(Debug, Clone)]
pub(crate) struct Generator {
    /// The stream parameters.
    spec: StreamSpec,
    /// Hash of the seed, mixed into every per-event seed and id.
    seed_hash: u64,
    /// `ln(keys + 1)`, for the Zipf-like key draw.
    ln_keys: f64,
    /// Multiplier of the rank-to-key permutation (coprime with `keys`).
    perm_mul: u64,
    /// Offset of the rank-to-key permutation.
    perm_add: u64,
}

impl Generator {
    /// A generator for `spec`.
    pub(crate) fn new(spec: StreamSpec) -> Self {
        let keys = u64::from(spec.keys.max(1));
        let seed_hash = mix64(spec.seed ^ 0x5EED_F00D_CAFE_BEEF);
        // The most popular ranks land on seed-dependent keys rather than on user:0, user:1..
        let mut perm_mul = (mix64(seed_hash ^ 1) % keys) | 1;
        while gcd(perm_mul, keys) != 1 {
            perm_mul += 2;
        }
        Self {
            spec,
            seed_hash,
            ln_keys: (keys as f64 + 1.0).ln(),
            perm_mul,
            perm_add: mix64(seed_hash ^ 2) % keys,
        }
    }

    /// The random generator of the event at `offset`.
    fn rng_at(&self, offset: u64) -> SplitMix64 {
        SplitMix64::new(mix64(
            self.seed_hash ^ offset.wrapping_mul(0xD6E8_FEB8_6659_FD93),
        ))
    }

    /// The source offset of the event a redelivery at `offset` repeats, if it is one.
    fn redelivers(&self, offset: u64) -> Option<u64> {
        if offset == 0 {
            return None;
        }
        let mut rng = self.rng_at(offset);
        if rng.next_f64() >= self.spec.dup_rate {
            return None;
        }
        let back = 1 + rng.next_u64() % offset.min(REDELIVERY_LOOKBACK);
        Some(offset - back)
    }

    /// The key of the original event at `offset`: a Zipf-like (exponent ~1) rank, permuted.
    fn key_at(&self, offset: u64) -> u32 {
        let keys = u64::from(self.spec.keys.max(1));
        let mut rng = self.rng_at(offset);
        rng.next_u64(); // the redelivery draws
        rng.next_u64();
        // Inverse CDF of the density 1/x on [1, keys + 1]: P(rank = r) ~ ln((r+2)/(r+1)).
        let rank = ((rng.next_f64() * self.ln_keys).exp() as u64)
            .saturating_sub(1)
            .min(keys - 1);
        ((u128::from(rank) * u128::from(self.perm_mul) + u128::from(self.perm_add))
            % u128::from(keys)) as u32
    }

    /// The event delivered at source `offset`.
    pub(crate) fn event(&self, offset: u64) -> Event {
        // A redelivery repeats an earlier event, which may itself be a redelivery: follow the
        // chain to the original (each step is a 5% chance, so chains are short).
        let mut origin = offset;
        while let Some(earlier) = self.redelivers(origin) {
            origin = earlier;
        }
        Event {
            offset,
            id: snowflake_id(origin * EVENT_INTERVAL_MS, self.seed_hash ^ origin),
            key: self.key_at(origin),
            ts_ms: origin * EVENT_INTERVAL_MS,
            redelivery: origin != offset,
        }
    }
}

/// A Snowflake-style event id: the event time in the high 44 bits, 20 bits of the origin's
/// hash below, so ids sort by time (as producer-assigned ids usually do) and, with at most one
/// event per millisecond, never collide.
const fn snowflake_id(ts_ms: u64, entropy: u64) -> u64 {
    (ts_ms << 20) | (mix64(entropy) & 0xF_FFFF)
}

/// Greatest common divisor.
const fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn spec() -> StreamSpec {
        StreamSpec {
            seed: 42,
            keys: 10_000,
            dup_rate: 0.05,
        }
    }

    #[test]
    fn events_are_deterministic_and_skip_to_any_offset() {
        let a = Generator::new(spec());
        let b = Generator::new(spec());
        let sequential: Vec<Event> = (0..50_000).map(|n| a.event(n)).collect();
        // A "resumed" generator asked for a late offset first gives the same events.
        for n in (25_000..50_000).rev() {
            assert_eq!(b.event(n), sequential[n as usize]);
        }
        let other_seed = Generator::new(StreamSpec { seed: 7, ..spec() });
        assert_ne!(other_seed.event(123), sequential[123]);
    }

    #[test]
    fn redeliveries_repeat_an_earlier_event() {
        let g = Generator::new(spec());
        let mut by_id: HashMap<u64, Event> = HashMap::new();
        let mut redeliveries = 0u64;
        for n in 0..100_000 {
            let ev = g.event(n);
            assert_eq!(ev.offset, n);
            if ev.redelivery {
                redeliveries += 1;
                let first = by_id
                    .get(&ev.id)
                    .expect("a redelivery repeats a delivered event");
                assert_eq!((first.key, first.ts_ms), (ev.key, ev.ts_ms));
                assert!(first.offset < n);
            } else {
                assert_eq!(ev.ts_ms, n * EVENT_INTERVAL_MS);
                assert!(by_id.insert(ev.id, ev).is_none(), "original ids are unique");
            }
        }
        // ~5% redeliveries.
        assert!((4_000..6_000).contains(&redeliveries), "{redeliveries}");
    }

    #[test]
    fn keys_are_skewed_and_in_range() {
        let g = Generator::new(spec());
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for n in 0..100_000 {
            let key = g.event(n).key;
            assert!(key < 10_000);
            *counts.entry(key).or_default() += 1;
        }
        let top = counts.values().max().copied().unwrap();
        // Uniform would give ~10 per key; the hottest key takes several percent of traffic.
        assert!(top > 3_000, "{top}");
        assert!(counts.len() > 2_000, "{}", counts.len());
    }
}
