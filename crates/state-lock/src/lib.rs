#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod fenced;
mod guard;
mod leader;
mod lock;
mod postgres;
mod redis;
mod seed;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use fenced::{FENCE_TABLE, FencedWrite, REDIS_FENCE_PREFIX};
pub use guard::{LeaseStatus, LockGuard};
pub use leader::{LeaderElection, Leadership};
pub use lock::{
    DistributedLock, Fence, FencingToken, Lease, LeaseSession, LockOptions, MAX_LOCK_NAME_LEN,
    check_name, check_ttl, new_owner_token, with_lock,
};
pub use postgres::{
    ADVISORY_CLASS, LEASE_TABLE, PostgresAdvisoryLock, PostgresLock, TOKEN_SEQUENCE,
};
pub use redis::{DEFAULT_LOCK_PREFIX, RedisLock};

pub use state_core;
