//! Per-node circuit breakers.
//!
//! A node that keeps failing is taken out of rotation for a cool-down, so
//! requests stop paying its timeout; then one probe is let through and its
//! outcome decides whether the node is back.
//!
//! ```text
//!  closed --(N consecutive failures, or error rate over the window)--> open
//!  open   --(cool-down elapsed)--------------------------------------> half-open
//!  half-open --(probe succeeds)--> closed
//!  half-open --(probe fails)-----> open (cool-down doubled, capped)
//! ```
//!
//! The state machine is pure: every method takes `now`, so tests drive it
//! with synthetic instants instead of sleeping.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tessera_proto::NodeId;

/// Breaker thresholds.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Number of most recent outcomes the error rate is computed over.
    pub window: usize,
    /// Error rate (0..=1) over the window that opens the breaker.
    pub error_rate: f64,
    /// Outcomes needed in the window before the error rate counts, so that
    /// two failures out of three do not open a breaker.
    pub min_samples: usize,
    /// First cool-down before a probe.
    pub cool_down: Duration,
    /// Longest cool-down after repeated failed probes.
    pub max_cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            window: 20,
            error_rate: 0.5,
            min_samples: 10,
            cool_down: Duration::from_millis(500),
            max_cool_down: Duration::from_secs(5),
        }
    }
}

/// The externally visible state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the cool-down ends.
    Open,
    /// One probe at a time is let through.
    HalfOpen,
}

impl BreakerState {
    /// Stable lowercase name, used in status output and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// Numeric value for the breaker-state gauge (0 closed, 1 half-open, 2 open).
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// What a caller may do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Normal request.
    Yes,
    /// The request is the half-open probe: its outcome decides the state.
    Probe,
    /// Skip this node.
    No,
}

#[derive(Debug, Clone)]
enum Inner {
    Closed {
        consecutive: u32,
        outcomes: VecDeque<bool>,
    },
    Open {
        until: Instant,
        cool_down: Duration,
    },
    HalfOpen {
        probe_since: Option<Instant>,
        cool_down: Duration,
    },
}

/// One node's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Inner,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            inner: Inner::Closed {
                consecutive: 0,
                outcomes: VecDeque::new(),
            },
        }
    }

    /// The state as of `now` (an open breaker whose cool-down has passed
    /// reports half-open, since the next admit will make it so).
    pub fn state(&self, now: Instant) -> BreakerState {
        match &self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until, .. } if now >= *until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a request could be admitted now, without taking the probe
    /// slot; used to rank candidates before choosing one.
    pub fn available(&self, now: Instant) -> bool {
        match &self.inner {
            Inner::Closed { .. } => true,
            Inner::Open { until, .. } => now >= *until,
            Inner::HalfOpen {
                probe_since,
                cool_down,
            } => probe_since.is_none_or(|t| now >= t + *cool_down),
        }
    }

    /// Asks to send a request. In half-open only one probe is out at a time;
    /// a probe that never reports (cancelled) frees its slot after a cool-down.
    pub fn admit(&mut self, now: Instant) -> Admit {
        if let Inner::Open { until, cool_down } = self.inner {
            if now < until {
                return Admit::No;
            }
            self.inner = Inner::HalfOpen {
                probe_since: None,
                cool_down,
            };
        }
        match &mut self.inner {
            Inner::Closed { .. } => Admit::Yes,
            Inner::HalfOpen {
                probe_since,
                cool_down,
            } => {
                if probe_since.is_none_or(|t| now >= t + *cool_down) {
                    *probe_since = Some(now);
                    Admit::Probe
                } else {
                    Admit::No
                }
            }
            Inner::Open { .. } => Admit::No,
        }
    }

    /// Records a success. Closes a half-open breaker.
    pub fn on_success(&mut self, _now: Instant) {
        match &mut self.inner {
            Inner::Closed {
                consecutive,
                outcomes,
            } => {
                *consecutive = 0;
                push_outcome(outcomes, self.cfg.window, true);
            }
            Inner::HalfOpen { .. } => {
                self.inner = Inner::Closed {
                    consecutive: 0,
                    outcomes: VecDeque::new(),
                };
            }
            // A late answer to a request sent before the breaker opened says
            // little about the node now; the probe decides.
            Inner::Open { .. } => {}
        }
    }

    /// Records a failure. May open the breaker.
    pub fn on_failure(&mut self, now: Instant) {
        match &mut self.inner {
            Inner::Closed {
                consecutive,
                outcomes,
            } => {
                *consecutive += 1;
                push_outcome(outcomes, self.cfg.window, false);
                let failures = outcomes.iter().filter(|ok| !**ok).count();
                let rate_trip = outcomes.len() >= self.cfg.min_samples
                    && failures as f64 >= self.cfg.error_rate * outcomes.len() as f64;
                if *consecutive >= self.cfg.consecutive_failures || rate_trip {
                    self.inner = Inner::Open {
                        until: now + self.cfg.cool_down,
                        cool_down: self.cfg.cool_down,
                    };
                }
            }
            Inner::HalfOpen { cool_down, .. } => {
                let next = (*cool_down * 2).min(self.cfg.max_cool_down);
                self.inner = Inner::Open {
                    until: now + next,
                    cool_down: next,
                };
            }
            Inner::Open { .. } => {}
        }
    }
}

fn push_outcome(outcomes: &mut VecDeque<bool>, window: usize, ok: bool) {
    outcomes.push_back(ok);
    while outcomes.len() > window.max(1) {
        outcomes.pop_front();
    }
}

/// The breakers of every node this router talks to.
#[derive(Debug)]
pub struct Breakers {
    cfg: BreakerConfig,
    nodes: Mutex<HashMap<NodeId, Breaker>>,
}

impl Breakers {
    /// No breakers yet; each node gets a closed one on first use.
    pub fn new(cfg: BreakerConfig) -> Self {
        Breakers {
            cfg,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// See [`Breaker::available`].
    pub fn available(&self, node: NodeId, now: Instant) -> bool {
        self.nodes
            .lock()
            .get(&node)
            .is_none_or(|b| b.available(now))
    }

    /// See [`Breaker::state`].
    pub fn state(&self, node: NodeId, now: Instant) -> BreakerState {
        self.nodes
            .lock()
            .get(&node)
            .map_or(BreakerState::Closed, |b| b.state(now))
    }

    /// See [`Breaker::admit`].
    pub fn admit(&self, node: NodeId, now: Instant) -> Admit {
        let mut nodes = self.nodes.lock();
        let b = nodes
            .entry(node)
            .or_insert_with(|| Breaker::new(self.cfg.clone()));
        b.admit(now)
    }

    /// Records an outcome and reports the state after it.
    pub fn record(&self, node: NodeId, ok: bool, now: Instant) -> BreakerState {
        let mut nodes = self.nodes.lock();
        let b = nodes
            .entry(node)
            .or_insert_with(|| Breaker::new(self.cfg.clone()));
        let before = b.state(now);
        if ok {
            b.on_success(now);
        } else {
            b.on_failure(now);
        }
        let after = b.state(now);
        if before != after {
            tracing::info!(node, from = before.as_str(), to = after.as_str(), "breaker");
        }
        metrics::gauge!("tessera_router_breaker_state", "node" => node.to_string())
            .set(after.gauge());
        after
    }

    /// Nodes whose breaker is not closed and which may be probed now.
    pub fn probe_due(&self, now: Instant) -> Vec<NodeId> {
        self.nodes
            .lock()
            .iter()
            .filter(|(_, b)| b.state(now) != BreakerState::Closed && b.available(now))
            .map(|(n, _)| *n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            window: 10,
            error_rate: 0.5,
            min_samples: 6,
            cool_down: Duration::from_secs(1),
            max_cool_down: Duration::from_secs(4),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_half_open() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.on_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.admit(t0), Admit::No);
        assert!(!b.available(t0 + Duration::from_millis(999)));

        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.admit(t1), Admit::No, "only one probe at a time");
        b.on_success(t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert_eq!(b.admit(t1), Admit::Yes);
    }

    #[test]
    fn success_resets_the_consecutive_count() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg());
        for _ in 0..10 {
            b.on_failure(t);
            b.on_success(t);
            b.on_success(t);
        }
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn error_rate_over_the_window_opens() {
        let t = Instant::now();
        let mut b = Breaker::new(cfg());
        // Alternating outcomes never reach 3 consecutive failures, but reach
        // a 50% error rate once the window holds min_samples outcomes.
        for _ in 0..2 {
            b.on_success(t);
            b.on_failure(t);
        }
        assert_eq!(b.state(t), BreakerState::Closed, "4 samples < min_samples");
        b.on_success(t);
        b.on_failure(t);
        assert_eq!(b.state(t), BreakerState::Open);
    }

    #[test]
    fn failed_probe_reopens_with_doubled_capped_cool_down() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        (0..3).for_each(|_| b.on_failure(t0));
        let mut t = t0;
        let mut expected = Duration::from_secs(1);
        for _ in 0..4 {
            t += expected;
            assert_eq!(b.admit(t), Admit::Probe);
            b.on_failure(t);
            expected = (expected * 2).min(Duration::from_secs(4));
            assert_eq!(
                b.state(t + expected - Duration::from_millis(1)),
                BreakerState::Open
            );
            assert_eq!(b.state(t + expected), BreakerState::HalfOpen);
        }
    }

    #[test]
    fn lost_probe_frees_its_slot_after_a_cool_down() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        (0..3).for_each(|_| b.on_failure(t0));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.admit(t1 + Duration::from_millis(500)), Admit::No);
        assert_eq!(b.admit(t1 + Duration::from_secs(1)), Admit::Probe);
    }

    #[test]
    fn late_answers_while_open_do_not_close() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        (0..3).for_each(|_| b.on_failure(t0));
        b.on_success(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn registry_tracks_nodes_independently() {
        let t = Instant::now();
        let r = Breakers::new(cfg());
        for _ in 0..3 {
            r.record(1, false, t);
        }
        r.record(2, true, t);
        assert_eq!(r.state(1, t), BreakerState::Open);
        assert_eq!(r.state(2, t), BreakerState::Closed);
        assert!(!r.available(1, t));
        assert!(r.available(3, t), "unknown nodes start closed");
        assert!(r.probe_due(t).is_empty());
        assert_eq!(r.probe_due(t + Duration::from_secs(1)), vec![1]);
    }
}
