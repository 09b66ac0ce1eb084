//! sled errors mapped to [`StateError`].

use state_core::{ErrorKind, StateError};

/// Maps a sled error case by case: I/O keeps its kind, corruption is `Corrupted`, misuse is
/// `Unsupported`; nothing sled reports is retryable except I/O timeouts.
pub(crate) fn map_sled(err: sled::Error) -> StateError {
    match err {
        sled::Error::Io(io) => StateError::from(io),
        sled::Error::Corruption { .. } => {
            StateError::corrupted("sled detected corruption in its storage file").with_source(err)
        }
        sled::Error::Unsupported(ref what) => {
            StateError::new(ErrorKind::Unsupported, format!("sled: {what}")).with_source(err)
        }
        sled::Error::CollectionNotFound(_) => {
            StateError::new(ErrorKind::Closed, "the sled tree was dropped").with_source(err)
        }
        other @ sled::Error::ReportableBug(_) => {
            StateError::backend("sled reported an internal error").with_source(other)
        }
    }
}

pub(crate) fn join_error(err: tokio::task::JoinError) -> StateError {
    StateError::backend("a blocking sled task failed").with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_kind() {
        let err = map_sled(sled::Error::Io(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "denied",
        )));
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(!err.is_retryable());
    }

    #[test]
    fn corruption_is_corrupted_and_permanent() {
        let err = map_sled(sled::Error::Corruption { at: None, bt: () });
        assert_eq!(err.kind(), ErrorKind::Corrupted);
        assert!(!err.is_retryable());
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn unsupported_maps_to_unsupported() {
        let err = map_sled(sled::Error::Unsupported("x".into()));
        assert!(err.is_unsupported());
    }
}
