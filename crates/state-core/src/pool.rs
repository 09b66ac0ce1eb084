//! Connection pool figures for network backends.

/// A snapshot of a connection pool, as the seed's `backend.pool_stats()` returns it.
///
/// ```
/// use state_core::PoolStats;
///
/// let stats = PoolStats { active_connections: 50, idle_connections: 0, max_connections: 50, waiting: 3 };
/// assert!(stats.is_exhausted());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Connections currently checked out (or, for multiplexed clients, connected).
    pub active_connections: usize,
    /// Connections open and idle.
    pub idle_connections: usize,
    /// The most connections the pool will open.
    pub max_connections: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

impl PoolStats {
    /// Whether every connection is in use.
    pub fn is_exhausted(&self) -> bool {
        self.max_connections > 0 && self.active_connections >= self.max_connections
    }
}
