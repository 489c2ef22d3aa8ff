//! Rendering for people and scripts: aligned text tables, one-line JSON, byte strings that
//! may not be UTF-8 (base64), timestamps and sizes.

use std::io::Write;

use anyhow::Context as _;
use serde::Serialize;

/// Output format chosen with `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned tables and sentences.
    Text,
    /// One JSON document (or one per line for `consume`).
    Json,
}

/// A text table: a header row and left-aligned columns separated by two spaces.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: Vec<&'static str>) -> Self {
        Table { headers, rows: Vec::new() }
    }

    /// Adds a row (missing cells print empty, extra cells are ignored).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut text = String::new();
            for (i, (cell, width)) in cells.zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                let pad = width.saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut self.headers.iter().copied());
        for row in &self.rows {
            let mut cells = row.iter().map(String::as_str).chain(std::iter::repeat(""));
            line(&mut cells.by_ref().take(widths.len()));
        }
        out
    }
}

/// Writes `text` to stdout.
///
/// # Errors
/// When stdout is closed.
pub fn print_text(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).context("cannot write to stdout")
}

/// Writes `value` as one line of JSON to stdout.
///
/// # Errors
/// When stdout is closed.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(value).context("cannot encode JSON")?;
    line.push('\n');
    print_text(&line)
}

/// How a byte string is rendered in JSON.
pub const ENCODING_UTF8: &str = "utf8";
/// How a byte string that is not UTF-8 is rendered in JSON.
pub const ENCODING_BASE64: &str = "base64";

/// Bytes for a terminal, on one line: UTF-8 text with control characters escaped (`\n`,
/// `\u{1b}`), else every byte escaped as in a Rust byte string (`\xff`), marked as such.
pub fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let mut out = String::with_capacity(text.len());
            for c in text.chars() {
                if c.is_control() {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
            }
            out
        }
        Err(_) => format!("{} (not UTF-8; bytes escaped)", bytes.escape_ascii()),
    }
}

/// `bytes` as a JSON-safe string with its encoding: the text itself when it is valid UTF-8,
/// else standard base64 (with padding).
pub fn text_or_base64(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), ENCODING_UTF8),
        Err(_) => (base64(bytes), ENCODING_BASE64),
    }
}

/// Standard base64 (RFC 4648, `+/`, padded).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let index = (n >> (18 - 6 * i)) & 0x3f;
                out.push(char::from(ALPHABET[index as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `text` cut to `chars_max` characters, with `…` when cut.
pub fn shorten(text: &str, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(chars_max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, e.g. `2024-05-01T12:00:00.250Z`.
pub fn format_timestamp_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rest = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01, proleptic Gregorian (the inverse of
/// `civil_from_days`, same source).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 timestamp (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.250+02:00`;
/// `t`, `z` and a space separator accepted) into ms since the Unix epoch. Fraction digits
/// beyond milliseconds are dropped.
///
/// # Errors
/// A message for people when the text is not such a timestamp, names an impossible date or
/// time (a leap second included), or lies before 1970.
pub fn parse_timestamp_ms(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("{text:?} is not an RFC 3339 time; expected e.g. 2024-05-01T12:00:00Z or +02:00")
    };
    let t = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let digits = t.get(range).ok_or_else(bad)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let at = |i: usize, allowed: &[u8]| t.get(i).is_some_and(|c| allowed.contains(c));
    if t.len() < 20 || !at(4, b"-") || !at(7, b"-") || !at(10, b"Tt ") || !at(13, b":") {
        return Err(bad());
    }
    if !at(16, b":") {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut millis = 0i64;
    if at(i, b".") {
        let start = i + 1;
        let end = start + t[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if end == start {
            return Err(bad());
        }
        let digits = &t[start..end];
        for k in 0..3 {
            millis = millis * 10 + digits.get(k).map_or(0, |d| i64::from(d - b'0'));
        }
        i = end;
    }
    let offset_minutes = match t.get(i) {
        Some(b'Z' | b'z') if t.len() == i + 1 => 0,
        Some(sign @ (b'+' | b'-')) if t.len() == i + 6 && at(i + 3, b":") => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let minutes = h * 60 + m;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return Err(bad()),
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(format!("{text:?} has no month {month}")),
    };
    if !(1..=month_days).contains(&day) {
        return Err(format!("{text:?}: month {month} of {year} has no day {day}"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!("{text:?} is not a time of day (leap seconds are not accepted)"));
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_minutes * 60;
    let ms = secs * 1000 + millis;
    u64::try_from(ms).map_err(|_| format!("{text:?} is before 1970"))
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 MiB`, `1.0 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(vec!["ID", "ADDR", "ROLE"]);
        t.row(vec!["1".into(), "127.0.0.1:7401".into(), "leader".into()]);
        t.row(vec!["22".into(), "h:1".into()]);
        assert_eq!(t.render(), "ID  ADDR            ROLE\n1   127.0.0.1:7401  leader\n22  h:1\n");
    }

    #[test]
    fn base64_matches_rfc4648() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64(input), expected);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn shorten_cuts_with_an_ellipsis() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
        assert_eq!(shorten("ééééé", 4), "ééé…");
    }

    #[test]
    fn bytes_render_as_text_or_base64() {
        assert_eq!(text_or_base64(b"hello"), ("hello".to_string(), "utf8"));
        assert_eq!(text_or_base64(&[0xff, 0x00]), ("/wA=".to_string(), "base64"));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(format_timestamp_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_timestamp_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn rfc3339_timestamps_parse() {
        let ok = |t: &str| parse_timestamp_ms(t).unwrap();
        assert_eq!(ok("1970-01-01T00:00:00Z"), 0);
        assert_eq!(ok("2023-11-14T22:13:20.123Z"), 1_700_000_000_123);
        assert_eq!(ok("2023-11-14t22:13:20.1234567z"), 1_700_000_000_123);
        assert_eq!(ok("2023-11-14 22:13:20.5Z"), 1_700_000_000_500);
        assert_eq!(ok("2023-11-15T00:13:20.123+02:00"), 1_700_000_000_123);
        assert_eq!(ok("2023-11-14T20:43:20.123-01:30"), 1_700_000_000_123);
        assert_eq!(ok("2000-02-29T00:00:00Z"), 951_782_400_000);
        // Every instant formatted reads back.
        for ms in [0, 86_399_999, 951_782_400_000, 1_700_000_000_123, 4_102_444_800_000] {
            assert_eq!(ok(&format_timestamp_ms(ms)), ms);
        }
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20+0200",
            "2023-11-14T22:13:20.Z",
            "2023-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T23:59:60Z",
            "1969-12-31T23:59:59Z",
            "2023-11-14T22:13:20Zjunk",
            "2023-1x-14T22:13:20Z",
        ] {
            assert!(parse_timestamp_ms(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes_are_short() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
