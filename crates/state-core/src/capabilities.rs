//! The seed's feature matrix, as data users and tests can read.

use crate::Limits;

/// What a backend can do.
///
/// The conformance suite checks every flag both ways: a declared capability must work, and an
/// operation behind an undeclared one must return [`crate::ErrorKind::Unsupported`] (never a
/// silent no-op). Flags that describe the engine rather than a trait method (`clustering`,
/// `sql`, ...) are documented per backend.
///
/// Build one from [`Capabilities::default`] (nothing declared) and set fields:
///
/// ```
/// use state_core::Capabilities;
///
/// let mut caps = Capabilities::default();
/// caps.ttl = true;
/// caps.atomic = true;
/// assert!(caps.ttl && !caps.persistence);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `put_with_ttl`, `ttl`, `set_if_not_exists` with a TTL, and a default TTL work.
    pub ttl: bool,
    /// `compare_and_swap`, `set_if_not_exists` and `get_and_delete` are atomic.
    pub atomic: bool,
    /// `batch_put` and `batch_delete` apply all-or-nothing.
    pub atomic_batch: bool,
    /// Batch operations are native (one round trip / one engine call), not loops.
    pub native_batch: bool,
    /// The backend offers multi-operation transactions through its own API.
    pub transactions: bool,
    /// Data survives dropping and reopening the backend.
    pub persistence: bool,
    /// Several processes (or backend instances) on the same namespace see each other's writes.
    pub shared: bool,
    /// The backend can compress stored values.
    pub compression: bool,
    /// The data can be queried with SQL.
    pub sql: bool,
    /// The backend offers publish/subscribe notifications.
    pub pub_sub: bool,
    /// The backend spreads data over a cluster of servers.
    pub clustering: bool,
    /// `memory_usage` reports a figure.
    pub memory_usage: bool,
    /// Key and value size limits enforced on every call.
    pub limits: Limits,
    /// The TTL a plain `put` applies (the backend's configured default TTL), if any; caches
    /// in front of the backend use it so their copy never outlives the key.
    pub default_ttl: Option<std::time::Duration>,
}
