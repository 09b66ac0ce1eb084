//! tokio-postgres and deadpool errors mapped to [`StateError`], by SQLSTATE.

use deadpool_postgres::{PoolError, TimeoutType};
use state_core::{ErrorKind, StateError};
use tokio_postgres::error::SqlState;

/// Maps a tokio-postgres error to a [`StateError`] the way this crate does (public for crates
/// that run their own statements through [`crate::PostgresStateBackend::pool`], such as
/// `state-lock`).
///
/// Retryable: lost or refused connections (class 08, a closed client), server shutdown or
/// start-up (`57P01`..`57P03`), too many connections (`53300`), a cancelled statement
/// (`57014`, which is what `statement_timeout` raises, mapped to `Timeout`), serialization
/// failures and deadlocks (`40001`, `40P01`), and writes refused by a server in recovery
/// (`25006`, a replica or a primary mid-failover). Not retryable: authentication (class 28),
/// invalid data (class 22), and SQL errors.
pub fn map_pg(err: tokio_postgres::Error) -> StateError {
    let (kind, retryable) = match err.code() {
        Some(code) => classify(code),
        None if err.is_closed() => (ErrorKind::Connection, true),
        // No SQLSTATE: I/O, TLS, protocol or connect errors from the client side.
        None => (ErrorKind::Connection, true),
    };
    let message = match err.as_db_error() {
        Some(db) => format!("postgres: {} ({})", db.message(), db.code().code()),
        None => format!("postgres: {err}"),
    };
    StateError::new(kind, message)
        .with_retryable(retryable)
        .with_source(err)
}

/// Maps the error of a write statement that was sent (public for crates that run their own
/// writes, like [`map_pg`]).
///
/// A failure that may hide an applied statement becomes [`ErrorKind::OutcomeUnknown`]: the
/// connection broke or closed with the statement in flight (no SQLSTATE: I/O, TLS, a closed
/// client), or the server ended the session (class 08, `57P01`, `57P02`), so its reply (and
/// maybe its commit) was lost. Every other server error is definite: the statement failed
/// and its implicit transaction rolled back (a `statement_timeout` cancel, `57014`, stays a
/// retryable `Timeout`).
pub fn map_pg_write(err: tokio_postgres::Error) -> StateError {
    let unsure = match err.code() {
        None => true,
        Some(code) => {
            code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
        }
    };
    let mapped = map_pg(err);
    if unsure {
        StateError::outcome_unknown(format!(
            "{}; the statement may or may not have been applied",
            mapped.message()
        ))
        .with_source(mapped)
    } else {
        mapped
    }
}

fn classify(code: &SqlState) -> (ErrorKind, bool) {
    let class = &code.code()[..2];
    if *code == SqlState::QUERY_CANCELED {
        (ErrorKind::Timeout, true)
    } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
    {
        (ErrorKind::ConditionNotMatch, true)
    } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        (ErrorKind::Connection, true)
    } else if *code == SqlState::TOO_MANY_CONNECTIONS {
        (ErrorKind::CapacityExceeded, true)
    } else if *code == SqlState::DISK_FULL || *code == SqlState::OUT_OF_MEMORY {
        (ErrorKind::CapacityExceeded, false)
    } else if *code == SqlState::LOCK_NOT_AVAILABLE {
        (ErrorKind::Timeout, true)
    } else {
        match class {
            "08" | "57" => (ErrorKind::Connection, true),
            "28" => (ErrorKind::PermissionDenied, false),
            "42" if *code == SqlState::INSUFFICIENT_PRIVILEGE => {
                (ErrorKind::PermissionDenied, false)
            }
            "22" => (ErrorKind::InvalidInput, false),
            "53" => (ErrorKind::CapacityExceeded, true),
            _ => (ErrorKind::Backend, false),
        }
    }
}

/// Maps a pool checkout error: a wait or connect timeout is a retryable `Timeout`, a failed
/// connect is mapped like any PostgreSQL error, a closed pool is `Closed`.
pub fn map_pool(err: PoolError) -> StateError {
    match err {
        PoolError::Timeout(TimeoutType::Wait) => StateError::timeout(
            "postgres: timed out waiting for a pooled connection (pool exhausted; see pool_stats())",
        ),
        PoolError::Timeout(TimeoutType::Create) => {
            StateError::timeout("postgres: timed out opening a connection")
        }
        PoolError::Timeout(TimeoutType::Recycle) => {
            StateError::timeout("postgres: timed out recycling a connection")
        }
        PoolError::Backend(err)
        | PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(err)) => map_pg(err),
        PoolError::Closed => StateError::new(ErrorKind::Closed, "postgres: the pool is closed"),
        other => StateError::backend(format!("postgres pool: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_kinds() {
        assert_eq!(
            classify(&SqlState::QUERY_CANCELED),
            (ErrorKind::Timeout, true)
        );
        assert_eq!(
            classify(&SqlState::ADMIN_SHUTDOWN),
            (ErrorKind::Connection, true)
        );
        assert_eq!(
            classify(&SqlState::CANNOT_CONNECT_NOW),
            (ErrorKind::Connection, true)
        );
        assert_eq!(
            classify(&SqlState::CONNECTION_FAILURE),
            (ErrorKind::Connection, true)
        );
        assert_eq!(
            classify(&SqlState::INVALID_PASSWORD),
            (ErrorKind::PermissionDenied, false)
        );
        assert_eq!(
            classify(&SqlState::T_R_SERIALIZATION_FAILURE),
            (ErrorKind::ConditionNotMatch, true)
        );
        assert_eq!(
            classify(&SqlState::TOO_MANY_CONNECTIONS),
            (ErrorKind::CapacityExceeded, true)
        );
        assert_eq!(
            classify(&SqlState::UNDEFINED_TABLE),
            (ErrorKind::Backend, false)
        );
        assert_eq!(
            classify(&SqlState::INSUFFICIENT_PRIVILEGE),
            (ErrorKind::PermissionDenied, false)
        );
        assert_eq!(
            classify(&SqlState::READ_ONLY_SQL_TRANSACTION),
            (ErrorKind::Connection, true)
        );
    }

    #[test]
    fn pool_wait_timeout_is_retryable() {
        let err = map_pool(PoolError::Timeout(TimeoutType::Wait));
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.is_retryable());
        assert_eq!(map_pool(PoolError::Closed).kind(), ErrorKind::Closed);
    }
}
