//! fred and tokio-postgres errors mapped to [`StateError`], the same way the backends map
//! them (their mappers are crate-private).

use deadpool_postgres::{PoolError, TimeoutType};
use fred::error::{Error as FredError, ErrorKind as FredKind};
use state_core::{ErrorKind, StateError};
use tokio_postgres::error::SqlState;

/// Maps a fred error: connection loss, cancellation, cluster redirections, `LOADING`/`BUSY`/
/// `TRYAGAIN`/`CLUSTERDOWN` and timeouts are retryable; auth, configuration and script
/// errors are not.
pub(crate) fn map_fred(err: FredError) -> StateError {
    let details = err.details();
    let (kind, retryable) = match err.kind() {
        FredKind::IO
        | FredKind::Canceled
        | FredKind::Cluster
        | FredKind::Routing
        | FredKind::Backpressure => (ErrorKind::Connection, true),
        FredKind::Timeout => (ErrorKind::Timeout, true),
        FredKind::Auth => (ErrorKind::PermissionDenied, false),
        FredKind::Config | FredKind::Url => (ErrorKind::ConfigInvalid, false),
        FredKind::Unknown
            if ["LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"]
                .iter()
                .any(|p| details.starts_with(p)) =>
        {
            (ErrorKind::Connection, true)
        }
        FredKind::Unknown if details.starts_with("NOPERM") => (ErrorKind::PermissionDenied, false),
        FredKind::Unknown if details.starts_with("OOM") => (ErrorKind::CapacityExceeded, false),
        _ => (ErrorKind::Backend, false),
    };
    StateError::new(kind, format!("redis: {details}"))
        .with_retryable(retryable)
        .with_source(err)
}

/// Maps a tokio-postgres error by SQLSTATE: lost connections, shutdowns, cancelled statements,
/// serialization failures and read-only servers are retryable; auth and SQL errors are not.
pub(crate) fn map_pg(err: tokio_postgres::Error) -> StateError {
    let (kind, retryable) = match err.code() {
        Some(code) => classify(code),
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

fn classify(code: &SqlState) -> (ErrorKind, bool) {
    if *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE {
        return (ErrorKind::Timeout, true);
    }
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        return (ErrorKind::ConditionNotMatch, true);
    }
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        return (ErrorKind::Connection, true);
    }
    if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        return (ErrorKind::PermissionDenied, false);
    }
    match &code.code()[..2] {
        "08" | "57" => (ErrorKind::Connection, true),
        "53" => (ErrorKind::CapacityExceeded, true),
        "28" => (ErrorKind::PermissionDenied, false),
        "22" => (ErrorKind::InvalidInput, false),
        _ => (ErrorKind::Backend, false),
    }
}

/// Maps a pool checkout error: timeouts are retryable `Timeout`s, a failed connect is mapped
/// like any PostgreSQL error, a closed pool is `Closed`.
pub(crate) fn map_pool(err: PoolError) -> StateError {
    match err {
        PoolError::Timeout(TimeoutType::Wait) => {
            StateError::timeout("postgres: timed out waiting for a pooled connection")
        }
        PoolError::Timeout(_) => StateError::timeout("postgres: timed out opening a connection"),
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
    fn fred_errors_map_to_kinds() {
        let e = map_fred(FredError::new(FredKind::IO, "closed"));
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Connection, true));
        let e = map_fred(FredError::new(FredKind::Timeout, "slow"));
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Timeout, true));
        let e = map_fred(FredError::new(FredKind::Auth, "WRONGPASS"));
        assert_eq!(
            (e.kind(), e.is_retryable()),
            (ErrorKind::PermissionDenied, false)
        );
        let e = map_fred(FredError::new(FredKind::Unknown, "CLUSTERDOWN x"));
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Connection, true));
    }

    #[test]
    fn sqlstates_map_to_kinds() {
        assert_eq!(
            classify(&SqlState::ADMIN_SHUTDOWN),
            (ErrorKind::Connection, true)
        );
        assert_eq!(
            classify(&SqlState::QUERY_CANCELED),
            (ErrorKind::Timeout, true)
        );
        assert_eq!(
            classify(&SqlState::INVALID_PASSWORD),
            (ErrorKind::PermissionDenied, false)
        );
        assert_eq!(
            classify(&SqlState::UNDEFINED_TABLE),
            (ErrorKind::Backend, false)
        );
        assert_eq!(map_pool(PoolError::Closed).kind(), ErrorKind::Closed);
        assert!(map_pool(PoolError::Timeout(TimeoutType::Wait)).is_retryable());
    }
}
