//! Cron expressions, read as crontab(5) reads them, evaluated in UTC.
//!
//! - Forms: 5 fields `minute hour day-of-month month day-of-week`; 6 fields with a leading
//!   `second`; 7 with a trailing `year`; or a macro: `@yearly` (= `@annually`), `@monthly`,
//!   `@weekly`, `@daily` (= `@midnight`), `@hourly`.
//! - Day of week: `0`–`7` with `0` and `7` = Sunday, `1` = Monday … `6` = Saturday, or the names
//!   `SUN`..`SAT` (any case, full names too); lists, ranges (`1-5`, `MON-FRI`, `5-7`) and steps
//!   (`*/2`, `1-5/2`, `1/2` = `1-7/2`) as in crontab. `?` means `*`.
//! - Day of month and day of week: when both are restricted (neither starts with `*` or `?`), a
//!   day matches when **either** matches (`0 0 1 * MON` = the 1st and every Monday), as in crontab.
//! - The other fields have the `cron` crate's syntax (the same as crontab's for numbers, ranges,
//!   lists, steps and month names).
//!
//! The `cron` crate evaluates the fields; this module only translates what crontab reads
//! differently (the crate numbers days of the week 1 = Sunday … 7 = Saturday, and it requires
//! both day fields to match).

use chrono::{TimeZone, Utc};
use std::str::FromStr;

/// A parsed cron expression. Fires at the union of its schedules' ticks.
#[derive(Clone, Debug)]
pub struct Cron {
    any_of: Vec<cron::Schedule>,
}

impl Cron {
    /// Parses `expr` (see the module documentation). The error says what is wrong.
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let expanded = expand_macro(expr.trim())?;
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (second, rest, year) = match fields.len() {
            5 => ("0", &fields[..], None),
            6 => (fields[0], &fields[1..], None),
            7 => (fields[0], &fields[1..6], Some(fields[6])),
            n => return Err(format!("cron expression needs 5, 6 or 7 fields (or a macro such as @daily), got {n}")),
        };
        let (minute, hour, dom, month, dow) = (rest[0], rest[1], rest[2], rest[3], rest[4]);
        let days = day_of_week_names(dow)?;
        let restricted = |f: &str| !(f.starts_with('*') || f.starts_with('?'));
        let shapes: Vec<(&str, &str)> = if restricted(dom) && restricted(dow) {
            // crontab: either day field may match
            vec![(dom, "*"), ("*", days.as_str())]
        } else {
            vec![(dom, days.as_str())]
        };
        let mut any_of = Vec::with_capacity(shapes.len());
        for (d, w) in shapes {
            let mut s = format!("{second} {minute} {hour} {d} {month} {w}");
            if let Some(y) = year {
                s.push(' ');
                s.push_str(y);
            }
            any_of.push(cron::Schedule::from_str(&s).map_err(|e| format!("bad cron expression: {e}"))?);
        }
        Ok(Cron { any_of })
    }

    /// The first tick strictly after `after_ms` (unix ms), or `None` if there is none.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let after = Utc.timestamp_millis_opt(after_ms).single()?;
        self.any_of.iter().filter_map(|s| s.after(&after).next()).map(|t| t.timestamp_millis()).min()
    }
}

fn expand_macro(expr: &str) -> Result<String, String> {
    if !expr.starts_with('@') {
        return Ok(expr.to_string());
    }
    Ok(match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            return Err(format!(
                "unknown cron macro {expr:?} (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)"
            ))
        }
    }
    .to_string())
}

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One day of the week, crontab numbering (0..=7, 7 = Sunday again) or a name.
fn day(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return if n <= 7 { Ok(n) } else { Err(format!("day of week {n} out of range (0-7, 0 and 7 = Sunday)")) };
    }
    // 3-letter names, full names, and the `tues`/`thurs` the `cron` crate also took (schedules
    // saved before this rule must still load)
    let n = match s.to_ascii_lowercase().as_str() {
        "sun" | "sunday" => 0,
        "mon" | "monday" => 1,
        "tue" | "tues" | "tuesday" => 2,
        "wed" | "wednesday" => 3,
        "thu" | "thurs" | "thursday" => 4,
        "fri" | "friday" => 5,
        "sat" | "saturday" => 6,
        _ => return Err(format!("{s:?} is not a day of the week (0-7 or SUN..SAT)")),
    };
    Ok(n)
}

/// The day-of-week field as the `cron` crate reads it: `*` or a list of day names.
fn day_of_week_names(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok("*".to_string());
    }
    let mut set = [false; 7];
    for item in field.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((b, s)) => {
                let s: u32 = s.parse().map_err(|_| format!("bad step in day of week {item:?}"))?;
                if s == 0 {
                    return Err(format!("step 0 in day of week {item:?}"));
                }
                (b, s)
            }
            None => (item, 1),
        };
        let (lo, hi) = if base == "*" || base == "?" {
            (0, 7)
        } else if let Some((a, b)) = base.split_once('-') {
            (day(a)?, day(b)?)
        } else if step > 1 || item.contains('/') {
            (day(base)?, 7) // `N/s`: from N to the end of the week
        } else {
            let d = day(base)?;
            (d, d)
        };
        if lo > hi {
            return Err(format!("day-of-week range {base:?} runs backwards"));
        }
        for d in (lo..=hi).step_by(step as usize) {
            set[(d % 7) as usize] = true;
        }
    }
    let names: Vec<&str> = (0..7).filter(|d| set[*d]).map(|d| DAY_NAMES[d]).collect();
    Ok(names.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate, Weekday};

    fn ms(y: i32, m: u32, d: u32, h: u32, min: u32) -> i64 {
        NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(h, min, 0).unwrap().and_utc().timestamp_millis()
    }

    fn at(ms: i64) -> chrono::DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).unwrap()
    }

    /// The next `n` ticks after 2026-01-01 00:00 UTC (a Thursday).
    fn ticks(expr: &str, n: usize) -> Vec<chrono::DateTime<Utc>> {
        let c = Cron::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let mut t = ms(2026, 1, 1, 0, 0);
        let mut out = Vec::new();
        for _ in 0..n {
            t = c.next_after(t).unwrap();
            out.push(at(t));
        }
        out
    }

    #[test]
    fn monday_is_monday() {
        // 2026-01-05 is a Monday
        assert_eq!(ticks("0 9 * * 1", 2), vec![at(ms(2026, 1, 5, 9, 0)), at(ms(2026, 1, 12, 9, 0))]);
        assert_eq!(ticks("0 9 * * MON", 1), vec![at(ms(2026, 1, 5, 9, 0))]);
        assert_eq!(ticks("0 9 * * monday", 1), vec![at(ms(2026, 1, 5, 9, 0))]);
        assert_eq!(ticks("0 9 * * Tues,THURS", 2), vec![at(ms(2026, 1, 1, 9, 0)), at(ms(2026, 1, 6, 9, 0))]);
        assert_eq!(ticks("0 0 9 * * 1", 1), vec![at(ms(2026, 1, 5, 9, 0))]); // with seconds
        assert!(ticks("30 9 * * 1", 20).iter().all(|t| t.weekday() == Weekday::Mon));
    }

    #[test]
    fn sunday_is_zero_and_seven() {
        // 2026-01-04 is a Sunday
        for e in ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN", "0 9 * * sun"] {
            assert_eq!(ticks(e, 1), vec![at(ms(2026, 1, 4, 9, 0))], "{e}");
        }
        assert!(ticks("0 9 * * 6", 5).iter().all(|t| t.weekday() == Weekday::Sat));
    }

    #[test]
    fn ranges_lists_and_steps_follow_crontab() {
        let days = |e: &str, n: usize| ticks(e, n).iter().map(|t| t.weekday()).collect::<Vec<_>>();
        use Weekday::*;
        assert_eq!(days("0 0 * * 1-5", 5), vec![Fri, Mon, Tue, Wed, Thu]);
        assert_eq!(days("0 0 * * MON-FRI", 5), vec![Fri, Mon, Tue, Wed, Thu]);
        assert_eq!(days("0 0 * * 5-7", 4), vec![Fri, Sat, Sun, Fri]);
        assert_eq!(days("0 0 * * 0,6", 3), vec![Sat, Sun, Sat]);
        assert_eq!(days("0 0 * * */2", 4), vec![Sat, Sun, Tue, Thu]); // 0,2,4,6
        assert_eq!(days("0 0 * * 1-5/2", 3), vec![Fri, Mon, Wed]); // 1,3,5
        assert_eq!(days("0 0 * * 1/3", 3), vec![Sun, Mon, Thu]); // 1,4,7
    }

    #[test]
    fn either_day_field_matches_when_both_are_restricted() {
        // the 1st of the month or a Monday: Mon 5, Mon 12, ..., Sun Feb 1, Mon Feb 2
        let t = ticks("0 0 1 * 1", 6);
        let dates: Vec<(u32, u32)> = t.iter().map(|t| (t.month(), t.day())).collect();
        assert_eq!(dates, vec![(1, 5), (1, 12), (1, 19), (1, 26), (2, 1), (2, 2)]);
        // a `*` day field restricts nothing: plain AND
        assert!(ticks("0 0 */2 * 1", 4).iter().all(|t| t.weekday() == Weekday::Mon && t.day() % 2 == 1));
        // 30 February never exists, but Mondays in February do
        assert_eq!(ticks("0 0 30 2 1", 1), vec![at(ms(2026, 2, 2, 0, 0))]);
        assert!(Cron::parse("0 0 30 2 *").unwrap().next_after(0).is_none());
    }

    #[test]
    fn macros() {
        assert_eq!(ticks("@hourly", 2), vec![at(ms(2026, 1, 1, 1, 0)), at(ms(2026, 1, 1, 2, 0))]);
        assert_eq!(ticks("@daily", 1), vec![at(ms(2026, 1, 2, 0, 0))]);
        assert_eq!(ticks("@midnight", 1), vec![at(ms(2026, 1, 2, 0, 0))]);
        assert_eq!(ticks("@weekly", 1), vec![at(ms(2026, 1, 4, 0, 0))]); // Sunday
        assert_eq!(ticks("@monthly", 1), vec![at(ms(2026, 2, 1, 0, 0))]);
        assert_eq!(ticks("@yearly", 1), vec![at(ms(2027, 1, 1, 0, 0))]);
        assert_eq!(ticks("@ANNUALLY", 1), vec![at(ms(2027, 1, 1, 0, 0))]);
        assert!(Cron::parse("@reboot").is_err());
        assert!(Cron::parse("@daily 1").is_err());
    }

    #[test]
    fn seconds_year_and_errors() {
        assert_eq!(
            ticks("*/15 * * * * *", 2),
            vec![at(ms(2026, 1, 1, 0, 0) + 15_000), at(ms(2026, 1, 1, 0, 0) + 30_000)]
        );
        assert_eq!(ticks("0 0 0 1 1 * 2030", 1), vec![at(ms(2030, 1, 1, 0, 0))]);
        for bad in [
            "",
            "* * * *",
            "* * * * * * * *",
            "0 9 * * 8",
            "0 9 * * FUNDAY",
            "0 9 * * 5-1",
            "0 9 * * */0",
            "61 * * * *",
            "nope",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
