#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod config;
mod error;
mod once;
mod pubsub;
mod scripts;

pub use backend::RedisStateBackend;
pub use config::{DEFAULT_KEY_PREFIX, RedisConfig, RedisConfigBuilder, Topology};
pub use error::{map_fred as map_error, map_fred_write as map_write_error};
pub use once::{eval_once, one_attempt};
pub use pubsub::Subscription;

/// The fred version this crate is built on.
pub use fred;
pub use state_core;
