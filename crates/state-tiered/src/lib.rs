#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod coherence;
mod tiered;
mod versions;

pub use cache::{CacheBuilder, CachedStateBackend, WritePolicy};
pub use coherence::{CHANNEL, InvalidationBus};
pub use state_core;
pub use tiered::{TieredBuilder, TieredStateBackend};
