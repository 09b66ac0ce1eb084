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
    /// The server could not be reached, or the connection failed before the operation could
    /// take effect. For a call that changes state, `Connection` means it was **not** applied;
    /// when it may have been, the error is [`ErrorKind::OutcomeUnknown`].
    Connection,
    /// The operation did not finish within its deadline. For a call that changes state,
    /// `Timeout` means it was **not** applied (e.g. no pooled connection within the wait
    /// timeout); a deadline that passed after the call was sent is
    /// [`ErrorKind::OutcomeUnknown`].
    Timeout,
    /// A call that changes state may or may not have been applied: the connection was lost
    /// while the command was in flight, or a deadline passed after it was sent, so the
    /// server's answer never arrived.
    ///
    /// The caller must not read this as "not applied" (nor as "applied"): read the key back,
    /// or compare with a unique value or a fencing token, before deciding. Not retryable by
    /// default ([`StateError::is_retryable`] is `false`): re-sending a write whose first copy
    /// may have landed can overwrite a later acknowledged write of another writer, and
    /// re-sending an atomic operation answers against its own first copy. See
    /// [`crate::StateBackend`]'s contract.
    OutcomeUnknown,
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
            ErrorKind::OutcomeUnknown => "outcome unknown",
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

    /// A write-like call may or may not have been applied ([`ErrorKind::OutcomeUnknown`]):
    /// the connection dropped with the command in flight, or a deadline passed after it was
    /// sent. Not retryable unless overridden with [`StateError::with_retryable`].
    ///
    /// ```
    /// use state_core::{ErrorKind, StateError};
    ///
    /// let err = StateError::outcome_unknown("connection lost after SET NX was sent")
    ///     .with_operation("set_if_not_exists");
    /// assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
    /// assert!(err.is_outcome_unknown());
    /// assert!(!err.is_retryable());
    /// ```
    pub fn outcome_unknown(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::OutcomeUnknown, message)
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

    /// Whether sending the same call again may succeed and is safe as far as the error
    /// knows: connection loss or a timeout before the call took effect, a server that refused
    /// it for now (failover, loading).
    ///
    /// [`ErrorKind::OutcomeUnknown`] is not retryable: the first call may have been applied.
    /// Even for a retryable error, only repeat an atomic operation (`set_if_not_exists`,
    /// `compare_and_swap`, `get_and_delete`) when the error is definite; a wrapper that
    /// retries (like `state-layers`' `Retry`) checks both.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Shorthand for `kind() == ErrorKind::OutcomeUnknown`: the call may or may not have
    /// been applied.
    pub fn is_outcome_unknown(&self) -> bool {
        self.kind == ErrorKind::OutcomeUnknown
    }

    /// Turns a connection loss or timeout of a call that was already sent into
    /// [`ErrorKind::OutcomeUnknown`] (keeping message, operation and source); other kinds are
    /// returned unchanged. Backends use it on the write path, where they cannot tell whether
    /// the server applied the command before the failure.
    #[must_use]
    pub fn into_outcome_unknown(self) -> Self {
        match self.kind {
            ErrorKind::Connection | ErrorKind::Timeout => Self {
                kind: ErrorKind::OutcomeUnknown,
                retryable: false,
                ..self
            },
            _ => self,
        }
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
    fn outcome_unknown_is_not_retryable() {
        let err = StateError::outcome_unknown("reply lost");
        assert!(err.is_outcome_unknown());
        assert!(!err.is_retryable());
        assert_eq!(err.to_string(), "outcome unknown: reply lost");
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let err = StateError::from(io)
            .with_operation("put")
            .into_outcome_unknown();
        assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
        assert_eq!(err.operation(), Some("put"));
        assert!(!err.is_retryable());
        assert!(StdError::source(&err).is_some());
        let bad = StateError::invalid_input("empty key").into_outcome_unknown();
        assert_eq!(bad.kind(), ErrorKind::InvalidInput);
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
