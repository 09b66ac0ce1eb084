#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod ext;
mod faults;
mod forward;
mod hash;
mod instrumented;
mod namespaced;
mod op;
mod replicated;
mod retry;
mod sharded;
mod timeout;
mod util;

pub use ext::LayerExt;
pub use faults::{Fault, FaultInjector};
pub use instrumented::{
    ERRORS_TOTAL, Instrumented, OPERATION_DURATION_SECONDS, OPERATIONS_TOTAL, TRACING_TARGET,
};
pub use namespaced::Namespaced;
pub use op::Op;
pub use retry::{Retry, RetryBudget};
pub use timeout::Timeout;

/// Re-exported so callers configure [`Retry`] with the same `backon` version.
pub use backon;
pub use hash::{jump_consistent_hash, key_hash, shard_for};
pub use replicated::{ReadPolicy, Replicated};
pub use sharded::{ReshardProgress, ReshardReport, Sharded};

/// The scaling guide's examples (`SCALING.md`), compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../SCALING.md")]
struct ScalingGuideDoctests;
