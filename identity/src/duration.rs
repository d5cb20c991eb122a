//! Durations as operators write them: `90s`, `15m`, `1h`, `7d`.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    #[error(
        "{0:?} is not a duration; expected a whole number followed by s, m, h or d, such as 90s, 15m, 1h or 7d"
    )]
    Malformed(String),
    #[error(
        "{0:?} is too large a duration; expected a whole number followed by s, m, h or d, such as 90s, 15m, 1h or 7d"
    )]
    Overflow(String),
}

/// Parses `<number><unit>` with unit `s`, `m`, `h` or `d`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let malformed = || DurationError::Malformed(input.chars().take(32).collect());
    let unit_at = input.len().checked_sub(1).ok_or_else(malformed)?;
    let (digits, unit) = input.split_at(unit_at);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| DurationError::Overflow(input.chars().take(32).collect()))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(malformed()),
    };
    let secs = n
        .checked_mul(scale)
        .ok_or_else(|| DurationError::Overflow(input.chars().take(32).collect()))?;
    Ok(Duration::from_secs(secs))
}

/// Formats a duration the way `parse_duration` reads it, with the largest exact unit.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".to_owned(),
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "h", "1", "1x", "-1h", "1.5h", " 1h", "1h ", "1H"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_round_trip() {
        for s in ["90s", "15m", "1h", "7d", "0s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
