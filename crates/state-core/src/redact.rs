//! Keeping credentials out of errors, `Debug` output and logs.
//!
//! Backends show connection targets rebuilt from their parsed configuration (host, port,
//! database, user, options). [`redact_url`] is the fallback for text that was never parsed
//! (or failed to parse): it errs on the side of hiding too much.

use url::Url;

/// What every masked secret is shown as.
pub const MASK: &str = "***";

/// Query or key/value option names whose values are secrets (compared case-insensitively,
/// after percent-decoding; any name containing one of these is masked).
const SECRET_OPTION_NAMES: [&str; 5] = ["password", "passwd", "pass", "secret", "token"];

fn is_secret_option(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_OPTION_NAMES.iter().any(|s| name.contains(s))
}

/// Returns `url` with every password replaced by `***`.
///
/// - `scheme://user:password@host/...?...`: the password (everything from the first `:` to
///   the **last** `@` of the whole string, so a password holding `/`, `#`, `?`, `@` or `:`
///   never shows) is masked, and so are the values of query options named like a secret
///   (`password`, `pass`, `secret`, `token`, ...) and every option after one (an unencoded
///   `&` inside a password would make its rest look like another option). Text before `@`
///   without a `:` may be a bare password (Redis before ACLs) and is masked too, and so is
///   everything after a `#`.
/// - libpq key/value strings (`host=db password = 'hunter 2'`): values of secret options are
///   masked, quoted or not, with or without spaces around `=`.
/// - Anything else that cannot be tokenized is not shown at all.
///
/// ```
/// use state_core::redact_url;
/// assert_eq!(
///     redact_url("postgres://app:s3cret@db:5432/state"),
///     "postgres://app:***@db:5432/state"
/// );
/// assert_eq!(redact_url("redis://:hunter2@cache:6379"), "redis://:***@cache:6379");
/// assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
/// assert_eq!(
///     redact_url("postgres://db/x?sslmode=require&password=s3cret&x=1"),
///     "postgres://db/x?sslmode=require&password=***&***"
/// );
/// assert_eq!(
///     redact_url("host=db password = 'hunter 2' user=app"),
///     "host=db password=*** user=app"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    // A URL only when the text starts with a scheme: `host=db application_name=http://x`
    // is a key/value list.
    let scheme_end = url.find("://").filter(|&end| {
        let scheme = &url[..end];
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    match scheme_end {
        Some(scheme_end) => redact_uri(url, scheme_end),
        None => match parse_key_values(url) {
            Some(pairs) => pairs
                .iter()
                .map(|(k, v)| {
                    if is_secret_option(k) {
                        format!("{k}={MASK}")
                    } else {
                        format!("{k}={}", quote_key_value(v))
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
            None => "<connection string not shown: it could not be parsed>".to_owned(),
        },
    }
}

fn redact_uri(url: &str, scheme_end: usize) -> String {
    let scheme = &url[..scheme_end];
    let rest = &url[scheme_end + 3..];
    // The last '@' of the whole string: drivers differ on which '@' ends the user-info
    // (tokio-postgres takes the first, URL parsers the one inside the authority), so mask up
    // to the last one: at worst a host is hidden too.
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let mut out = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) if !user.contains(['/', '?', '#']) => {
                out.push_str(user);
                out.push(':');
                out.push_str(MASK);
            }
            // No `:`: a user name for some schemes, a bare password for others (Redis
            // before ACLs): never shown.
            Some(_) | None => out.push_str(MASK),
        }
        out.push('@');
    }
    // A `#` hides the rest, which is more likely part of a secret than a fragment.
    let (after, fragment) = match after.split_once('#') {
        Some((before, _)) => (before, true),
        None => (after, false),
    };
    // Host, path and options: parsed with a URL parser when possible, so options are
    // matched after percent-decoding; otherwise split by hand.
    let dummy = format!("{scheme}://h{}", strip_host(after));
    match Url::parse(&dummy) {
        Ok(parsed) if parsed.query().is_some() => {
            let (head, _) = after.split_once('?').unwrap_or((after, ""));
            out.push_str(head);
            out.push('?');
            // Everything after a secret is hidden too: an unencoded `&` in a password
            // (`password=a&b`) makes the rest look like more options.
            let mut shown = Vec::new();
            for (k, v) in parsed.query_pairs() {
                if is_secret_option(&k) {
                    shown.push(format!("{k}={MASK}"));
                    if shown.len() < parsed.query_pairs().count() {
                        shown.push(MASK.to_owned());
                    }
                    break;
                }
                shown.push(format!("{k}={v}"));
            }
            out.push_str(&shown.join("&"));
        }
        Ok(_) => out.push_str(after),
        Err(_) => match after.split_once('?') {
            // Unparseable options: show where, not what.
            Some((head, _)) => {
                out.push_str(head);
                out.push_str("?<options not shown>");
            }
            None => out.push_str(after),
        },
    }
    if fragment {
        out.push('#');
        out.push_str(MASK);
    }
    out
}

/// `after` without its host part (everything up to the first `/`, `?` or `#`).
fn strip_host(after: &str) -> &str {
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    &after[end..]
}

/// Splits a libpq key/value connection string (`host=db port = 5432 password='a b\'c'`)
/// into its pairs, with quotes removed and `\\` / `\'` escapes resolved, as libpq reads it.
///
/// Returns `None` when the text is not in that form (a keyword without `=`, an unterminated
/// quote). Used by the PostgreSQL backend to read and rewrite TLS options, and by
/// [`redact_url`].
///
/// ```
/// use state_core::parse_key_values;
/// let pairs = parse_key_values("host=db  password = 'a b\\'c' dbname=x").unwrap();
/// assert_eq!(pairs[1], ("password".to_owned(), "a b'c".to_owned()));
/// assert!(parse_key_values("host=db password='open").is_none());
/// ```
pub fn parse_key_values(text: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next()? {
                    '\'' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.push(chars.next()?);
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
    }
}

/// Quotes a value for a libpq key/value string when it needs it (empty, spaces, quotes or
/// backslashes), so [`parse_key_values`] reads it back unchanged.
///
/// ```
/// use state_core::{parse_key_values, quote_key_value};
/// let text = format!("password={}", quote_key_value("a b'c\\"));
/// assert_eq!(parse_key_values(&text).unwrap()[0].1, "a b'c\\");
/// ```
pub fn quote_key_value(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords with every character the issue named, in every form.
    const PASSWORDS: [&str; 9] = [
        "s3cret",
        "hunt/er2",
        "p#hunter2",
        "a@b",
        "x:y",
        "50%off",
        "it's",
        "say \"hi\"",
        "pässwörd",
    ];

    fn assert_hidden(shown: &str, password: &str) {
        assert!(
            !shown.contains(password),
            "{password:?} leaked in {shown:?}"
        );
        // Also no recognisable piece of a password longer than 3 characters.
        for piece in password.split(['/', '#', '@', ':', '%', '\'', '"', ' ']) {
            if piece.len() > 3 {
                assert!(
                    !shown.contains(piece),
                    "{piece:?} of {password:?} leaked in {shown:?}"
                );
            }
        }
    }

    #[test]
    fn passwords_never_show_in_any_form() {
        for password in PASSWORDS {
            let raw = [
                format!("postgres://app:{password}@db:5432/state"),
                format!("redis://:{password}@cache:6379"),
                format!("redis://default:{password}@cache:6379/0"),
                format!("rediss-cluster://u:{password}@h1:7000?node=h2:7001"),
                format!("postgres://app@db/x?password={password}"),
                format!("postgres://app@db/x?sslmode=require&password={password}&x=1"),
            ];
            for text in raw {
                assert_hidden(&redact_url(&text), password);
            }
            let kv = [
                format!("host=db password={} user=app", quote_key_value(password)),
                format!("host=db password = {} user=app", quote_key_value(password)),
                format!("password={}", quote_key_value(password)),
            ];
            for text in kv {
                assert_hidden(&redact_url(&text), password);
            }
        }
    }

    #[test]
    fn percent_encoded_passwords_are_masked() {
        let shown = redact_url("postgres://app@db/x?pass%77ord=s3cret");
        assert!(!shown.contains("s3cret"), "{shown}");
        let shown = redact_url("postgres://app:hunt%2Fer2@db/x");
        assert!(!shown.contains("hunt"), "{shown}");
    }

    #[test]
    fn what_is_not_secret_still_shows() {
        assert_eq!(
            redact_url("rediss://u:pw@h:6380/0?timeout=1"),
            "rediss://u:***@h:6380/0?timeout=1"
        );
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("redis://user@h:1"), "redis://***@h:1");
        assert_eq!(
            redact_url("host=db port=5432 dbname='my db'"),
            "host=db port=5432 dbname='my db'"
        );
    }

    /// Cases from the hostile review: `://` inside a key/value list, a fragment before the
    /// options, an unencoded `&` in a password, a bare token before `@`.
    #[test]
    fn hostile_review_cases_are_masked() {
        for (text, secret) in [
            (
                "host=db application_name=http://x password=hunter2",
                "hunter2",
            ),
            ("host=db password='se://hunter2'", "hunter2"),
            ("password=hunter2://x", "hunter2"),
            ("postgres://app@db/x#?password=hunter2", "hunter2"),
            ("postgres://app@db/x?password=s3c&hunter2", "hunter2"),
            ("postgres://app@db/x?password=ab&hunter2=ef", "hunter2"),
            ("redis://hunter2@h:1", "hunter2"),
            ("redis://user:1234#hunter2@h:1", "hunter2"),
        ] {
            let shown = redact_url(text);
            assert!(!shown.contains(secret), "{text} -> {shown}");
        }
    }

    #[test]
    fn unparseable_text_is_not_shown() {
        let shown = redact_url("host=db password='hunter 2");
        assert!(!shown.contains("hunter"), "{shown}");
        let shown = redact_url("garbage hunter2");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn key_values_round_trip_through_quoting() {
        for value in ["", "plain", "a b", "it's", "back\\slash", "pässwörd"] {
            let text = format!("k={} other=1", quote_key_value(value));
            let pairs = parse_key_values(&text).unwrap();
            assert_eq!(pairs[0].1, value, "{text}");
            assert_eq!(pairs[1], ("other".to_owned(), "1".to_owned()));
        }
    }
}
