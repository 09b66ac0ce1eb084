#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod config;

pub use backend::{ENTRY_OVERHEAD, MemoryStateBackend};
pub use config::{DEFAULT_CLEANUP_INTERVAL, DEFAULT_LATENCY_SAMPLE_RATE, MemoryConfig};
pub use state_core;
