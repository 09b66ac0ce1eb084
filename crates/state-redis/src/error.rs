//! fred errors mapped to [`StateError`], case by case.

use fred::error::{Error as FredError, ErrorKind as FredKind};
use state_core::{ErrorKind, StateError};

/// Maps a fred error to a [`StateError`] the way this crate does (public for crates that send
/// their own commands through [`crate::RedisStateBackend::pool`], such as `state-lock`): connection loss, cancellation by a reconnect, cluster redirections in
/// flight, `LOADING`/`BUSY`/`TRYAGAIN` and timeouts are retryable; auth, configuration,
/// protocol and script errors are not.
pub fn map_fred(err: FredError) -> StateError {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(kind: FredKind, details: &str) -> (ErrorKind, bool) {
        let err = map_fred(FredError::new(kind, details.to_owned()));
        (err.kind(), err.is_retryable())
    }

    #[test]
    fn retryable_cases() {
        assert_eq!(
            kind_of(FredKind::IO, "Connection closed."),
            (ErrorKind::Connection, true)
        );
        assert_eq!(
            kind_of(FredKind::Timeout, "Request timed out."),
            (ErrorKind::Timeout, true)
        );
        assert_eq!(
            kind_of(FredKind::Canceled, "x"),
            (ErrorKind::Connection, true)
        );
        assert_eq!(
            kind_of(FredKind::Unknown, "LOADING Redis is loading"),
            (ErrorKind::Connection, true)
        );
        assert_eq!(
            kind_of(FredKind::Cluster, "CLUSTERDOWN"),
            (ErrorKind::Connection, true)
        );
    }

    #[test]
    fn permanent_cases() {
        assert_eq!(
            kind_of(FredKind::Auth, "WRONGPASS"),
            (ErrorKind::PermissionDenied, false)
        );
        assert_eq!(
            kind_of(FredKind::Unknown, "NOPERM no"),
            (ErrorKind::PermissionDenied, false)
        );
        assert_eq!(
            kind_of(FredKind::Unknown, "OOM command not allowed"),
            (ErrorKind::CapacityExceeded, false)
        );
        assert_eq!(
            kind_of(FredKind::Unknown, "ERR syntax"),
            (ErrorKind::Backend, false)
        );
        assert_eq!(
            kind_of(FredKind::Url, "bad"),
            (ErrorKind::ConfigInvalid, false)
        );
    }
}
