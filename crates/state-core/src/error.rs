//! The one error type every backend returns.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

/// Result alias used across every backend.
pub type StateResult<T> = Result<T, StateError>;

/// Boxed source error kept intact inside a [`StateError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong, independent of the backend that reported it.
///
/// Callers branch on the kind; the backend's own error stays available through
/// [`std::error::Error::source`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller passed something the contract rejects: an empty key, a key or value over the
    /// backend's limit, an invalid table name or prefix. Retrying the same call cannot help.
    InvalidInput,
    /// The configuration is invalid (bad URL, zero pool size, conflicting options).
    ConfigInvalid,
    /// The backend does not implement this operation; see [`crate::Capabilities`].
    Unsupported,
    /// The server could not be reached, or the connection dropped mid-operation.
    Connection,
    /// The operation did not finish within its deadline.
    Timeout,
    /// Credentials were refused or the user lacks a permission.
    PermissionDenied,
    /// A bounded backend is full and refused the write instead of dropping state.
    CapacityExceeded,
    /// A precondition did not hold (a fenced write with a stale token, a lost lock).
    ConditionNotMatch,
    /// A value could not be encoded or decoded (typed access).
    Serialization,
    /// Stored data or a checkpoint failed validation (bad magic, version or checksum).
    Corrupted,
    /// Local I/O failed (files of an embedded backend, checkpoint files).
    Io,
    /// The backend was closed or its background machinery stopped.
    Closed,
    /// Anything else the backend reported; the source says more.
    Backend,
}

impl ErrorKind {
    /// Whether errors of this kind are retryable unless the backend says otherwise.
    pub const fn default_retryable(self) -> bool {
        matches!(self, ErrorKind::Connection | ErrorKind::Timeout)
    }

    /// A short stable name, used in `Display`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::ConfigInvalid => "invalid configuration",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Connection => "connection error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::CapacityExceeded => "capacity exceeded",
            ErrorKind::ConditionNotMatch => "condition not met",
            ErrorKind::Serialization => "serialization error",
            ErrorKind::Corrupted => "corrupted data",
            ErrorKind::Io => "i/o error",
            ErrorKind::Closed => "backend closed",
            ErrorKind::Backend => "backend error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error every [`crate::StateBackend`] method returns.
///
/// It carries a [`ErrorKind`], a human message, the operation that failed, whether a retry can
/// help, and the driver's own error as its `source()`. Messages never contain credentials:
/// backends pass connection strings through [`crate::redact_url`] before they reach an error.
///
/// ```
/// use state_core::{ErrorKind, StateError};
///
/// let err = StateError::invalid_input("key must not be empty").with_operation("put");
/// assert_eq!(err.kind(), ErrorKind::InvalidInput);
/// assert!(!err.is_retryable());
/// assert_eq!(err.to_string(), "put: invalid input: key must not be empty");
/// ```
#[derive(thiserror::Error)]
pub struct StateError {
    kind: ErrorKind,
    message: Cow<'static, str>,
    operation: Option<&'static str>,
    retryable: bool,
    #[source]
    source: Option<BoxError>,
}

impl StateError {
    /// A new error of `kind`; retryability follows [`ErrorKind::default_retryable`].
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            operation: None,
            retryable: kind.default_retryable(),
            source: None,
        }
    }

    /// Invalid input: empty or oversized key, oversized value, bad name.
    pub fn invalid_input(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Invalid configuration.
    pub fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::ConfigInvalid, message)
    }

    /// The backend does not support `operation`.
    pub fn unsupported(operation: &'static str) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            "this backend does not support the operation",
        )
        .with_operation(operation)
    }

    /// A connection failure (retryable).
    pub fn connection(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Connection, message)
    }

    /// A deadline passed (retryable).
    pub fn timeout(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    /// Data failed validation.
    pub fn corrupted(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Corrupted, message)
    }

    /// A backend-specific failure; attach the driver error with [`StateError::with_source`].
    pub fn backend(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Backend, message)
    }

    /// Records the operation that failed (`"get"`, `"put"`, ...).
    #[must_use]
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        self.operation = Some(operation);
        self
    }

    /// Keeps the driver's error as this error's `source()`.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Overrides whether a retry can help.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without kind or operation.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The operation that failed, when known.
    pub fn operation(&self) -> Option<&'static str> {
        self.operation
    }

    /// Whether retrying the same operation may succeed (connection loss, timeout).
    ///
    /// Only idempotent operations should be retried blindly: a `set_if_not_exists` that timed
    /// out may have been applied.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Shorthand for `kind() == ErrorKind::Unsupported`.
    pub fn is_unsupported(&self) -> bool {
        self.kind == ErrorKind::Unsupported
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(op) = self.operation {
            write!(f, "{op}: ")?;
        }
        write!(f, "{}", self.kind)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl fmt::Debug for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("StateError");
        d.field("kind", &self.kind)
            .field("message", &self.message)
            .field("operation", &self.operation)
            .field("retryable", &self.retryable);
        if let Some(source) = &self.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl From<std::io::Error> for StateError {
    fn from(err: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        let kind = match err.kind() {
            Io::TimedOut => ErrorKind::Timeout,
            Io::ConnectionRefused
            | Io::ConnectionReset
            | Io::ConnectionAborted
            | Io::NotConnected
            | Io::BrokenPipe => ErrorKind::Connection,
            Io::PermissionDenied => ErrorKind::PermissionDenied,
            Io::InvalidData | Io::UnexpectedEof => ErrorKind::Corrupted,
            _ => ErrorKind::Io,
        };
        StateError::new(kind, err.to_string()).with_source(err)
    }
}

impl From<rmp_serde::encode::Error> for StateError {
    fn from(err: rmp_serde::encode::Error) -> Self {
        StateError::new(ErrorKind::Serialization, "could not encode value").with_source(err)
    }
}

impl From<rmp_serde::decode::Error> for StateError {
    fn from(err: rmp_serde::decode::Error) -> Self {
        StateError::new(ErrorKind::Serialization, "could not decode value").with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_follows_kind_unless_overridden() {
        assert!(StateError::timeout("slow").is_retryable());
        assert!(StateError::connection("down").is_retryable());
        assert!(!StateError::invalid_input("bad").is_retryable());
        assert!(
            !StateError::connection("auth")
                .with_retryable(false)
                .is_retryable()
        );
    }

    #[test]
    fn source_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out");
        let err = StateError::from(io);
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.is_retryable());
        assert!(StdError::source(&err).is_some());
    }

    #[test]
    fn display_names_operation_and_kind() {
        let err = StateError::unsupported("put_with_ttl");
        assert_eq!(
            err.to_string(),
            "put_with_ttl: unsupported: this backend does not support the operation"
        );
        assert!(err.is_unsupported());
    }
}
