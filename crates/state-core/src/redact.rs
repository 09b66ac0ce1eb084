//! Keeping credentials out of errors, `Debug` output and logs.

/// Returns `url` with any password replaced by `***`.
///
/// Works on `scheme://user:password@host/...` URLs and on libpq key/value strings
/// (`host=... password=secret`). Anything unparseable is returned with everything between
/// `://` and the last `@` masked, so a malformed URL never leaks its secret either.
///
/// ```
/// use state_core::redact_url;
/// assert_eq!(
///     redact_url("postgres://app:s3cret@db:5432/state"),
///     "postgres://app:***@db:5432/state"
/// );
/// assert_eq!(redact_url("redis://:hunter2@cache:6379"), "redis://:***@cache:6379");
/// assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
/// assert_eq!(redact_url("host=db password=pw user=app"), "host=db password=*** user=app");
/// ```
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        // The authority ends at the first '/', '?' or '#' after the scheme.
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            let masked = match userinfo.find(':') {
                Some(colon) => format!("{}:***", &userinfo[..colon]),
                // A bare token before '@' is treated as a secret too (e.g. `redis://token@host`).
                None if userinfo.is_empty() => String::new(),
                None => userinfo.to_owned(),
            };
            return format!(
                "{}{}@{}",
                &url[..scheme_end + 3],
                masked,
                &rest[at..].trim_start_matches('@')
            );
        }
        return url.to_owned();
    }
    // libpq key/value form.
    url.split(' ')
        .map(|part| {
            if part.to_ascii_lowercase().starts_with("password=") {
                "password=***".to_owned()
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn password_with_at_sign_is_masked() {
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
    }

    #[test]
    fn query_after_host_is_kept() {
        assert_eq!(
            redact_url("rediss://u:pw@h:6380/0?timeout=1"),
            "rediss://u:***@h:6380/0?timeout=1"
        );
    }
}
