//! Option values as text (URL query parameters, environment variables) and durations in serde.

use std::time::Duration;

use state_core::{StateError, StateResult};

/// Parses a duration: an integer followed by a unit (`ns`, `us`, `ms`, `s`, `m`, `h`, `d`),
/// or a bare integer meaning seconds (`30` is `30s`, as libpq's `connect_timeout`).
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return None;
    }
    let n: u64 = text[..digits].parse().ok()?;
    let per_unit = match &text[digits..] {
        "ns" => return Some(Duration::from_nanos(n)),
        "us" => return Some(Duration::from_micros(n)),
        "ms" => return Some(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(per_unit)?))
}

/// Formats a duration so that [`parse_duration`] reads it back exactly.
pub(crate) fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else if d.subsec_nanos() % 1_000 == 0 {
        format!("{}us", d.as_micros())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// The error for a bad value: names the option and what it takes, never quotes the value
/// (it may be a secret typed in the wrong place).
pub(crate) fn bad_value(option: &str, expected: &str) -> StateError {
    StateError::config(format!(
        "option `{option}`: expected {expected} (the value given is not shown)"
    ))
}

pub(crate) fn duration(option: &str, text: &str) -> StateResult<Duration> {
    parse_duration(text).ok_or_else(|| {
        bad_value(
            option,
            "a duration such as `500ms`, `30s`, `5m`, `2h` or `1d` (a bare number is seconds)",
        )
    })
}

pub(crate) fn integer<T: std::str::FromStr>(option: &str, text: &str) -> StateResult<T> {
    text.trim()
        .parse()
        .map_err(|_| bad_value(option, "a non-negative integer"))
}

pub(crate) fn boolean(option: &str, text: &str) -> StateResult<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(bad_value(
            option,
            "a boolean (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`)",
        )),
    }
}

/// `#[serde(with = "crate::value::serde_duration")]` for `Option<Duration>`: a string such as
/// `"60s"` or `"500ms"`, or an integer number of seconds.
pub(crate) mod serde_duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    #[allow(clippy::ref_option)] // serde's `with` passes `&Option<T>`.
    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_str(&super::format_duration(*d)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        deserializer.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(
                "a duration such as \"500ms\", \"30s\", \"5m\", \"2h\" or \"1d\", or a number of seconds",
            )
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Duration::from_secs(v)))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(|v| Some(Duration::from_secs(v)))
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            super::parse_duration(v).map(Some).ok_or_else(|| {
                E::invalid_value(de::Unexpected::Other("a malformed duration"), &self)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format_back() {
        for (text, d) in [
            ("500ms", Duration::from_millis(500)),
            ("30", Duration::from_secs(30)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86_400)),
            ("250us", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
        ] {
            assert_eq!(parse_duration(text), Some(d), "{text}");
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
        for bad in [
            "",
            "s",
            "1.5s",
            "-1s",
            "10 parsecs",
            "1w",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
