//! Time values shared by every stage: the one duration syntax of config and rule headers
//! (`"250ms"`, `"2s"`, `"15m"`, `"1h"`, `"1d"`), event timestamps as they arrive in payloads
//! (epoch milliseconds, RFC 3339, compact `yyyyMMdd'T'HHmmss'Z'`), and RFC 3339 output.
//! It owns parsing and formatting only; which clock is "now" is the pipeline's business.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch, the engine's one representation of event time.
pub type EpochMs = i64;

/// Parses a duration such as `250ms`, `2s`, `15m`, `15 minutes`, `1h`, `1d` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write it like 250ms, 2s, 15m, 1h or 1d"))?;
    let unit_ms = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        "" => return Err(format!("`{text}` has no unit; write it like 250ms, 2s, 15m, 1h or 1d")),
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}`; use ms, s, m, h or d"
            ));
        }
    };
    let ms = number * unit_ms;
    if !ms.is_finite() || !(0.0..=365.0 * 86_400_000.0).contains(&ms) {
        return Err(format!("duration `{text}` is out of range (0 to 365 days)"));
    }
    Ok(ms.round() as i64)
}

/// Why a timestamp could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsError {
    /// Neither a number nor a recognised date-time text.
    Unreadable,
}

/// Reads an event timestamp given as text: RFC 3339, the compact `20260114T191500Z`, or
/// epoch milliseconds written as digits.
pub fn parse_ts_text(text: &str) -> Result<EpochMs, TsError> {
    let text = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Ok(dt.timestamp_millis());
    }
    if let Ok(naive) = NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%SZ") {
        return Ok(naive.and_utc().timestamp_millis());
    }
    if let Ok(naive) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        // No offset given: the convention of every feed we have seen is UTC.
        return Ok(naive.and_utc().timestamp_millis());
    }
    match text.parse::<f64>() {
        Ok(ms) if ms.is_finite() => Ok(ms.floor() as i64),
        _ => Err(TsError::Unreadable),
    }
}

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds, e.g. `2026-01-14T19:15:00.000Z`.
pub fn format_ms(ms: EpochMs) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => format!("{ms}ms"),
    }
}

/// Wall-clock now as epoch milliseconds.
pub fn wall_now_ms() -> EpochMs {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("2s"), Ok(2_000));
        assert_eq!(parse_duration_ms("15 minutes"), Ok(900_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1_500));
        assert!(parse_duration_ms("15").is_err());
        assert!(parse_duration_ms("fortnight").is_err());
    }

    #[test]
    fn timestamps_parse_in_every_accepted_form() {
        let expected = 1_768_418_100_000; // 2026-01-14T19:15:00Z
        assert_eq!(parse_ts_text("2026-01-14T19:15:00Z"), Ok(expected));
        assert_eq!(parse_ts_text("2026-01-15T03:15:00.000+08:00"), Ok(expected));
        assert_eq!(parse_ts_text("20260114T191500Z"), Ok(expected));
        assert_eq!(parse_ts_text("1768418100000"), Ok(expected));
        assert_eq!(parse_ts_text("yesterday"), Err(TsError::Unreadable));
        assert_eq!(format_ms(expected), "2026-01-14T19:15:00.000Z");
    }
}
