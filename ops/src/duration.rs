//! Human durations on the command line: `500ms`, `10s`, `1.5s`, `2m`, `1h` (parsed by hand,
//! in integer nanoseconds, so `0.1s` is exactly 100 ms; `7d` too where days make sense), the
//! short form used in reports, the compact spans of tables (`5m03s`, `2h05m`), and the exact
//! form that reads back (`30m`, `1500ms`).

use std::time::Duration;

/// Longest duration accepted (a year): anything longer is a typo.
const DURATION_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`; the number may have a fraction.
///
/// # Errors
/// A message for people when the text is empty, has no unit, an unknown unit, a malformed
/// number, or is longer than a year.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_with_units(text, false)
}

/// [`parse_duration`] that also takes days (`7d`, `1.5d`), for values that run to days:
/// retry schedules, grace periods, "since 2d ago". Kept apart so flags that never need days
/// (timeouts) still refuse `5d` as the typo it likely is there.
///
/// # Errors
/// Those of `parse_duration`.
pub fn parse_duration_or_days(text: &str) -> Result<Duration, String> {
    parse_with_units(text, true)
}

fn parse_with_units(text: &str, days: bool) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; expected e.g. 500ms, 10s, 2m".into());
    }
    let unit_at = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let unit_nanos: u128 = match unit.trim() {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" if days => 86_400_000_000_000,
        "" => return Err(format!("{text:?} has no unit; write e.g. {text}s or {text}ms")),
        other if days => {
            return Err(format!("unknown unit {other:?} in {text:?}; use ms, s, m, h or d"))
        }
        other => return Err(format!("unknown unit {other:?} in {text:?}; use ms, s, m or h")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(format!("{text:?} does not start with a number; expected e.g. 500ms, 10s"));
    }
    let too_long = || format!("{text:?} is too long; at most {}h", DURATION_MAX.as_secs() / 3600);
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_long())? };
    let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_long)?;
    // Fraction digits beyond nanosecond precision are dropped.
    let mut scale = unit_nanos;
    for digit in fraction.bytes() {
        scale /= 10;
        nanos += u128::from(digit - b'0') * scale;
    }
    let nanos = u64::try_from(nanos).map_err(|_| too_long())?;
    let duration = Duration::from_nanos(nanos);
    if duration > DURATION_MAX {
        return Err(too_long());
    }
    Ok(duration)
}

/// [`parse_duration`] for values that must be above zero (timeouts).
///
/// # Errors
/// Those of `parse_duration`, and zero.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// A short rendering for reports: `850ms`, `1.25s`, `2m05s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        let secs = d.as_secs();
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// A span for tables: `450ms`, `42s`, `5m03s`, `2h05m`, `3d04h` (seconds and finer are dropped
/// once the span is long enough that they do not matter).
pub fn format_span(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs / 3600 % 24),
    }
}

/// The duration in the largest unit that holds it whole (`d`, `h`, `m`, `s`, else `ms`), so it
/// reads back through [`parse_duration_or_days`] unchanged: `5s`, `30m`, `10h`, `7d`, `90s`,
/// `1500ms`. Finer than a millisecond is dropped.
pub fn format_duration_exact(d: Duration) -> String {
    const UNITS: [(u128, &str); 4] =
        [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s")];
    let ms = d.as_millis();
    for (unit_ms, unit) in UNITS {
        if ms != 0 && ms.is_multiple_of(unit_ms) {
            return format!("{}{unit}", ms / unit_ms);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_humane_durations() {
        let ok = |t: &str| parse_duration(t).unwrap();
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("2.m"), Duration::from_secs(120));
        assert_eq!(ok(" 3 s "), Duration::from_secs(3));
        assert_eq!(ok("0ms"), Duration::ZERO);
        assert_eq!(ok("1.0000000001s"), Duration::from_secs(1));
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", "10", "s", "ms", "-1s", "1.2.3s", "10 sec", "5d", "1e3s", "9999999h", "."] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("99999999999999999999999999999999999999999s").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("1ms").is_ok());
    }

    #[test]
    fn days_only_where_asked_for() {
        assert!(parse_duration("1d").is_err());
        assert_eq!(parse_duration_or_days("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_duration_or_days("1.5d").unwrap(), Duration::from_secs(36 * 3600));
        assert_eq!(parse_duration_or_days("2h").unwrap(), Duration::from_secs(7200));
        let err = parse_duration_or_days("3w").unwrap_err();
        assert!(err.contains("ms, s, m, h or d"), "{err}");
        assert!(parse_duration_or_days("366d").is_err());
    }

    #[test]
    fn exact_form_reads_back() {
        let cases = [
            (0, "0ms"),
            (1500, "1500ms"),
            (5000, "5s"),
            (90_000, "90s"),
            (300_000, "5m"),
            (5_400_000, "90m"),
            (7_200_000, "2h"),
            (129_600_000, "36h"),
            (604_800_000, "7d"),
        ];
        for (ms, text) in cases {
            let d = Duration::from_millis(ms);
            assert_eq!(format_duration_exact(d), text);
            assert_eq!(parse_duration_or_days(text).unwrap(), d, "{text}");
        }
    }

    #[test]
    fn formats_short() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_millis(1250)), "1.25s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn spans_are_short() {
        assert_eq!(format_span(Duration::from_millis(450)), "450ms");
        assert_eq!(format_span(Duration::from_millis(42_900)), "42s");
        assert_eq!(format_span(Duration::from_secs(303)), "5m03s");
        assert_eq!(format_span(Duration::from_secs(2 * 3600 + 5 * 60 + 7)), "2h05m");
        assert_eq!(format_span(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d04h");
    }
}
