//! Snapshot policies: when a source node keeps a point in time of the relationships linked to a
//! policy, and how long it keeps it. Pure: every decision takes the time as an argument, so the
//! schedule is tested against calendars and daylight-saving changes without waiting.
//!
//! A schedule fires every N minutes (aligned to multiples of N since the Unix epoch, so "every
//! 15 minutes" fires at :00, :15, :30 and :45 UTC), or daily or weekly at given times of day in
//! a time zone. A local time the clocks skip fires when they jump past it; a repeated one fires
//! once, on its first pass (as blackout windows read them).

use crate::blackout::{self, ClockTime, Days};
use crate::{Error, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Policies on a node at most.
pub const MAX_POLICIES: usize = 256;
/// Policies one relationship links at most.
pub const MAX_POLICIES_PER_RELATIONSHIP: usize = 16;
/// Times of day one daily or weekly schedule names at most.
pub const MAX_TIMES: usize = 48;
/// Longest policy name.
pub const MAX_NAME_LEN: usize = 64;
/// The longest interval of an "every" schedule: one week.
pub const MAX_EVERY_MINUTES: u32 = 7 * 24 * 60;
/// The longest expiry: ten years.
pub const MAX_EXPIRY_SECS: u64 = 10 * 366 * 24 * 3600;

/// A policy's name: 1 to 64 letters, digits, `-` and `.`, not starting with `.`. It is part of
/// the kept snapshots' directory names (`<snapshot-id>_<policy-name>`), so `_` and `/` are out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PolicyName(String);

impl PolicyName {
    pub fn parse(s: &str) -> Result<PolicyName> {
        let ok = !s.is_empty()
            && s.len() <= MAX_NAME_LEN
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if ok {
            Ok(PolicyName(s.to_string()))
        } else {
            Err(Error::Invalid(format!(
                "policy name {s:?} must be 1-{MAX_NAME_LEN} letters, digits, '-' or '.', not starting with '.'"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PolicyName {
    type Error = Error;
    fn try_from(s: String) -> Result<PolicyName> {
        PolicyName::parse(&s)
    }
}

impl From<PolicyName> for String {
    fn from(n: PolicyName) -> String {
        n.0
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// When a policy fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// Every `minutes` minutes, on multiples of it since the Unix epoch.
    Every { minutes: u32 },
    /// On the given days (every day for a daily schedule) at each of `times`, read on the
    /// clock of `timezone`.
    At {
        days: Days,
        times: Vec<ClockTime>,
        #[serde(with = "blackout::tz_name")]
        #[schema(value_type = String, example = "UTC")]
        timezone: Tz,
    },
}

impl Schedule {
    pub fn validate(&self) -> Result<()> {
        match self {
            Schedule::Every { minutes } => {
                if *minutes == 0 || *minutes > MAX_EVERY_MINUTES {
                    return Err(Error::Invalid(format!(
                        "a policy fires every 1 minute to 7 days, not every {minutes} minutes"
                    )));
                }
            }
            Schedule::At { times, .. } => {
                if times.is_empty() || times.len() > MAX_TIMES {
                    return Err(Error::Invalid(format!(
                        "a daily or weekly policy needs 1 to {MAX_TIMES} times of day"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The first time it fires strictly after `after` (None only past chrono's calendar).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every { minutes } => {
                let step = i64::from(*minutes) * 60;
                let secs = after.timestamp();
                let next = (secs.div_euclid(step) + 1) * step;
                DateTime::from_timestamp(next, 0)
            }
            Schedule::At {
                days,
                times,
                timezone,
            } => {
                let local = after.with_timezone(timezone).date_naive();
                // Local dates from the day before (a time zone ahead of UTC) to eight days on
                // (a weekly schedule's next day, plus a skipped calendar day such as Samoa's).
                blackout::dates(local, -1, 9)
                    .filter(|d| days.contains(chrono::Datelike::weekday(d)))
                    .flat_map(|d| {
                        times.iter().filter_map(move |t| {
                            let at = NaiveDateTime::new(d, t.naive());
                            blackout::first_instant(*timezone, at)
                        })
                    })
                    .filter(|t| *t > after)
                    .min()
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every { minutes } if minutes % 60 == 0 => {
                write!(f, "every {} h", minutes / 60)
            }
            Schedule::Every { minutes } => write!(f, "every {minutes} min"),
            Schedule::At {
                days,
                times,
                timezone,
            } => {
                let times: Vec<String> = times.iter().map(|t| t.to_string()).collect();
                let when = if *days == Days::ALL {
                    "daily".to_string()
                } else {
                    days.to_string()
                };
                write!(f, "{when} at {} {}", times.join(","), timezone.name())
            }
        }
    }
}

/// How long a snapshot is kept: for a number of seconds after it was taken, or until released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Expiry {
    Never,
    AfterSecs(u64),
}

impl Expiry {
    /// When a snapshot taken at `taken_ns` expires (None: never).
    pub fn at(self, taken_ns: i64) -> Option<i64> {
        match self {
            Expiry::Never => None,
            Expiry::AfterSecs(s) => {
                Some(taken_ns.saturating_add((s as i64).saturating_mul(1_000_000_000)))
            }
        }
    }

    pub fn validate(self) -> Result<()> {
        match self {
            Expiry::AfterSecs(0) => Err(Error::Invalid(
                "an expiry must be at least one second (or never)".into(),
            )),
            Expiry::AfterSecs(s) if s > MAX_EXPIRY_SECS => Err(Error::Invalid(
                "an expiry must be at most ten years (or never)".into(),
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expiry::Never => f.write_str("never"),
            Expiry::AfterSecs(s) => f.write_str(&format_duration(*s)),
        }
    }
}

/// "90s", "15m", "2h", "7d", "2w" as seconds; refuses anything else, zero included.
pub fn parse_duration(s: &str) -> Result<u64> {
    let bad = || {
        Error::Invalid(format!(
            "duration {s:?} must be a number and a unit: s, m, h, d or w (\"15m\", \"7d\")"
        ))
    };
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(bad()),
        Some(v) => Ok(v),
    }
}

/// Seconds in the largest unit that divides them ("7d", "90m", "45s").
pub fn format_duration(secs: u64) -> String {
    for (unit, n) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs > 0 && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// A snapshot policy as a source node stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: PolicyName,
    pub schedule: Schedule,
    pub expiry: Expiry,
    /// A disabled policy takes no snapshots (those it took are kept and expire as before).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl Policy {
    pub fn validate(&self) -> Result<()> {
        self.schedule.validate()?;
        self.expiry.validate()
    }

    /// The policy after `e`, validated; the name never changes.
    pub fn edited(&self, e: &PolicyEdit) -> Result<Policy> {
        let mut p = self.clone();
        if let Some(s) = &e.schedule {
            p.schedule = s.clone();
        }
        if let Some(x) = e.expiry {
            p.expiry = x;
        }
        if let Some(en) = e.enabled {
            p.enabled = en;
        }
        p.validate()?;
        Ok(p)
    }

    /// Whether it fired in `(last, now]`: the fire time, if so (a daemon that was down over
    /// several fires takes one snapshot, for the latest).
    pub fn fired(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.enabled || now <= last {
            return None;
        }
        let first = self.schedule.next_after(last).filter(|t| *t <= now)?;
        // The latest fire up to `now`, bounded: an interval of a minute over a long outage.
        let mut at = first;
        for _ in 0..MAX_CATCH_UP_STEPS {
            match self.schedule.next_after(at) {
                Some(n) if n <= now => at = n,
                _ => return Some(at),
            }
        }
        Some(at)
    }
}

/// Fires skipped over when finding the latest one after an outage (a one-minute policy over
/// a week); past it, an earlier fire stands for the latest.
const MAX_CATCH_UP_STEPS: usize = 20_000;

/// The body of `PATCH /v1/snapshot-policies/{name}`: what is left out stays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyEdit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<Expiry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A kept snapshot's id: a number, increasing per relationship on the source that took it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct SnapshotId(pub u64);

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The directory name of a kept snapshot under `.snapshot`: `<snapshot-id>_<policy-name>`.
pub fn kept_name(id: SnapshotId, policy: &PolicyName) -> String {
    format!("{id}_{policy}")
}

/// A policy snapshot as a node records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub policy: PolicyName,
    /// When the source's point in time was taken (ns since the epoch).
    pub taken_ns: i64,
    /// When it is deleted on this node (None: kept until released).
    pub expires_ns: Option<i64>,
    /// When it is to expire on the target (the source decides, from the relationship's
    /// target expiry, and sends it along).
    pub target_expires_ns: Option<i64>,
    /// Source: replicated to the target (it waits in the queue until then).
    pub replicated: bool,
}

impl Snapshot {
    pub fn name(&self) -> String {
        kept_name(self.id, &self.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn at(days: &[&str], times: &[&str], tz: Tz) -> Schedule {
        Schedule::At {
            days: Days::parse_names(days).unwrap(),
            times: times.iter().map(|t| t.parse().unwrap()).collect(),
            timezone: tz,
        }
    }

    #[test]
    fn every_fires_on_multiples_of_its_interval() {
        let s = Schedule::Every { minutes: 15 };
        assert_eq!(
            s.next_after(utc("2026-12-02T14:07:31Z")),
            Some(utc("2026-12-02T14:15:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-12-02T14:15:00Z")),
            Some(utc("2026-12-02T14:30:00Z"))
        );
    }

    #[test]
    fn daily_times_are_read_on_the_zones_clock() {
        let s = at(
            &["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            &["02:00", "14:00"],
            Tz::Europe__Berlin,
        );
        // 14:07 UTC is 15:07 in Berlin in December: next is 02:00 Berlin = 01:00 UTC.
        assert_eq!(
            s.next_after(utc("2026-12-02T14:07:00Z")),
            Some(utc("2026-12-03T01:00:00Z"))
        );
    }

    #[test]
    fn weekly_waits_for_its_day() {
        // 2026-12-02 is a Wednesday.
        let s = at(&["mon"], &["06:30"], Tz::UTC);
        assert_eq!(
            s.next_after(utc("2026-12-02T10:00:00Z")),
            Some(utc("2026-12-07T06:30:00Z"))
        );
    }

    #[test]
    fn a_skipped_local_time_fires_when_the_clock_jumps_past_it() {
        // Berlin springs forward at 02:00 local on 2024-03-31 (01:00 UTC).
        let s = at(&["sun"], &["02:30"], Tz::Europe__Berlin);
        assert_eq!(
            s.next_after(utc("2024-03-30T12:00:00Z")),
            Some(utc("2024-03-31T01:00:00Z"))
        );
    }

    #[test]
    fn a_repeated_local_time_fires_once() {
        // Berlin falls back at 03:00 local on 2024-10-27; 02:30 happens twice.
        let s = at(&["sun"], &["02:30"], Tz::Europe__Berlin);
        let first = s.next_after(utc("2024-10-26T12:00:00Z")).unwrap();
        assert_eq!(first, utc("2024-10-27T00:30:00Z"));
        let next = s.next_after(first).unwrap();
        assert_eq!(next, utc("2024-11-03T01:30:00Z"));
    }

    #[test]
    fn after_an_outage_one_snapshot_stands_for_the_missed_fires() {
        let p = Policy {
            name: PolicyName::parse("hourly").unwrap(),
            schedule: Schedule::Every { minutes: 60 },
            expiry: Expiry::Never,
            enabled: true,
        };
        assert_eq!(
            p.fired(utc("2026-12-02T10:30:00Z"), utc("2026-12-02T14:10:00Z")),
            Some(utc("2026-12-02T14:00:00Z"))
        );
        assert_eq!(
            p.fired(utc("2026-12-02T14:00:00Z"), utc("2026-12-02T14:59:59Z")),
            None
        );
        let off = Policy {
            enabled: false,
            ..p
        };
        assert_eq!(
            off.fired(utc("2026-12-02T10:30:00Z"), utc("2026-12-02T14:10:00Z")),
            None
        );
    }

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_duration("2w").unwrap(), 1_209_600);
        assert_eq!(parse_duration("30s").unwrap(), 30);
        for bad in ["", "15", "m", "0m", "1y", "-1h", "99999999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(604_800), "1w");
        assert_eq!(format_duration(5400), "90m");
        assert_eq!(format_duration(45), "45s");
    }

    #[test]
    fn names_that_would_break_a_snapshot_directory_are_refused() {
        for ok in ["hourly", "Frequent-protection", "v1.2"] {
            PolicyName::parse(ok).unwrap();
        }
        for bad in ["", ".hidden", "a_b", "a/b", "a b", &"x".repeat(65)] {
            assert!(PolicyName::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn s_days_contains(s: &Schedule, d: chrono::Weekday) -> bool {
        matches!(s, Schedule::At { days, .. } if days.contains(d))
    }

    proptest! {
        /// The next fire is after the given time, on a listed day and time of the zone's clock
        /// (or the moment the clock jumped past it), and no listed time lies between.
        #[test]
        fn next_fire_is_the_first_listed_time_after(
            secs in 0i64..4_000_000_000,
            frac in 0.0f64..1.0,
            day_bits in 1u8..128,
            mins in proptest::collection::vec(0u16..1440, 1..4),
            zone in 0usize..4,
        ) {
            let tz = [Tz::UTC, Tz::Europe__Berlin, Tz::America__Santiago, Tz::Australia__Lord_Howe][zone];
            let days: Vec<chrono::Weekday> = (0..7u8)
                .filter(|b| day_bits & (1 << b) != 0)
                .map(|b| chrono::Weekday::try_from(b).unwrap())
                .collect();
            let s = Schedule::At {
                days: Days::new(days).unwrap(),
                times: mins.iter().map(|m| ClockTime::new((m / 60) as u8, (m % 60) as u8).unwrap()).collect(),
                timezone: tz,
            };
            let after = DateTime::from_timestamp(secs, 0).unwrap();
            let next = s.next_after(after).unwrap();
            prop_assert!(next > after);
            prop_assert!(next - after <= TimeDelta::days(8));
            // It is a listed day and time on the zone's clock, or the instant the clock jumped
            // over one (a second earlier, the zone had another offset).
            let local = next.with_timezone(&tz);
            let listed = s_days_contains(&s, chrono::Datelike::weekday(&local.date_naive()))
                && mins.contains(&((chrono::Timelike::hour(&local) * 60 + chrono::Timelike::minute(&local)) as u16))
                && chrono::Timelike::second(&local) == 0;
            let offset = |t: DateTime<Utc>| chrono::Offset::fix(chrono::DateTime::offset(&t.with_timezone(&tz)));
            let jumped = offset(next - TimeDelta::seconds(1)) != offset(next);
            prop_assert!(listed || jumped, "{next} is {local} in {tz}");
            // Nothing fires in between: from any instant between, the next fire is the same.
            let mid = after + TimeDelta::milliseconds(((next - after).num_milliseconds() as f64 * frac) as i64);
            if mid < next {
                prop_assert_eq!(s.next_after(mid), Some(next));
            }
        }
    }
}
