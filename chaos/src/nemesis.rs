//! Nemeses: the faults a scenario injects into a [`Cluster`], described
//! abstractly (so a schedule can be generated from a seed before the
//! cluster exists) and applied and healed at run time.
//!
//! Targets such as "the leader of tenant zt's shard" are resolved when the
//! fault fires, because who leads depends on earlier faults; the schedule
//! itself (what, to which role, when, for how long) depends on the seed
//! alone.
//!
//! Link faults are composed in layers ([`LinkLayers`]): each active fault
//! owns one layer on each link it touches, and a link's faults are its
//! baseline plus every active layer. Healing one fault therefore never
//! undoes another that overlaps it (a partition during a slow-node window).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_proto::{NodeId, ShardId};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::{node_link, router_link, Cluster, Proc, POLL, SETTLE};
use crate::control::ProxySet;
use crate::error::{ChaosError, Result};
use crate::proxy::LinkFaults;
use tessera_client::{TenantView, TesseraClient};

/// How long a fault waits for its target's shard to have a leader. Short,
/// because the schedule waits with it: a fault that cannot find its target
/// is skipped (and reported) rather than stretching every other fault.
pub const RESOLVE_WAIT: Duration = Duration::from_secs(5);

/// How long a node may take to exit after SIGTERM before a graceful
/// restart gives up, kills it and reports the hang.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// A resize never grows a tenant past this many partitions, so a long run
/// with several resizes keeps the cluster's group count bounded.
pub const MAX_RESHAPE_PARTITIONS: usize = 8;

/// Deadline of the admin call that starts a resize or a move.
const ADMIN_RPC: Duration = Duration::from_secs(5);

/// How long a resize or move keeps trying to start while faults keep the
/// routers or the meta leader out of reach.
pub const RESHAPE_START_WAIT: Duration = Duration::from_secs(20);

/// Why a reshape did not start.
enum Reshape {
    /// Retrying may help (a router or the meta leader out of reach).
    Failed(String),
    /// It cannot start now (one already runs, the cap, a refusal).
    Refused(String),
}

/// Which node a fault hits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "of", rename_all = "kebab-case")]
pub enum Target {
    /// A fixed node.
    Node {
        /// Node id.
        id: NodeId,
    },
    /// Whoever leads the tenant's first shard when the fault fires.
    Leader {
        /// Tenant name.
        tenant: String,
    },
    /// A voter of the tenant's first shard that is not its leader; `pick`
    /// chooses among them (modulo their number, in id order).
    Follower {
        /// Tenant name.
        tenant: String,
        /// Seeded choice.
        pick: u64,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Node { id } => write!(f, "node {id}"),
            Target::Leader { tenant } => write!(f, "leader of {tenant}"),
            Target::Follower { tenant, .. } => write!(f, "a follower of {tenant}"),
        }
    }
}

/// One fault, as the schedule describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// kill -9; healed by restarting on the same data.
    Kill {
        /// Victim.
        target: Target,
    },
    /// SIGSTOP; healed by SIGCONT.
    Pause {
        /// Victim.
        target: Target,
    },
    /// Blackholes every node link between the targets and the other nodes
    /// (and, with `routers`, every router's link to the targets).
    Isolate {
        /// The minority side.
        targets: Vec<Target>,
        /// Cut the routers off the targets too.
        routers: bool,
    },
    /// Cuts one direction only: traffic from the target to every other
    /// node (`outbound`), or from every other node to it.
    OneWay {
        /// The node at the cut.
        target: Target,
        /// Direction of the cut.
        outbound: bool,
    },
    /// Blackholes every link with an end in the region (its routers'
    /// included) and kills its nodes (`kill`) or leaves them running,
    /// isolated.
    RegionOutage {
        /// Region index.
        region: usize,
        /// kill -9 the region's nodes as well.
        kill: bool,
    },
    /// Adds latency (and jitter) to every link of the target.
    Slow {
        /// The slow node.
        target: Target,
        /// Added one-way latency.
        latency_ms: u64,
        /// Added jitter.
        jitter_ms: u64,
    },
    /// Toggles a blackhole on every link of the target each `period_ms`.
    Flap {
        /// The node whose links flap.
        target: Target,
        /// Half-period of the flapping.
        period_ms: u64,
    },
    /// Drops a fraction of the target's Raft datagrams.
    Lossy {
        /// The node whose UDP links lose datagrams.
        target: Target,
        /// Loss probability.
        drop_rate: f64,
    },
    /// Blackholes the two links between a pair of nodes.
    PairCut {
        /// One end.
        a: Target,
        /// The other end.
        b: Target,
    },
    /// Doubles the tenant's partition count through a router (up to
    /// [`MAX_RESHAPE_PARTITIONS`]). Only started here: the resize runs in
    /// the background while other faults fly, and the run waits for every
    /// resize and move to finish before its checks. Nothing to heal.
    Resize {
        /// Tenant name.
        tenant: String,
    },
    /// Moves every partition of the tenant to a shard placement picks, in
    /// the background like a resize. Nothing to heal.
    Move {
        /// Tenant name.
        tenant: String,
    },
    /// Restarts a node (SIGTERM, or kill -9 when not `graceful`), waits
    /// until it serves and has caught up. Nothing to heal.
    Restart {
        /// The node.
        target: Target,
        /// SIGTERM (true) or kill -9 (false).
        graceful: bool,
    },
}

impl Fault {
    /// Short name, used to group read availability by fault kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Isolate { .. } => "isolate",
            Fault::OneWay { .. } => "one-way",
            Fault::RegionOutage { .. } => "region-outage",
            Fault::Slow { .. } => "slow",
            Fault::Flap { .. } => "flap",
            Fault::Lossy { .. } => "lossy",
            Fault::PairCut { .. } => "pair-cut",
            Fault::Restart { .. } => "restart",
            Fault::Resize { .. } => "resize",
            Fault::Move { .. } => "move",
        }
    }

    /// Whether the fault takes a whole node (or more) out of service, as
    /// opposed to degrading links. Mixed schedules allow one at a time.
    pub fn is_node_level(&self) -> bool {
        matches!(
            self,
            Fault::Kill { .. }
                | Fault::Pause { .. }
                | Fault::Isolate { .. }
                | Fault::OneWay { .. }
                | Fault::RegionOutage { .. }
                | Fault::Restart { .. }
        )
    }
}

/// One entry of a schedule: inject `fault` at `at_ms` (from the start of
/// the run) and heal it `duration_ms` later.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// When to inject, in ms since the workload started.
    pub at_ms: u64,
    /// How long the fault lasts (0 = nothing to heal).
    pub duration_ms: u64,
    /// What to inject.
    pub fault: Fault,
}

/// What actually happened when a step fired.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppliedFault {
    /// Index into the schedule.
    pub step: usize,
    /// [`Fault::kind`].
    pub kind: String,
    /// Human description with the resolved targets.
    pub detail: String,
    /// Nodes it hit.
    pub nodes: Vec<NodeId>,
    /// The region of a region outage.
    pub region: Option<usize>,
    /// Tenants whose shard leader it took out (kill, pause, isolation or a
    /// one-way cut of that leader), for write-failover timing.
    pub leader_of: Vec<String>,
    /// When it was injected (ms since start).
    pub at_ms: u64,
    /// When it was healed (ms since start).
    pub healed_ms: Option<u64>,
    /// Whether it was injected at all (false: its target could not be
    /// resolved, e.g. no leader during an election).
    pub injected: bool,
    /// Why injecting or healing failed, if it did. On an injected fault
    /// this is a finding (a node that hung on SIGTERM or did not come back).
    pub error: Option<String>,
}

/// Composes overlapping link faults; see the module docs.
#[derive(Debug)]
pub struct LinkLayers {
    proxies: Arc<ProxySet>,
    layers: parking_lot::Mutex<BTreeMap<String, BTreeMap<u64, LinkFaults>>>,
}

impl LinkLayers {
    /// Layers over the links of `proxies`.
    pub fn new(proxies: Arc<ProxySet>) -> Self {
        LinkLayers {
            proxies,
            layers: parking_lot::Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds (or replaces) layer `id` on `links`.
    pub fn add(&self, id: u64, links: &[String], delta: &LinkFaults) -> Result<()> {
        let mut layers = self.layers.lock();
        for link in links {
            layers
                .entry(link.clone())
                .or_default()
                .insert(id, delta.clone());
            self.apply(link, layers.get(link))?;
        }
        Ok(())
    }

    /// Removes layer `id` from every link.
    pub fn remove(&self, id: u64) -> Result<()> {
        let mut layers = self.layers.lock();
        let touched: Vec<String> = layers
            .iter_mut()
            .filter_map(|(link, l)| l.remove(&id).map(|_| link.clone()))
            .collect();
        for link in touched {
            self.apply(&link, layers.get(&link))?;
        }
        Ok(())
    }

    /// Drops every layer and returns every link to its baseline.
    pub fn clear(&self) {
        self.layers.lock().clear();
        self.proxies.heal_all();
    }

    fn apply(&self, link: &str, layers: Option<&BTreeMap<u64, LinkFaults>>) -> Result<()> {
        let control = self.proxies.control(link)?;
        let base = control.baseline();
        let effective = compose(&base, layers.into_iter().flat_map(|l| l.values()));
        control.set(effective)
    }
}

/// A link's baseline plus fault layers: latencies add, jitter and loss
/// take the worst, blackholes and cuts accumulate.
pub fn compose<'a>(base: &LinkFaults, layers: impl Iterator<Item = &'a LinkFaults>) -> LinkFaults {
    let mut out = base.clone();
    let mut keep = 1.0 - base.drop_rate;
    for l in layers {
        out.latency_ms = out.latency_ms.saturating_add(l.latency_ms);
        out.jitter_ms = out.jitter_ms.max(l.jitter_ms);
        keep *= 1.0 - l.drop_rate;
        out.blackhole |= l.blackhole;
        out.cut_forward |= l.cut_forward;
        out.cut_backward |= l.cut_backward;
    }
    out.drop_rate = (1.0 - keep).clamp(0.0, 1.0);
    out
}

fn blackhole() -> LinkFaults {
    LinkFaults {
        blackhole: true,
        ..LinkFaults::default()
    }
}

/// The undo information of an applied fault.
#[derive(Debug)]
enum Undo {
    Nothing,
    Restart(Vec<NodeId>),
    Resume(Vec<NodeId>),
    Layer,
    LayerAndRestart(Vec<NodeId>),
    Flapper(JoinHandle<()>),
}

/// Applies and heals faults on one cluster. Tenants' first shards name the
/// groups whose leaders and followers targets resolve to.
pub struct Nemesis {
    cluster: Arc<Cluster>,
    layers: Arc<LinkLayers>,
    shards: BTreeMap<String, ShardId>,
    active: parking_lot::Mutex<BTreeMap<usize, Undo>>,
}

impl std::fmt::Debug for Nemesis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nemesis")
            .field("shards", &self.shards)
            .finish()
    }
}

impl Nemesis {
    /// A nemesis for `cluster`; `shards` maps each tenant to its first shard.
    pub fn new(cluster: Arc<Cluster>, shards: BTreeMap<String, ShardId>) -> Self {
        let layers = Arc::new(LinkLayers::new(cluster.proxies().clone()));
        Nemesis {
            cluster,
            layers,
            shards,
            active: parking_lot::Mutex::new(BTreeMap::new()),
        }
    }

    /// The link layers, for a final heal.
    pub fn layers(&self) -> &Arc<LinkLayers> {
        &self.layers
    }

    /// Each tenant's first shard as the newest map has it (a resize or a
    /// move changes it), or as it was at the start when no node answers.
    async fn first_shards(&self) -> BTreeMap<String, ShardId> {
        let Ok(map) = self.cluster.any_map().await else {
            return self.shards.clone();
        };
        let mut out = self.shards.clone();
        for t in map
            .tenants
            .iter()
            .filter(|t| self.shards.contains_key(&t.id))
        {
            if let Some(first) = t.partitions.first() {
                out.insert(t.id.clone(), *first);
            }
        }
        out
    }

    async fn shard_of(&self, tenant: &str) -> Result<ShardId> {
        self.first_shards()
            .await
            .get(tenant)
            .copied()
            .ok_or_else(|| ChaosError::Scenario(format!("unknown tenant {tenant}")))
    }

    /// A router client that answers for `tenant`, with the tenant as that
    /// router sees it: the first router that does (a region may be out).
    async fn admin(&self, tenant: &str) -> Result<(TesseraClient, TenantView)> {
        let mut last = String::from("no router");
        for r in self.cluster.routers() {
            let client = self.cluster.router_client(r.index, ADMIN_RPC)?;
            match client.tenant(tenant).await {
                Ok(view) => return Ok((client, view)),
                Err(e) => last = format!("router {}: {e}", r.index),
            }
        }
        Err(ChaosError::Rpc(last))
    }

    /// Starts a resize (doubling) or a move of `tenant`, retrying (for up
    /// to [`RESHAPE_START_WAIT`]) while the faults keep the routers or the
    /// meta leader out of reach: the point is to reshape *under* faults.
    /// Refuses while one is already running, so the step is skipped, not
    /// stacked.
    async fn reshape(&self, tenant: &str, resize: bool, out: &mut AppliedFault) -> Result<Undo> {
        let deadline = Instant::now() + RESHAPE_START_WAIT;
        let mut tick = tokio::time::interval(POLL * 5);
        loop {
            tick.tick().await;
            match self.try_reshape(tenant, resize).await {
                Ok(detail) => {
                    out.detail = detail;
                    return Ok(Undo::Nothing);
                }
                Err(Reshape::Refused(why)) => return Err(ChaosError::Scenario(why)),
                Err(Reshape::Failed(why)) if Instant::now() > deadline => {
                    return Err(ChaosError::Rpc(why))
                }
                Err(Reshape::Failed(why)) => {
                    tracing::debug!(tenant, error = %why, "reshape not started yet; retrying");
                }
            }
        }
    }

    /// One attempt of [`Self::reshape`]; returns the step's description.
    async fn try_reshape(
        &self,
        tenant: &str,
        resize: bool,
    ) -> std::result::Result<String, Reshape> {
        let (client, view) = self
            .admin(tenant)
            .await
            .map_err(|e| Reshape::Failed(e.to_string()))?;
        if view.resize.is_some() {
            return Err(Reshape::Refused(format!(
                "a resize or move of {tenant} is already running"
            )));
        }
        let from = view.partitions.len();
        let failed = |what: &str, e: tessera_client::ClientError| {
            let why = format!("{what} {tenant}: {e}");
            if e.is_retryable() {
                Reshape::Failed(why)
            } else {
                Reshape::Refused(why)
            }
        };
        if resize {
            let to = from * 2;
            if to > MAX_RESHAPE_PARTITIONS {
                return Err(Reshape::Refused(format!(
                    "{tenant} has {from} partitions; doubling passes {MAX_RESHAPE_PARTITIONS}"
                )));
            }
            let to_u32 = u32::try_from(to).unwrap_or(u32::MAX);
            client
                .resize_tenant(tenant, to_u32)
                .await
                .map_err(|e| failed("resize", e))?;
            Ok(format!("resize {tenant} {from} → {to} partitions"))
        } else {
            let begun = client
                .move_tenant(tenant, &[], None)
                .await
                .map_err(|e| failed("move", e))?;
            let to: Vec<u64> = begun.resize.map(|r| r.to).unwrap_or_default();
            Ok(format!(
                "move {tenant}'s {from} partitions to shards {to:?}"
            ))
        }
    }

    /// Resolves a target to a node id, waiting (bounded) for a leader when
    /// an election is running.
    pub async fn resolve(&self, target: &Target) -> Result<NodeId> {
        match target {
            Target::Node { id } => Ok(*id),
            Target::Leader { tenant } => {
                let shard = self.shard_of(tenant).await?;
                self.wait_leader(shard).await
            }
            Target::Follower { tenant, pick } => {
                let shard = self.shard_of(tenant).await?;
                let leader = self.wait_leader(shard).await?;
                let map = self.cluster.any_map().await?;
                let mut voters: Vec<NodeId> = map
                    .shards
                    .iter()
                    .find(|s| s.id == shard)
                    .map(|s| s.voters.clone())
                    .unwrap_or_default();
                voters.retain(|v| *v != leader);
                voters.sort_unstable();
                if voters.is_empty() {
                    return Err(ChaosError::Scenario(format!(
                        "shard {shard} of {tenant} has no follower"
                    )));
                }
                Ok(voters[(*pick as usize) % voters.len()])
            }
        }
    }

    async fn wait_leader(&self, shard: ShardId) -> Result<NodeId> {
        let deadline = Instant::now() + RESOLVE_WAIT;
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            if let Some(l) = self.cluster.leader_of(shard).await {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Deadline(format!("a leader of shard {shard}")));
            }
        }
    }

    /// Tenants whose first shard is led by one of `ids` right now (asked
    /// before the fault strikes, for write-failover timing).
    async fn led_by(&self, ids: &[NodeId]) -> Vec<String> {
        let mut out = Vec::new();
        let shards = self.first_shards().await;
        for id in ids {
            let Ok(st) = self.cluster.status(*id).await else {
                continue;
            };
            for (tenant, shard) in &shards {
                if st
                    .groups
                    .iter()
                    .any(|g| g.group == *shard && g.role == "leader")
                    && !out.contains(tenant)
                {
                    out.push(tenant.clone());
                }
            }
        }
        out
    }

    /// Injects step `idx`. Errors are recorded in the result, never
    /// returned: a schedule keeps going when one fault cannot fire.
    pub async fn apply(&self, idx: usize, step: &Step, at_ms: u64) -> AppliedFault {
        let mut out = AppliedFault {
            step: idx,
            kind: step.fault.kind().to_string(),
            at_ms,
            ..AppliedFault::default()
        };
        match self.try_apply(idx, &step.fault, &mut out).await {
            Ok(undo) => {
                out.injected = true;
                if !matches!(undo, Undo::Nothing) {
                    self.active.lock().insert(idx, undo);
                }
            }
            Err(e) => {
                tracing::warn!(step = idx, error = %e, "fault not injected");
                out.error = Some(e.to_string());
            }
        }
        tracing::info!(step = idx, kind = %out.kind, detail = %out.detail, injected = out.injected, "fault");
        out
    }

    async fn try_apply(&self, idx: usize, fault: &Fault, out: &mut AppliedFault) -> Result<Undo> {
        let layer = idx as u64;
        let c = &self.cluster;
        match fault {
            Fault::Kill { target } => {
                let id = self.resolve(target).await?;
                out.detail = format!("kill -9 node {id} ({target})");
                out.nodes = vec![id];
                out.leader_of = self.led_by(&[id]).await;
                c.kill(Proc::Node(id)).await?;
                Ok(Undo::Restart(vec![id]))
            }
            Fault::Pause { target } => {
                let id = self.resolve(target).await?;
                out.detail = format!("SIGSTOP node {id} ({target})");
                out.nodes = vec![id];
                out.leader_of = self.led_by(&[id]).await;
                c.pause(Proc::Node(id)).await?;
                Ok(Undo::Resume(vec![id]))
            }
            Fault::Isolate { targets, routers } => {
                let mut ids = Vec::new();
                for t in targets {
                    let id = self.resolve(t).await?;
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                out.leader_of = self.led_by(&ids).await;
                let mut links = Vec::new();
                for a in &ids {
                    for n in c.nodes().iter().filter(|n| !ids.contains(&n.id)) {
                        links.push(node_link(*a, n.id));
                        links.push(node_link(n.id, *a));
                    }
                    if *routers {
                        for r in c.routers() {
                            links.push(router_link(r.index, *a));
                        }
                    }
                }
                out.detail = format!(
                    "isolate nodes {ids:?} from the other nodes{}",
                    if *routers { " and the routers" } else { "" }
                );
                out.nodes = ids;
                self.layers.add(layer, &links, &blackhole())?;
                Ok(Undo::Layer)
            }
            Fault::OneWay { target, outbound } => {
                let id = self.resolve(target).await?;
                out.nodes = vec![id];
                out.leader_of = self.led_by(&[id]).await;
                out.detail = format!(
                    "one-way cut: {} node {id} ({target})",
                    if *outbound {
                        "nothing gets out of"
                    } else {
                        "nothing gets into"
                    }
                );
                for n in c.nodes().iter().filter(|n| n.id != id) {
                    // Link x->y carries x's requests forward and y's replies
                    // backward, so one direction of traffic is a forward cut
                    // on one link and a backward cut on the other.
                    let (fwd, bwd) = if *outbound {
                        (node_link(id, n.id), node_link(n.id, id))
                    } else {
                        (node_link(n.id, id), node_link(id, n.id))
                    };
                    self.layers.add(
                        layer,
                        &[fwd],
                        &LinkFaults {
                            cut_forward: true,
                            ..LinkFaults::default()
                        },
                    )?;
                    self.layers.add(
                        layer,
                        &[bwd],
                        &LinkFaults {
                            cut_backward: true,
                            ..LinkFaults::default()
                        },
                    )?;
                }
                Ok(Undo::Layer)
            }
            Fault::RegionOutage { region, kill } => {
                let ids = c.nodes_in_region(*region);
                let mut links = Vec::new();
                for a in c.nodes() {
                    for b in c.nodes() {
                        if a.id != b.id && (a.region == *region || b.region == *region) {
                            links.push(node_link(a.id, b.id));
                        }
                    }
                    for r in c.routers() {
                        if r.region == *region || a.region == *region {
                            links.push(router_link(r.index, a.id));
                        }
                    }
                }
                out.region = Some(*region);
                out.nodes = ids.clone();
                out.detail = format!(
                    "region {} ({}) out: every link blackholed, nodes {ids:?} {}",
                    region,
                    c.layout().regions.get(*region).cloned().unwrap_or_default(),
                    if *kill { "killed" } else { "isolated" }
                );
                self.layers.add(layer, &links, &blackhole())?;
                if *kill {
                    for id in &ids {
                        c.kill(Proc::Node(*id)).await?;
                    }
                    Ok(Undo::LayerAndRestart(ids))
                } else {
                    Ok(Undo::Layer)
                }
            }
            Fault::Slow {
                target,
                latency_ms,
                jitter_ms,
            } => {
                let id = self.resolve(target).await?;
                out.nodes = vec![id];
                out.detail = format!(
                    "slow node {id} ({target}): +{latency_ms} ms ±{jitter_ms} on every link"
                );
                self.layers.add(
                    layer,
                    &c.links_of_node(id, true),
                    &LinkFaults {
                        latency_ms: *latency_ms,
                        jitter_ms: *jitter_ms,
                        ..LinkFaults::default()
                    },
                )?;
                Ok(Undo::Layer)
            }
            Fault::Lossy { target, drop_rate } => {
                let id = self.resolve(target).await?;
                out.nodes = vec![id];
                out.detail =
                    format!("lossy node {id} ({target}): {drop_rate:.2} of Raft datagrams dropped");
                self.layers.add(
                    layer,
                    &c.links_of_node(id, false),
                    &LinkFaults {
                        drop_rate: *drop_rate,
                        ..LinkFaults::default()
                    },
                )?;
                Ok(Undo::Layer)
            }
            Fault::PairCut { a, b } => {
                let a = self.resolve(a).await?;
                let b = self.resolve(b).await?;
                if a == b {
                    return Err(ChaosError::Scenario(format!(
                        "pair cut needs two nodes, both resolved to {a}"
                    )));
                }
                out.nodes = vec![a, b];
                out.detail = format!("cut between nodes {a} and {b}");
                self.layers
                    .add(layer, &[node_link(a, b), node_link(b, a)], &blackhole())?;
                Ok(Undo::Layer)
            }
            Fault::Flap { target, period_ms } => {
                let id = self.resolve(target).await?;
                out.nodes = vec![id];
                out.detail = format!("flapping links of node {id} ({target}) every {period_ms} ms");
                let links = c.links_of_node(id, true);
                let layers = self.layers.clone();
                let period = Duration::from_millis((*period_ms).max(50));
                let task = tokio::spawn(async move {
                    // Pacing of the flap itself: the link state is meant to
                    // change on a clock, not on a condition.
                    let mut tick = tokio::time::interval(period);
                    let mut down = false;
                    loop {
                        tick.tick().await;
                        down = !down;
                        let r = if down {
                            layers.add(layer, &links, &blackhole())
                        } else {
                            layers.remove(layer)
                        };
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "flap toggle failed");
                        }
                    }
                });
                Ok(Undo::Flapper(task))
            }
            Fault::Resize { tenant } => self.reshape(tenant, true, out).await,
            Fault::Move { tenant } => self.reshape(tenant, false, out).await,
            Fault::Restart { target, graceful } => {
                let id = self.resolve(target).await?;
                out.nodes = vec![id];
                out.leader_of = self.led_by(&[id]).await;
                out.detail = format!(
                    "{} restart of node {id} ({target})",
                    if *graceful { "graceful" } else { "crash" }
                );
                let deadline = Instant::now() + SETTLE;
                let mut hung = false;
                if *graceful {
                    let grace = Instant::now() + STOP_GRACE;
                    hung = !c.stop_gracefully(Proc::Node(id), grace).await?;
                } else {
                    c.kill(Proc::Node(id)).await?;
                }
                c.restart(Proc::Node(id), deadline).await?;
                self.wait_caught_up(id, deadline).await?;
                if hung {
                    // Injected all the same; the hang is the finding.
                    out.error = Some(format!(
                        "node {id} did not exit within {} s of SIGTERM and was killed",
                        STOP_GRACE.as_secs()
                    ));
                }
                Ok(Undo::Nothing)
            }
        }
    }

    /// Waits until node `id` has applied, on every shard it hosts, at least
    /// what that shard's leader had applied when the wait began: "back in
    /// the game", without chasing a moving target.
    pub async fn wait_caught_up(&self, id: NodeId, deadline: Instant) -> Result<()> {
        let st = self.cluster.status(id).await?;
        let mut targets: BTreeMap<ShardId, u64> = BTreeMap::new();
        for g in &st.groups {
            if let Some(leader) = self.cluster.leader_of(g.group).await {
                if let Ok(ls) = self.cluster.status(leader).await {
                    if let Some(lg) = ls.groups.iter().find(|x| x.group == g.group) {
                        targets.insert(g.group, lg.applied);
                    }
                }
            }
        }
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            let behind: Vec<(ShardId, u64, u64)> = match self.cluster.status(id).await {
                Ok(st) => targets
                    .iter()
                    .filter_map(|(g, want)| {
                        let have = st
                            .groups
                            .iter()
                            .find(|x| x.group == *g)
                            .map_or(0, |x| x.applied);
                        (have < *want).then_some((*g, have, *want))
                    })
                    .collect(),
                Err(_) => vec![(0, 0, 1)],
            };
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Deadline(format!(
                    "node {id} to catch up (group, applied, wanted): {behind:?}"
                )));
            }
        }
    }

    /// Heals step `idx`: restart what it killed, resume what it paused,
    /// remove its link layer. Returns an error text when healing failed
    /// (for example a node that does not come back after a crash: a bug).
    pub async fn heal(&self, idx: usize) -> Option<String> {
        let undo = self.active.lock().remove(&idx)?;
        let deadline = Instant::now() + SETTLE;
        let c = &self.cluster;
        let result: Result<()> = async {
            match undo {
                Undo::Nothing => Ok(()),
                Undo::Restart(ids) => {
                    for id in ids {
                        c.restart(Proc::Node(id), deadline).await?;
                    }
                    Ok(())
                }
                Undo::Resume(ids) => {
                    for id in ids {
                        c.resume(Proc::Node(id)).await?;
                    }
                    Ok(())
                }
                Undo::Layer => self.layers.remove(idx as u64),
                Undo::LayerAndRestart(ids) => {
                    self.layers.remove(idx as u64)?;
                    for id in ids {
                        c.restart(Proc::Node(id), deadline).await?;
                    }
                    Ok(())
                }
                Undo::Flapper(task) => {
                    task.abort();
                    let _ = task.await;
                    self.layers.remove(idx as u64)
                }
            }
        }
        .await;
        tracing::info!(step = idx, ok = result.is_ok(), "healed");
        result.err().map(|e| e.to_string())
    }

    /// Heals every fault still active (the end of a run).
    pub async fn heal_all(&self) -> Vec<String> {
        let ids: Vec<usize> = self.active.lock().keys().copied().collect();
        let mut errors = Vec::new();
        for idx in ids {
            if let Some(e) = self.heal(idx).await {
                errors.push(format!("step {idx}: {e}"));
            }
        }
        self.layers.clear();
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_compose_and_heal_independently() {
        let base = LinkFaults::with_latency(20);
        let slow = LinkFaults::with_latency(300);
        let cut = LinkFaults {
            cut_forward: true,
            drop_rate: 0.5,
            ..LinkFaults::default()
        };
        let both = compose(&base, [&slow, &cut].into_iter());
        assert_eq!(both.latency_ms, 320);
        assert!(both.cut_forward && !both.blackhole);
        assert!((both.drop_rate - 0.5).abs() < 1e-9);
        let only_slow = compose(&base, [&slow].into_iter());
        assert_eq!(only_slow, LinkFaults::with_latency(320));
        assert_eq!(compose(&base, std::iter::empty()), base);
    }

    #[tokio::test]
    async fn link_layers_restore_the_baseline() {
        let set = Arc::new(ProxySet::new());
        set.start(crate::proxy::LinkSpec {
            name: "a".into(),
            proto: crate::proxy::Proto::Udp,
            listen: "127.0.0.1:0".parse().expect("addr"),
            target: "127.0.0.1:9".parse().expect("addr"),
            faults: LinkFaults::with_latency(10),
        })
        .await
        .expect("link");
        let layers = LinkLayers::new(set.clone());
        let names = vec!["a".to_string()];
        layers.add(1, &names, &blackhole()).expect("add");
        layers
            .add(2, &names, &LinkFaults::with_latency(100))
            .expect("add");
        let now = set.status("a").expect("status").faults;
        assert!(now.blackhole);
        assert_eq!(now.latency_ms, 110);
        layers.remove(1).expect("remove");
        assert_eq!(
            set.status("a").expect("status").faults,
            LinkFaults::with_latency(110)
        );
        layers.remove(2).expect("remove");
        assert_eq!(
            set.status("a").expect("status").faults,
            LinkFaults::with_latency(10)
        );
    }
}
