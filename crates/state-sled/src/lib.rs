#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod codec;
mod config;
mod error;
mod transaction;

pub use backend::SledStateBackend;
pub use config::{DEFAULT_CLEANUP_INTERVAL, DEFAULT_TREE, SledConfig};
pub use transaction::{SledTransaction, TransactionResult};

/// The sled version this crate is built on, re-exported so callers can share a `sled::Db`.
pub use sled;
pub use state_core;
