//! [`Op`]: the name of every [`StateBackend`](state_core::StateBackend) operation, as layers
//! label, time and classify them.

use std::fmt;

/// One operation of the [`StateBackend`](state_core::StateBackend) trait.
///
/// Layers use it to label spans and metrics (`op="get"`), to pick a deadline
/// ([`crate::Timeout::with_op_timeout`]) and to decide whether a failed call may be sent again
/// ([`Op::is_idempotent`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `get`.
    Get,
    /// `put`.
    Put,
    /// `delete`.
    Delete,
    /// `contains`.
    Contains,
    /// `list_keys`.
    ListKeys,
    /// `clear`.
    Clear,
    /// `count`.
    Count,
    /// `batch_get`.
    BatchGet,
    /// `batch_put`.
    BatchPut,
    /// `batch_delete`.
    BatchDelete,
    /// `put_with_ttl`.
    PutWithTtl,
    /// `ttl`.
    Ttl,
    /// `get_with_ttl`.
    GetWithTtl,
    /// `get_for_cache`.
    GetForCache,
    /// `compare_and_swap`.
    CompareAndSwap,
    /// `set_if_not_exists`.
    SetIfNotExists,
    /// `get_and_delete`.
    GetAndDelete,
    /// `delete_prefix`.
    DeletePrefix,
    /// `scan` (a layer's deadline applies to each entry the stream yields).
    Scan,
    /// `checkpoint`.
    Checkpoint,
    /// `restore`.
    Restore,
    /// `health_check`.
    HealthCheck,
    /// `memory_usage`.
    MemoryUsage,
    /// `flush`.
    Flush,
}

impl Op {
    /// Every operation, in declaration order.
    pub const ALL: [Op; 24] = [
        Op::Get,
        Op::Put,
        Op::Delete,
        Op::Contains,
        Op::ListKeys,
        Op::Clear,
        Op::Count,
        Op::BatchGet,
        Op::BatchPut,
        Op::BatchDelete,
        Op::PutWithTtl,
        Op::Ttl,
        Op::GetWithTtl,
        Op::GetForCache,
        Op::CompareAndSwap,
        Op::SetIfNotExists,
        Op::GetAndDelete,
        Op::DeletePrefix,
        Op::Scan,
        Op::Checkpoint,
        Op::Restore,
        Op::HealthCheck,
        Op::MemoryUsage,
        Op::Flush,
    ];

    /// The trait method's name (`"get"`, `"batch_put"`, ...), used as the `op` label.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Contains => "contains",
            Op::ListKeys => "list_keys",
            Op::Clear => "clear",
            Op::Count => "count",
            Op::BatchGet => "batch_get",
            Op::BatchPut => "batch_put",
            Op::BatchDelete => "batch_delete",
            Op::PutWithTtl => "put_with_ttl",
            Op::Ttl => "ttl",
            Op::GetWithTtl => "get_with_ttl",
            Op::GetForCache => "get_for_cache",
            Op::CompareAndSwap => "compare_and_swap",
            Op::SetIfNotExists => "set_if_not_exists",
            Op::GetAndDelete => "get_and_delete",
            Op::DeletePrefix => "delete_prefix",
            Op::Scan => "scan",
            Op::Checkpoint => "checkpoint",
            Op::Restore => "restore",
            Op::HealthCheck => "health_check",
            Op::MemoryUsage => "memory_usage",
            Op::Flush => "flush",
        }
    }

    /// Whether sending the operation twice in a row leaves the store as one call would (with
    /// no other writer in between).
    ///
    /// Reads, plain writes (`put`, `batch_put`, `put_with_ttl`) and deletes are idempotent:
    /// repeating them converges on the same state (a repeated `delete` may report `false`
    /// because the first attempt already removed the key). That is not enough to re-send one
    /// whose outcome is unknown: another writer may have written in between (see
    /// [`Op::changes_state`]). The atomic operations are not idempotent:
    /// a `set_if_not_exists` that timed out may have stored its value, and its retry then
    /// answers `false`, so the caller believes another writer won a lock it holds itself;
    /// a repeated `get_and_delete` loses the value the first attempt removed; a repeated
    /// `compare_and_swap` reports a swap it made as failed. `checkpoint` and `restore` stream
    /// through a caller's writer or reader, which cannot be rewound.
    pub const fn is_idempotent(self) -> bool {
        !matches!(
            self,
            Op::CompareAndSwap
                | Op::SetIfNotExists
                | Op::GetAndDelete
                | Op::Checkpoint
                | Op::Restore
        )
    }

    /// Whether the operation can change the stored state: the writes, the deletes, `clear`,
    /// the atomic operations and `restore`.
    ///
    /// After an unknown outcome ([`state_core::ErrorKind::OutcomeUnknown`], or a deadline
    /// that passed after the call was sent) none of these may be sent again blindly, not even
    /// the idempotent ones: the first copy may have landed, another writer's write may have
    /// been acknowledged since, and the re-sent copy would overwrite (or delete) it. A read,
    /// `health_check`, `memory_usage` and `flush` change nothing and may always be re-sent.
    pub const fn changes_state(self) -> bool {
        matches!(
            self,
            Op::Put
                | Op::Delete
                | Op::Clear
                | Op::BatchPut
                | Op::BatchDelete
                | Op::PutWithTtl
                | Op::CompareAndSwap
                | Op::SetIfNotExists
                | Op::GetAndDelete
                | Op::DeletePrefix
                | Op::Restore
        )
    }

    /// Whether the operation can be sent again at all: everything except `checkpoint` and
    /// `restore`, whose writer or reader has been consumed.
    pub const fn is_replayable(self) -> bool {
        !matches!(self, Op::Checkpoint | Op::Restore)
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Op;

    #[test]
    fn index_matches_position_in_all() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(op.index(), i, "{op}");
        }
    }

    #[test]
    fn atomic_operations_are_not_idempotent() {
        assert!(Op::Get.is_idempotent() && Op::Put.is_idempotent());
        assert!(!Op::SetIfNotExists.is_idempotent());
        assert!(!Op::CompareAndSwap.is_idempotent());
        assert!(!Op::GetAndDelete.is_idempotent());
        assert!(Op::SetIfNotExists.is_replayable());
        assert!(!Op::Restore.is_replayable());
    }

    #[test]
    fn reads_do_not_change_state() {
        for op in Op::ALL {
            let read = matches!(
                op,
                Op::Get
                    | Op::Contains
                    | Op::ListKeys
                    | Op::Count
                    | Op::BatchGet
                    | Op::Ttl
                    | Op::GetWithTtl
                    | Op::GetForCache
                    | Op::Scan
                    | Op::Checkpoint
                    | Op::HealthCheck
                    | Op::MemoryUsage
                    | Op::Flush
            );
            assert_eq!(op.changes_state(), !read, "{op}");
        }
    }
}
