//! Request deadlines: taken from the caller (`grpc-timeout` header or the
//! request's `timeout_ms`), bounded, and propagated to every node call, so
//! that no work outlives the caller's interest in it.

use std::time::Duration;
use tokio::time::Instant;

/// Time kept back from node calls so the router can still turn a node's
/// timeout into a clean error before its own caller gives up.
const MARGIN_MAX: Duration = Duration::from_millis(20);

/// The point in time by which a request must be answered.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Deadline {
            at: Instant::now() + timeout,
        }
    }

    /// Derives the deadline of an incoming request: the smaller of the gRPC
    /// deadline and `timeout_ms` (0 = unset), else `default`, never above `max`.
    pub fn for_request(
        metadata: &tonic::metadata::MetadataMap,
        timeout_ms: u32,
        default: Duration,
        max: Duration,
    ) -> Self {
        let header = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let timeout = effective_timeout(header, timeout_ms, default, max);
        // Finish a little before the caller's deadline, so the caller gets
        // our explanation rather than its own transport's "timeout expired".
        let early = (timeout / 20).min(Duration::from_millis(50));
        Deadline::after(timeout - early)
    }

    /// The instant itself, for `sleep_until`.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.remaining().is_zero()
    }

    /// Budget for one downstream call: what is left minus a small margin,
    /// optionally capped (e.g. per write attempt).
    pub fn downstream(&self, cap: Option<Duration>) -> Duration {
        let left = self.remaining();
        let margin = (left / 10).min(MARGIN_MAX);
        let budget = left.saturating_sub(margin);
        match cap {
            Some(c) => budget.min(c),
            None => budget,
        }
    }
}

/// Combines the caller's two ways of saying "how long" with the defaults.
pub fn effective_timeout(
    header: Option<Duration>,
    timeout_ms: u32,
    default: Duration,
    max: Duration,
) -> Duration {
    let field = (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms)));
    let chosen = match (header, field) {
        (Some(h), Some(f)) => h.min(f),
        (Some(h), None) => h,
        (None, Some(f)) => f,
        (None, None) => default,
    };
    chosen.min(max)
}

/// Parses a gRPC `grpc-timeout` value (`<digits><H|M|S|m|u|n>`, at most 8 digits).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Milliseconds for a node request's `timeout_ms` field (at least 1, since
/// 0 would mean "server default").
pub fn as_timeout_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("30000000u"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn smaller_caller_timeout_wins_and_max_bounds() {
        let d = Duration::from_secs(5);
        let max = Duration::from_secs(60);
        assert_eq!(effective_timeout(None, 0, d, max), d);
        assert_eq!(
            effective_timeout(Some(Duration::from_secs(2)), 3000, d, max),
            Duration::from_secs(2)
        );
        assert_eq!(
            effective_timeout(Some(Duration::from_secs(9)), 3000, d, max),
            Duration::from_secs(3)
        );
        assert_eq!(
            effective_timeout(Some(Duration::from_secs(600)), 0, d, max),
            max
        );
    }

    #[test]
    fn timeout_ms_is_never_zero() {
        assert_eq!(as_timeout_ms(Duration::ZERO), 1);
        assert_eq!(as_timeout_ms(Duration::from_millis(1500)), 1500);
    }
}
