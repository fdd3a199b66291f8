//! The router's side of the storage cluster: the cached map, channels to
//! nodes, what it has learned about them (leaders, latencies, breakers,
//! applied indexes), and replica choice. Reads (`read.rs`) and writes
//! (`write.rs`) are built on it.

use crate::breaker::Breakers;
use crate::config::{RouterConfig, SelectionPolicy};
use crate::error::RouterError;
use crate::map_cache::MapCache;
use crate::pool::NodePool;
use crate::select::{self, Replica, ReplicaStats};
use crate::topology::Topology;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::pb::TenantInfo;
use tessera_proto::{NodeId, ShardId};

/// Shared state of one router, used by every request.
#[derive(Debug)]
pub struct Backend {
    /// The configuration it was started with.
    pub cfg: RouterConfig,
    /// The cached cluster map.
    pub map: Arc<MapCache>,
    /// Channels to nodes.
    pub pool: Arc<NodePool>,
    /// Per-node breakers.
    pub breakers: Breakers,
    /// Per-node latency and load.
    pub stats: Arc<ReplicaStats>,
    leaders: Mutex<HashMap<ShardId, NodeId>>,
    high_water: Mutex<HashMap<ShardId, u64>>,
    rr_turn: AtomicUsize,
    /// The experiment log, when configured.
    pub impressions: Option<crate::impressions::ImpressionLog>,
    /// API key checks (see [`crate::auth`]).
    pub auth: crate::auth::Auth,
    /// Signed user token checks.
    pub tokens: crate::auth::tokens::TokenVerifier,
    /// The audit log of admin and key operations, when configured.
    pub audit: Option<crate::auth::audit::AuditLog>,
}

impl Backend {
    /// A backend with nothing learned yet.
    pub fn new(cfg: RouterConfig) -> Self {
        Self::with_impressions(cfg, None)
    }

    /// A backend that logs experiment impressions and clicks to `impressions`.
    pub fn with_impressions(
        cfg: RouterConfig,
        impressions: Option<crate::impressions::ImpressionLog>,
    ) -> Self {
        let pool = Arc::new(NodePool::new(Duration::from_secs(1), cfg.identity.clone()));
        let map = Arc::new(MapCache::with_routes(
            cfg.seeds.clone(),
            Arc::clone(&pool),
            cfg.node_routes.clone(),
        ));
        Backend {
            breakers: Breakers::new(cfg.breaker.clone()),
            stats: Arc::new(ReplicaStats::new()),
            leaders: Mutex::new(HashMap::new()),
            high_water: Mutex::new(HashMap::new()),
            rr_turn: AtomicUsize::new(0),
            impressions,
            auth: crate::auth::Auth::new(),
            tokens: Default::default(),
            audit: None,
            cfg,
            map,
            pool,
        }
    }

    /// The cached leader of `shard`, if any.
    pub fn leader(&self, shard: ShardId) -> Option<NodeId> {
        self.leaders.lock().get(&shard).copied()
    }

    /// Remembers `node` as the leader of `shard`.
    pub fn set_leader(&self, shard: ShardId, node: NodeId) {
        self.leaders.lock().insert(shard, node);
    }

    /// Forgets `node` as leader of `shard` (if it was the cached one).
    pub fn forget_leader(&self, shard: ShardId, node: NodeId) {
        let mut l = self.leaders.lock();
        if l.get(&shard) == Some(&node) {
            l.remove(&shard);
        }
    }

    /// Notes that `shard` has reached at least `applied` somewhere.
    pub fn observe_applied(&self, shard: ShardId, applied: u64) {
        let mut hw = self.high_water.lock();
        let e = hw.entry(shard).or_insert(0);
        *e = (*e).max(applied);
    }

    /// How far `applied` is behind the highest index seen for `shard`.
    pub fn staleness(&self, shard: ShardId, applied: u64) -> u64 {
        self.high_water
            .lock()
            .get(&shard)
            .map_or(0, |hw| hw.saturating_sub(applied))
    }

    /// The replicas of `shard` a read of `tenant` may use, best first:
    /// residency-filtered, then ordered by the policy. Nodes whose breaker
    /// is open go last (they are skipped at send time unless a probe is due).
    pub fn read_candidates(
        &self,
        topo: &Topology,
        tenant: &TenantInfo,
        shard: ShardId,
        policy: SelectionPolicy,
    ) -> Result<Vec<Replica>, RouterError> {
        let all = topo.replicas(shard);
        if all.is_empty() {
            return Err(RouterError::Unavailable(format!(
                "shard {shard} of tenant {} has no replicas in cluster map epoch {}",
                tenant.id,
                topo.epoch()
            )));
        }
        let eligible = select::residency_filter(&all, &tenant.regions);
        if eligible.is_empty() {
            return Err(RouterError::Unavailable(format!(
                "shard {shard} has no replica in tenant {}'s allowed regions {:?}",
                tenant.id, tenant.regions
            )));
        }
        let now = Instant::now();
        let ranked = match policy {
            SelectionPolicy::Adaptive => self.stats.rank(&eligible, &self.cfg.select, now),
            SelectionPolicy::RoundRobin => {
                select::round_robin(&eligible, self.rr_turn.fetch_add(1, Ordering::Relaxed))
            }
        };
        let (mut up, down): (Vec<Replica>, Vec<Replica>) = ranked
            .into_iter()
            .partition(|r| self.breakers.available(r.node, now));
        up.extend(down);
        Ok(up)
    }
}
