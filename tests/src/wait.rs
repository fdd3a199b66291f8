//! Polling with a deadline: the only way the tests wait.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often `eventually` re-checks its condition.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Some`, or panics with `what` and the last
/// error once `deadline` has passed.
pub async fn eventually<T, E, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
    E: std::fmt::Display,
{
    let start = Instant::now();
    let mut tick = tokio::time::interval(POLL);
    let mut last = String::from("condition not met");
    loop {
        tick.tick().await;
        match check().await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(e) => last = e.to_string(),
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}: {last}"
        );
    }
}
