//! Admission control and request-shape limits.
//!
//! - A token bucket per tenant (governor, GCRA): one noisy tenant cannot
//!   use up the cluster; the others are unaffected.
//! - A global in-flight limit: past it the router sheds load at once with
//!   `RESOURCE_EXHAUSTED` instead of queueing until everyone times out.
//! - Page size and query-term limits, named after the constants in
//!   `tessera_proto::limits`, so a caller knows which limit it hit.
//!
//! Every refusal carries a retry-after hint (metadata `retry-after-ms`).

use crate::error::RouterError;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::limits::MAX_PAGE_SIZE;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Page size when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 10;

/// Admission limits.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Sustained requests per second per tenant; 0 = unlimited.
    pub tenant_qps: u32,
    /// Burst per tenant; 0 = same as `tenant_qps`.
    pub tenant_burst: u32,
    /// Requests being served at once over all tenants; 0 = unlimited.
    pub max_inflight: usize,
    /// Hint returned when the in-flight limit sheds a request.
    pub overload_retry_after: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            tenant_qps: 0,
            tenant_burst: 0,
            max_inflight: 1024,
            overload_retry_after: Duration::from_millis(50),
        }
    }
}

type Buckets<C> =
    RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The router's admission state. Generic over the clock so tests can move
/// time by hand instead of sleeping.
pub struct Limits<C: Clock = DefaultClock> {
    buckets: Option<Buckets<C>>,
    qps: u32,
    inflight: Option<Arc<Semaphore>>,
    max_inflight: usize,
    overload_retry_after: Duration,
}

impl<C: Clock> std::fmt::Debug for Limits<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("tenant_qps", &self.qps)
            .field("max_inflight", &self.max_inflight)
            .finish()
    }
}

/// Proof of admission; holds the in-flight slot until dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Limits<DefaultClock> {
    /// Limits on the real clock.
    pub fn new(cfg: &LimitsConfig) -> Self {
        Self::with_clock(cfg, DefaultClock::default())
    }
}

impl<C: Clock> Limits<C> {
    /// Limits on a given clock.
    pub fn with_clock(cfg: &LimitsConfig, clock: C) -> Self {
        let buckets = NonZeroU32::new(cfg.tenant_qps).map(|qps| {
            let burst = NonZeroU32::new(cfg.tenant_burst).unwrap_or(qps);
            let quota = Quota::per_second(qps).allow_burst(burst);
            RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock)
        });
        Limits {
            buckets,
            qps: cfg.tenant_qps,
            inflight: (cfg.max_inflight > 0).then(|| Arc::new(Semaphore::new(cfg.max_inflight))),
            max_inflight: cfg.max_inflight,
            overload_retry_after: cfg.overload_retry_after,
        }
    }

    /// Admits one request of `tenant` (None for cluster-wide calls such as
    /// Status, which only count against the in-flight limit).
    pub fn admit(&self, tenant: Option<&str>) -> Result<Admission, RouterError> {
        let permit = match &self.inflight {
            Some(sem) => match Arc::clone(sem).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    metrics::counter!("tessera_router_rejected_total", "reason" => "inflight")
                        .increment(1);
                    return Err(RouterError::ResourceExhausted {
                        message: format!(
                            "router overloaded: {} requests in flight (--max-inflight); retry later",
                            self.max_inflight
                        ),
                        retry_after: self.overload_retry_after,
                    });
                }
            },
            None => None,
        };
        if let (Some(buckets), Some(tenant)) = (&self.buckets, tenant) {
            if let Err(not_until) = buckets.check_key(&tenant.to_string()) {
                let wait = not_until.wait_time_from(buckets.clock().now());
                metrics::counter!("tessera_router_rejected_total", "reason" => "tenant_rate")
                    .increment(1);
                return Err(RouterError::ResourceExhausted {
                    message: format!(
                        "tenant {tenant} is over its rate limit of {} requests/s (--tenant-qps)",
                        self.qps
                    ),
                    retry_after: wait.max(Duration::from_millis(1)),
                });
            }
        }
        Ok(Admission { _permit: permit })
    }

    /// Forgets buckets of tenants that have been idle long enough to be full.
    pub fn forget_idle(&self) {
        if let Some(b) = &self.buckets {
            b.retain_recent();
        }
    }
}

/// Checks a requested page size; 0 means the default.
pub fn page_size(limit: u32) -> Result<u32, RouterError> {
    match limit {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => Err(RouterError::InvalidArgument(format!(
            "limit {n} is over the page size limit of {MAX_PAGE_SIZE} (MAX_PAGE_SIZE)"
        ))),
        n => Ok(n),
    }
}

/// Checks query text against the term and size limits.
pub fn query(text: &str) -> Result<(), RouterError> {
    tessera_proto::document::validate_query(text)
        .map_err(|e| RouterError::InvalidArgument(format!("query: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use tessera_proto::limits::MAX_QUERY_TERMS;

    fn cfg(qps: u32, inflight: usize) -> LimitsConfig {
        LimitsConfig {
            tenant_qps: qps,
            tenant_burst: qps,
            max_inflight: inflight,
            overload_retry_after: Duration::from_millis(50),
        }
    }

    #[test]
    fn tenants_have_separate_buckets() {
        let clock = FakeRelativeClock::default();
        let limits = Limits::with_clock(&cfg(2, 0), clock.clone());
        assert!(limits.admit(Some("noisy")).is_ok());
        assert!(limits.admit(Some("noisy")).is_ok());
        let err = limits.admit(Some("noisy")).expect_err("over budget");
        match err {
            RouterError::ResourceExhausted {
                message,
                retry_after,
            } => {
                assert!(message.contains("noisy"), "{message}");
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(500));
            }
            other => panic!("expected ResourceExhausted, got {other:?}"),
        }
        // Another tenant is unaffected.
        assert!(limits.admit(Some("quiet")).is_ok());
        assert!(limits.admit(Some("quiet")).is_ok());
        // Cluster-wide calls do not spend tenant budget.
        assert!(limits.admit(None).is_ok());
        // Time refills the bucket.
        clock.advance(Duration::from_millis(500));
        assert!(limits.admit(Some("noisy")).is_ok());
    }

    #[test]
    fn global_inflight_limit_sheds_and_releases() {
        let limits = Limits::new(&cfg(0, 2));
        let a = limits.admit(Some("t")).expect("1st");
        let _b = limits.admit(Some("u")).expect("2nd");
        let err = limits.admit(Some("v")).expect_err("3rd is shed");
        assert!(matches!(
            err,
            RouterError::ResourceExhausted { retry_after, .. } if retry_after == Duration::from_millis(50)
        ));
        drop(a);
        assert!(limits.admit(Some("v")).is_ok());
    }

    #[test]
    fn zero_means_unlimited() {
        let limits = Limits::new(&cfg(0, 0));
        let held: Vec<_> = (0..10_000).map(|_| limits.admit(Some("t"))).collect();
        assert!(held.iter().all(Result::is_ok));
    }

    #[test]
    fn page_and_query_limits_name_the_constant() {
        assert_eq!(page_size(0).expect("default"), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(MAX_PAGE_SIZE).expect("max ok"), MAX_PAGE_SIZE);
        let e = page_size(MAX_PAGE_SIZE + 1).expect_err("over").to_string();
        assert!(e.contains("MAX_PAGE_SIZE"), "{e}");
        let q = vec!["w"; MAX_QUERY_TERMS + 1].join(" ");
        let e = query(&q).expect_err("over").to_string();
        assert!(e.contains("MAX_QUERY_TERMS"), "{e}");
        assert!(query("deploy runbook").is_ok());
    }
}
