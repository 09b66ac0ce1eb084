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
use state_core::{Limits, StateError, StateResult};

const NO_EXPIRY: u8 = 0;
const EXPIRES: u8 = 1;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The expiry `ttl` from now, in Unix milliseconds: the TTL rule of [`Limits::check_ttl`]
/// (1 ms to 100 years) and a checked addition, so a huge TTL is `InvalidInput` instead of
/// wrapping around to a short one.
pub(crate) fn expiry_after(ttl: Duration) -> StateResult<u64> {
    Limits::expiry_ms_after(now_ms(), ttl)
}

/// The expiry in a stored value's header, without decoding the rest (`None`: no expiry, or
/// not this crate's header).
pub(crate) fn expiry_of(raw: &[u8]) -> Option<u64> {
    match raw {
        [EXPIRES, at @ ..] if at.len() >= 8 => {
            Some(u64::from_be_bytes(at[..8].try_into().expect("8 bytes")))
        }
        _ => None,
    }
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
    fn expiry_header_is_read_without_decoding() {
        assert_eq!(expiry_of(&encode(b"v", Some(42))), Some(42));
        assert_eq!(expiry_of(&encode(b"v", None)), None);
        assert_eq!(expiry_of(b"\x01abc"), None);
        assert_eq!(expiry_of(b""), None);
    }

    #[test]
    fn huge_ttls_are_invalid_input_not_a_wrap_around() {
        // 584 million years of milliseconds used to wrap a u64 to a few hundred ms.
        for ttl in [
            Duration::MAX,
            Duration::from_millis(u64::MAX),
            state_core::MAX_TTL * 2,
        ] {
            let err = expiry_after(ttl).unwrap_err();
            assert_eq!(err.kind(), state_core::ErrorKind::InvalidInput, "{ttl:?}");
        }
        let at = expiry_after(state_core::MAX_TTL).unwrap();
        assert!(at > now_ms() + 3_153_599_000_000);
    }

    #[test]
    fn index_keys_sort_by_expiry() {
        let a = index_key(5, b"zzz");
        let b = index_key(6, b"aaa");
        assert!(a < b);
        assert_eq!(split_index_key(&a), Some((5, &b"zzz"[..])));
    }
}
