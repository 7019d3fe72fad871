//! Blackout windows: the weekly hours when a relationship must not replicate (peak use of the
//! cluster, a shared link during office hours, another job at night). Operators pick days of the
//! week and a start and end on a 24-hour clock, up to ten windows per relationship, and expect
//! replication to suspend when a window begins and resume by itself when it ends.
//!
//! Everything here is pure and deterministic: the caller passes the instant, so the daemon's
//! scheduler, the status the API reports and the tests all agree, and nothing reads a clock.
//!
//! # Semantics
//!
//! * A window is written in the wall-clock time of its `timezone` (an IANA name, "UTC" included)
//!   and follows that clock across daylight-saving changes: 09:00–17:00 Europe/Berlin is 08:00 to
//!   16:00 UTC in winter and 07:00 to 15:00 UTC in summer.
//! * It begins at `start` on each listed day and ends at `end`: the same day if `end > start`,
//!   the next day if `end < start` (it wraps past midnight: Fri 22:00–06:00 is Friday 22:00 to
//!   Saturday 06:00, and only Friday needs to be listed), and 24 hours of wall clock later if
//!   `end == start` (a whole day; 00:00–00:00 is the listed days from midnight to midnight).
//! * It is half-open: the instant it begins is inside, the instant it ends is not.
//! * Each occurrence is one unbroken span of real time: from the first instant the local clock
//!   reads `start` to the first instant it reads `end`. So where daylight saving skips an hour
//!   (spring forward), a start or end inside the skipped hour falls on the moment the clock jumps,
//!   and a window entirely inside it does not happen that day; where an hour repeats (fall back),
//!   a time inside it means its first pass, so a window across the change is an hour longer and
//!   one inside the repeated hour happens once. Windows never split or flicker at a change.
//! * Windows of a relationship combine: it is in blackout while any of them covers the instant.

use crate::{Error, Result};
use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Utc,
    Weekday,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Most blackout windows one relationship may have (what operators of the reference product
/// know; more would be a schedule better written as fewer, longer windows).
pub const MAX_WINDOWS: usize = 10;

/// How far ahead [`BlackoutWindow::next_change`] and [`next_change_any`] look. A week plus a
/// day: a schedule that changes at all changes within a week and one window's length, so `None`
/// means the state holds for good (a window on every day from 00:00 to 00:00) and a scheduler
/// that re-checks after this long misses nothing.
pub const LOOKAHEAD_DAYS: i64 = 8;

const MINUTES_PER_HOUR: u16 = 60;
const MINUTES_PER_DAY: u16 = 24 * MINUTES_PER_HOUR;

/// Local days before the instant's own whose occurrence can still cover it: one for a window
/// that starts the day before and runs up to 24 hours, one more for a time-zone jump that moved
/// the local date (the longest, Samoa skipping 30 December 2011, is a day).
const DAYS_BEFORE: i64 = 2;
/// Local days after the instant's own whose occurrence can already cover it: only a jump of the
/// local date can make that happen, and none is longer than a day.
const DAYS_AFTER: i64 = 1;

/// Longest stretch of skipped local time searched for its end: no time zone has skipped more than
/// a day, so a longer search means the local time is beyond the zone data and is given up on.
const MAX_GAP_SECS: i64 = 2 * 86_400;

/// The days of the week, Monday first, in the order bits and lists use.
const WEEKDAYS: [Weekday; 7] = [
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
    Weekday::Sat,
    Weekday::Sun,
];
/// Short (the serialized form) and full names of [`WEEKDAYS`], both accepted when parsing.
const DAY_NAMES: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

fn day_bit(d: Weekday) -> u8 {
    1 << d.num_days_from_monday()
}

fn short_name(d: Weekday) -> &'static str {
    DAY_NAMES[d.num_days_from_monday() as usize].0
}

/// Parses one day of the week: "mon" to "sun" or the full name, in any case.
pub fn parse_weekday(s: &str) -> Result<Weekday> {
    let t = s.trim().to_ascii_lowercase();
    WEEKDAYS
        .iter()
        .zip(DAY_NAMES)
        .find(|(_, (short, full))| t == *short || t == *full)
        .map(|(d, _)| *d)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "unknown day of the week {s:?} (expected mon, tue, wed, thu, fri, sat or sun)"
            ))
        })
}

/// The days of the week a window starts on: never empty, since a window that never happens is
/// a mistake an operator should hear about rather than a schedule. Serialized as a list of short
/// names, Monday first: `["mon","fri"]`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Days(u8);

impl Days {
    /// Every day of the week.
    pub const ALL: Days = Days(0b111_1111);

    /// The given days (repeats are harmless); refuses none at all.
    pub fn new(days: impl IntoIterator<Item = Weekday>) -> Result<Days> {
        let bits = days.into_iter().fold(0, |bits, d| bits | day_bit(d));
        if bits == 0 {
            return Err(Error::Invalid(
                "a blackout window needs at least one day of the week".into(),
            ));
        }
        Ok(Days(bits))
    }

    /// Days named as [`parse_weekday`] accepts them.
    pub fn parse_names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<Days> {
        let days = names
            .into_iter()
            .map(|n| parse_weekday(n.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Days::new(days)
    }

    pub fn contains(self, d: Weekday) -> bool {
        self.0 & day_bit(d) != 0
    }

    /// The days in the set, Monday first.
    pub fn iter(self) -> impl Iterator<Item = Weekday> {
        WEEKDAYS.into_iter().filter(move |d| self.contains(*d))
    }
}

/// A comma-separated list, as a command line would give it: "mon,fri" or "Monday, Friday".
impl FromStr for Days {
    type Err = Error;
    fn from_str(s: &str) -> Result<Days> {
        Days::parse_names(s.split(',').filter(|n| !n.trim().is_empty()))
    }
}

impl TryFrom<Vec<String>> for Days {
    type Error = Error;
    fn try_from(names: Vec<String>) -> Result<Days> {
        Days::parse_names(names)
    }
}

impl Serialize for Days {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(short_name))
    }
}

impl fmt::Display for Days {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(short_name(d))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Days {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Days({self})")
    }
}

/// A time of day on a 24-hour clock, 00:00 to 23:59, minute precision (what operators write).
/// Serialized as "HH:MM". There is no 24:00: a window that ends at midnight ends at 00:00.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct ClockTime {
    hour: u8,
    minute: u8,
}

impl ClockTime {
    pub const MIDNIGHT: ClockTime = ClockTime { hour: 0, minute: 0 };

    pub fn new(hour: u8, minute: u8) -> Result<ClockTime> {
        if u16::from(hour) >= MINUTES_PER_DAY / MINUTES_PER_HOUR
            || u16::from(minute) >= MINUTES_PER_HOUR
        {
            return Err(Error::Invalid(format!(
                "time of day must be 00:00 to 23:59 on a 24-hour clock, not {hour:02}:{minute:02}"
            )));
        }
        Ok(ClockTime { hour, minute })
    }

    pub fn hour(self) -> u8 {
        self.hour
    }

    pub fn minute(self) -> u8 {
        self.minute
    }

    /// Minutes since midnight, 0 to 1439.
    pub fn minutes(self) -> u16 {
        u16::from(self.hour) * MINUTES_PER_HOUR + u16::from(self.minute)
    }

    pub(crate) fn naive(self) -> NaiveTime {
        // Both fields were range-checked on the way in, so this is always `Some`.
        NaiveTime::from_hms_opt(self.hour.into(), self.minute.into(), 0).unwrap_or(NaiveTime::MIN)
    }
}

/// "HH:MM"; a one-digit hour ("6:00") is accepted too, since people write it.
impl FromStr for ClockTime {
    type Err = Error;
    fn from_str(s: &str) -> Result<ClockTime> {
        let bad = || {
            Error::Invalid(format!(
                "time of day must be HH:MM on a 24-hour clock (00:00 to 23:59), not {s:?}"
            ))
        };
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        let digits = |t: &str, max_len: usize| {
            !t.is_empty() && t.len() <= max_len && t.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(h, 2) || !digits(m, 2) || m.len() != 2 {
            return Err(bad());
        }
        let hour = h.parse::<u8>().map_err(|_| bad())?;
        let minute = m.parse::<u8>().map_err(|_| bad())?;
        ClockTime::new(hour, minute).map_err(|_| bad())
    }
}

impl TryFrom<String> for ClockTime {
    type Error = Error;
    fn try_from(s: String) -> Result<ClockTime> {
        s.parse()
    }
}

impl Serialize for ClockTime {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl fmt::Debug for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClockTime({self})")
    }
}

/// One weekly blackout window; see the module documentation for exactly when it applies. Every
/// field is valid by construction, so any value of this type is a window that can be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackoutWindow {
    /// The days it starts on (a window that wraps past midnight ends the day after).
    pub days: Days,
    pub start: ClockTime,
    /// Before `start` wraps to the next day; equal to `start` means a whole day.
    pub end: ClockTime,
    /// Whose wall clock `start` and `end` are read on; an IANA name such as "Europe/Berlin".
    #[serde(with = "tz_name")]
    #[schema(value_type = String, example = "Europe/Berlin")]
    pub timezone: Tz,
}

impl BlackoutWindow {
    /// How long the window lasts by the wall clock: 1 minute to 24 hours. Real time differs by
    /// the daylight-saving shift on the nights the clocks change.
    pub fn length(&self) -> TimeDelta {
        let (s, e) = (self.start.minutes(), self.end.minutes());
        let minutes = if e > s {
            e - s
        } else {
            MINUTES_PER_DAY - s + e
        };
        TimeDelta::minutes(minutes.into())
    }

    /// Whether the window covers `at`.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let today = at.with_timezone(&self.timezone).date_naive();
        dates(today, -DAYS_BEFORE, DAYS_AFTER)
            .filter_map(|d| self.occurrence(d))
            .any(|(s, e)| s <= at && at < e)
    }

    /// The first instant after `at`, at most [`LOOKAHEAD_DAYS`] later, at which [`contains`]
    /// changes (the window begins or ends): when a scheduler should look again. `None` if it
    /// does not change within that time, which means never (see [`LOOKAHEAD_DAYS`]).
    ///
    /// [`contains`]: BlackoutWindow::contains
    pub fn next_change(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        next_change_any(std::slice::from_ref(self), at)
    }

    /// The occurrence that starts on local `date`, as a span of real time `[start, end)`; `None`
    /// if the window is not on that day or the span is empty (it lies in skipped local time).
    fn occurrence(&self, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if !self.days.contains(date.weekday()) {
            return None;
        }
        let start = date.and_time(self.start.naive());
        let end = start.checked_add_signed(self.length())?;
        let (s, e) = (
            first_instant(self.timezone, start)?,
            first_instant(self.timezone, end)?,
        );
        (s < e).then_some((s, e))
    }

    /// Every instant in `(at, at + LOOKAHEAD_DAYS]` at which an occurrence begins or ends, and
    /// possibly a few just outside: the only instants where `contains` can change.
    fn edges(&self, at: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let today = at.with_timezone(&self.timezone).date_naive();
        dates(today, -DAYS_BEFORE, LOOKAHEAD_DAYS + DAYS_AFTER)
            .filter_map(|d| self.occurrence(d))
            .flat_map(|(s, e)| [s, e])
    }
}

impl BlackoutWindow {
    /// A window from its parts as an operator writes them (days as [`Days::parse_names`] takes
    /// them, "HH:MM" times, an IANA zone): the rules, and the words of a refusal, of reading
    /// one from JSON, so a client can build the value the daemon would read.
    pub fn from_parts<S: AsRef<str>>(
        days: impl IntoIterator<Item = S>,
        start: &str,
        end: &str,
        timezone: &str,
    ) -> Result<BlackoutWindow> {
        Ok(BlackoutWindow {
            days: Days::parse_names(days)?,
            start: start.parse()?,
            end: end.parse()?,
            timezone: parse_timezone(timezone)?,
        })
    }
}

/// A time zone by its IANA name ("Europe/Berlin", "UTC"), as the zone database spells it.
pub fn parse_timezone(name: &str) -> Result<Tz> {
    name.parse().map_err(|_| {
        Error::Invalid(format!(
            "unknown time zone {name:?} (expected an IANA name such as \"Europe/Berlin\" or \"UTC\")"
        ))
    })
}

impl fmt::Display for BlackoutWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}-{} {}",
            self.days,
            self.start,
            self.end,
            self.timezone.name()
        )
    }
}

/// Local dates `center + from ..= center + to`, skipping any beyond chrono's calendar.
pub(crate) fn dates(center: NaiveDate, from: i64, to: i64) -> impl Iterator<Item = NaiveDate> {
    (from..=to).filter_map(move |k| center.checked_add_signed(TimeDelta::days(k)))
}

/// The first instant at which the clock of `tz` reads `local`. A repeated local time (fall back)
/// is its first pass; a skipped one (spring forward) is the moment the clock jumps past it.
pub(crate) fn first_instant(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
        LocalResult::None => gap_end(tz, local),
    }
}

/// For a skipped local time: the instant the clock jumps over it, found as the first local time
/// after it that exists. The skipped stretch is contiguous, so search forward in doubling steps
/// until one exists, then halve the last step down to the second (transitions are on whole
/// seconds). About 30 zone lookups even for Samoa's skipped day.
fn gap_end(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let exists = |t: NaiveDateTime| !matches!(tz.from_local_datetime(&t), LocalResult::None);
    let mut skipped = local;
    let mut step = 1;
    let mut exists_at = loop {
        let probe = local.checked_add_signed(TimeDelta::seconds(step))?;
        if exists(probe) {
            break probe;
        }
        skipped = probe;
        if step > MAX_GAP_SECS {
            return None;
        }
        step *= 2;
    };
    while (exists_at - skipped).num_seconds() > 1 {
        let mid = skipped
            .checked_add_signed(TimeDelta::seconds((exists_at - skipped).num_seconds() / 2))?;
        if exists(mid) {
            exists_at = mid;
        } else {
            skipped = mid;
        }
    }
    tz.from_local_datetime(&exists_at)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// Refuses a set of windows a relationship cannot have. Each window is valid by construction;
/// what is left to check is how many there are.
pub fn validate(windows: &[BlackoutWindow]) -> Result<()> {
    if windows.len() > MAX_WINDOWS {
        return Err(Error::Invalid(format!(
            "a relationship has at most {MAX_WINDOWS} blackout windows; {} given",
            windows.len()
        )));
    }
    Ok(())
}

/// Whether any of the windows covers `at`: replication is suspended.
pub fn in_blackout(windows: &[BlackoutWindow], at: DateTime<Utc>) -> bool {
    windows.iter().any(|w| w.contains(at))
}

/// The first instant after `at`, at most [`LOOKAHEAD_DAYS`] later, at which [`in_blackout`]
/// changes. Windows that overlap or abut count as one blackout: the end of one that another
/// still covers is not a change. `None` if nothing changes within that time (or there are no
/// windows).
pub fn next_change_any(windows: &[BlackoutWindow], at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let horizon = at.checked_add_signed(TimeDelta::days(LOOKAHEAD_DAYS))?;
    let now = in_blackout(windows, at);
    // Between consecutive edges every window's `contains` is constant, so the first edge where
    // the combined answer differs is exactly the next change.
    let mut edges: Vec<DateTime<Utc>> = windows
        .iter()
        .flat_map(|w| w.edges(at))
        .filter(|t| at < *t && *t <= horizon)
        .collect();
    edges.sort_unstable();
    edges.dedup();
    edges.into_iter().find(|t| in_blackout(windows, *t) != now)
}

/// Serde for a time zone as its IANA name, refusing names the zone database does not know.
pub(crate) mod tz_name {
    use chrono_tz::Tz;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
        let name = String::deserialize(d)?;
        super::parse_timezone(&name).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn win(days: &str, start: &str, end: &str, tz: &str) -> BlackoutWindow {
        BlackoutWindow {
            days: days.parse().unwrap(),
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
            timezone: tz.parse().unwrap(),
        }
    }

    /// Asserts `w` covers exactly `[from, to)` around those instants.
    fn assert_span(w: &BlackoutWindow, from: &str, to: &str) {
        let (from, to) = (utc(from), utc(to));
        let ns = TimeDelta::nanoseconds(1);
        assert!(
            !w.contains(from - ns),
            "{w} should not yet cover {}",
            from - ns
        );
        assert!(w.contains(from), "{w} should cover {from}");
        assert!(w.contains(to - ns), "{w} should still cover {}", to - ns);
        assert!(!w.contains(to), "{w} should have ended at {to}");
        assert_eq!(w.next_change(from - ns), Some(from));
        assert_eq!(w.next_change(from), Some(to));
    }

    #[test]
    fn a_window_from_its_parts_is_the_window_read_from_json_and_refused_in_the_same_words() {
        let parts = |d: &[&str], s: &str, e: &str, z: &str| {
            let json = serde_json::json!({"days": d, "start": s, "end": e, "timezone": z});
            let read = serde_json::from_value::<BlackoutWindow>(json).map_err(|e| e.to_string());
            (
                BlackoutWindow::from_parts(d, s, e, z).map_err(|e| e.to_string()),
                read,
            )
        };
        let (made, read) = parts(&["Monday", "fri", "mon"], "6:00", "22:30", "Europe/Berlin");
        assert_eq!(made, read);
        assert_eq!(
            made.unwrap(),
            win("mon,fri", "06:00", "22:30", "Europe/Berlin")
        );
        for (d, s, e, z) in [
            ("Funday", "01:00", "02:00", "UTC"),
            ("mon", "25:99", "02:00", "UTC"),
            ("mon", "01:00", "2", "UTC"),
            ("mon", "01:00", "02:00", "Mars/Olympus"),
        ] {
            let (made, read) = parts(&[d], s, e, z);
            assert_eq!(made, read, "{d} {s}-{e} {z}");
            assert!(made.is_err());
        }
    }

    #[test]
    fn plain_window_covers_inside_and_not_outside() {
        // 2024-01-01 is a Monday.
        let w = win("mon", "09:00", "17:00", "UTC");
        assert!(w.contains(utc("2024-01-01T12:00:00Z")));
        assert_span(&w, "2024-01-01T09:00:00Z", "2024-01-01T17:00:00Z");
        assert!(!w.contains(utc("2024-01-01T08:59:00Z")));
        assert!(
            !w.contains(utc("2024-01-02T12:00:00Z")),
            "Tuesday is not listed"
        );
        assert!(w.contains(utc("2024-01-08T12:00:00Z")), "every week");
        assert_eq!(w.length(), TimeDelta::hours(8));
    }

    #[test]
    fn window_ending_before_it_starts_wraps_past_midnight() {
        // 2024-01-05 is a Friday.
        let w = win("fri", "22:00", "06:00", "UTC");
        assert!(
            w.contains(utc("2024-01-06T03:00:00Z")),
            "Saturday 03:00 is inside Friday's window"
        );
        assert!(!w.contains(utc("2024-01-05T21:59:00Z")));
        assert!(
            !w.contains(utc("2024-01-06T06:00:00Z")),
            "the end is not inside"
        );
        assert!(
            !w.contains(utc("2024-01-06T22:00:00Z")),
            "Saturday is not listed"
        );
        assert!(
            !w.contains(utc("2024-01-05T03:00:00Z")),
            "Thursday is not listed, so no window runs into Friday"
        );
        assert_span(&w, "2024-01-05T22:00:00Z", "2024-01-06T06:00:00Z");
        assert_eq!(w.length(), TimeDelta::hours(8));
    }

    #[test]
    fn window_ending_when_it_starts_lasts_a_whole_day() {
        // 2024-01-03 is a Wednesday.
        let w = win("wed", "08:00", "08:00", "UTC");
        assert_span(&w, "2024-01-03T08:00:00Z", "2024-01-04T08:00:00Z");
        assert_eq!(w.length(), TimeDelta::hours(24));
        let midnight = win("sat,sun", "00:00", "00:00", "UTC");
        assert_span(&midnight, "2024-01-06T00:00:00Z", "2024-01-08T00:00:00Z");
    }

    #[test]
    fn window_on_every_day_all_day_never_changes() {
        let w = BlackoutWindow {
            days: Days::ALL,
            start: ClockTime::MIDNIGHT,
            end: ClockTime::MIDNIGHT,
            timezone: Tz::Europe__Berlin,
        };
        for at in [
            "2024-01-01T00:00:00Z",
            "2024-03-31T01:00:00Z",
            "2024-10-27T00:59:59Z",
            "2024-10-27T01:00:00Z",
        ] {
            assert!(w.contains(utc(at)), "{at}");
            assert_eq!(w.next_change(utc(at)), None, "{at}");
        }
    }

    #[test]
    fn window_follows_local_time_in_its_zone_winter_and_summer() {
        let w = win("mon,tue,wed,thu,fri", "09:00", "17:00", "Europe/Berlin");
        // Winter, CET = UTC+1: 09:00-17:00 local is 08:00-16:00 UTC.
        assert!(w.contains(utc("2024-01-08T08:30:00Z")));
        assert!(!w.contains(utc("2024-01-08T07:30:00Z")));
        assert_span(&w, "2024-01-08T08:00:00Z", "2024-01-08T16:00:00Z");
        // Summer, CEST = UTC+2: 07:00-15:00 UTC.
        assert!(w.contains(utc("2024-07-08T07:30:00Z")));
        assert!(!w.contains(utc("2024-07-08T06:59:00Z")));
        assert_span(&w, "2024-07-08T07:00:00Z", "2024-07-08T15:00:00Z");
        // Saturday and Sunday are not listed in local time, whatever the UTC date.
        assert!(!w.contains(utc("2024-07-06T10:00:00Z")));
    }

    #[test]
    fn spring_forward_skipped_hour_moves_edges_to_the_jump() {
        // Berlin, Sunday 2024-03-31: at 01:00 UTC the clock jumps from 02:00 CET to 03:00 CEST.
        let inside_gap = win("sun", "02:00", "02:30", "Europe/Berlin");
        for at in [
            "2024-03-31T00:59:59Z",
            "2024-03-31T01:00:00Z",
            "2024-03-31T01:15:00Z",
        ] {
            assert!(
                !inside_gap.contains(utc(at)),
                "a window inside the skipped hour does not happen: {at}"
            );
        }
        assert_eq!(
            inside_gap.next_change(utc("2024-03-30T12:00:00Z")),
            Some(utc("2024-04-07T00:00:00Z")),
            "so the next change is the following Sunday"
        );
        // Starts before the gap, ends inside it: ends at the jump.
        assert_span(
            &win("sun", "01:30", "02:30", "Europe/Berlin"),
            "2024-03-31T00:30:00Z",
            "2024-03-31T01:00:00Z",
        );
        // Starts inside the gap: starts at the jump.
        assert_span(
            &win("sun", "02:30", "04:00", "Europe/Berlin"),
            "2024-03-31T01:00:00Z",
            "2024-03-31T02:00:00Z",
        );
        // Across the night: 22:00 CET to 06:00 CEST, an hour shorter in real time.
        assert_span(
            &win("sat", "22:00", "06:00", "Europe/Berlin"),
            "2024-03-30T21:00:00Z",
            "2024-03-31T04:00:00Z",
        );
        // A full day that day is 23 hours.
        assert_span(
            &win("sun", "00:00", "00:00", "Europe/Berlin"),
            "2024-03-30T23:00:00Z",
            "2024-03-31T22:00:00Z",
        );
    }

    #[test]
    fn fall_back_repeated_hour_means_its_first_pass_and_windows_stay_whole() {
        // Berlin, Sunday 2024-10-27: at 01:00 UTC the clock goes back from 03:00 CEST to 02:00 CET.
        let inside_repeat = win("sun", "02:00", "02:30", "Europe/Berlin");
        assert_span(
            &inside_repeat,
            "2024-10-27T00:00:00Z",
            "2024-10-27T00:30:00Z",
        );
        assert!(
            !inside_repeat.contains(utc("2024-10-27T01:15:00Z")),
            "not again on the second pass"
        );
        assert_eq!(
            inside_repeat.next_change(utc("2024-10-27T00:30:00Z")),
            Some(utc("2024-11-03T01:00:00Z"))
        );
        // Straddles the change: one span, 02:30 CEST to 04:00 CET, without a gap when the clock
        // goes back to 02:00 (which would be before its start by the wall clock).
        let across = win("sun", "02:30", "04:00", "Europe/Berlin");
        assert_span(&across, "2024-10-27T00:30:00Z", "2024-10-27T03:00:00Z");
        assert!(across.contains(utc("2024-10-27T01:00:00Z")));
        // Across the night: 22:00 CEST to 06:00 CET, an hour longer in real time.
        assert_span(
            &win("sat", "22:00", "06:00", "Europe/Berlin"),
            "2024-10-26T20:00:00Z",
            "2024-10-27T05:00:00Z",
        );
        assert_span(
            &win("sun", "00:00", "00:00", "Europe/Berlin"),
            "2024-10-26T22:00:00Z",
            "2024-10-27T23:00:00Z",
        );
    }

    #[test]
    fn skipped_midnight_and_skipped_day_are_handled() {
        // Chile springs forward at midnight: Sunday 2024-09-08 00:00 does not exist in Santiago,
        // the clock goes from 23:59:59 -04 to 01:00 -03 at 04:00 UTC.
        let santiago = Tz::America__Santiago;
        let midnight = NaiveDate::from_ymd_opt(2024, 9, 8)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        assert!(
            matches!(santiago.from_local_datetime(&midnight), LocalResult::None),
            "zone data as assumed"
        );
        assert_span(
            &win("sun", "00:00", "00:00", "America/Santiago"),
            "2024-09-08T04:00:00Z",
            "2024-09-09T03:00:00Z",
        );
        assert_span(
            &win("sat", "22:00", "00:30", "America/Santiago"),
            "2024-09-08T02:00:00Z",
            "2024-09-08T04:00:00Z",
        );
        // Samoa skipped Friday 2011-12-30 entirely (Thursday 24:00 -10 became Saturday 00:00 +14
        // at 10:00 UTC): Friday's window does not happen, Thursday night's ends at the jump.
        let friday = NaiveDate::from_ymd_opt(2011, 12, 30)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap();
        assert!(
            matches!(
                Tz::Pacific__Apia.from_local_datetime(&friday),
                LocalResult::None
            ),
            "zone data as assumed"
        );
        let fri = win("fri", "09:00", "17:00", "Pacific/Apia");
        assert!(!fri.contains(utc("2011-12-30T10:00:00Z")));
        assert_eq!(
            fri.next_change(utc("2011-12-29T00:00:00Z")),
            Some(utc("2012-01-05T19:00:00Z")),
            "09:00 +14 the next Friday"
        );
        assert_span(
            &win("thu", "22:00", "06:00", "Pacific/Apia"),
            "2011-12-30T08:00:00Z",
            "2011-12-30T10:00:00Z",
        );
    }

    #[test]
    fn next_change_lands_exactly_on_the_boundaries() {
        // 2024-01-08 is a Monday; Berlin is UTC+1 in January.
        let w = win("mon,wed", "09:00", "17:00", "Europe/Berlin");
        assert_eq!(
            w.next_change(utc("2024-01-08T00:00:00Z")),
            Some(utc("2024-01-08T08:00:00Z"))
        );
        assert_eq!(
            w.next_change(utc("2024-01-08T07:59:59.5Z")),
            Some(utc("2024-01-08T08:00:00Z"))
        );
        assert_eq!(
            w.next_change(utc("2024-01-08T08:00:00Z")),
            Some(utc("2024-01-08T16:00:00Z")),
            "strictly after"
        );
        assert_eq!(
            w.next_change(utc("2024-01-08T12:00:00Z")),
            Some(utc("2024-01-08T16:00:00Z"))
        );
        assert_eq!(
            w.next_change(utc("2024-01-08T16:00:00Z")),
            Some(utc("2024-01-10T08:00:00Z"))
        );
        // From Wednesday evening the next is Monday, five days on.
        assert_eq!(
            w.next_change(utc("2024-01-10T16:00:00Z")),
            Some(utc("2024-01-15T08:00:00Z"))
        );
    }

    #[test]
    fn overlapping_and_abutting_windows_are_one_blackout() {
        let ws = [
            win("mon", "09:00", "12:00", "UTC"),
            win("mon", "11:00", "14:00", "UTC"),
            win("mon", "14:00", "15:00", "UTC"),
            win("tue", "09:00", "10:00", "UTC"),
        ];
        assert!(in_blackout(&ws, utc("2024-01-01T13:00:00Z")));
        assert!(!in_blackout(&ws, utc("2024-01-01T15:00:00Z")));
        assert_eq!(
            next_change_any(&ws, utc("2024-01-01T08:00:00Z")),
            Some(utc("2024-01-01T09:00:00Z"))
        );
        assert_eq!(
            next_change_any(&ws, utc("2024-01-01T09:00:00Z")),
            Some(utc("2024-01-01T15:00:00Z"))
        );
        assert_eq!(
            next_change_any(&ws, utc("2024-01-01T15:00:00Z")),
            Some(utc("2024-01-02T09:00:00Z"))
        );
        assert!(!in_blackout(&[], utc("2024-01-01T13:00:00Z")));
        assert_eq!(next_change_any(&[], utc("2024-01-01T13:00:00Z")), None);
    }

    #[test]
    fn at_most_ten_windows_and_the_eleventh_is_refused_by_name() {
        let w = win("mon", "09:00", "17:00", "UTC");
        assert!(validate(&[]).is_ok());
        assert!(validate(&[w; MAX_WINDOWS]).is_ok());
        let err = validate(&[w; MAX_WINDOWS + 1]).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)));
        assert_eq!(
            err.to_string(),
            "a relationship has at most 10 blackout windows; 11 given"
        );
    }

    #[test]
    fn json_round_trip_keeps_the_operators_form() {
        let json = r#"{"days":["mon","fri"],"start":"22:00","end":"06:00","timezone":"UTC"}"#;
        let w: BlackoutWindow = serde_json::from_str(json).unwrap();
        assert_eq!(w, win("mon,fri", "22:00", "06:00", "UTC"));
        assert_eq!(serde_json::to_string(&w).unwrap(), json);
        // Any case, full names, repeats and order on the way in; the short form out.
        let loose = r#"{"days":["Friday","MON","fri"],"start":"6:05","end":"23:59","timezone":"Europe/Berlin"}"#;
        let w: BlackoutWindow = serde_json::from_str(loose).unwrap();
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"days":["mon","fri"],"start":"06:05","end":"23:59","timezone":"Europe/Berlin"}"#
        );
        assert_eq!(w.to_string(), "mon,fri 06:05-23:59 Europe/Berlin");
    }

    #[test]
    fn json_refuses_what_is_not_a_window() {
        let refused = |json: &str, says: &str| {
            let e = serde_json::from_str::<BlackoutWindow>(json)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{json}: {e}");
        };
        refused(
            r#"{"days":[],"start":"22:00","end":"06:00","timezone":"UTC"}"#,
            "at least one day",
        );
        refused(
            r#"{"days":["mon","funday"],"start":"22:00","end":"06:00","timezone":"UTC"}"#,
            "\"funday\"",
        );
        refused(
            r#"{"days":["mon"],"start":"24:00","end":"06:00","timezone":"UTC"}"#,
            "HH:MM",
        );
        refused(
            r#"{"days":["mon"],"start":"22:00","end":"6","timezone":"UTC"}"#,
            "HH:MM",
        );
        refused(
            r#"{"days":["mon"],"start":"22:00","end":"06:00","timezone":"Mars/Olympus"}"#,
            "unknown time zone",
        );
        refused(
            r#"{"days":["mon"],"start":"22:00","end":"06:00"}"#,
            "timezone",
        );
        refused(
            r#"{"days":["mon"],"start":"22:00","end":"06:00","timezone":"UTC","tz":"UTC"}"#,
            "tz",
        );
    }

    #[test]
    fn days_and_times_parse_as_operators_write_them() {
        assert_eq!(parse_weekday("Mon").unwrap(), Weekday::Mon);
        assert_eq!(parse_weekday("SUNDAY").unwrap(), Weekday::Sun);
        assert!(parse_weekday("mo").is_err());
        let d: Days = "Fri, monday,WED".parse().unwrap();
        assert_eq!(
            d.iter().collect::<Vec<_>>(),
            [Weekday::Mon, Weekday::Wed, Weekday::Fri]
        );
        assert_eq!(d.to_string(), "mon,wed,fri");
        assert!("".parse::<Days>().is_err());
        assert!(Days::new([]).is_err());
        assert_eq!(Days::new(WEEKDAYS).unwrap(), Days::ALL);

        let t: ClockTime = "07:05".parse().unwrap();
        assert_eq!((t.hour(), t.minute(), t.minutes()), (7, 5, 425));
        assert_eq!("7:05".parse::<ClockTime>().unwrap(), t);
        assert_eq!("23:59".parse::<ClockTime>().unwrap().to_string(), "23:59");
        for bad in [
            "24:00", "12:60", "12:5", "1200", "", ":", "+1:00", "1:+5", "001:00", "12:00:00",
            "a:bc",
        ] {
            assert!(bad.parse::<ClockTime>().is_err(), "{bad:?}");
        }
        assert!(ClockTime::new(23, 59).is_ok());
        assert!(ClockTime::new(24, 0).is_err());
        assert!(ClockTime::new(0, 60).is_err());
    }

    /// Zones with awkward rules, each with dates its clocks changed, so generated instants land
    /// near changes often: 30-minute and 45-minute offsets, a 30-minute shift (Lord Howe),
    /// changes at midnight (Santiago), a skipped day (Apia), a Ramadan pause (Casablanca).
    const ZONES: &[(Tz, &[&str])] = &[
        (Tz::UTC, &[]),
        (Tz::Europe__Berlin, &["2024-03-31", "2024-10-27"]),
        (Tz::America__New_York, &["2024-03-10", "2024-11-03"]),
        (Tz::America__Santiago, &["2024-04-07", "2024-09-08"]),
        (Tz::Australia__Lord_Howe, &["2024-04-07", "2024-10-06"]),
        (Tz::Pacific__Chatham, &["2024-04-07", "2024-09-29"]),
        (Tz::Asia__Kolkata, &[]),
        (Tz::America__St_Johns, &["2024-03-10", "2024-11-03"]),
        (Tz::Pacific__Apia, &["2011-12-30", "2011-09-24"]),
        (Tz::Africa__Casablanca, &["2024-03-10", "2024-04-14"]),
    ];
    /// Instants far from the zones' listed changes: 2000 to 2040.
    const SPAN_SECS: std::ops::Range<i64> = 946_684_800..2_208_988_800;
    const NEAR_SECS: std::ops::Range<i64> = -4 * 86_400..4 * 86_400;

    fn arb_window() -> impl Strategy<Value = BlackoutWindow> {
        let minute = || prop_oneof![Just(0u8), Just(30u8), 0u8..60];
        (
            1u8..=127,
            0u8..24,
            minute(),
            0u8..24,
            minute(),
            0..ZONES.len(),
        )
            .prop_map(|(days, sh, sm, eh, em, z)| BlackoutWindow {
                days: Days(days),
                start: ClockTime::new(sh, sm).unwrap(),
                end: ClockTime::new(eh, em).unwrap(),
                timezone: ZONES[z].0,
            })
    }

    /// An instant anywhere, or (more often) within days of one of the window's zone's changes.
    fn arb_instant_for(
        w: BlackoutWindow,
        whole_minutes: bool,
    ) -> impl Strategy<Value = DateTime<Utc>> {
        let changes: Vec<i64> = ZONES
            .iter()
            .filter(|(tz, _)| *tz == w.timezone)
            .flat_map(|(_, dates)| dates.iter())
            .map(|d| utc(&format!("{d}T00:00:00Z")).timestamp())
            .collect();
        let near = if changes.is_empty() { vec![0] } else { changes };
        let secs = prop_oneof![1 => SPAN_SECS, 2 => (proptest::sample::select(near), NEAR_SECS).prop_map(|(c, d)| c + d)];
        (secs, 0u32..1_000_000_000).prop_map(move |(s, ns)| {
            if whole_minutes {
                DateTime::from_timestamp(s - s.rem_euclid(60), 0).unwrap()
            } else {
                DateTime::from_timestamp(s, if ns % 2 == 0 { 0 } else { ns }).unwrap()
            }
        })
    }

    /// Asserts `contains` holds its value from `at` until `next` (sampled) and differs at `next`.
    fn check_constant_until(
        at: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        covers: impl Fn(DateTime<Utc>) -> bool,
    ) -> std::result::Result<(), TestCaseError> {
        let now = covers(at);
        let (until, flips) = match next {
            Some(n) => {
                prop_assert!(
                    at < n && n <= at + TimeDelta::days(LOOKAHEAD_DAYS),
                    "{at} -> {n}"
                );
                (n, true)
            }
            None => (at + TimeDelta::days(LOOKAHEAD_DAYS), false),
        };
        let span = until - at;
        const SAMPLES: i32 = 64;
        for k in 1..SAMPLES {
            let p = at + span / SAMPLES * k;
            prop_assert_eq!(
                covers(p),
                now,
                "at {} changed before {} (at {})",
                at,
                until,
                p
            );
        }
        prop_assert_eq!(
            covers(until - TimeDelta::nanoseconds(1)),
            now,
            "just before {}",
            until
        );
        if flips {
            prop_assert_ne!(covers(until), now, "no change at {}", until);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn contains_is_constant_until_next_change((w, at) in arb_window().prop_flat_map(|w| (Just(w), arb_instant_for(w, false)))) {
            check_constant_until(at, w.next_change(at), |t| w.contains(t))?;
        }

        #[test]
        fn in_blackout_is_constant_until_next_change_any(
            (ws, at) in proptest::collection::vec(arb_window(), 0..4).prop_flat_map(|ws| {
                let first = ws.first().copied().unwrap_or(BlackoutWindow { days: Days::ALL, start: ClockTime::MIDNIGHT, end: ClockTime::MIDNIGHT, timezone: Tz::UTC });
                (Just(ws), arb_instant_for(first, false))
            })
        ) {
            check_constant_until(at, next_change_any(&ws, at), |t| in_blackout(&ws, t))?;
        }
    }

    proptest! {
        // Every change in these zones since 2000 is on a whole minute, so scanning minute by
        // minute finds the true next change; each case scans 11,520 minutes.
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn next_change_matches_a_minute_by_minute_scan((w, at) in arb_window().prop_flat_map(|w| (Just(w), arb_instant_for(w, true)))) {
            let now = w.contains(at);
            let scanned = (1..=LOOKAHEAD_DAYS * 24 * 60).map(|m| at + TimeDelta::minutes(m)).find(|t| w.contains(*t) != now);
            prop_assert_eq!(w.next_change(at), scanned, "{} from {}", w, at);
        }
    }
}
