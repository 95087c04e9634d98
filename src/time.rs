//! Wall-clock milliseconds, the unit kiln stores times in, and conversion
//! from protobuf times that clients choose freely (so never trusted not to
//! overflow).

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `seconds` and `nanos` (a Timestamp's or a Duration's fields) as
/// milliseconds, saturating instead of overflowing on absurd values.
pub fn saturating_ms(seconds: i64, nanos: i32) -> i64 {
    seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(nanos) / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_times_saturate() {
        assert_eq!(saturating_ms(1, 500_000_000), 1500);
        assert_eq!(saturating_ms(i64::MAX, i32::MAX), i64::MAX);
        assert_eq!(saturating_ms(i64::MIN, i32::MIN), i64::MIN);
        assert_eq!(saturating_ms(-1, 0), -1000);
    }
}
