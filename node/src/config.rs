//! The static cluster description a fresh cluster bootstraps from, and the
//! node's own settings.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tessera_proto::NodeId;

use crate::meta::NodeEntry;

/// Errors reading the cluster file. They name the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid cluster TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cluster config: {0}")]
    Invalid(String),
}

/// One node of `cluster.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub id: NodeId,
    pub region: String,
    #[serde(default = "default_zone")]
    pub zone: String,
    /// QUIC address for Raft traffic.
    pub raft: SocketAddr,
    /// gRPC address for clients and routers.
    pub grpc: SocketAddr,
    /// Prometheus endpoint; none if absent.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

fn default_zone() -> String {
    "a".to_string()
}

/// A peer-address override: node `from` reaches node `to` at `raft`
/// (typically a chaos proxy on that link).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub from: NodeId,
    pub to: NodeId,
    pub raft: SocketAddr,
}

/// `cluster.toml`: every node of a fresh cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(rename = "node")]
    pub nodes: Vec<NodeSpec>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSpec>,
    /// `[placement]`: how shards are shared between tenants. The meta
    /// leader writes it into the replicated map (absent: the defaults).
    #[serde(default)]
    pub placement: Option<crate::meta::PlacementSettings>,
    /// `[growth]`: when a tenant doubles its partitions by itself
    /// (`split_docs`, 0 = never). Absent: a million documents a partition.
    #[serde(default)]
    pub growth: Option<crate::meta::growth::GrowthSettings>,
    /// `[rebalance]`: how the meta leader spreads replicas onto nodes that joined (or came
    /// back into service). Read from the meta leader's file only.
    #[serde(default)]
    pub rebalance: RebalanceSettings,
}

/// `[rebalance]` in the cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebalanceSettings {
    /// Replica moves in one wave (each copies a whole shard to its new node); the next wave
    /// starts when every move of this one has finished. 0 turns rebalancing off.
    pub moves_at_once: u32,
}

impl Default for RebalanceSettings {
    fn default() -> Self {
        Self { moves_at_once: 2 }
    }
}

impl ClusterConfig {
    /// Reads and checks a cluster file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Rejects duplicate ids and empty clusters.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::Invalid("no [[node]] entries".into()));
        }
        if let Some(p) = &self.placement {
            if p.min_shards == 0 || p.max_tenants_per_shard == 0 {
                return Err(ConfigError::Invalid(
                    "[placement] min_shards and max_tenants_per_shard must be at least 1".into(),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for n in &self.nodes {
            if n.id == 0 {
                return Err(ConfigError::Invalid("node id 0 is reserved".into()));
            }
            if !seen.insert(n.id) {
                return Err(ConfigError::Invalid(format!("duplicate node id {}", n.id)));
            }
        }
        Ok(())
    }

    /// The node with `id`.
    pub fn node(&self, id: NodeId) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The meta group's voters: up to five nodes (three for clusters of six
    /// or fewer) taken round-robin across regions, so that losing a region
    /// keeps a majority. Every other node is a meta learner.
    pub fn meta_voters(&self) -> Vec<NodeId> {
        let want = if self.nodes.len() <= 6 { 3 } else { 5 };
        let mut by_region: std::collections::BTreeMap<&str, Vec<NodeId>> = Default::default();
        for n in &self.nodes {
            by_region.entry(n.region.as_str()).or_default().push(n.id);
        }
        for v in by_region.values_mut() {
            v.sort_unstable();
        }
        let mut out = Vec::new();
        let mut round = 0;
        while out.len() < want.min(self.nodes.len()) {
            let mut added = false;
            for ids in by_region.values() {
                if let Some(id) = ids.get(round) {
                    if out.len() < want {
                        out.push(*id);
                        added = true;
                    }
                }
            }
            if !added {
                break;
            }
            round += 1;
        }
        out.sort_unstable();
        out
    }

    /// The map entries of every node.
    pub fn node_entries(&self) -> Vec<NodeEntry> {
        self.nodes
            .iter()
            .map(|n| NodeEntry {
                id: n.id,
                region: n.region.clone(),
                zone: n.zone.clone(),
                raft_addr: n.raft.to_string(),
                grpc_addr: n.grpc.to_string(),
            })
            .collect()
    }

    /// Peer-address overrides.
    pub fn route_table(&self) -> HashMap<(NodeId, NodeId), SocketAddr> {
        self.routes
            .iter()
            .map(|r| ((r.from, r.to), r.raft))
            .collect()
    }
}

/// Raft timing. Heartbeats stay well below the election timeout so a
/// healthy leader is never deposed by a slow link.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Entries since the last snapshot that trigger a new one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot (for slow followers).
    pub keep_after_snapshot: u64,
    /// Entries per AppendEntries. One entry is a whole write batch (up to
    /// megabytes), so a catch-up payload must stay small enough to arrive
    /// within one heartbeat interval; otherwise a lagging follower never
    /// catches up.
    pub max_payload_entries: u64,
}

impl Default for RaftTuning {
    /// openraft 0.9 bounds every AppendEntries (heartbeats included) by the
    /// heartbeat interval, so the interval must cover a cross-region round
    /// trip (up to 2 x 80 ms here) plus the transfer of a full payload and
    /// the follower's fsync; 500 ms does, with room for a loaded machine.
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(500),
            election_min: Duration::from_millis(1500),
            election_max: Duration::from_millis(3000),
            snapshot_every: 20_000,
            keep_after_snapshot: 1_000,
            max_payload_entries: 8,
        }
    }
}
