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
        let rest = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            strip_tls_from_url(text, &mut tls)?
        } else {
            let pairs = parse_key_values(text).ok_or_else(|| {
                StateError::config(
                    "invalid PostgreSQL connection string: neither a postgres:// URL nor a \
                     libpq key=value list (an unterminated quote or a word without `=`?); \
                     the text is not shown because it may hold a password",
                )
            })?;
            let mut kept = String::new();
            for (key, value) in pairs {
                if !take_tls_option(&key, &value, &mut tls)? {
                    let _ = write!(kept, "{key}={} ", quote_key_value(&value));
                }
            }
            kept
        };
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

/// Removes the TLS options from a URL's query (recording them in `tls`); returns the URL
/// tokio-postgres should parse.
fn strip_tls_from_url(url: &str, tls: &mut TlsRequest) -> StateResult<String> {
    // tokio-postgres ends the user-info at the first '@'; the query starts at the first '?'
    // after it.
    let creds_end = url.find('@').map_or(0, |at| at + 1);
    let Some(q) = url[creds_end..].find('?').map(|q| q + creds_end) else {
        return Ok(url.to_owned());
    };
    let mut kept = Vec::new();
    for pair in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| {
                    StateError::config(
                        "invalid PostgreSQL URL: an option is not valid percent-encoded UTF-8",
                    )
                })
        };
        if !take_tls_option(&decode(raw_key)?, &decode(raw_value)?, tls)? {
            kept.push(pair);
        }
    }
    let mut out = url[..q].to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok(out)
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
        let t = ConnTarget::parse("postgres://app:hunt/er2@db/x").unwrap();
        assert_eq!(t.pg.get_password(), Some(&b"hunt/er2"[..]));
        assert_eq!(t.describe(), "postgres://app:***@db:5432/x?sslmode=prefer");
        let t = ConnTarget::parse("postgres://app@db/x?password=s3cret&sslmode=require").unwrap();
        assert!(!t.describe().contains("s3cret"));
        assert_eq!(t.tls.mode, SslModeRequest::Require);
    }

    #[test]
    fn bad_strings_are_config_errors_without_their_text() {
        for bad in [
            "host=db password='hunter2",
            "postgres://u:hunter2@h/d?sslmode=maybe",
            "postgres://u:hunter2@h:notaport/d",
            "hunter2",
            "host=db sslcert=/c.pem password=hunter2",
        ] {
            let err = ConnTarget::parse(bad).err().unwrap();
            assert_eq!(err.kind(), state_core::ErrorKind::ConfigInvalid, "{bad}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }
}
