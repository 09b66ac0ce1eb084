//! Key and value size limits, and the checks every backend runs before touching its engine.

use crate::{StateError, StateResult};

/// The default largest key, in bytes, every backend accepts (PostgreSQL's B-tree index caps
/// keys at about 2.7 KB, so a portable limit sits below that).
pub const DEFAULT_MAX_KEY_SIZE: usize = 2048;

/// The default largest value, in bytes.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 64 * 1024 * 1024;

/// Size limits a backend enforces on every write and key lookup.
///
/// Oversized input is refused with [`crate::ErrorKind::InvalidInput`] before it reaches the
/// engine: never truncated, never a panic.
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
    pub fn check_optional_ttl(ttl: Option<std::time::Duration>) -> StateResult<()> {
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

    /// Checks a TTL: it must be at least one millisecond, the resolution every backend keeps.
    #[inline]
    pub fn check_ttl(ttl: std::time::Duration) -> StateResult<()> {
        if ttl.as_millis() == 0 {
            return Err(StateError::invalid_input(
                "ttl must be at least 1 millisecond",
            ));
        }
        Ok(())
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
    fn upper_bound_handles_trailing_ff() {
        assert_eq!(prefix_upper_bound(&[0x61, 0xFF, 0xFF]), Some(vec![0x62]));
        assert_eq!(prefix_upper_bound(&[0x00]), Some(vec![0x01]));
    }
}
