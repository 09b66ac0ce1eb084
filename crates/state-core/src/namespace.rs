//! Key namespaces that cannot overlap.
//!
//! A namespace is the key prefix a backend (Redis' `key_prefix`) or a wrapper (the
//! `Namespaced` layer) puts in front of every key. If one namespace were a string prefix of
//! another (`app:` and `app:b:`), the first would list, count and `clear` the second's keys.
//! So a namespace is exactly **one segment followed by the delimiter `:`**, and the segment
//! cannot contain the delimiter: then no valid namespace is a string prefix of another.
//!
//! Internal keys (lock owners, fencing counters, fence tables) live under namespaces that
//! start with [`RESERVED_NAMESPACE_MARK`], which no user namespace may contain, so no data
//! backend's `clear` or `delete_prefix` can reach them.

use crate::{StateError, StateResult};

/// The delimiter that ends every namespace.
pub const NAMESPACE_DELIMITER: char = ':';

/// Longest namespace segment, in bytes (without the delimiter).
pub const MAX_NAMESPACE_LEN: usize = 64;

/// First character of the internal namespaces (locks, fences). Not allowed in user
/// namespaces.
pub const RESERVED_NAMESPACE_MARK: char = '@';

/// Checks a namespace and returns it in canonical form, ending in `:`.
///
/// The segment must be 1 to 64 bytes of `A-Z a-z 0-9 _ - . { }` (braces for a Redis Cluster
/// hash tag such as `{tenant42}:`); a missing trailing `:` is added (`app` becomes `app:`).
/// Anything else (an inner `:`, spaces, glob characters, the reserved `@`) is
/// [`crate::ErrorKind::InvalidInput`] naming the rule.
///
/// ```
/// use state_core::validate_namespace;
/// assert_eq!(validate_namespace("app").unwrap(), "app:");
/// assert_eq!(validate_namespace("app:").unwrap(), "app:");
/// assert!(validate_namespace("app:b:").is_err()); // would nest inside `app:`
/// assert!(validate_namespace("").is_err());
/// assert!(validate_namespace("@state-lock:").is_err()); // reserved for locks
/// ```
pub fn validate_namespace(prefix: &str) -> StateResult<String> {
    let segment = prefix.strip_suffix(NAMESPACE_DELIMITER).unwrap_or(prefix);
    let valid_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '{' | '}');
    if segment.is_empty() || segment.len() > MAX_NAMESPACE_LEN || !segment.chars().all(valid_char) {
        return Err(StateError::invalid_input(format!(
            "invalid namespace {prefix:?}: a namespace is one segment of 1 to {MAX_NAMESPACE_LEN} \
             characters from A-Z a-z 0-9 _ - . {{ }} followed by `:` (e.g. `app:`), so that no \
             namespace can contain another; nest by wrapping (Namespaced over Namespaced)"
        )));
    }
    Ok(format!("{segment}{NAMESPACE_DELIMITER}"))
}

/// Checks the namespace of internal keys (locks, fences): [`RESERVED_NAMESPACE_MARK`]
/// followed by a valid segment and `:` (a missing `@` or `:` is added).
///
/// ```
/// use state_core::validate_reserved_namespace;
/// assert_eq!(validate_reserved_namespace("state-lock").unwrap(), "@state-lock:");
/// assert_eq!(validate_reserved_namespace("@state-lock:").unwrap(), "@state-lock:");
/// ```
pub fn validate_reserved_namespace(prefix: &str) -> StateResult<String> {
    let bare = prefix
        .strip_prefix(RESERVED_NAMESPACE_MARK)
        .unwrap_or(prefix);
    Ok(format!(
        "{RESERVED_NAMESPACE_MARK}{}",
        validate_namespace(bare)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_valid_namespace_is_a_prefix_of_another() {
        let candidates = [
            "a",
            "a:",
            "ab",
            "ab:",
            "a.b",
            "a-b",
            "a_b",
            "app",
            "app:b",
            "app:b:",
            "state",
            "state-lock",
            "@state-lock",
            "x:y:z",
            "a*",
            "{a}",
            "a b",
            "",
        ];
        let valid: Vec<String> = candidates
            .iter()
            .filter_map(|c| validate_namespace(c).ok())
            .chain(
                candidates
                    .iter()
                    .filter_map(|c| validate_reserved_namespace(c).ok()),
            )
            .collect();
        assert!(valid.len() > 10);
        for a in &valid {
            for b in &valid {
                if a != b {
                    assert!(!b.starts_with(a.as_str()), "{a:?} is a prefix of {b:?}");
                }
            }
        }
    }

    #[test]
    fn invalid_namespaces_are_refused() {
        for bad in [
            "",
            ":",
            "a:b",
            "a:b:",
            "a*",
            "a?",
            "[a]",
            "a b",
            "@x",
            "é",
            &"x".repeat(65),
        ] {
            let err = validate_namespace(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
