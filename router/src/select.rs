//! Replica choice: which copy of a shard serves a read.
//!
//! 1. **Residency.** Only replicas (voters and learners) on nodes whose
//!    region is among the tenant's allowed regions qualify; a read never
//!    leaves the tenant's data-residency boundary, even on failover.
//! 2. **Score** (lower is better), a simplified C3 (Suresh et al., NSDI '15):
//!
//!    ```text
//!    score = L × (1 + outstanding / outstanding_norm)³ × (remote ? remote_penalty : 1)
//!    ```
//!
//!    `L` is the node's EWMA response time. The cubic term is C3's: it
//!    punishes queueing much more than raw latency, so a replica that builds
//!    up outstanding requests is backed off before its latency shows it.
//!    Dividing by `outstanding_norm` keeps a handful of concurrent requests
//!    to a fast local replica from pushing traffic across regions.
//!    `remote_penalty` is the preference for the router's own region.
//!    A node without samples starts at a prior (`prior_local`/`prior_remote`),
//!    and a node not sampled for a while drifts back toward its prior
//!    (time constant `staleness_decay`), so a replica that was slow once is
//!    tried again eventually instead of being starved forever.
//! 3. **Hedging.** If the chosen replica has not answered after its observed
//!    p95 latency (at least `hedge_floor`), the read also goes to the next
//!    replica; the first answer wins and the other request is dropped.
//!    A request cancelled that way still reports its elapsed time as a
//!    (lower-bound) sample, so a stalled node's score rises without waiting
//!    for an answer that may never come.
//!
//! Scoring is pure (`now` is a parameter) and unit-tested.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::NodeId;

/// Scoring and hedging parameters.
#[derive(Debug, Clone)]
pub struct SelectConfig {
    /// The router's region; replicas there are preferred.
    pub local_region: String,
    /// Score multiplier for replicas outside the router's region.
    pub remote_penalty: f64,
    /// Assumed latency of a never-sampled replica in the router's region.
    pub prior_local: Duration,
    /// Assumed latency of a never-sampled replica elsewhere.
    pub prior_remote: Duration,
    /// Weight of a new sample in the EWMA.
    pub ewma_alpha: f64,
    /// Outstanding requests that double the load factor's base (see module docs).
    pub outstanding_norm: f64,
    /// Time constant with which an unsampled node's latency returns to its prior.
    pub staleness_decay: Duration,
    /// Shortest hedge delay.
    pub hedge_floor: Duration,
    /// Longest hedge delay.
    pub hedge_cap: Duration,
    /// Extra replicas a read may be hedged to (failover after errors is separate).
    pub max_hedges: usize,
}

impl SelectConfig {
    /// Defaults for a router in `region`.
    pub fn for_region(region: impl Into<String>) -> Self {
        SelectConfig {
            local_region: region.into(),
            remote_penalty: 2.0,
            prior_local: Duration::from_millis(1),
            prior_remote: Duration::from_millis(30),
            ewma_alpha: 0.3,
            outstanding_norm: 4.0,
            staleness_decay: Duration::from_secs(3),
            hedge_floor: Duration::from_millis(5),
            hedge_cap: Duration::from_secs(2),
            max_hedges: 2,
        }
    }
}

/// A replica of a shard, as placed in the cluster map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// The node holding it.
    pub node: NodeId,
    /// That node's region.
    pub region: String,
}

/// Keeps the replicas whose region is allowed for the tenant.
///
/// An empty allow-list means the tenant has no residency restriction.
pub fn residency_filter(replicas: &[Replica], allowed_regions: &[String]) -> Vec<Replica> {
    replicas
        .iter()
        .filter(|r| allowed_regions.is_empty() || allowed_regions.contains(&r.region))
        .cloned()
        .collect()
}

const RING: usize = 64;

/// What the router has observed of one node.
#[derive(Debug, Clone)]
pub struct NodeStats {
    ewma_ms: Option<f64>,
    last_sample: Option<Instant>,
    outstanding: u32,
    ring: [f64; RING],
    ring_len: usize,
    ring_pos: usize,
}

impl Default for NodeStats {
    fn default() -> Self {
        NodeStats {
            ewma_ms: None,
            last_sample: None,
            outstanding: 0,
            ring: [0.0; RING],
            ring_len: 0,
            ring_pos: 0,
        }
    }
}

impl NodeStats {
    /// Adds a latency sample.
    pub fn record(&mut self, latency: Duration, now: Instant, alpha: f64) {
        let ms = latency.as_secs_f64() * 1000.0;
        self.ewma_ms = Some(match self.ewma_ms {
            Some(e) => e + alpha * (ms - e),
            None => ms,
        });
        self.last_sample = Some(now);
        self.ring[self.ring_pos] = ms;
        self.ring_pos = (self.ring_pos + 1) % RING;
        self.ring_len = (self.ring_len + 1).min(RING);
    }

    /// Adds a censored sample: the request was abandoned after `elapsed`,
    /// so the true latency is at least that. Only raises the estimate.
    pub fn record_at_least(&mut self, elapsed: Duration, now: Instant, alpha: f64) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        if self.ewma_ms.is_none_or(|e| ms > e) {
            self.record(elapsed, now, alpha);
        }
    }

    /// Requests sent to the node and not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// 95th percentile of the recent samples, once there are enough of them.
    pub fn p95(&self) -> Option<Duration> {
        if self.ring_len < 8 {
            return None;
        }
        let mut v: Vec<f64> = self.ring[..self.ring_len].to_vec();
        v.sort_by(f64::total_cmp);
        let idx = ((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len()) - 1;
        Some(Duration::from_secs_f64(v[idx] / 1000.0))
    }

    /// Latency estimate in ms: the EWMA, drifting back to `prior_ms` the
    /// longer the node goes unsampled.
    pub fn latency_ms(&self, prior_ms: f64, decay: Duration, now: Instant) -> f64 {
        match (self.ewma_ms, self.last_sample) {
            (Some(e), Some(t)) => {
                let age = now.saturating_duration_since(t).as_secs_f64();
                let tau = decay.as_secs_f64().max(1e-3);
                prior_ms + (e - prior_ms) * (-age / tau).exp()
            }
            _ => prior_ms,
        }
    }
}

/// The score of one replica (lower is better); see the module docs.
pub fn score(stats: Option<&NodeStats>, region: &str, cfg: &SelectConfig, now: Instant) -> f64 {
    let local = region == cfg.local_region;
    let prior = if local {
        cfg.prior_local
    } else {
        cfg.prior_remote
    };
    let prior_ms = prior.as_secs_f64() * 1000.0;
    let (latency, outstanding) = match stats {
        Some(s) => (
            s.latency_ms(prior_ms, cfg.staleness_decay, now),
            f64::from(s.outstanding),
        ),
        None => (prior_ms, 0.0),
    };
    let load = 1.0 + outstanding / cfg.outstanding_norm.max(1e-9);
    let penalty = if local { 1.0 } else { cfg.remote_penalty };
    latency.max(1e-3) * load.powi(3) * penalty
}

/// Orders replicas best first by [`score`]; ties go to the lower node id so
/// that the order is deterministic.
pub fn rank(
    replicas: &[Replica],
    stats: &HashMap<NodeId, NodeStats>,
    cfg: &SelectConfig,
    now: Instant,
) -> Vec<Replica> {
    let mut scored: Vec<(f64, Replica)> = replicas
        .iter()
        .map(|r| (score(stats.get(&r.node), &r.region, cfg, now), r.clone()))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.node.cmp(&b.1.node)));
    scored.into_iter().map(|(_, r)| r).collect()
}

/// Rotates replicas for round-robin selection (sorted by node id first, so
/// that `turn` alone decides).
pub fn round_robin(replicas: &[Replica], turn: usize) -> Vec<Replica> {
    let mut v = replicas.to_vec();
    v.sort_by_key(|r| r.node);
    if !v.is_empty() {
        let k = turn % v.len();
        v.rotate_left(k);
    }
    v
}

/// How long to wait for `stats`'s node before hedging: its p95, or twice
/// its latency estimate while it has too few samples, within the bounds.
pub fn hedge_delay(
    stats: Option<&NodeStats>,
    region: &str,
    cfg: &SelectConfig,
    now: Instant,
) -> Duration {
    let local = region == cfg.local_region;
    let prior = if local {
        cfg.prior_local
    } else {
        cfg.prior_remote
    };
    let estimate = match stats.and_then(NodeStats::p95) {
        Some(p) => p,
        None => {
            let ms = stats.map_or(prior.as_secs_f64() * 1000.0, |s| {
                s.latency_ms(prior.as_secs_f64() * 1000.0, cfg.staleness_decay, now)
            });
            Duration::from_secs_f64(2.0 * ms / 1000.0)
        }
    };
    estimate.clamp(cfg.hedge_floor, cfg.hedge_cap.max(cfg.hedge_floor))
}

/// Latency and load observations of every node, shared by all requests.
#[derive(Debug, Default)]
pub struct ReplicaStats {
    nodes: Mutex<HashMap<NodeId, NodeStats>>,
}

impl ReplicaStats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ranks replicas with the current observations.
    pub fn rank(&self, replicas: &[Replica], cfg: &SelectConfig, now: Instant) -> Vec<Replica> {
        rank(replicas, &self.nodes.lock(), cfg, now)
    }

    /// The hedge delay for `node`.
    pub fn hedge_delay(
        &self,
        node: NodeId,
        region: &str,
        cfg: &SelectConfig,
        now: Instant,
    ) -> Duration {
        hedge_delay(self.nodes.lock().get(&node), region, cfg, now)
    }

    /// A copy of one node's observations (for status and tests).
    pub fn snapshot(&self, node: NodeId) -> Option<NodeStats> {
        self.nodes.lock().get(&node).cloned()
    }

    /// Marks a request to `node` as outstanding until the returned guard is
    /// finished or dropped.
    pub fn begin(self: &Arc<Self>, node: NodeId, alpha: f64) -> InFlight {
        self.nodes.lock().entry(node).or_default().outstanding += 1;
        InFlight {
            stats: Arc::clone(self),
            node,
            alpha,
            started: Instant::now(),
            done: false,
        }
    }
}

/// One outstanding request to a node.
///
/// Dropping it unfinished (a cancelled hedge loser, a timed-out call)
/// records the elapsed time as a lower bound on that node's latency.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<ReplicaStats>,
    node: NodeId,
    alpha: f64,
    started: Instant,
    done: bool,
}

impl InFlight {
    /// Time since the request was sent.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The node answered: record its latency.
    pub fn answered(mut self) -> Duration {
        let latency = self.started.elapsed();
        let now = Instant::now();
        let mut nodes = self.stats.nodes.lock();
        let s = nodes.entry(self.node).or_default();
        s.outstanding = s.outstanding.saturating_sub(1);
        s.record(latency, now, self.alpha);
        self.done = true;
        latency
    }

    /// The request failed without a meaningful latency (refused connection,
    /// error status): only release the outstanding slot. Breakers track failures.
    pub fn failed(mut self) {
        let mut nodes = self.stats.nodes.lock();
        if let Some(s) = nodes.get_mut(&self.node) {
            s.outstanding = s.outstanding.saturating_sub(1);
        }
        self.done = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let elapsed = self.started.elapsed();
        let now = Instant::now();
        let mut nodes = self.stats.nodes.lock();
        let s = nodes.entry(self.node).or_default();
        s.outstanding = s.outstanding.saturating_sub(1);
        s.record_at_least(elapsed, now, self.alpha);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SelectConfig {
        SelectConfig::for_region("us-east")
    }

    fn rep(node: NodeId, region: &str) -> Replica {
        Replica {
            node,
            region: region.into(),
        }
    }

    fn sampled(ms: u64, n: usize, now: Instant) -> NodeStats {
        let mut s = NodeStats::default();
        for _ in 0..n {
            s.record(Duration::from_millis(ms), now, 0.3);
        }
        s
    }

    #[test]
    fn residency_filter_keeps_only_allowed_regions() {
        let all = vec![rep(1, "us-east"), rep(2, "eu-west"), rep(3, "ap-south")];
        let allowed = vec!["us-east".to_string(), "ap-south".to_string()];
        let kept: Vec<NodeId> = residency_filter(&all, &allowed)
            .iter()
            .map(|r| r.node)
            .collect();
        assert_eq!(kept, vec![1, 3]);
        assert_eq!(residency_filter(&all, &[]).len(), 3);
        assert!(residency_filter(&all, &["mars".to_string()]).is_empty());
    }

    #[test]
    fn unsampled_local_replica_beats_unsampled_remote_one() {
        let now = Instant::now();
        let ranked = rank(
            &[rep(2, "eu-west"), rep(9, "us-east")],
            &HashMap::new(),
            &cfg(),
            now,
        );
        assert_eq!(ranked[0].node, 9);
    }

    #[test]
    fn slow_local_replica_loses_to_fast_local_one() {
        let now = Instant::now();
        let mut stats = HashMap::new();
        stats.insert(1, sampled(51, 20, now));
        stats.insert(2, sampled(1, 20, now));
        let ranked = rank(&[rep(1, "us-east"), rep(2, "us-east")], &stats, &cfg(), now);
        assert_eq!(ranked[0].node, 2);
    }

    #[test]
    fn region_preference_holds_at_equal_latency_and_yields_to_large_gaps() {
        let now = Instant::now();
        let mut stats = HashMap::new();
        stats.insert(1, sampled(10, 20, now));
        stats.insert(2, sampled(10, 20, now));
        let ranked = rank(&[rep(2, "eu-west"), rep(1, "us-east")], &stats, &cfg(), now);
        assert_eq!(ranked[0].node, 1, "same latency: local wins");
        stats.insert(1, sampled(200, 40, now));
        let ranked = rank(&[rep(2, "eu-west"), rep(1, "us-east")], &stats, &cfg(), now);
        assert_eq!(
            ranked[0].node, 2,
            "local 20x slower: remote wins despite the penalty"
        );
    }

    #[test]
    fn outstanding_requests_raise_the_score_cubically() {
        let now = Instant::now();
        let c = cfg();
        let mut s = sampled(4, 10, now);
        let base = score(Some(&s), "us-east", &c, now);
        s.outstanding = 4; // load = 1 + 4/4 = 2 -> 8x
        let loaded = score(Some(&s), "us-east", &c, now);
        assert!((loaded / base - 8.0).abs() < 1e-9, "{loaded} vs {base}");
    }

    #[test]
    fn unsampled_node_drifts_back_to_its_prior() {
        let t0 = Instant::now();
        let c = cfg();
        let s = sampled(100, 20, t0);
        let fresh = s.latency_ms(1.0, c.staleness_decay, t0);
        let later = s.latency_ms(1.0, c.staleness_decay, t0 + Duration::from_secs(30));
        assert!((fresh - 100.0).abs() < 1e-6);
        assert!(
            later < 1.01,
            "after 10 time constants the prior dominates: {later}"
        );
    }

    #[test]
    fn censored_samples_only_raise_the_estimate() {
        let now = Instant::now();
        let mut s = sampled(10, 5, now);
        s.record_at_least(Duration::from_millis(2), now, 0.3);
        assert!((s.latency_ms(0.0, Duration::from_secs(3600), now) - 10.0).abs() < 1e-6);
        s.record_at_least(Duration::from_millis(110), now, 0.3);
        assert!(s.latency_ms(0.0, Duration::from_secs(3600), now) > 10.0);
    }

    #[test]
    fn p95_and_hedge_delay_bounds() {
        let now = Instant::now();
        let c = cfg();
        let mut s = NodeStats::default();
        assert_eq!(s.p95(), None);
        for ms in 1..=100u64 {
            s.record(Duration::from_millis(ms), now, 0.3);
        }
        // The ring keeps the last 64 samples: 37..=100 ms; p95 is the 61st.
        assert_eq!(s.p95(), Some(Duration::from_millis(97)));
        assert_eq!(
            hedge_delay(Some(&s), "us-east", &c, now),
            Duration::from_millis(97)
        );
        let fast = sampled(0, 20, now);
        assert_eq!(hedge_delay(Some(&fast), "us-east", &c, now), c.hedge_floor);
        assert_eq!(
            hedge_delay(None, "eu-west", &c, now),
            Duration::from_millis(60)
        );
    }

    #[test]
    fn round_robin_rotates_over_every_replica() {
        let reps = vec![rep(3, "a"), rep(1, "a"), rep(2, "b")];
        let firsts: Vec<NodeId> = (0..6).map(|t| round_robin(&reps, t)[0].node).collect();
        assert_eq!(firsts, vec![1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn in_flight_guard_tracks_outstanding_and_censors_on_drop() {
        let stats = Arc::new(ReplicaStats::new());
        let g1 = stats.begin(7, 0.3);
        let g2 = stats.begin(7, 0.3);
        assert_eq!(stats.snapshot(7).map(|s| s.outstanding()), Some(2));
        g1.failed();
        drop(g2);
        let s = stats.snapshot(7).expect("stats for node 7");
        assert_eq!(s.outstanding(), 0);
    }
}
