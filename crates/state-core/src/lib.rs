#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod capabilities;
pub mod checkpoint;
mod error;
mod future;
mod limits;
mod namespace;
mod orphans;
mod pool;
mod redact;
mod scan;
mod stats;
mod sweeper;
mod typed;

pub use backend::{Entry, ScanStream, StateBackend};
pub use capabilities::Capabilities;
pub use error::{BoxError, ErrorKind, StateError, StateResult};
pub use future::StateFuture;
pub use limits::{
    DEFAULT_MAX_KEY_SIZE, DEFAULT_MAX_VALUE_SIZE, Limits, MAX_TTL, MIN_TTL, prefix_upper_bound,
};
pub use namespace::{
    MAX_NAMESPACE_LEN, NAMESPACE_DELIMITER, RESERVED_NAMESPACE_MARK, validate_namespace,
    validate_reserved_namespace,
};
pub use orphans::{OrphanTicket, OrphanedWrites};
pub use pool::PoolStats;
pub use redact::{MASK, parse_key_values, quote_key_value, redact_url};
pub use stats::{OpKind, OpTimer, StateStats, StatsRecorder};
pub use sweeper::Sweeper;
pub use typed::{StateBackendExt, decode, encode};

/// Re-exported so backends and users name one version of these crates.
pub use async_trait::async_trait;
pub use bytes::Bytes;
