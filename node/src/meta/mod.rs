//! The meta group (Raft group 0): the cluster map and the commands that
//! change it.
//!
//! Placement is computed inside `apply`, from the map as of that log entry,
//! so every replica derives the same shards and replicas from the same
//! command, and two concurrent tenant creations can never pick the same new
//! shard id.

pub mod detector;
pub mod growth;
pub mod keys;
pub mod legacy;
pub mod mover;
pub mod moves;
pub mod placement;
pub mod rebalance;
pub mod repair;
pub mod resize;

pub use repair::NodeState;
pub use resize::{Resize, ResizeStep};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_proto::document::{check_name, validate_tenant};
use tessera_proto::pb;
use tessera_proto::{NodeId, ShardId};

/// Marks a stored map as JSON (older maps are bincode; see [`legacy`]).
const STORED_MAP_MARKER: &[u8] = b"tessera-map-json\0";

/// Most partitions one tenant may have.
pub const MAX_PARTITIONS: u32 = 256;

/// How a tenant's shards survive failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Survival {
    /// Voters in the home region across zones; learners elsewhere.
    Zone,
    /// Voters spread over three or more regions.
    Region,
}

impl Survival {
    /// Parses `zone` / `region` (empty means `zone`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" | "zone" => Ok(Self::Zone),
            "region" => Ok(Self::Region),
            other => Err(format!(
                "unknown survival goal {other:?}: expected zone or region"
            )),
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zone => "zone",
            Self::Region => "region",
        }
    }
}

/// A storage node as the map knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: NodeId,
    pub region: String,
    pub zone: String,
    pub raft_addr: String,
    pub grpc_addr: String,
}

/// Where a shard's replicas may live; shards are shared only by tenants
/// with the same policy, so residency holds by construction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Policy {
    /// Allowed regions: the home region first, then the others in the
    /// order the tenant listed them (nearest first), without repeats.
    /// Placement tops voters up in this order, and two tenants that list
    /// the same regions in an order that places alike share shards.
    pub regions: Vec<String>,
    pub home: String,
    pub survival: Survival,
}

/// One shard (Raft group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub id: ShardId,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub policy: Policy,
    /// Replicas being replaced (drain, repair): the joining node catches up
    /// as a Raft learner and only then takes the leaving node's place here,
    /// so routers never read from a replica that is still catching up.
    #[serde(default)]
    pub incoming: Vec<Swap>,
}

/// One replica being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swap {
    pub leaving: NodeId,
    pub joining: NodeId,
}

impl ShardEntry {
    /// Voters then learners.
    pub fn replicas(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
}

/// One tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantEntry {
    pub id: String,
    pub regions: Vec<String>,
    pub home: String,
    pub survival: Survival,
    /// Partition index → shard id.
    pub partitions: Vec<ShardId>,
    /// A partition-count change in progress: while it runs, reads cover
    /// both placements and writes go to both (see [`resize`]).
    #[serde(default)]
    pub resize: Option<Resize>,
    /// Per shard, the log index a replica must have applied before it may
    /// serve this tenant: set by resizes (see [`ResizeStep`]).
    #[serde(default)]
    pub read_floors: BTreeMap<ShardId, u64>,
}

/// Placement knobs. They live in the replicated map, not in each node's
/// config, so that every replica of the meta group places alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlacementSettings {
    /// Shards a residency policy's ring starts with, so that small tenants
    /// spread from the first one instead of piling onto one shard.
    pub min_shards: u32,
    /// A shard holding partitions of this many tenants is full: new
    /// tenants go to other shards of the ring, or to a new shard.
    pub max_tenants_per_shard: u32,
    /// A node the meta leader cannot reach for this long is declared dead
    /// and its replicas are rebuilt elsewhere.
    pub dead_after_secs: u64,
}

impl Default for PlacementSettings {
    fn default() -> Self {
        PlacementSettings {
            min_shards: 1,
            max_tenants_per_shard: 512,
            dead_after_secs: 120,
        }
    }
}

/// The replicated cluster map. `epoch` grows with every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub epoch: u64,
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    pub shards: BTreeMap<ShardId, ShardEntry>,
    pub tenants: BTreeMap<String, TenantEntry>,
    /// Placement knobs (see [`PlacementSettings`]).
    #[serde(default)]
    pub settings: PlacementSettings,
    /// Nodes that take no new replicas: drained by an operator or declared
    /// dead (see [`repair`]).
    #[serde(default)]
    pub node_states: BTreeMap<NodeId, NodeState>,
    /// When tenants double their partitions by themselves (see [`growth`]).
    #[serde(default)]
    pub growth: growth::GrowthSettings,
    /// API keys by id, revoked ones included as tombstones (see [`keys`]).
    #[serde(default)]
    pub keys: BTreeMap<String, tessera_proto::keys::KeyRecord>,
    /// Per-tenant user-token policies (see [`keys`]).
    #[serde(default)]
    pub user_tokens: BTreeMap<String, keys::UserTokenPolicy>,
}

/// A request to create a tenant, as validated by `apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSpec {
    pub id: String,
    pub regions: Vec<String>,
    pub home: String,
    pub survival: String,
    pub partitions: u32,
}

/// A change to the cluster map.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Adds or updates nodes (bootstrap, restarts with new addresses).
    RegisterNodes(Vec<NodeEntry>),
    /// Creates a tenant and places its partitions.
    CreateTenant(TenantSpec),
    /// Adds a learner replica to a shard (residency is checked).
    AddLearner { shard: ShardId, node: NodeId },
    /// Replaces the placement knobs (the meta leader proposes its config's).
    Configure(PlacementSettings),
    /// Starts changing a tenant's partition count (a multiple of the
    /// current one): assigns the new partitions and fences the old map.
    BeginResize { tenant: String, partitions: u32 },
    /// Records a finished step of the resize that began at map epoch
    /// `fence`; the last step cuts over to the new placement.
    ResizeStep {
        tenant: String,
        fence: u64,
        step: ResizeStep,
    },
    /// Moves every replica off a node (an operator's drain).
    DrainNode(NodeId),
    /// Declares a node dead and rebuilds its replicas elsewhere.
    MarkDead(NodeId),
    /// The joining node of a swap has caught up: it takes the leaving
    /// node's place among the shard's replicas.
    CompleteSwap { shard: ShardId, swap: Swap },
    /// Starts moving partitions of a tenant (all when empty) to shard `to`,
    /// or to a shard placement picks (see [`moves`]).
    BeginMove {
        tenant: String,
        partitions: Vec<u32>,
        to: Option<ShardId>,
    },
    /// Sets the document limit of automatic growth; the form written
    /// before limits by size existed (see `ConfigureGrowthRule`).
    ConfigureGrowth(growth::DocsOnlyGrowth),
    /// Returns a drained or dead node to service (see [`rebalance`]).
    UndrainNode(NodeId),
    /// Starts the next wave of at most `max_swaps` replica moves toward
    /// even loads (see [`rebalance`]).
    Rebalance { max_swaps: u32 },
    /// Replaces the automatic-growth rule (the meta leader proposes its
    /// config's `[growth]`).
    ConfigureGrowthRule(growth::GrowthSettings),
    /// Adds an API key (its hash; see [`keys`]).
    PutKey(tessera_proto::keys::KeyRecord),
    /// Revokes an API key at `at_ms` (Unix milliseconds, set by the proposer
    /// so that every replica records the same time).
    RevokeKey { id: String, at_ms: u64 },
    /// Sets a tenant's user-token policy.
    SetUserTokens(keys::UserTokenPolicy),
}

/// The result of a meta command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaOutcome {
    /// The map changed (or already had the requested state) at this epoch.
    Ok { epoch: u64 },
    /// The tenant as created (or as it already existed, for a retry).
    Tenant {
        tenant: Box<TenantEntry>,
        epoch: u64,
    },
    /// The command was rejected; the map is unchanged.
    Rejected(String),
}

impl ClusterMap {
    /// Applies a command. Rejections leave the map untouched.
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaOutcome {
        let result = match cmd {
            MetaCommand::RegisterNodes(nodes) => self.register_nodes(nodes),
            MetaCommand::CreateTenant(spec) => self.create_tenant(spec),
            MetaCommand::AddLearner { shard, node } => self.add_learner(*shard, *node),
            MetaCommand::Configure(settings) => Ok(self.configure(settings)),
            MetaCommand::BeginResize { tenant, partitions } => {
                self.begin_resize(tenant, *partitions)
            }
            MetaCommand::ResizeStep {
                tenant,
                fence,
                step,
            } => self.resize_step(tenant, *fence, step),
            MetaCommand::DrainNode(node) => self.retire_node(*node, NodeState::Draining),
            MetaCommand::MarkDead(node) => self.retire_node(*node, NodeState::Dead),
            MetaCommand::CompleteSwap { shard, swap } => self.complete_swap(*shard, *swap),
            MetaCommand::BeginMove {
                tenant,
                partitions,
                to,
            } => self.begin_move(tenant, partitions, *to),
            MetaCommand::ConfigureGrowth(docs) => {
                Ok(self.configure_growth(&growth::GrowthSettings {
                    split_docs: docs.split_docs,
                    ..self.growth.clone()
                }))
            }
            MetaCommand::ConfigureGrowthRule(settings) => Ok(self.configure_growth(settings)),
            MetaCommand::UndrainNode(node) => self.undrain_node(*node),
            MetaCommand::Rebalance { max_swaps } => self.rebalance(*max_swaps),
            MetaCommand::PutKey(key) => self.put_key(key),
            MetaCommand::RevokeKey { id, at_ms } => self.revoke_key(id, *at_ms),
            MetaCommand::SetUserTokens(policy) => self.set_user_tokens(policy),
        };
        result.unwrap_or_else(MetaOutcome::Rejected)
    }

    fn configure(&mut self, settings: &PlacementSettings) -> MetaOutcome {
        if &self.settings != settings {
            self.settings = settings.clone();
            self.bump();
        }
        MetaOutcome::Ok { epoch: self.epoch }
    }

    fn configure_growth(&mut self, settings: &growth::GrowthSettings) -> MetaOutcome {
        if &self.growth != settings {
            self.growth = settings.clone();
            self.bump();
        }
        MetaOutcome::Ok { epoch: self.epoch }
    }

    /// Serialises the map for storage: JSON behind a marker, so that fields
    /// added later (with serde defaults) still read old maps.
    pub fn encode_stored(&self) -> Result<Vec<u8>, String> {
        let mut out = STORED_MAP_MARKER.to_vec();
        serde_json::to_writer(&mut out, self).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Reads a stored map: the JSON form, or the bincode form of maps
    /// written before it (see [`legacy`]).
    pub fn decode_stored(bytes: &[u8]) -> Result<Self, String> {
        match bytes.strip_prefix(STORED_MAP_MARKER) {
            Some(json) => serde_json::from_slice(json).map_err(|e| e.to_string()),
            None => legacy::decode(bytes),
        }
    }

    fn bump(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch
    }

    fn register_nodes(&mut self, nodes: &[NodeEntry]) -> Result<MetaOutcome, String> {
        let mut changed = false;
        for n in nodes {
            if self.nodes.get(&n.id) != Some(n) {
                self.nodes.insert(n.id, n.clone());
                changed = true;
            }
        }
        let epoch = if changed { self.bump() } else { self.epoch };
        Ok(MetaOutcome::Ok { epoch })
    }

    fn create_tenant(&mut self, spec: &TenantSpec) -> Result<MetaOutcome, String> {
        let policy = self.validate_spec(spec)?;
        let partitions = spec.partitions.max(1);
        if let Some(existing) = self.tenants.get(&spec.id) {
            let same = existing.regions == policy.regions
                && existing.home == policy.home
                && existing.survival == policy.survival
                && existing.partitions.len() == partitions as usize;
            return if same {
                Ok(MetaOutcome::Tenant {
                    tenant: Box::new(existing.clone()),
                    epoch: self.epoch,
                })
            } else {
                Err(format!(
                    "tenant {:?} already exists with different settings",
                    spec.id
                ))
            };
        }
        let shards = placement::assign_partitions(self, &spec.id, &policy, partitions)?;
        let tenant = TenantEntry {
            id: spec.id.clone(),
            regions: policy.regions.clone(),
            home: policy.home.clone(),
            survival: policy.survival,
            partitions: shards,
            resize: None,
            read_floors: BTreeMap::new(),
        };
        self.tenants.insert(tenant.id.clone(), tenant.clone());
        let epoch = self.bump();
        Ok(MetaOutcome::Tenant {
            tenant: Box::new(tenant),
            epoch,
        })
    }

    fn validate_spec(&self, spec: &TenantSpec) -> Result<Policy, String> {
        validate_tenant(&spec.id).map_err(|e| e.to_string())?;
        if spec.regions.is_empty() {
            return Err("a tenant needs at least one allowed region (--regions)".into());
        }
        if spec.partitions > MAX_PARTITIONS {
            return Err(format!(
                "{} partitions is over the limit of {MAX_PARTITIONS} (MAX_PARTITIONS)",
                spec.partitions
            ));
        }
        for r in &spec.regions {
            check_name("region", r).map_err(|e| e.to_string())?;
            if !self.nodes.values().any(|n| &n.region == r) {
                return Err(format!("region {r:?} has no nodes in this cluster"));
            }
        }
        let home = if spec.home.is_empty() {
            spec.regions[0].clone()
        } else {
            spec.home.clone()
        };
        if !spec.regions.contains(&home) {
            return Err(format!(
                "home region {home:?} is not among the allowed regions {:?}",
                spec.regions
            ));
        }
        let regions = home_first_listed_order(&spec.regions, &home);
        let survival = Survival::parse(&spec.survival)?;
        Ok(Policy {
            regions,
            home,
            survival,
        })
    }

    fn add_learner(&mut self, shard: ShardId, node: NodeId) -> Result<MetaOutcome, String> {
        let region = self
            .nodes
            .get(&node)
            .map(|n| n.region.clone())
            .ok_or_else(|| format!("unknown node {node}"))?;
        let entry = self
            .shards
            .get_mut(&shard)
            .ok_or_else(|| format!("unknown shard {shard}"))?;
        if !entry.policy.regions.contains(&region) {
            return Err(format!(
                "node {node} is in region {region:?}, outside shard {shard}'s allowed regions {:?}",
                entry.policy.regions
            ));
        }
        if entry.replicas().any(|r| r == node) {
            return Ok(MetaOutcome::Ok { epoch: self.epoch });
        }
        entry.learners.push(node);
        let epoch = self.bump();
        Ok(MetaOutcome::Ok { epoch })
    }

    /// Every replica that sits outside its tenant's allowed regions. Must be
    /// empty at all times; tests and operators check it.
    pub fn residency_violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in self.tenants.values() {
            let moving = t.resize.iter().flat_map(|r| r.to.iter());
            for shard in t.partitions.iter().chain(moving) {
                let Some(s) = self.shards.get(shard) else {
                    out.push(format!("tenant {} maps to missing shard {shard}", t.id));
                    continue;
                };
                let joining = s.incoming.iter().map(|w| w.joining);
                for r in s.replicas().chain(joining) {
                    let region = self.nodes.get(&r).map(|n| n.region.as_str()).unwrap_or("?");
                    if !t.regions.iter().any(|a| a == region) {
                        out.push(format!(
                            "tenant {} shard {shard} has replica {r} in {region}",
                            t.id
                        ));
                    }
                }
            }
        }
        out
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::ClusterMap {
        pb::ClusterMap {
            epoch: self.epoch,
            nodes: self
                .nodes
                .values()
                .map(|n| pb::NodeInfo {
                    id: n.id,
                    region: n.region.clone(),
                    zone: n.zone.clone(),
                    raft_addr: n.raft_addr.clone(),
                    grpc_addr: n.grpc_addr.clone(),
                    state: self
                        .node_states
                        .get(&n.id)
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                })
                .collect(),
            shards: self
                .shards
                .values()
                .map(|s| pb::ShardInfo {
                    id: s.id,
                    voters: s.voters.clone(),
                    learners: s.learners.clone(),
                    regions: s.policy.regions.clone(),
                    home: s.policy.home.clone(),
                    survival: s.policy.survival.as_str().to_string(),
                    joining: s.incoming.iter().map(|w| w.joining).collect(),
                })
                .collect(),
            tenants: self.tenants.values().map(TenantEntry::to_proto).collect(),
            placement: Some(pb::PlacementInfo {
                min_shards: self.settings.min_shards,
                max_tenants_per_shard: self.settings.max_tenants_per_shard,
            }),
            keys: self.keys.values().map(|k| k.to_proto(true)).collect(),
            user_tokens: self
                .user_tokens
                .values()
                .map(keys::policy_to_proto)
                .collect(),
        }
    }
}

impl TenantEntry {
    /// Every read floor in force: the tenant's, raised by a running resize's.
    pub fn floors(&self) -> BTreeMap<ShardId, u64> {
        let mut out = self.read_floors.clone();
        if let Some(r) = &self.resize {
            resize::raise_floors(&mut out, r.floors.clone());
        }
        out
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::TenantInfo {
        pb::TenantInfo {
            id: self.id.clone(),
            regions: self.regions.clone(),
            home: self.home.clone(),
            survival: self.survival.as_str().to_string(),
            partitions: self.partitions.clone(),
            resize: self.resize.as_ref().map(|r| pb::ResizeInfo {
                to: r.to.clone(),
                fence: r.fence,
                phase: r.phase(&self.partitions).as_str().to_string(),
                copied: r.copied.clone(),
                dropped: r.dropped.clone(),
            }),
            read_floors: self
                .floors()
                .into_iter()
                .map(|(shard, applied)| pb::ShardFloor { shard, applied })
                .collect(),
        }
    }
}

/// The home region, then the other listed regions in their listed order,
/// each once. Sorting them instead (as an early version did) lost the
/// nearest-first order, so zone-survival voters were topped up from the
/// alphabetically first region (chaos BUG-3).
fn home_first_listed_order(listed: &[String], home: &str) -> Vec<String> {
    let mut out = vec![home.to_string()];
    for r in listed {
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    out
}
