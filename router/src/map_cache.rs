//! The router's copy of the cluster map.
//!
//! A background task holds a `WatchClusterMap` stream open on one seed (or,
//! once a map is known, on any node of it), and moves to the next address
//! when the stream fails. Request paths that suspect a stale map (a node
//! says NotFound, a leader hint names an unknown node) call [`MapCache::refresh`],
//! which polls `GetClusterMap` directly. Only strictly newer epochs replace
//! the cached map, so a lagging node can never roll it back.

use crate::deadline::Deadline;
use crate::error::RouterError;
use crate::pool::NodePool;
use crate::topology::Topology;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::pb::{ClusterMap, ClusterMapRequest};
use tessera_proto::NodeId;
use tokio::sync::watch;
use tokio::time::Instant;

/// The cached map plus the means to keep it fresh.
#[derive(Debug)]
pub struct MapCache {
    tx: watch::Sender<Arc<Topology>>,
    seeds: Vec<String>,
    pool: Arc<NodePool>,
    routes: BTreeMap<NodeId, String>,
    refresh_lock: tokio::sync::Mutex<Option<Instant>>,
}

/// Refreshes closer together than this are coalesced into one.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(50);

impl MapCache {
    /// A cache with no map yet.
    pub fn new(seeds: Vec<String>, pool: Arc<NodePool>) -> Self {
        Self::with_routes(seeds, pool, BTreeMap::new())
    }

    /// A cache with no map yet whose topologies reach the nodes in `routes`
    /// at the given addresses (see `RouterConfig::node_routes`).
    pub fn with_routes(
        seeds: Vec<String>,
        pool: Arc<NodePool>,
        routes: BTreeMap<NodeId, String>,
    ) -> Self {
        let (tx, _) = watch::channel(Arc::new(Topology::default()));
        MapCache {
            tx,
            seeds,
            pool,
            routes,
            refresh_lock: tokio::sync::Mutex::new(None),
        }
    }

    /// The newest map (epoch 0 before the first one arrives).
    pub fn current(&self) -> Arc<Topology> {
        self.tx.borrow().clone()
    }

    /// Installs `map` if it is newer than the cached one; says whether it was.
    pub fn apply(&self, map: ClusterMap) -> bool {
        let epoch = map.epoch;
        let installed = self.tx.send_if_modified(|cur| {
            if epoch > cur.epoch() {
                *cur = Arc::new(Topology::from_map_routed(map, &self.routes));
                true
            } else {
                false
            }
        });
        if installed {
            tracing::info!(epoch, "cluster map updated");
            metrics::gauge!("tessera_router_map_epoch").set(epoch as f64);
        }
        installed
    }

    /// Waits (within `deadline`) until some map has arrived.
    pub async fn ready(&self, deadline: Deadline) -> Result<Arc<Topology>, RouterError> {
        let cur = self.current();
        if cur.epoch() > 0 {
            return Ok(cur);
        }
        // Do not rely on the watch alone: ask for the map now (coalesced).
        if self.refresh(deadline).await.epoch() > 0 {
            return Ok(self.current());
        }
        let mut rx = self.tx.subscribe();
        let wait = async move { rx.wait_for(|t| t.epoch() > 0).await.map(|t| t.clone()) };
        match tokio::time::timeout_at(deadline.instant(), wait).await {
            Ok(Ok(t)) => Ok(t),
            _ => Err(RouterError::Unavailable(format!(
                "no cluster map yet: none of the seeds {:?} answered",
                self.seeds
            ))),
        }
    }

    /// Addresses to ask for the map: the known nodes, then the seeds.
    fn sources(&self) -> Vec<String> {
        let topo = self.current();
        let mut out: Vec<String> = topo.nodes().iter().map(|n| n.grpc_addr.clone()).collect();
        for s in &self.seeds {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    /// Fetches the map now (from the first source that answers) and returns
    /// the newest one. Concurrent callers share one fetch.
    pub async fn refresh(&self, deadline: Deadline) -> Arc<Topology> {
        let before = self.current().epoch();
        let mut last = self.refresh_lock.lock().await;
        if self.current().epoch() > before || last.is_some_and(|t| t.elapsed() < MIN_REFRESH_GAP) {
            return self.current();
        }
        for addr in self.sources() {
            if deadline.expired() {
                break;
            }
            let Ok(mut client) = self.pool.client(&addr) else {
                continue;
            };
            let budget = deadline.downstream(Some(Duration::from_secs(1)));
            let mut req = tonic::Request::new(ClusterMapRequest { known_epoch: 0 });
            req.set_timeout(budget);
            match tokio::time::timeout(budget, client.get_cluster_map(req)).await {
                Ok(Ok(resp)) => {
                    if let Some(map) = resp.into_inner().map {
                        self.apply(map);
                    }
                    break;
                }
                Ok(Err(status)) => tracing::debug!(%addr, %status, "map refresh failed"),
                Err(_) => tracing::debug!(%addr, "map refresh timed out"),
            }
        }
        *last = Some(Instant::now());
        self.current()
    }

    /// Keeps a watch stream open forever, moving to the next source on any
    /// failure. Runs as a background task until aborted.
    pub async fn run_watch(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(50);
        let mut turn = 0usize;
        loop {
            let sources = self.sources();
            if sources.is_empty() {
                tracing::error!("no seeds to watch the cluster map from");
                return;
            }
            let addr = sources[turn % sources.len()].clone();
            turn += 1;
            match self.watch_one(&addr).await {
                Ok(()) => tracing::info!(%addr, "cluster map watch ended; reconnecting"),
                Err(e) => tracing::warn!(%addr, error = %e, "cluster map watch failed"),
            }
            if turn.is_multiple_of(sources.len()) {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }

    async fn watch_one(&self, addr: &str) -> Result<(), RouterError> {
        let mut client = self.pool.client(addr)?;
        let known_epoch = self.current().epoch();
        let open = client.watch_cluster_map(ClusterMapRequest { known_epoch });
        let mut stream = tokio::time::timeout(Duration::from_secs(3), open)
            .await
            .map_err(|_| RouterError::Unavailable(format!("{addr}: watch did not open in 3s")))?
            .map_err(|s| RouterError::from_node_status(addr, &s))?
            .into_inner();
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| RouterError::from_node_status(addr, &s))?
        {
            if let Some(map) = msg.map {
                self.apply(map);
            }
        }
        Ok(())
    }

    /// Re-fetches the map every `every`, as a safety net for a watch that is
    /// open but silent (e.g. a paused node). Runs until aborted.
    pub async fn run_poll(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.refresh(Deadline::after(Duration::from_secs(2))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::tests::sample_map;

    #[test]
    fn only_newer_epochs_replace_the_map() {
        let cache = MapCache::new(
            vec![],
            Arc::new(NodePool::new(Duration::from_secs(1), None)),
        );
        assert_eq!(cache.current().epoch(), 0);
        assert!(cache.apply(sample_map()));
        let mut older = sample_map();
        older.epoch = 6;
        older.tenants.clear();
        assert!(!cache.apply(older));
        assert!(cache.current().tenant("acme").is_some());
        let mut newer = sample_map();
        newer.epoch = 8;
        assert!(cache.apply(newer));
        assert_eq!(cache.current().epoch(), 8);
    }
}
