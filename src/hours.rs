//! Opening hours: weekly ranges in an IANA time zone. Pure: the current time
//! is always passed in.
//!
//! A range is `DAYS HH:MM-HH:MM`, days as `mon`, `mon-fri` or `sat,sun`. A
//! range whose end is not after its start runs over midnight into the next
//! day (`mon-sun 19:00-06:00`), which is how many helpline chats open.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// One weekly opening range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Days on which the range starts, Monday = index 0.
    days: [bool; 7],
    start: NaiveTime,
    end: NaiveTime,
}

/// Parsed `[hours]`.
#[derive(Debug, Clone)]
pub struct Hours {
    tz: Tz,
    ranges: Vec<Range>,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day(s: &str) -> Result<usize, String> {
    DAY_NAMES
        .iter()
        .position(|d| *d == s.to_ascii_lowercase())
        .ok_or_else(|| format!("`{s}` is not a day; use mon, tue, wed, thu, fri, sat or sun"))
}

fn time(s: &str) -> Result<NaiveTime, String> {
    if s == "24:00" {
        return Ok(NaiveTime::MIN);
    }
    NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("`{s}` is not a time like 09:00"))
}

/// Parses one range such as `mon-fri 09:00-17:00`.
pub fn parse_range(s: &str) -> Result<Range, String> {
    let expected = "expected a range like \"mon-fri 09:00-17:00\"";
    let mut parts = s.split_whitespace();
    let (Some(days_s), Some(times_s), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("`{s}`: {expected}"));
    };
    let mut days = [false; 7];
    for item in days_s.split(',') {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day(item)?] = true,
        }
    }
    let Some((a, b)) = times_s.split_once('-') else {
        return Err(format!("`{s}`: {expected}"));
    };
    let (start, end) = (time(a)?, time(b)?);
    if start == end && a != "00:00" {
        return Err(format!("`{s}`: start and end are the same"));
    }
    Ok(Range { days, start, end })
}

impl Range {
    fn overnight(&self) -> bool {
        self.end <= self.start
    }
}

impl Hours {
    /// Builds from config values already checked by `Config::validate`.
    pub fn new(timezone: &str, open: &[String]) -> Result<Hours, String> {
        let tz: Tz = timezone.parse().map_err(|_| format!("unknown time zone `{timezone}`"))?;
        let ranges = open.iter().map(|r| parse_range(r)).collect::<Result<_, _>>()?;
        Ok(Hours { tz, ranges })
    }

    /// Whether the chat is open at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&self.tz);
        let t = local.time();
        let wd = local.weekday().num_days_from_monday() as usize;
        let prev = (wd + 6) % 7;
        self.ranges.iter().any(|r| {
            if r.overnight() {
                (r.days[wd] && t >= r.start) || (r.days[prev] && t < r.end)
            } else {
                r.days[wd] && t >= r.start && t < r.end
            }
        })
    }

    /// The next instant at or after `now` when the chat opens, if any range
    /// exists. When already open, `now`.
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.is_open(now) {
            return Some(now);
        }
        let today = now.with_timezone(&self.tz).date_naive();
        let mut best: Option<DateTime<Utc>> = None;
        for offset in 0..=8 {
            let date: NaiveDate = today + Duration::days(offset);
            let wd = date.weekday().num_days_from_monday() as usize;
            for r in self.ranges.iter().filter(|r| r.days[wd]) {
                let Some(start) = self.resolve(date, r.start) else { continue };
                if start > now && best.is_none_or(|b| start < b) {
                    best = Some(start);
                }
            }
        }
        best
    }

    /// The local weekday (0 = Monday) and time (`09:00`) of `at`, for
    /// telling the visitor when the chat opens, in their language.
    pub fn local_day_and_time(&self, at: DateTime<Utc>) -> (usize, String) {
        let local = at.with_timezone(&self.tz);
        (local.weekday().num_days_from_monday() as usize, local.format("%H:%M").to_string())
    }

    /// Local wall time to UTC; a time inside a DST gap moves to the first
    /// valid minute after it.
    fn resolve(&self, date: NaiveDate, t: NaiveTime) -> Option<DateTime<Utc>> {
        let naive = date.and_time(t);
        for shift in 0..=120 {
            let n = naive + Duration::minutes(shift);
            if let Some(dt) = self.tz.from_local_datetime(&n).earliest() {
                return Some(dt.with_timezone(&Utc));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parses_and_rejects() {
        assert!(parse_range("mon-fri 09:00-17:00").is_ok());
        assert!(parse_range("sat,sun 12:00-16:00").is_ok());
        assert!(parse_range("fri-mon 19:00-06:00").is_ok());
        assert!(parse_range("mon-fri 9-17").is_err());
        assert!(parse_range("monday 09:00-17:00").is_err());
        assert!(parse_range("mon 09:00").is_err());
        assert!(parse_range("mon 09:00-09:00").is_err());
    }

    #[test]
    fn daytime_range_in_amsterdam() {
        let h = Hours::new("Europe/Amsterdam", &["mon-fri 09:00-17:00".into()]).unwrap();
        // 2026-11-30 is a Monday; Amsterdam is UTC+1 in winter.
        assert!(!h.is_open(utc("2026-11-30T07:59:00Z")));
        assert!(h.is_open(utc("2026-11-30T08:00:00Z")));
        assert!(h.is_open(utc("2026-11-30T15:59:00Z")));
        assert!(!h.is_open(utc("2026-11-30T16:00:00Z")));
        // Saturday: next opening is Monday 09:00 local.
        let sat = utc("2026-12-05T10:00:00Z");
        assert!(!h.is_open(sat));
        assert_eq!(h.next_open(sat), Some(utc("2026-12-07T08:00:00Z")));
        assert_eq!(h.local_day_and_time(utc("2026-12-07T08:00:00Z")), (0, "09:00".to_owned()));
    }

    #[test]
    fn over_midnight() {
        let h = Hours::new("Europe/Amsterdam", &["mon-fri 19:00-06:00".into()]).unwrap();
        // Friday 23:00 local open; Saturday 05:00 local still open (started Friday).
        assert!(h.is_open(utc("2026-12-04T22:00:00Z")));
        assert!(h.is_open(utc("2026-12-05T04:00:00Z")));
        // Saturday 07:00 closed, Saturday 20:00 closed (no range starts Saturday).
        assert!(!h.is_open(utc("2026-12-05T06:00:00Z")));
        assert!(!h.is_open(utc("2026-12-05T19:00:00Z")));
        // Monday 05:00 local: Sunday has no range, so closed.
        assert!(!h.is_open(utc("2026-12-07T04:00:00Z")));
        assert_eq!(h.next_open(utc("2026-12-05T19:00:00Z")), Some(utc("2026-12-07T18:00:00Z")));
    }

    #[test]
    fn dst_changes() {
        let h = Hours::new("Europe/Amsterdam", &["mon-sun 09:00-17:00".into()]).unwrap();
        // Summer (UTC+2): 09:00 local is 07:00Z. Winter (UTC+1): 08:00Z.
        assert!(h.is_open(utc("2026-07-01T07:00:00Z")));
        assert!(!h.is_open(utc("2026-12-01T07:00:00Z")));
        // Clocks go back on 2026-10-25: next opening from Saturday night is 08:00Z Sunday.
        assert_eq!(h.next_open(utc("2026-10-24T20:00:00Z")), Some(utc("2026-10-25T08:00:00Z")));
        // A range starting in the spring-forward gap (02:30 on 2026-03-29) opens at 03:00 local.
        let g = Hours::new("Europe/Amsterdam", &["sun 02:30-04:00".into()]).unwrap();
        assert_eq!(g.next_open(utc("2026-03-28T12:00:00Z")), Some(utc("2026-03-29T01:00:00Z")));
    }

    #[test]
    fn no_ranges_never_opens() {
        let h = Hours::new("UTC", &[]).unwrap();
        assert!(!h.is_open(utc("2026-12-01T12:00:00Z")));
        assert_eq!(h.next_open(utc("2026-12-01T12:00:00Z")), None);
    }
}
