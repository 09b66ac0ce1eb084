//! Key and value size limits, and the checks every backend runs before touching its engine.

use std::time::{Duration, Instant};

use crate::{StateError, StateResult};

/// The default largest key, in bytes, every backend accepts (PostgreSQL's B-tree index caps
/// keys at about 2.7 KB, so a portable limit sits below that).
pub const DEFAULT_MAX_KEY_SIZE: usize = 2048;

/// The default largest value, in bytes.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 64 * 1024 * 1024;

/// The shortest TTL every backend accepts: one millisecond, the resolution every backend keeps.
pub const MIN_TTL: Duration = Duration::from_millis(1);

/// The longest TTL every backend accepts: 100 years of 365 days (3,153,600,000 s,
/// 3,153,600,000,000 ms).
///
/// One rule for every backend, chosen so that each one represents it exactly, with room to
/// spare: Redis `PX` takes an `i64` of milliseconds (2.9 × 10^8 years), PostgreSQL adds it to
/// `now()` as an `interval` and must stay below `timestamptz`'s year 294276, sled stores the
/// expiry as `u64` Unix milliseconds, and `Instant` plus 100 years fits every platform's clock.
/// A longer TTL is [`crate::ErrorKind::InvalidInput`] on every backend: never a panic, never a
/// wrap-around to a short TTL. For data that should never expire, write it without a TTL.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Size limits a backend enforces on every write and key lookup.
///
/// Oversized input is refused with [`crate::ErrorKind::InvalidInput`] before it reaches the
/// engine: never truncated, never a panic.
///
/// TTLs follow one rule on every backend, checked by [`Limits::check_ttl`]: from [`MIN_TTL`]
/// (1 ms) to [`MAX_TTL`] (100 years), both included; anything else is `InvalidInput`.
/// Backends turn a TTL into an expiry with checked additions ([`Limits::deadline_after`],
/// [`Limits::expiry_ms_after`]), so no TTL panics or wraps around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted key, in bytes. Keys must also be non-empty.
    pub max_key_size: usize,
    /// Largest accepted value, in bytes. Empty values are allowed.
    pub max_value_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_size: DEFAULT_MAX_KEY_SIZE,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
        }
    }
}

impl Limits {
    /// Checks a key: non-empty and at most `max_key_size` bytes.
    #[inline]
    pub fn check_key(&self, key: &[u8]) -> StateResult<()> {
        if key.is_empty() {
            return Err(StateError::invalid_input("key must not be empty"));
        }
        if key.len() > self.max_key_size {
            return Err(StateError::invalid_input(format!(
                "key is {} bytes, over the limit of {} bytes",
                key.len(),
                self.max_key_size
            )));
        }
        Ok(())
    }

    /// Checks a value: at most `max_value_size` bytes.
    #[inline]
    pub fn check_value(&self, value: &[u8]) -> StateResult<()> {
        if value.len() > self.max_value_size {
            return Err(StateError::invalid_input(format!(
                "value is {} bytes, over the limit of {} bytes",
                value.len(),
                self.max_value_size
            )));
        }
        Ok(())
    }

    /// Checks a key and a value together.
    #[inline]
    pub fn check_entry(&self, key: &[u8], value: &[u8]) -> StateResult<()> {
        self.check_key(key)?;
        self.check_value(value)
    }

    /// Checks every key of a batch before any is used, so a bad key rejects the whole batch.
    #[inline]
    pub fn check_keys(&self, keys: &[&[u8]]) -> StateResult<()> {
        keys.iter().try_for_each(|key| self.check_key(key))
    }

    /// Checks every entry of a batch before any is written.
    #[inline]
    pub fn check_entries(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        entries
            .iter()
            .try_for_each(|(key, value)| self.check_entry(key, value))
    }

    /// Checks the arguments of `compare_and_swap`: the key, and the new value when there is
    /// one (the expected value is only compared, never stored).
    #[inline]
    pub fn check_swap(&self, key: &[u8], new: Option<&[u8]>) -> StateResult<()> {
        self.check_key(key)?;
        new.map_or(Ok(()), |value| self.check_value(value))
    }

    /// Checks an optional TTL (see [`Limits::check_ttl`]).
    #[inline]
    pub fn check_optional_ttl(ttl: Option<Duration>) -> StateResult<()> {
        ttl.map_or(Ok(()), Self::check_ttl)
    }

    /// Checks a prefix: it may be empty (everything), but not longer than a key.
    #[inline]
    pub fn check_prefix(&self, prefix: &[u8]) -> StateResult<()> {
        if prefix.len() > self.max_key_size {
            return Err(StateError::invalid_input(format!(
                "prefix is {} bytes, over the key limit of {} bytes",
                prefix.len(),
                self.max_key_size
            )));
        }
        Ok(())
    }

    /// Checks a TTL: from [`MIN_TTL`] (1 ms) to [`MAX_TTL`] (100 years), both included.
    /// Anything else is [`crate::ErrorKind::InvalidInput`]. Sub-millisecond parts of a valid
    /// TTL are dropped by backends that keep milliseconds.
    #[inline]
    pub fn check_ttl(ttl: Duration) -> StateResult<()> {
        if ttl < MIN_TTL {
            return Err(StateError::invalid_input(
                "ttl must be at least 1 millisecond",
            ));
        }
        if ttl > MAX_TTL {
            return Err(StateError::invalid_input(format!(
                "ttl of {ttl:?} is over the maximum of {} s (100 years); write without a ttl for data that never expires",
                MAX_TTL.as_secs()
            )));
        }
        Ok(())
    }

    /// The instant `ttl` after `now`, for backends that keep expiries as [`Instant`]s: checks
    /// the TTL ([`Limits::check_ttl`]) and adds with `checked_add`, so an out-of-range TTL is
    /// `InvalidInput`, never a panic.
    #[inline]
    pub fn deadline_after(now: Instant, ttl: Duration) -> StateResult<Instant> {
        Self::check_ttl(ttl)?;
        now.checked_add(ttl).ok_or_else(|| {
            StateError::invalid_input(format!("ttl of {ttl:?} overflows this platform's clock"))
        })
    }

    /// The expiry `ttl` after `now_ms`, in whole milliseconds since an epoch (sled and other
    /// engines that store expiries as integers): checks the TTL and adds with `checked_add`.
    #[inline]
    pub fn expiry_ms_after(now_ms: u64, ttl: Duration) -> StateResult<u64> {
        Self::check_ttl(ttl)?;
        u64::try_from(ttl.as_millis())
            .ok()
            .and_then(|ms| now_ms.checked_add(ms))
            .ok_or_else(|| {
                StateError::invalid_input(format!("ttl of {ttl:?} overflows a u64 of milliseconds"))
            })
    }
}

/// The smallest byte string greater than every string that starts with `prefix`, or `None`
/// when no such bound exists (the prefix is empty or all `0xFF`).
///
/// Ordered engines (sled, PostgreSQL) scan `[prefix, bound)`. Trailing `0xFF` bytes are dropped
/// before incrementing, so `[0x61, 0xFF]` bounds at `[0x62]`, and `[0x62, 0x00]` stays out.
///
/// ```
/// use state_core::prefix_upper_bound;
/// assert_eq!(prefix_upper_bound(b"ab"), Some(b"ac".to_vec()));
/// assert_eq!(prefix_upper_bound(&[0x61, 0xFF]), Some(vec![0x62]));
/// assert_eq!(prefix_upper_bound(&[0xFF, 0xFF]), None);
/// assert_eq!(prefix_upper_bound(b""), None);
/// ```
pub fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut bound = prefix.to_vec();
    while let Some(last) = bound.pop() {
        if last < 0xFF {
            bound.push(last + 1);
            return Some(bound);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_oversized_keys_are_rejected() {
        let limits = Limits {
            max_key_size: 4,
            max_value_size: 8,
        };
        assert!(limits.check_key(b"").is_err());
        assert!(limits.check_key(b"abcd").is_ok());
        assert!(limits.check_key(b"abcde").is_err());
        assert!(limits.check_value(b"").is_ok());
        assert!(limits.check_value(&[0; 9]).is_err());
    }

    #[test]
    fn ttls_from_1_ms_to_100_years_are_accepted() {
        assert!(Limits::check_ttl(MIN_TTL).is_ok());
        assert!(Limits::check_ttl(MAX_TTL).is_ok());
        assert_eq!(MAX_TTL.as_millis(), 3_153_600_000_000);
        for bad in [
            Duration::ZERO,
            Duration::from_micros(999),
            MAX_TTL + Duration::from_nanos(1),
            MAX_TTL + Duration::from_millis(1),
            Duration::MAX,
        ] {
            let err = Limits::check_ttl(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn deadlines_are_checked_additions() {
        let now = Instant::now();
        assert_eq!(Limits::deadline_after(now, MAX_TTL).unwrap(), now + MAX_TTL);
        assert!(Limits::deadline_after(now, Duration::MAX).is_err());
        assert_eq!(
            Limits::expiry_ms_after(1_000, MAX_TTL).unwrap(),
            1_000 + 3_153_600_000_000
        );
        assert!(Limits::expiry_ms_after(1_000, Duration::MAX).is_err());
        assert!(Limits::expiry_ms_after(u64::MAX, MIN_TTL).is_err());
        assert!(Limits::expiry_ms_after(0, Duration::ZERO).is_err());
    }

    #[test]
    fn upper_bound_handles_trailing_ff() {
        assert_eq!(prefix_upper_bound(&[0x61, 0xFF, 0xFF]), Some(vec![0x62]));
        assert_eq!(prefix_upper_bound(&[0x00]), Some(vec![0x01]));
    }
}
