//! Connection strings: parsed once into a `tokio_postgres::Config` plus the TLS request,
//! and shown (in `Debug`, errors and logs) rebuilt from the parsed result, never as typed.
//!
//! tokio-postgres understands `sslmode` `disable`, `prefer` and `require` only; libpq's
//! `allow`, `verify-ca`, `verify-full` and `sslrootcert` are read here, removed from the
//! text handed to tokio-postgres, and applied by [`crate::tls`] per connection.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::FromStr;

use percent_encoding::percent_decode_str;
use state_core::{StateError, StateResult, parse_key_values, quote_key_value};
use tokio_postgres::config::{Host, SslMode};

/// libpq's `sslmode`, all six of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SslModeRequest {
    /// No TLS.
    Disable,
    /// libpq tries plain text first; here it behaves like `Prefer`.
    Allow,
    /// TLS when the server offers it, certificate not verified (libpq's default).
    Prefer,
    /// TLS or fail; certificate not verified unless `sslrootcert` is given (as libpq).
    Require,
    /// TLS or fail; the certificate chain is verified, the host name is not.
    VerifyCa,
    /// TLS or fail; chain and host name verified.
    VerifyFull,
}

impl SslModeRequest {
    fn parse(value: &str) -> StateResult<Self> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => {
                return Err(StateError::config(format!(
                    "invalid sslmode {value:?}: use disable, allow, prefer, require, verify-ca \
                     or verify-full"
                )));
            }
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection without TLS is refused.
    pub(crate) fn requires_tls(self) -> bool {
        self >= Self::Require
    }
}

/// Where the CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootCerts {
    /// The operating system's store (`sslrootcert=system`, or none given in a verify mode).
    System,
    /// A PEM file.
    File(PathBuf),
}

/// What one connection string asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsRequest {
    pub(crate) mode: SslModeRequest,
    /// `sslrootcert`; `None` when not given.
    pub(crate) roots: Option<RootCerts>,
}

/// One parsed connection string.
#[derive(Clone)]
pub(crate) struct ConnTarget {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) tls: TlsRequest,
}

impl ConnTarget {
    /// Parses a `postgres://` / `postgresql://` URL or a libpq key/value string.
    ///
    /// Errors never quote the text (it may hold a password).
    pub(crate) fn parse(text: &str) -> StateResult<Self> {
        let mut tls = TlsRequest {
            mode: SslModeRequest::Prefer,
            roots: None,
        };
        let pairs = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            url_pairs(text)?
        } else {
            parse_key_values(text).ok_or_else(|| {
                StateError::config(
                    "invalid PostgreSQL connection string: neither a postgres:// URL nor a \
                     libpq key=value list (an unterminated quote or a word without `=`?); \
                     the text is not shown because it may hold a password",
                )
            })?
        };
        // Everything reaches tokio-postgres as a quoted key=value list: no URL ambiguity
        // (which '@' ends the user-info) is left to its parser.
        let mut rest = String::new();
        for (key, value) in pairs {
            if !take_tls_option(&key, &value, &mut tls)? {
                let _ = write!(rest, "{key}={} ", quote_key_value(&value));
            }
        }
        let mut pg = tokio_postgres::Config::from_str(&rest).map_err(|err| {
            // tokio-postgres names options, never their values.
            StateError::config(format!("invalid PostgreSQL connection string: {err}"))
        })?;
        pg.ssl_mode(match tls.mode {
            SslModeRequest::Disable => SslMode::Disable,
            SslModeRequest::Allow | SslModeRequest::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        Ok(Self { pg, tls })
    }

    /// `postgres://user@host:port/db?sslmode=...`, rebuilt from the parsed config: what
    /// `Debug`, errors and logs show. Never the password.
    pub(crate) fn describe(&self) -> String {
        describe(&self.pg, &self.tls)
    }
}

/// Rebuilds a displayable target from a parsed config.
pub(crate) fn describe(pg: &tokio_postgres::Config, tls: &TlsRequest) -> String {
    let mut out = String::from("postgres://");
    if let Some(user) = pg.get_user() {
        out.push_str(user);
        if pg.get_password().is_some() {
            out.push_str(":***");
        }
        out.push('@');
    }
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{name}:{port}")
        })
        .collect();
    out.push_str(&hosts.join(","));
    out.push('/');
    out.push_str(pg.get_dbname().unwrap_or(""));
    let _ = write!(out, "?sslmode={}", tls.mode.as_str());
    match &tls.roots {
        Some(RootCerts::System) => out.push_str("&sslrootcert=system"),
        Some(RootCerts::File(path)) => {
            let _ = write!(out, "&sslrootcert={}", path.display());
        }
        None => {}
    }
    if let Some(name) = pg.get_application_name() {
        let _ = write!(out, "&application_name={name}");
    }
    out
}

/// Reads a TLS option into `tls`; `false` when `key` is not one (the caller keeps it).
fn take_tls_option(key: &str, value: &str, tls: &mut TlsRequest) -> StateResult<bool> {
    match key {
        "sslmode" => tls.mode = SslModeRequest::parse(value)?,
        "sslrootcert" => {
            tls.roots = Some(if value == "system" {
                RootCerts::System
            } else {
                RootCerts::File(PathBuf::from(value))
            });
        }
        "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir" | "sslsni" => {
            return Err(StateError::config(format!(
                "the connection option `{key}` is not supported (no client certificates or \
                 CRLs); remove it rather than have it ignored"
            )));
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn url_error(what: &str) -> StateError {
    StateError::config(format!(
        "invalid PostgreSQL URL: {what}; percent-encode `/ ? # @ :` and spaces in user names \
         and passwords (the URL is not shown because it may hold a password)"
    ))
}

fn decode(part: &str) -> StateResult<String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| url_error("a part is not valid percent-encoded UTF-8"))
}

/// The key=value pairs a `postgres://` URL stands for, read as RFC 3986 and libpq read it:
/// the authority ends at the first `/`, `?` or `#`, its user-info at the authority's last
/// `@`; user, password, database and options are percent-decoded (a `+` stays a `+`).
/// Several hosts (`h1:5432,h2:5433`) are allowed, as in libpq.
fn url_pairs(url: &str) -> StateResult<Vec<(String, String)>> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if tail.contains('#') {
        return Err(url_error("it contains a `#` (write it as %23)"));
    }
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    // User-info, path and options through the `url` crate, on a placeholder host (it does
    // not take libpq's host lists).
    let placeholder = format!(
        "postgres://{}placeholder{tail}",
        userinfo.map(|u| format!("{u}@")).unwrap_or_default()
    );
    let parsed = url::Url::parse(&placeholder).map_err(|e| url_error(&e.to_string()))?;
    let mut pairs = Vec::new();
    let mut host_list = Vec::new();
    let mut port_list = Vec::new();
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        let (name, port) = if let Some(v6) = host.strip_prefix('[') {
            let (name, after) = v6
                .split_once(']')
                .ok_or_else(|| url_error("an IPv6 host misses its `]`"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| url_error("bad host"))?),
            };
            (name.to_owned(), port)
        } else {
            match host.split_once(':') {
                Some((name, port)) => (decode(name)?, Some(port)),
                None => (decode(host)?, None),
            }
        };
        let port = port.unwrap_or("5432");
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
            return Err(url_error("a port is not a number"));
        }
        host_list.push(name);
        port_list.push(port.to_owned());
    }
    if !host_list.is_empty() {
        pairs.push(("host".to_owned(), host_list.join(",")));
        pairs.push(("port".to_owned(), port_list.join(",")));
    }
    if !parsed.username().is_empty() {
        pairs.push(("user".to_owned(), decode(parsed.username())?));
    }
    if let Some(password) = parsed.password() {
        pairs.push(("password".to_owned(), decode(password)?));
    }
    let dbname = parsed.path().trim_start_matches('/');
    if !dbname.is_empty() {
        pairs.push(("dbname".to_owned(), decode(dbname)?));
    }
    for pair in parsed
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.push((decode(key)?, decode(value)?));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_and_key_value_forms_agree() {
        let forms = [
            "postgres://app:pw@db:5433/state?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
            "host=db port=5433 user=app password=pw dbname=state sslmode = verify-full sslrootcert='/ca.pem' application_name=x",
        ];
        let parsed: Vec<ConnTarget> = forms
            .iter()
            .map(|f| ConnTarget::parse(f).unwrap())
            .collect();
        for t in &parsed {
            assert_eq!(t.tls.mode, SslModeRequest::VerifyFull);
            assert_eq!(t.tls.roots, Some(RootCerts::File("/ca.pem".into())));
            assert_eq!(t.pg.get_ssl_mode(), SslMode::Require);
            assert_eq!(t.pg.get_password(), Some(&b"pw"[..]));
            assert_eq!(
                t.describe(),
                "postgres://app:***@db:5433/state?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x"
            );
        }
    }

    #[test]
    fn every_sslmode_is_read_and_the_default_is_prefer() {
        for (mode, want) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Prefer),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::Require),
            ("verify-full", SslMode::Require),
        ] {
            let t = ConnTarget::parse(&format!("postgres://u@h/d?sslmode={mode}")).unwrap();
            assert_eq!(t.pg.get_ssl_mode(), want, "{mode}");
            let t = ConnTarget::parse(&format!("host=h sslmode = {mode}")).unwrap();
            assert_eq!(t.pg.get_ssl_mode(), want, "{mode}");
        }
        let t = ConnTarget::parse("postgres://u@h/d").unwrap();
        assert_eq!(t.tls.mode, SslModeRequest::Prefer);
    }

    #[test]
    fn passwords_with_any_character_parse_and_never_show() {
        for password in ["hunt/er2", "p#hunter2", "a b", "it's", "x:y@z", "pässwörd"] {
            let kv = format!("host=db user=app password={}", quote_key_value(password));
            let t = ConnTarget::parse(&kv).unwrap();
            assert_eq!(t.pg.get_password(), Some(password.as_bytes()));
            assert!(!t.describe().contains(password), "{}", t.describe());
        }
        let t = ConnTarget::parse("postgres://app:hunt%2Fer2@db/x").unwrap();
        assert_eq!(t.pg.get_password(), Some(&b"hunt/er2"[..]));
        assert_eq!(t.describe(), "postgres://app:***@db:5432/x?sslmode=prefer");
        let t = ConnTarget::parse("postgres://app@db/x?password=s3cret&sslmode=require").unwrap();
        assert!(!t.describe().contains("s3cret"));
        assert_eq!(t.tls.mode, SslModeRequest::Require);
    }

    /// The user-info ends at the authority's last `@` (not the first `@` of the string):
    /// an `@` in a query password or in the password itself neither leaks it nor swallows
    /// the `sslmode` (hostile review: `sslmode=require` became `prefer`, password shown).
    #[test]
    fn at_signs_anywhere_keep_their_meaning() {
        let t = ConnTarget::parse(
            "postgres://db.prod.internal/app?sslmode=verify-full&user=svc&password=Xy7Secret@9q",
        )
        .unwrap();
        assert_eq!(t.tls.mode, SslModeRequest::VerifyFull);
        assert_eq!(t.pg.get_user(), Some("svc"));
        assert_eq!(t.pg.get_password(), Some(&b"Xy7Secret@9q"[..]));
        assert!(!t.describe().contains("Xy7"), "{}", t.describe());
        let t = ConnTarget::parse(
            "postgres://127.0.0.1:5/postgres?sslmode=require&application_name=x&password=s3cret@127.0.0.1:5/postgres",
        )
        .unwrap();
        assert_eq!(t.tls.mode, SslModeRequest::Require);
        assert!(!t.describe().contains("s3cret"), "{}", t.describe());
        for (url, password) in [
            (
                "postgres://pwuser:Wr@ng@Pw@127.0.0.1:45841/postgres",
                "Wr@ng@Pw",
            ),
            ("postgres://app:p@ssw0rdX@db/x", "p@ssw0rdX"),
            ("postgres://app:a%2Fb%23c%20d+e@db/x", "a/b#c d+e"),
        ] {
            let t = ConnTarget::parse(url).unwrap();
            assert_eq!(t.pg.get_password(), Some(password.as_bytes()), "{url}");
            let shown = t.describe();
            assert!(
                !shown.contains("ssw0rd") && !shown.contains("ng@Pw"),
                "{shown}"
            );
            assert!(shown.starts_with("postgres://"), "{shown}");
        }
        // A `+` in a query password stays a `+` (libpq's percent-decoding, not forms').
        let t = ConnTarget::parse("postgres://u@h/d?password=a+b").unwrap();
        assert_eq!(t.pg.get_password(), Some(&b"a+b"[..]));
    }

    #[test]
    fn host_lists_and_ipv6_are_read() {
        let t = ConnTarget::parse("postgres://u@h1:5433,[::1]:5434,h3/d").unwrap();
        assert_eq!(t.pg.get_ports(), [5433, 5434, 5432]);
        assert_eq!(t.pg.get_hosts().len(), 3);
        assert_eq!(
            t.describe(),
            "postgres://u@h1:5433,[::1]:5434,h3:5432/d?sslmode=prefer"
        );
    }

    #[test]
    fn bad_strings_are_config_errors_without_their_text() {
        for bad in [
            "host=db password='hunter2",
            "postgres://u:hunter2@h/d?sslmode=maybe",
            "postgres://u:hunter2@h:notaport/d",
            "hunter2",
            "host=db sslcert=/c.pem password=hunter2",
            // Unencoded `/` or `#` in a password: refused, never half-shown.
            "postgres://app:hunter2/x@db/x",
            "postgres://app:p#hunter2@db/x",
            "postgres://app@db/x#?password=hunter2",
        ] {
            let err = ConnTarget::parse(bad).err().unwrap();
            assert_eq!(err.kind(), state_core::ErrorKind::ConfigInvalid, "{bad}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }
}
