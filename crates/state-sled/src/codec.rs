//! How a value and its expiry are stored in one sled value.
//!
//! ```text
//! 0x00 | payload                      no expiry
//! 0x01 | expires_at_unix_ms u64 BE | payload
//! ```
//!
//! The expiry index tree maps `expires_at u64 BE | key` to an empty value, so the sweeper
//! reads expired entries in order without walking the whole tree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sled::IVec;
use state_core::{StateError, StateResult};

const NO_EXPIRY: u8 = 0;
const EXPIRES: u8 = 1;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn expiry_after(ttl: Duration) -> u64 {
    now_ms().saturating_add(ttl.as_millis() as u64)
}

pub(crate) fn encode(value: &[u8], expires_at: Option<u64>) -> Vec<u8> {
    match expires_at {
        None => {
            let mut out = Vec::with_capacity(1 + value.len());
            out.push(NO_EXPIRY);
            out.extend_from_slice(value);
            out
        }
        Some(at) => {
            let mut out = Vec::with_capacity(9 + value.len());
            out.push(EXPIRES);
            out.extend_from_slice(&at.to_be_bytes());
            out.extend_from_slice(value);
            out
        }
    }
}

/// A stored value split into its expiry and payload offset.
pub(crate) struct Stored {
    pub(crate) raw: IVec,
    pub(crate) expires_at: Option<u64>,
    offset: usize,
}

impl Stored {
    pub(crate) fn decode(raw: IVec) -> StateResult<Self> {
        let (expires_at, offset) = match raw.first() {
            Some(&NO_EXPIRY) => (None, 1),
            Some(&EXPIRES) if raw.len() >= 9 => {
                let at = u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes"));
                (Some(at), 9)
            }
            _ => {
                return Err(StateError::corrupted(
                    "a sled value does not carry this crate's header (was the tree written by another program?)",
                ));
            }
        };
        Ok(Self {
            raw,
            expires_at,
            offset,
        })
    }

    pub(crate) fn is_live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    pub(crate) fn payload(&self) -> &[u8] {
        &self.raw[self.offset..]
    }

    /// The payload as `Bytes` sharing sled's buffer (no copy).
    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self.raw).slice(self.offset..)
    }

    pub(crate) fn ttl(&self, now: u64) -> Option<Duration> {
        self.expires_at
            .map(|at| Duration::from_millis(at.saturating_sub(now)))
    }
}

pub(crate) fn index_key(expires_at: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(key);
    out
}

pub(crate) fn split_index_key(raw: &[u8]) -> Option<(u64, &[u8])> {
    if raw.len() < 9 {
        return None;
    }
    let at = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
    Some((at, &raw[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_every_size_round_trip() {
        for len in [0usize, 1, 255, 256, 257, 4096, 1 << 20] {
            let value: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            for expiry in [None, Some(42u64)] {
                let stored = Stored::decode(IVec::from(encode(&value, expiry))).unwrap();
                assert_eq!(stored.expires_at, expiry);
                assert_eq!(stored.payload(), &value[..]);
                assert_eq!(stored.into_bytes(), value);
            }
        }
    }

    #[test]
    fn foreign_bytes_are_corruption() {
        assert!(Stored::decode(IVec::from(&b"\x07abc"[..])).is_err());
        assert!(Stored::decode(IVec::from(&b""[..])).is_err());
        assert!(Stored::decode(IVec::from(&b"\x01abc"[..])).is_err());
    }

    #[test]
    fn index_keys_sort_by_expiry() {
        let a = index_key(5, b"zzz");
        let b = index_key(6, b"aaa");
        assert!(a < b);
        assert_eq!(split_index_key(&a), Some((5, &b"zzz"[..])));
    }
}
