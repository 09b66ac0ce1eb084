//! Tumbling windows: assignment, state keys and the summary of a closed window.

use std::cmp::Reverse;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How many keys a window summary ranks.
pub(crate) const TOP_K: usize = 3;

/// The tumbling window (index) an event time falls into: `[n * size, (n + 1) * size)`.
pub(crate) const fn window_of(ts_ms: u64, window_ms: u64) -> u64 {
    ts_ms / window_ms
}

/// The state key of a deduplication marker: `dedup:<id as 16 hex digits>`.
pub(crate) fn dedup_key(id: u64) -> [u8; 22] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = *b"dedup:0000000000000000";
    for (i, slot) in key[6..].iter_mut().enumerate() {
        *slot = HEX[((id >> (60 - 4 * i)) & 0xF) as usize];
    }
    key
}

/// The prefix of every count key of `window`: `count:<window>:`.
pub(crate) fn count_prefix(window: u64) -> String {
    format!("count:{window}:")
}

/// The state key of one key's count in one window: `count:<window>:<key>`.
pub(crate) fn count_key(window: u64, key: u32) -> Vec<u8> {
    format!("count:{window}:{key}").into_bytes()
}

/// The window and key of a count key `count:<window>:<key>`.
pub(crate) fn parse_any_count_key(key: &[u8]) -> Option<(u64, u32)> {
    let rest = std::str::from_utf8(key.strip_prefix(b"count:")?).ok()?;
    let (window, key) = rest.split_once(':')?;
    Some((window.parse().ok()?, key.parse().ok()?))
}

/// Encodes a count as stored (8 bytes little-endian).
pub(crate) const fn encode_count(count: u64) -> [u8; 8] {
    count.to_le_bytes()
}

/// Decodes a stored count; anything that is not 8 bytes reads as corrupted.
pub(crate) fn decode_count(bytes: &[u8]) -> anyhow::Result<u64> {
    let raw: [u8; 8] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("a count value is {} bytes, not 8", bytes.len()))?;
    Ok(u64::from_le_bytes(raw))
}

/// The state key of a closed window's summary: `window:<window>`.
pub(crate) fn summary_key(window: u64) -> Vec<u8> {
    format!("window:{window}").into_bytes()
}

/// The `k` keys with the highest counts, highest first; equal counts rank the lower key first,
/// so the result does not depend on the order the counts are read in.
pub(crate) fn top_k(counts: impl IntoIterator<Item = (u32, u64)>, k: usize) -> Vec<(u32, u64)> {
    let mut all: Vec<(u32, u64)> = counts.into_iter().collect();
    let rank = |&(key, count): &(u32, u64)| (Reverse(count), key);
    if all.len() > k {
        all.select_nth_unstable_by_key(k, rank);
        all.truncate(k);
    }
    all.sort_unstable_by_key(rank);
    all
}

/// What is kept of a window once it closes (stored under `window:<n>` with `put_typed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WindowSummary {
    /// The window index.
    pub(crate) window: u64,
    /// Start of the window, event-time milliseconds (inclusive).
    pub(crate) start_ms: u64,
    /// End of the window, event-time milliseconds (exclusive).
    pub(crate) end_ms: u64,
    /// Events counted in the window (duplicates excluded).
    pub(crate) total: u64,
    /// Keys with at least one event.
    pub(crate) distinct_keys: u64,
    /// The busiest keys and their counts, busiest first.
    pub(crate) top: Vec<(u32, u64)>,
}

impl WindowSummary {
    /// Summarizes `window` from its per-key counts.
    pub(crate) fn from_counts(window: u64, window_ms: u64, counts: &[(u32, u64)]) -> Self {
        Self {
            window,
            start_ms: window * window_ms,
            end_ms: (window + 1) * window_ms,
            total: counts.iter().map(|(_, c)| c).sum(),
            distinct_keys: counts.len() as u64,
            top: top_k(counts.iter().copied(), TOP_K),
        }
    }
}

impl fmt::Display for WindowSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "window {:>4} [{:>9.3}s, {:>9.3}s): {:>6} events, {:>5} keys, top:",
            self.window,
            self.start_ms as f64 / 1000.0,
            self.end_ms as f64 / 1000.0,
            self.total,
            self.distinct_keys,
        )?;
        for (key, count) in &self.top {
            write!(f, " user:{key}={count}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_tumbling() {
        assert_eq!(window_of(0, 10_000), 0);
        assert_eq!(window_of(9_999, 10_000), 0);
        assert_eq!(window_of(10_000, 10_000), 1);
        assert_eq!(window_of(25_000, 10_000), 2);
        assert_eq!(window_of(25_000, 1), 25_000);
    }

    #[test]
    fn top_k_ranks_by_count_then_key() {
        let counts = [(5, 10), (1, 30), (9, 20), (2, 20), (7, 1)];
        assert_eq!(top_k(counts, 3), vec![(1, 30), (2, 20), (9, 20)]);
        assert_eq!(top_k(counts, 10).len(), 5);
        assert_eq!(top_k([(3, 1)], 3), vec![(3, 1)]);
        assert!(top_k([], 3).is_empty());
        // The order counts arrive in does not matter.
        let mut reversed = counts;
        reversed.reverse();
        assert_eq!(top_k(reversed, 3), top_k(counts, 3));
    }

    #[test]
    fn summary_totals_and_keys() {
        let s = WindowSummary::from_counts(3, 10_000, &[(1, 4), (2, 6), (3, 1), (4, 6)]);
        assert_eq!(
            (s.start_ms, s.end_ms, s.total, s.distinct_keys),
            (30_000, 40_000, 17, 4)
        );
        assert_eq!(s.top, vec![(2, 6), (4, 6), (1, 4)]);
    }

    #[test]
    fn state_keys_round_trip() {
        assert_eq!(&dedup_key(0xDEAD_BEEF), b"dedup:00000000deadbeef");
        assert_eq!(count_key(12, 345), b"count:12:345");
        assert!(count_key(12, 345).starts_with(count_prefix(12).as_bytes()));
        assert!(!count_key(123, 45).starts_with(count_prefix(12).as_bytes()));
        assert_eq!(parse_any_count_key(b"count:12:345"), Some((12, 345)));
        assert_eq!(parse_any_count_key(b"count:12"), None);
        assert_eq!(parse_any_count_key(b"window:12:3"), None);
        assert_eq!(decode_count(&encode_count(77)).unwrap(), 77);
        assert!(decode_count(b"abc").is_err());
    }
}
