//! Timestamps as the runner shows and stores them: RFC 3339 in UTC, whole seconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// `time` as the runner shows it: RFC 3339 in UTC, whole seconds.
pub fn format(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// `time` with milliseconds, for points in time given to tools.
pub fn format_millis(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

pub fn unix_to_rfc3339(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

/// Docker's and Swarm's timestamps (`2026-11-23T10:47:34.397509123Z`); None for anything
/// else, including Docker's zero time `0001-01-01T00:00:00Z`.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

/// How long ago `then` was, in whole seconds, for tables (`4m 12s`).
pub fn age(then: SystemTime, now: SystemTime) -> String {
    let seconds = now.duration_since(then).unwrap_or_default().as_secs();
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps_parse_and_format() {
        let started = parse_rfc3339("2026-11-23T10:47:34.397509123Z").unwrap();
        assert_eq!(started.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1_795_430_854);
        assert_eq!(unix_to_rfc3339(1_795_430_854), "2026-11-23T10:47:34Z");
        assert_eq!(unix_to_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        let now = parse_rfc3339("2026-11-23T10:51:46Z").unwrap();
        assert_eq!(age(started, now), "4m 11s");
        assert_eq!(age(now, started), "0s", "a clock skew is no negative age");
        assert!(now_rfc3339().ends_with('Z'));
    }
}
