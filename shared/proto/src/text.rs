//! Times and durations as text, one way for the whole project: RFC 3339 UTC times
//! (`2026-12-07T06:12:03Z`, or with milliseconds `2026-12-07T06:12:03.412Z`) through the
//! `time` crate, and durations as people write them in flags, config files and task
//! options (`500ms`, `30s`, `2m`, `1h`, `30d`, `1.5s`, `1h30m`).

use std::time::{Duration, SystemTime};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn utc(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// `2026-12-07T06:12:03Z`.
pub fn rfc3339_seconds(t: SystemTime) -> String {
    let d = utc(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

/// `2026-12-07T06:12:03.412Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = utc(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.millisecond()
    )
}

/// Any RFC 3339 time (any offset, any precision).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(s.trim(), &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// A duration: a number (decimals allowed) and a unit — `us`, `ms` (also no unit),
/// `s`, `m`, `h`, `d` — or several such parts written together (`1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let bad =
        || format!("bad duration '{text}' (use e.g. \"500ms\", \"30s\", \"2m\", \"1h\", \"30d\")");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(split);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let ms = match unit.trim() {
            "" | "ms" => n,
            "us" => n / 1000.0,
            "s" => n * 1_000.0,
            "m" => n * 60_000.0,
            "h" => n * 3_600_000.0,
            "d" => n * 86_400_000.0,
            other => {
                return Err(format!(
                    "bad duration unit '{other}' in '{text}' (use ms, s, m, h or d)"
                ))
            }
        };
        total += ms;
        rest = next.trim_start();
    }
    if !total.is_finite() || !(0.0..=1e15).contains(&total) {
        return Err(bad());
    }
    Ok(Duration::from_micros((total * 1000.0) as u64))
}

/// `30d`, `1h 30m`, `45s`, `250ms`: the largest units, zero parts left out.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    parts.join(" ")
}

/// A time limit (a timeout flag or setting): a duration greater than zero, since a
/// zero limit would fail everything at once.
pub fn parse_time_limit(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "'{}' is no time at all: give a limit greater than zero",
            s.trim()
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_limit_is_more_than_zero() {
        assert_eq!(parse_time_limit("2s"), Ok(Duration::from_secs(2)));
        let e = parse_time_limit(" 0ms ").unwrap_err();
        assert_eq!(e, "'0ms' is no time at all: give a limit greater than zero");
        assert!(parse_time_limit("soon").is_err());
    }

    #[test]
    fn times_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_624_723_412);
        let s = rfc3339_seconds(t);
        assert_eq!(s, "2026-12-07T06:25:23Z");
        assert_eq!(rfc3339_millis(t), "2026-12-07T06:25:23.412Z");
        assert_eq!(
            parse_rfc3339(&rfc3339_millis(t)),
            Some(t),
            "milliseconds kept"
        );
        assert_eq!(
            parse_rfc3339("2026-12-07T07:25:23+01:00"),
            parse_rfc3339(&s)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn durations() {
        let p = |s| parse_duration(s).unwrap();
        assert_eq!(p("500ms"), Duration::from_millis(500));
        assert_eq!(p("250"), Duration::from_millis(250));
        assert_eq!(p("30s"), Duration::from_secs(30));
        assert_eq!(p("2m"), Duration::from_secs(120));
        assert_eq!(p("1h"), Duration::from_secs(3600));
        assert_eq!(p("30d"), Duration::from_secs(30 * 86400));
        assert_eq!(p("1.5s"), Duration::from_millis(1500));
        assert_eq!(p("1h30m"), Duration::from_secs(5400));
        assert_eq!(p("1h 30m"), Duration::from_secs(5400));
        for bad in ["", "5 parsecs", "s", "1w", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(30 * 86400)), "30d");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h 30m");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }
}
