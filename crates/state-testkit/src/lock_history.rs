//! Mutual exclusion and fencing checked from a recorded history of lock holds.
//!
//! Each holder records one [`Hold`] per acquisition: when `acquire` was acknowledged, the last
//! instant it still believed it held the lock, and the fencing token it got. [`check`] then
//! asserts what a lock promises:
//!
//! - **exclusion**: no two holders' belief intervals `[acquired, believed_until]` overlap;
//! - **fencing**: in the order the intervals follow one another, tokens strictly increase, and
//!   no token is handed out twice (empty intervals included).
//!
//! Only belief counts. A holder whose lease lapsed (it stopped renewing, its runtime stalled)
//! may still have been running while the next holder worked; what a lock promises is that the
//! holder could *know*: its guard reports the lease lost before the server can give it to
//! someone else. So a holder ends its interval at its last check that answered "held" (or at
//! its local lease deadline, for a raw lease it does not renew), and a holder that never saw
//! the lease held after its acknowledgement has an empty interval, which excludes nothing.
//!
//! Times are wall-clock ([`SystemTime`]), so holds recorded by several processes on one
//! machine merge into one history; [`Hold::to_line`] and [`Hold::parse_line`] carry them over
//! a pipe.
//!
//! This is not a linearizability check ([`crate::linearizability`] models registers, not
//! leases); the property is the interval-overlap one a lock states directly.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use state_testkit::lock_history::{Hold, check};
//!
//! let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
//! let ms = Duration::from_millis;
//! let holds = [
//!     Hold::new("p0/t0", 7, t, t + ms(10)),
//!     Hold::new("p1/t3", 8, t + ms(10), t + ms(12)),
//! ];
//! assert_eq!(check(&holds).unwrap().counted, 2);
//! let overlapping = [
//!     Hold::new("p0/t0", 7, t, t + ms(10)),
//!     Hold::new("p1/t3", 8, t + ms(9), t + ms(12)),
//! ];
//! assert!(check(&overlapping).is_err());
//! ```

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One acquisition of a lock, as its holder saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Who held it, for reports (`p1/t3`: process 1, task 3). No whitespace.
    pub holder: String,
    /// The fencing token the acquisition answered.
    pub token: u64,
    /// When `acquire` returned the lease to the holder.
    pub acquired: SystemTime,
    /// The last instant the holder believed it held the lock: when it invoked the release
    /// after a check that answered "held", or its last such check (or its local lease
    /// deadline) when it saw the lease lost. At or before `acquired`: never believed held.
    pub believed_until: SystemTime,
    /// Whether the holder saw its lease lost before it released it.
    pub lost: bool,
}

impl Hold {
    /// A hold the holder kept (not lost) from `acquired` until `believed_until`.
    pub fn new(
        holder: impl Into<String>,
        token: u64,
        acquired: SystemTime,
        believed_until: SystemTime,
    ) -> Self {
        Self {
            holder: holder.into(),
            token,
            acquired,
            believed_until,
            lost: false,
        }
    }

    /// The same hold, marked as lost before its release.
    #[must_use]
    pub fn lost(mut self) -> Self {
        self.lost = true;
        self
    }

    /// Whether the interval is non-empty, so it counts for exclusion.
    pub fn counts(&self) -> bool {
        self.believed_until > self.acquired
    }

    /// One line, `LOCKHOLD <holder> <token> <acquired ns> <believed_until ns> <lost 0|1>`,
    /// for a child process to report its holds on stdout.
    pub fn to_line(&self) -> String {
        format!(
            "{LINE_TAG} {} {} {} {} {}",
            self.holder,
            self.token,
            nanos(self.acquired),
            nanos(self.believed_until),
            u8::from(self.lost)
        )
    }

    /// Parses a line written by [`Hold::to_line`]; `None` for any other line (a test
    /// harness's own output, for example).
    pub fn parse_line(line: &str) -> Option<Self> {
        let mut parts = line.split_whitespace();
        if parts.next()? != LINE_TAG {
            return None;
        }
        let holder = parts.next()?.to_owned();
        let token = parts.next()?.parse().ok()?;
        let acquired = from_nanos(parts.next()?.parse().ok()?);
        let believed_until = from_nanos(parts.next()?.parse().ok()?);
        let lost = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            holder,
            token,
            acquired,
            believed_until,
            lost,
        })
    }
}

const LINE_TAG: &str = "LOCKHOLD";

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .expect("a time after 1970")
        .as_nanos()
}

fn from_nanos(n: u128) -> SystemTime {
    let secs = u64::try_from(n / 1_000_000_000).unwrap_or(u64::MAX);
    UNIX_EPOCH + Duration::new(secs, (n % 1_000_000_000) as u32)
}

/// What a history that passed [`check`] held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Holds recorded.
    pub holds: usize,
    /// Holds with a non-empty belief interval (checked for overlap and token order).
    pub counted: usize,
    /// Holds whose holder saw the lease lost.
    pub lost: usize,
    /// Distinct holders.
    pub holders: usize,
}

/// Why a history is not mutually exclusive or not fenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Two holders believed they held the lock at the same time.
    Overlap {
        /// The hold that started first.
        first: Hold,
        /// The hold that started before `first` ended.
        second: Hold,
    },
    /// A later holder got a token not above an earlier holder's.
    TokenNotIncreasing {
        /// The earlier hold.
        earlier: Hold,
        /// The later hold, whose token is not greater.
        later: Hold,
    },
    /// One token was handed to two acquisitions.
    DuplicateToken {
        /// One acquisition.
        first: Hold,
        /// The other.
        second: Hold,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |h: &Hold| {
            format!(
                "{} (token {}, held {} ns .. {} ns{})",
                h.holder,
                h.token,
                nanos(h.acquired),
                nanos(h.believed_until),
                if h.lost { ", lost" } else { "" }
            )
        };
        match self {
            Violation::Overlap { first, second } => {
                let by = nanos(first.believed_until).saturating_sub(nanos(second.acquired));
                write!(
                    f,
                    "two holders at once for {by} ns: {} and {}",
                    show(first),
                    show(second)
                )
            }
            Violation::TokenNotIncreasing { earlier, later } => write!(
                f,
                "fencing token did not increase: {} then {}",
                show(earlier),
                show(later)
            ),
            Violation::DuplicateToken { first, second } => write!(
                f,
                "fencing token handed out twice: {} and {}",
                show(first),
                show(second)
            ),
        }
    }
}

impl std::error::Error for Violation {}

/// Checks that no two belief intervals overlap (touching is allowed: a release invoked at
/// the instant the next acquisition is acknowledged), that tokens strictly increase in the
/// order the intervals follow each other, and that no token repeats.
///
/// # Errors
///
/// The first [`Violation`] found, naming both holds (boxed: holds are large).
pub fn check(holds: &[Hold]) -> Result<Summary, Box<Violation>> {
    let mut by_token: HashMap<u64, &Hold> = HashMap::with_capacity(holds.len());
    for hold in holds {
        if let Some(first) = by_token.insert(hold.token, hold) {
            return Err(Box::new(Violation::DuplicateToken {
                first: first.clone(),
                second: hold.clone(),
            }));
        }
    }
    let mut counted: Vec<&Hold> = holds.iter().filter(|h| h.counts()).collect();
    counted.sort_by_key(|h| (h.acquired, h.believed_until));
    // The interval reaching furthest so far: a long hold may contain several short ones.
    let mut furthest: Option<&Hold> = None;
    let mut previous: Option<&Hold> = None;
    for &hold in &counted {
        if let Some(f) = furthest {
            if hold.acquired < f.believed_until {
                return Err(Box::new(Violation::Overlap {
                    first: f.clone(),
                    second: hold.clone(),
                }));
            }
        }
        if let Some(p) = previous {
            if hold.token <= p.token {
                return Err(Box::new(Violation::TokenNotIncreasing {
                    earlier: p.clone(),
                    later: hold.clone(),
                }));
            }
        }
        if furthest.is_none_or(|f| hold.believed_until > f.believed_until) {
            furthest = Some(hold);
        }
        previous = Some(hold);
    }
    let mut holders: Vec<&str> = holds.iter().map(|h| h.holder.as_str()).collect();
    holders.sort_unstable();
    holders.dedup();
    Ok(Summary {
        holds: holds.len(),
        counted: counted.len(),
        lost: holds.iter().filter(|h| h.lost).count(),
        holders: holders.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    fn hold(holder: &str, token: u64, from: u64, to: u64) -> Hold {
        Hold::new(holder, token, at(from), at(to))
    }

    #[test]
    fn disjoint_and_touching_intervals_pass() {
        let holds = [
            hold("a", 1, 0, 10),
            hold("b", 2, 10, 20),
            hold("a", 5, 25, 30),
        ];
        let summary = check(&holds).unwrap();
        assert_eq!(summary.holds, 3);
        assert_eq!(summary.counted, 3);
        assert_eq!(summary.holders, 2);
    }

    #[test]
    fn order_of_recording_does_not_matter() {
        let holds = [hold("b", 2, 10, 20), hold("a", 1, 0, 10)];
        assert!(check(&holds).is_ok());
    }

    #[test]
    fn overlap_is_reported_with_both_holders() {
        let holds = [hold("a", 1, 0, 10), hold("b", 2, 9, 20)];
        let err = check(&holds).unwrap_err();
        assert!(matches!(&*err, Violation::Overlap { first, second }
            if first.holder == "a" && second.holder == "b"));
        let text = err.to_string();
        assert!(
            text.contains("two holders at once for 1000000 ns"),
            "{text}"
        );
    }

    #[test]
    fn interval_inside_a_long_one_is_an_overlap() {
        // Sorted by start, `c` follows `b`, which ended; `a` still reaches past `c`.
        let holds = [
            hold("a", 1, 0, 100),
            hold("b", 2, 10, 20),
            hold("c", 3, 30, 40),
        ];
        let err = check(&holds).unwrap_err();
        assert!(matches!(&*err, Violation::Overlap { first, second }
            if first.holder == "a" && second.holder == "b"));
        let holds = [hold("a", 1, 0, 100), hold("c", 3, 30, 40)];
        assert!(matches!(
            *check(&holds).unwrap_err(),
            Violation::Overlap { .. }
        ));
    }

    #[test]
    fn lost_lease_ends_the_belief_where_the_holder_saw_it_held() {
        // `a` went on working until 50 but saw its lease lost after 10: only 0..10 counts.
        let holds = [hold("a", 1, 0, 10).lost(), hold("b", 2, 12, 20)];
        let summary = check(&holds).unwrap();
        assert_eq!(summary.lost, 1);
        // Never believed held (its acknowledgement came after its deadline): excludes nothing,
        // but its token still must not repeat.
        let holds = [
            hold("a", 3, 30, 29).lost(),
            hold("b", 2, 12, 40),
            hold("c", 4, 40, 41),
        ];
        let summary = check(&holds).unwrap();
        assert_eq!(summary.counted, 2);
        let holds = [hold("a", 2, 30, 30).lost(), hold("b", 2, 12, 40)];
        assert!(matches!(
            *check(&holds).unwrap_err(),
            Violation::DuplicateToken { .. }
        ));
    }

    #[test]
    fn tokens_must_increase_in_interval_order() {
        let holds = [hold("a", 5, 0, 10), hold("b", 4, 10, 20)];
        let err = check(&holds).unwrap_err();
        assert!(
            matches!(&*err, Violation::TokenNotIncreasing { earlier, later }
            if earlier.token == 5 && later.token == 4)
        );
        assert!(err.to_string().contains("did not increase"));
    }

    #[test]
    fn duplicate_tokens_are_reported() {
        let holds = [hold("a", 5, 0, 10), hold("b", 5, 10, 20)];
        assert!(matches!(
            *check(&holds).unwrap_err(),
            Violation::DuplicateToken { .. }
        ));
    }

    #[test]
    fn empty_history_passes() {
        assert_eq!(check(&[]).unwrap().holds, 0);
    }

    #[test]
    fn lines_round_trip_and_foreign_lines_are_skipped() {
        let h = hold("p1/t3", 42, 5, 7).lost();
        let line = h.to_line();
        assert!(line.starts_with("LOCKHOLD p1/t3 42 "), "{line}");
        assert_eq!(Hold::parse_line(&line), Some(h.clone()));
        assert_eq!(Hold::parse_line(&format!("  {line}  ")), Some(h));
        for other in [
            "",
            "running 1 test",
            "LOCKHOLD p 1 2",
            "LOCKHOLD p x 1 2 0",
            "LOCKHOLD p 1 1 2 7",
            "LOCKHOLD p 1 1 2 0 extra",
        ] {
            assert_eq!(Hold::parse_line(other), None, "{other:?}");
        }
    }
}
