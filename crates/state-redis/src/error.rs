//! fred errors mapped to [`StateError`], case by case.

use fred::error::{Error as FredError, ErrorKind as FredKind};
use state_core::{ErrorKind, StateError};

/// Replies by which a server refuses a command for now, without running it: a replica or a
/// demoted primary (`READONLY`), a server loading its data set (`LOADING`), a busy script
/// (`BUSY`), a multi-key command during a slot migration (`TRYAGAIN`), a cluster without
/// quorum or coverage (`CLUSTERDOWN`), a primary without enough replicas (`MASTERDOWN`,
/// `NOREPLICAS`). A retry can succeed, and the command was not applied.
const REFUSED_FOR_NOW: [&str; 7] = [
    "READONLY",
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "NOREPLICAS",
];

/// What fred answers when a single-attempt command would have to be written again (after its
/// connection broke in a cluster re-sync, or after a redirection): ambiguous for a write.
const TOO_MANY_ATTEMPTS: &str = "Too many failed write attempts";

/// Maps a fred error to a [`StateError`] the way this crate does for reads and for errors
/// that are definite (public for crates that send their own commands through
/// [`crate::RedisStateBackend::pool`], such as `state-lock`): connection loss, cancellation by
/// a reconnect, cluster redirections in flight, timeouts and the server's "not now" replies
/// (`READONLY`, `LOADING`, `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `NOREPLICAS`) are
/// retryable; auth, configuration, protocol and script errors are not.
///
/// For a command that changes state use [`map_fred_write`], which reports the failures that
/// may hide an applied command as [`ErrorKind::OutcomeUnknown`].
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
        _ if REFUSED_FOR_NOW.iter().any(|p| starts_with_word(details, p)) => {
            (ErrorKind::Connection, true)
        }
        FredKind::Unknown if details.starts_with(TOO_MANY_ATTEMPTS) => {
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

/// Maps the error of a command that changes state (`SET`, `SET NX`, `GETDEL`, `DEL`, the
/// compare-and-swap and lock scripts, fenced writes).
///
/// A failure that may hide an applied command becomes [`ErrorKind::OutcomeUnknown`]: the
/// connection broke or was reset while the command was in flight (fred's `IO` and `Canceled`),
/// the command timeout passed after it was written (`Timeout`), or fred gave up re-writing it
/// (routing after a broken connection, "too many failed write attempts"). fred does not say
/// whether the bytes had left, so these are unknown even when the command never reached the
/// server. Server replies stay definite: an error reply means the command was not applied
/// (`READONLY` and the other "not now" replies are retryable, as in [`map_fred`]).
pub fn map_fred_write(err: FredError) -> StateError {
    let unsure = match err.kind() {
        FredKind::IO | FredKind::Canceled | FredKind::Timeout | FredKind::Routing => true,
        FredKind::Unknown => err.details().starts_with(TOO_MANY_ATTEMPTS),
        _ => false,
    };
    let mapped = map_fred(err);
    if unsure {
        StateError::outcome_unknown(format!(
            "{}; the command may or may not have been applied",
            mapped.message()
        ))
        .with_source(mapped)
    } else {
        mapped
    }
}

/// Whether `details` starts with the error code `code` (followed by a space or nothing).
fn starts_with_word(details: &str, code: &str) -> bool {
    details
        .strip_prefix(code)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
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

    /// Every "not now" reply, as fred parses it (`pretty_error` gives `Cluster` to
    /// `CLUSTERDOWN`, `Unknown` to the others), is a retryable refusal, on reads and writes.
    #[test]
    fn refusals_for_now_are_retryable() {
        for reply in [
            "READONLY You can't write against a read only replica.",
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script.",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "NOREPLICAS Not enough good replicas to write.",
        ] {
            let kind = if reply.starts_with("CLUSTERDOWN") {
                FredKind::Cluster
            } else {
                FredKind::Unknown
            };
            assert_eq!(
                kind_of(kind.clone(), reply),
                (ErrorKind::Connection, true),
                "{reply}"
            );
            let write = map_fred_write(FredError::new(kind, reply.to_owned()));
            assert_eq!(write.kind(), ErrorKind::Connection, "{reply}");
            assert!(write.is_retryable(), "{reply}");
        }
        assert_eq!(
            kind_of(FredKind::Unknown, "READONLYX not a code"),
            (ErrorKind::Backend, false)
        );
    }

    /// A write whose connection broke, or whose command timeout passed, has an unknown
    /// outcome; a server's error reply stays definite.
    #[test]
    fn write_failures_in_flight_are_outcome_unknown() {
        for (kind, details) in [
            (FredKind::IO, "Connection reset by peer"),
            (FredKind::IO, "Connection Closed"),
            (FredKind::Canceled, "Canceled."),
            (FredKind::Timeout, "Request timed out."),
            (FredKind::Routing, "Failed to route command."),
            (FredKind::Unknown, "Too many failed write attempts."),
        ] {
            let err = map_fred_write(FredError::new(kind, details.to_owned()));
            assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{details}");
            assert!(!err.is_retryable(), "{details}");
            assert!(err.to_string().contains(details), "{err}");
        }
        for (kind, details, expected) in [
            (FredKind::Unknown, "ERR syntax error", ErrorKind::Backend),
            (
                FredKind::Unknown,
                "OOM command not allowed",
                ErrorKind::CapacityExceeded,
            ),
            (FredKind::Auth, "NOAUTH", ErrorKind::PermissionDenied),
            (
                FredKind::Backpressure,
                "Max in-flight",
                ErrorKind::Connection,
            ),
        ] {
            let err = map_fred_write(FredError::new(kind, details.to_owned()));
            assert_eq!(err.kind(), expected, "{details}");
        }
        // Reads keep the plain mapping.
        assert_eq!(
            kind_of(FredKind::Unknown, "Too many failed write attempts."),
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
