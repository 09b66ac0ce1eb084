//! The stable key → shard mapping of [`crate::Sharded`].
//!
//! It is specified so any process, platform, Rust version or other language computes the
//! same shard:
//!
//! 1. `h = SipHash-2-4(key)` with the 128-bit key `00 01 02 .. 0f` (`k0 =
//!    0x0706050403020100`, `k1 = 0x0f0e0d0c0b0a0908`, the reference test key), over the raw
//!    key bytes (no length prefix), read as a little-endian `u64`.
//! 2. `shard = jump_consistent_hash(h, n)` (Lamping & Veach, 2014, "A Fast, Minimal Memory,
//!    Consistent Hash Algorithm"), exactly:
//!
//! ```text
//! b = -1; j = 0
//! while j < n:
//!     b = j
//!     h = h * 2862933555777941757 + 1          (mod 2^64)
//!     j = floor((b + 1) * (2^31 / ((h >> 33) + 1)))   (in f64)
//! return b
//! ```
//!
//! Growing from `n` to `n + 1` shards moves about `1/(n + 1)` of the keys, all of them to
//! the new shard; nothing moves between the old shards. Shards are removed from the end.

use std::hash::Hasher;

use siphasher::sip::SipHasher24;

const K0: u64 = 0x0706_0504_0302_0100;
const K1: u64 = 0x0f0e_0d0c_0b0a_0908;

/// SipHash-2-4 of `key` with the fixed key `00..0f` (step 1 of the mapping).
pub fn key_hash(key: &[u8]) -> u64 {
    let mut hasher = SipHasher24::new_with_keys(K0, K1);
    hasher.write(key);
    hasher.finish()
}

/// Jump consistent hash of `hash` into `buckets` buckets (step 2 of the mapping).
///
/// # Panics
///
/// When `buckets` is 0.
pub fn jump_consistent_hash(mut hash: u64, buckets: usize) -> usize {
    assert!(
        buckets > 0,
        "jump consistent hash needs at least one bucket"
    );
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets as i64 {
        b = j;
        hash = hash.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((hash >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// The shard of `key` among `shards` shards: `jump_consistent_hash(key_hash(key), shards)`.
///
/// ```
/// use state_layers::shard_for;
/// let shard = shard_for(b"user:42", 3);
/// assert!(shard < 3);
/// // Stable: the same on every process and version.
/// assert_eq!(shard, shard_for(b"user:42", 3));
/// ```
pub fn shard_for(key: &[u8], shards: usize) -> usize {
    jump_consistent_hash(key_hash(key), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // From the SipHash paper's reference implementation (vectors.h, SipHash-2-4, 64-bit
        // output): message = 00 01 02 .. (len - 1).
        assert_eq!(key_hash(b""), 0x726f_db47_dd0e_0e31);
        assert_eq!(key_hash(&[0]), 0x74f8_39c5_93dc_67fd);
        let fifteen: Vec<u8> = (0..15).collect();
        assert_eq!(key_hash(&fifteen), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn jump_hash_is_pinned() {
        // Pinned outputs: a change here changes every deployment's key placement.
        assert_eq!(jump_consistent_hash(0, 1), 0);
        let placed: Vec<usize> = (0..8u64)
            .map(|h| jump_consistent_hash(h.wrapping_mul(0x9e37_79b9_7f4a_7c15), 10))
            .collect();
        assert_eq!(placed, PINNED);
        assert_eq!(shard_for(b"user:42", 3), PINNED_USER_42);
    }

    const PINNED: [usize; 8] = [0, 3, 5, 3, 2, 6, 2, 6];
    const PINNED_USER_42: usize = 1;

    #[test]
    fn growing_moves_keys_only_to_the_new_shard() {
        for i in 0..10_000u32 {
            let h = key_hash(&i.to_le_bytes());
            let before = jump_consistent_hash(h, 5);
            let after = jump_consistent_hash(h, 6);
            assert!(after == before || after == 5);
        }
    }
}
