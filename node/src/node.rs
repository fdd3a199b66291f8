//! A storage node: one RocksDB, one QUIC endpoint, the meta group, every
//! shard group the cluster map assigns here, and the gRPC API.
//!
//! The node is driven by the replicated cluster map: a reconciler opens the
//! groups the map assigns to this node, initialises new groups, and, where
//! this node leads a group, adds the learners the map asks for.

use openraft::BasicNode;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::transport::PeerIdentity;
use tessera_proto::{NodeId, ShardId, META_GROUP};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ClusterConfig, NodeSpec, RaftTuning};
use crate::index::{IndexConfig, ShardIndex};
use crate::meta::{ClusterMap, MetaCommand, NodeEntry};
use crate::raft::log_store::LogStore;
use crate::raft::network::adapter::{NetworkFactory, RaftRpcServer, Routes};
use crate::raft::network::{NodeTls, QuicTransport};
use crate::raft::registry::{GroupHandle, Registry};
use crate::raft::state_machine::{GroupData, MetaState, ShardData, StateMachine};
use crate::raft::{Raft, Request};
use crate::storage::Storage;

/// How often the control loops re-check state even without a map change.
/// How long a stopping node lets open calls finish before cutting them.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);
const CONTROL_TICK: Duration = Duration::from_millis(300);
/// A voter other than the first initialises a group nobody initialised
/// after this long (the first voter may be down).
const INIT_GRACE: Duration = Duration::from_secs(5);
/// How long a joining node waits for one peer to register it before asking the next.
const JOIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {0} is not in the cluster config")]
    UnknownNode(NodeId),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("index: {0}")]
    Index(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot bind gRPC on {addr}: {source}")]
    GrpcBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Everything needed to start a node.
#[derive(Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub cluster: ClusterConfig,
    pub data_dir: PathBuf,
    pub tls: NodeTls,
    pub raft: RaftTuning,
    pub index: IndexConfig,
    /// The node joins a running cluster: it never bootstraps the meta group, and asks its
    /// peers to add it to the map (after which it receives replicas by rebalancing).
    pub join: bool,
    /// The bootstrap admin key's record (see `meta::keys`): the meta leader
    /// adds it to a map that has never held it.
    pub bootstrap_key: Option<tessera_proto::keys::KeyRecord>,
    /// Serve and dial node gRPC in plaintext with no role check
    /// (`--unsecured`): only for the benchmark that measures what mutual
    /// TLS costs, and refused by the binary unless gRPC listens on loopback.
    pub unsecured_grpc: bool,
}

/// The state shared by the gRPC service and the control loops.
pub struct NodeInner {
    pub id: NodeId,
    pub spec: NodeSpec,
    pub cluster: ClusterConfig,
    pub storage: Storage,
    pub registry: Arc<Registry>,
    pub meta: Arc<MetaState>,
    transport: QuicTransport,
    raft_config: Arc<openraft::Config>,
    /// The same with doubled election timeouts, for voters outside a
    /// shard's home region (see `shard_raft_config`).
    away_raft_config: Arc<openraft::Config>,
    index_config: IndexConfig,
    data_dir: PathBuf,
    routes: Routes,
    /// Joining a running cluster (see [`NodeConfig::join`]).
    join: bool,
    /// This node's certificate, presented when it calls other nodes' gRPC
    /// (mutual TLS; see `tessera_proto::transport`).
    peers: PeerIdentity,
    /// See [`NodeConfig::bootstrap_key`].
    bootstrap_key: Option<tessera_proto::keys::KeyRecord>,
}

/// A running node. Dropping it does not stop it; call `shutdown`.
pub struct TesseraNode {
    pub inner: Arc<NodeInner>,
    grpc_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl TesseraNode {
    /// Opens storage, joins the meta group, reopens local shards, serves gRPC
    /// and starts the control loops.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let spec = config
            .cluster
            .node(config.id)
            .cloned()
            .ok_or(NodeError::UnknownNode(config.id))?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| NodeError::Index(e.to_string()))?;
        let storage = Storage::open(&config.data_dir.join("db"))?;
        let registry = Arc::new(Registry::default());
        let server = Arc::new(RaftRpcServer::new(registry.clone()));
        let transport = QuicTransport::bind(spec.raft, &config.tls, server)
            .await
            .map_err(|e| NodeError::Transport(e.to_string()))?;
        let away_raft_config = Arc::new(raft_config(&RaftTuning {
            election_min: config.raft.election_min * 2,
            election_max: config.raft.election_max * 2,
            ..config.raft.clone()
        })?);
        let raft_config = Arc::new(raft_config(&config.raft)?);
        let meta = Arc::new(MetaState::load(&storage)?);
        let inner = Arc::new(NodeInner {
            id: config.id,
            spec: spec.clone(),
            routes: Arc::new(config.cluster.route_table()),
            cluster: config.cluster,
            storage,
            registry,
            meta,
            transport,
            raft_config,
            away_raft_config,
            index_config: config.index,
            data_dir: config.data_dir,
            join: config.join,
            peers: if config.unsecured_grpc {
                config.tls.identity().unsecured_baseline()
            } else {
                config.tls.identity()
            },
            bootstrap_key: config.bootstrap_key,
        });
        inner.open_meta_group().await?;
        let map = inner.meta.map();
        for shard in map
            .shards
            .values()
            .filter(|s| s.replicas().any(|r| r == inner.id))
        {
            inner.open_shard(shard.id).await?;
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind(spec.grpc)
            .await
            .map_err(|source| NodeError::GrpcBind {
                addr: spec.grpc,
                source,
            })?;
        let grpc_addr = listener
            .local_addr()
            .map_err(|source| NodeError::GrpcBind {
                addr: spec.grpc,
                source,
            })?;
        let tasks = vec![
            tokio::spawn(crate::service::serve(
                inner.clone(),
                listener,
                shutdown_rx.clone(),
            )),
            tokio::spawn(meta_driver(inner.clone(), shutdown_rx.clone())),
            tokio::spawn(reconciler(inner.clone(), shutdown_rx.clone())),
            tokio::spawn(crate::meta::mover::run(inner.clone(), shutdown_rx.clone())),
            tokio::spawn(crate::meta::growth::run(inner.clone(), shutdown_rx.clone())),
            tokio::spawn(crate::meta::detector::run(
                inner.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(maintenance(inner.clone(), shutdown_rx)),
        ];
        tracing::info!(node = inner.id, grpc = %grpc_addr, raft = %spec.raft, "node started");
        Ok(Self {
            inner,
            grpc_addr,
            shutdown_tx,
            tasks: parking_lot::Mutex::new(tasks),
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Stops serving, shuts every group down and flushes every index.
    ///
    /// The Raft groups stop first, so that the other replicas elect new
    /// leaders while this node drains its calls rather than after; the
    /// drain is bounded by `SHUTDOWN_DRAIN`, after which open calls are
    /// cut off.
    pub async fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
        let groups = self.inner.registry.drain();
        for group in &groups {
            let _ = group.raft.shutdown().await;
        }
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for mut t in tasks {
            if tokio::time::timeout(SHUTDOWN_DRAIN, &mut t).await.is_err() {
                tracing::warn!("a node task outlived the shutdown drain; aborting it");
                t.abort();
                let _ = t.await;
            }
        }
        // A control loop may have opened a group while the first drain ran.
        let late = self.inner.registry.drain();
        for group in &late {
            let _ = group.raft.shutdown().await;
        }
        for group in groups.into_iter().chain(late) {
            if let GroupData::Shard(shard) = &group.data {
                let index = shard.index.clone();
                let _ = tokio::task::spawn_blocking(move || index.close()).await;
            }
        }
        self.inner.transport.shutdown().await;
    }
}

fn raft_config(t: &RaftTuning) -> Result<openraft::Config, NodeError> {
    openraft::Config {
        cluster_name: "tessera".into(),
        heartbeat_interval: t.heartbeat.as_millis() as u64,
        election_timeout_min: t.election_min.as_millis() as u64,
        election_timeout_max: t.election_max.as_millis() as u64,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_every),
        max_in_snapshot_log_to_keep: t.keep_after_snapshot,
        snapshot_max_chunk_size: 4 * 1024 * 1024,
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Raft(e.to_string()))
}

impl NodeInner {
    fn network(&self, group: ShardId) -> NetworkFactory {
        NetworkFactory {
            me: self.id,
            group,
            transport: self.transport.clone(),
            routes: self.routes.clone(),
        }
    }

    /// The Raft config of a shard group on this node. openraft 0.9 has no
    /// leader transfer, so leadership is steered by election timing: a
    /// voter outside the shard's home region waits twice as long before
    /// standing, and a home-region voter normally wins. Writes then commit
    /// with home-region latency; if the whole home region is gone, the
    /// others still elect, only later.
    fn shard_raft_config(&self, shard: ShardId) -> Arc<openraft::Config> {
        let map = self.meta.map();
        match map.shards.get(&shard) {
            Some(entry) if entry.policy.home != self.spec.region => self.away_raft_config.clone(),
            _ => self.raft_config.clone(),
        }
    }

    async fn open_group(
        &self,
        group: ShardId,
        data: GroupData,
        purge_limit: Arc<AtomicU64>,
    ) -> Result<(), NodeError> {
        let log = LogStore::new(group, self.storage.clone(), purge_limit.clone());
        let sm = StateMachine::open(group, self.storage.clone(), data.clone())?;
        let config = if group == META_GROUP {
            self.raft_config.clone()
        } else {
            self.shard_raft_config(group)
        };
        let raft = Raft::new(self.id, config, self.network(group), log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        self.registry.insert(
            group,
            Arc::new(GroupHandle {
                raft,
                data,
                opened_at: Instant::now(),
                purge_limit,
            }),
        );
        Ok(())
    }

    async fn open_meta_group(&self) -> Result<(), NodeError> {
        let data = GroupData::Meta(self.meta.clone());
        self.open_group(META_GROUP, data, Arc::new(AtomicU64::new(u64::MAX)))
            .await
    }

    /// Opens a shard group hosted here: its index (caught up from the change
    /// sequence first, which repairs a crash between apply and index commit)
    /// and its Raft instance.
    pub async fn open_shard(&self, shard: ShardId) -> Result<(), NodeError> {
        if self.registry.contains(shard) {
            return Ok(());
        }
        let dir = self.data_dir.join("index").join(shard.to_string());
        let index_config = self.index_config.clone();
        let index = tokio::task::spawn_blocking(move || ShardIndex::open(&dir, index_config))
            .await
            .map_err(|e| NodeError::Index(e.to_string()))?
            .map_err(|e| NodeError::Index(e.to_string()))?;
        let data = Arc::new(ShardData {
            group: shard,
            storage: self.storage.clone(),
            index: Arc::new(index),
        });
        let replayed = {
            let data = data.clone();
            tokio::task::spawn_blocking(move || data.catch_up_index())
                .await
                .map_err(|e| NodeError::Index(e.to_string()))??
        };
        if replayed > 0 {
            tracing::info!(
                shard,
                replayed,
                "re-indexed changes after the index watermark"
            );
        }
        let limit = Arc::new(AtomicU64::new(data.index.watermark()));
        self.open_group(shard, GroupData::Shard(data), limit).await
    }

    /// The identity this node dials its peers with.
    pub fn peers(&self) -> &PeerIdentity {
        &self.peers
    }

    /// A client of the node whose gRPC listens at `addr`, over mutual TLS
    /// with this node's certificate. Connects now, so an unreachable peer
    /// is an error here rather than on the first call.
    pub async fn peer_client(
        &self,
        addr: &str,
    ) -> Result<tessera_proto::pb::node_client::NodeClient<tonic::transport::Channel>, String> {
        let endpoint = self.peers.node_endpoint(addr).map_err(|e| e.to_string())?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot reach node at {addr}: {e}"))?;
        Ok(tessera_proto::pb::node_client::NodeClient::new(channel))
    }

    /// Proposes a meta command on the local meta group. When this node does
    /// not lead the meta group the error names the leader, if known.
    pub async fn propose_meta(
        &self,
        cmd: MetaCommand,
    ) -> Result<crate::raft::Response, ProposeError> {
        let raft = self
            .registry
            .raft(META_GROUP)
            .ok_or_else(|| ProposeError::Failed("meta group not open".into()))?;
        propose(&raft, Request::Meta(cmd)).await
    }

    fn basic_nodes(&self, map: &ClusterMap, ids: &[NodeId]) -> BTreeMap<NodeId, BasicNode> {
        ids.iter()
            .map(|id| {
                let addr = map
                    .nodes
                    .get(id)
                    .map(|n| n.raft_addr.clone())
                    .or_else(|| self.cluster.node(*id).map(|n| n.raft.to_string()))
                    .unwrap_or_default();
                (*id, BasicNode::new(addr))
            })
            .collect()
    }
}

/// Whether a group has never been initialised on this node.
fn uninitialized(raft: &Raft) -> bool {
    let m = raft.metrics().borrow().clone();
    m.last_log_index.is_none()
        && m.membership_config
            .membership()
            .voter_ids()
            .next()
            .is_none()
}

/// Whether this node should initialise a group with `voters` now: the
/// preferred voter at once, any other voter after a grace period (in case
/// the preferred one is down).
fn should_initialize(
    me: NodeId,
    voters: &[NodeId],
    preferred: Option<NodeId>,
    opened_at: Instant,
) -> bool {
    let first = preferred.or_else(|| voters.iter().min().copied());
    first == Some(me) || (voters.contains(&me) && opened_at.elapsed() > INIT_GRACE)
}

/// The voter that initialises a shard: the lowest id in the home region.
/// openraft's `initialize` makes the caller stand for election at once, so
/// this choice decides the first leader; a home-region leader commits
/// writes at home-region latency.
fn home_initializer(map: &ClusterMap, voters: &[NodeId], home: &str) -> Option<NodeId> {
    voters
        .iter()
        .filter(|v| map.nodes.get(v).is_some_and(|n| n.region == home))
        .min()
        .copied()
}

/// Bootstraps the meta group and, on its leader, keeps the map's node list
/// and the meta group's learners in line with the cluster config, and starts
/// rebalancing waves. A joining node asks its peers to register it instead of
/// ever bootstrapping.
async fn meta_driver(node: Arc<NodeInner>, mut shutdown: watch::Receiver<bool>) {
    let voters = if node.join {
        Vec::new()
    } else {
        node.cluster.meta_voters()
    };
    let mut tick = tokio::time::interval(CONTROL_TICK);
    loop {
        if node.join {
            join_if_unlisted(&node).await;
        }
        if let Some(group) = node.registry.get(META_GROUP) {
            if let Err(e) = drive_meta_once(&node, &group, &voters).await {
                tracing::debug!("meta driver: {e}");
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
    }
}

/// On a joining node the map does not list yet (or lists with other addresses): asks the
/// configured peers, one at a time, to register it. The meta leader then adds it to the meta
/// group as a learner, so its map soon lists it and the asking stops.
async fn join_if_unlisted(node: &NodeInner) {
    let me = NodeEntry {
        id: node.id,
        region: node.spec.region.clone(),
        zone: node.spec.zone.clone(),
        raft_addr: node.spec.raft.to_string(),
        grpc_addr: node.spec.grpc.to_string(),
    };
    if node.meta.map().nodes.get(&node.id) == Some(&me) {
        return;
    }
    let request = tessera_proto::pb::JoinClusterRequest {
        id: me.id,
        region: me.region.clone(),
        zone: me.zone.clone(),
        raft_addr: me.raft_addr.clone(),
        grpc_addr: me.grpc_addr.clone(),
    };
    for peer in node.cluster.nodes.iter().filter(|n| n.id != node.id) {
        let ask = async {
            let mut c = node.peer_client(&peer.grpc.to_string()).await?;
            c.join_cluster(request.clone())
                .await
                .map_err(|e| e.message().to_string())
        };
        match tokio::time::timeout(JOIN_TIMEOUT, ask).await {
            Ok(Ok(_)) => {
                tracing::info!(via = peer.id, "registered in the cluster map");
                return;
            }
            Ok(Err(e)) => tracing::info!(via = peer.id, "join not accepted yet: {e}"),
            Err(_) => tracing::info!(via = peer.id, "join timed out"),
        }
    }
}

async fn drive_meta_once(
    node: &NodeInner,
    group: &GroupHandle,
    voters: &[NodeId],
) -> Result<(), String> {
    let raft = &group.raft;
    if uninitialized(raft) && should_initialize(node.id, voters, None, group.opened_at) {
        let members = node.basic_nodes(&ClusterMap::default(), voters);
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(voters = ?voters, "initialised the meta group"),
            Err(e) => tracing::debug!("meta initialise: {e}"),
        }
    }
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(node.id) {
        return Ok(());
    }
    let entries = node.cluster.node_entries();
    let map = node.meta.map();
    if entries.iter().any(|e| map.nodes.get(&e.id) != Some(e)) {
        raft.client_write(Request::Meta(MetaCommand::RegisterNodes(entries)))
            .await
            .map_err(|e| e.to_string())?;
    }
    if let Some(settings) = &node.cluster.placement {
        if &map.settings != settings {
            raft.client_write(Request::Meta(MetaCommand::Configure(settings.clone())))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    if let Some(growth) = &node.cluster.growth {
        if &map.growth != growth {
            raft.client_write(Request::Meta(MetaCommand::ConfigureGrowthRule(
                growth.clone(),
            )))
            .await
            .map_err(|e| e.to_string())?;
        }
    }
    if let Some(key) = &node.bootstrap_key {
        // Present as a tombstone counts: a revoked bootstrap key stays revoked.
        if !map.keys.contains_key(&key.id) {
            raft.client_write(Request::Meta(MetaCommand::PutKey(key.clone())))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let membership = metrics.membership_config.membership().clone();
    // Every node gets the map: the configured ones, and those that joined since.
    let mut everyone: BTreeMap<NodeId, String> = map
        .nodes
        .values()
        .map(|n| (n.id, n.raft_addr.clone()))
        .collect();
    for n in &node.cluster.nodes {
        everyone.insert(n.id, n.raft.to_string());
    }
    for (id, addr) in everyone {
        if membership.get_node(&id).is_none() {
            raft.add_learner(id, BasicNode::new(addr), false)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let max_swaps = node.cluster.rebalance.moves_at_once;
    if !map.rebalance_plan(max_swaps as usize).is_empty() {
        tracing::info!("starting a rebalancing wave of at most {max_swaps} replica moves");
        raft.client_write(Request::Meta(MetaCommand::Rebalance { max_swaps }))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Opens the shard groups the map assigns here, initialises new groups, and
/// adds learners where this node leads.
async fn reconciler(node: Arc<NodeInner>, mut shutdown: watch::Receiver<bool>) {
    let mut maps = node.meta.subscribe();
    let mut tick = tokio::time::interval(CONTROL_TICK);
    loop {
        let map = node.meta.map();
        if let Err(e) = reconcile_once(&node, &map).await {
            tracing::warn!("reconcile: {e}");
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = maps.changed() => {}
            _ = tick.tick() => {}
        }
    }
}

async fn reconcile_once(node: &NodeInner, map: &ClusterMap) -> Result<(), String> {
    for shard in map.shards.values() {
        let joining = shard.incoming.iter().any(|w| w.joining == node.id);
        if !shard.replicas().any(|r| r == node.id) && !joining {
            continue;
        }
        node.open_shard(shard.id).await.map_err(|e| e.to_string())?;
        let Some(group) = node.registry.get(shard.id) else {
            continue;
        };
        let raft = &group.raft;
        let preferred = home_initializer(map, &shard.voters, &shard.policy.home);
        if uninitialized(raft)
            && should_initialize(node.id, &shard.voters, preferred, group.opened_at)
        {
            let members = node.basic_nodes(map, &shard.voters);
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(shard = shard.id, "initialise: {e}");
            }
            continue;
        }
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader != Some(node.id) {
            continue;
        }
        follow_map(node, map, shard, raft, &metrics).await?;
    }
    close_unlisted(node, map).await;
    Ok(())
}

/// A learner this close to the leader's last log index counts as caught up.
const CATCH_UP_LAG: u64 = 16;

/// On a shard's leader: makes the Raft membership follow the map. Replicas
/// the map lists (and joining nodes) are added as learners; a joining node
/// that has caught up is reported so the map completes its swap; then the
/// voters are set to the map's, once every new voter has caught up; and
/// learners the map no longer lists are removed.
async fn follow_map(
    node: &NodeInner,
    map: &ClusterMap,
    shard: &crate::meta::ShardEntry,
    raft: &Raft,
    metrics: &openraft::RaftMetrics<NodeId, BasicNode>,
) -> Result<(), String> {
    let membership = metrics.membership_config.membership().clone();
    let joining: Vec<NodeId> = shard.incoming.iter().map(|w| w.joining).collect();
    let wanted: Vec<NodeId> = shard.replicas().chain(joining.iter().copied()).collect();
    for id in &wanted {
        if membership.get_node(id).is_none() {
            if let Some((id, basic)) = node.basic_nodes(map, &[*id]).into_iter().next() {
                tracing::info!(shard = shard.id, learner = id, "adding learner");
                raft.add_learner(id, basic, false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    let last = metrics.last_log_index.unwrap_or(0);
    let caught_up = |id: &NodeId| {
        *id == node.id
            || metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).copied().flatten())
                .is_some_and(|log| log.index + CATCH_UP_LAG >= last)
    };
    for swap in &shard.incoming {
        if membership.get_node(&swap.joining).is_some() && caught_up(&swap.joining) {
            complete_swap(node, shard.id, *swap).await?;
        }
    }
    let want: BTreeSet<NodeId> = shard.voters.iter().copied().collect();
    let have: BTreeSet<NodeId> = membership.voter_ids().collect();
    if want != have && !want.is_empty() && want.iter().all(caught_up) {
        tracing::info!(shard = shard.id, voters = ?want, "changing voters to follow the map");
        raft.change_membership(want, false)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let stray: BTreeSet<NodeId> = membership
        .learner_ids()
        .filter(|id| !wanted.contains(id))
        .collect();
    if !stray.is_empty() && membership.get_joint_config().len() == 1 {
        tracing::info!(shard = shard.id, learners = ?stray, "removing learners the map dropped");
        raft.change_membership(openraft::ChangeMembers::RemoveNodes(stray), false)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Reports a caught-up joining node to the meta group (through its leader).
async fn complete_swap(
    node: &NodeInner,
    shard: ShardId,
    swap: crate::meta::Swap,
) -> Result<(), String> {
    let cmd = MetaCommand::CompleteSwap { shard, swap };
    match node.propose_meta(cmd).await {
        Ok(_) => Ok(()),
        Err(ProposeError::NotLeader { leader: Some(l) }) => {
            let addr = node
                .meta
                .map()
                .nodes
                .get(&l)
                .map(|n| n.grpc_addr.clone())
                .ok_or_else(|| format!("meta leader {l} has no known address"))?;
            let mut client = node.peer_client(&addr).await?;
            client
                .swap_replica(tessera_proto::pb::SwapReplicaRequest {
                    shard,
                    leaving: swap.leaving,
                    joining: swap.joining,
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Closes local shard groups the map no longer places here (their replica
/// was moved away). A shard missing from the map entirely is left alone:
/// that only happens with a lagging map.
async fn close_unlisted(node: &NodeInner, map: &ClusterMap) {
    for (group, handle) in node.registry.all() {
        if group == META_GROUP {
            continue;
        }
        let Some(shard) = map.shards.get(&group) else {
            continue;
        };
        let listed = shard.replicas().any(|r| r == node.id)
            || shard.incoming.iter().any(|w| w.joining == node.id);
        if listed {
            continue;
        }
        if node.registry.remove(group).is_some() {
            tracing::info!(shard = group, "closing a replica the map moved away");
            if let Err(e) = handle.raft.shutdown().await {
                tracing::warn!(shard = group, "shutting the group down: {e}");
            }
        }
    }
}

/// Garbage-collects covered change rows, advances purge limits, and
/// exports Raft gauges.
async fn maintenance(node: Arc<NodeInner>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        for (group, handle) in node.registry.all() {
            let m = handle.raft.metrics().borrow().clone();
            let labels = [("group", group.to_string())];
            metrics::gauge!("tessera_raft_term", &labels).set(m.current_term as f64);
            metrics::gauge!("tessera_raft_applied", &labels)
                .set(m.last_applied.map(|l| l.index).unwrap_or(0) as f64);
            metrics::gauge!("tessera_raft_is_leader", &labels)
                .set(f64::from(u8::from(m.current_leader == Some(node.id))));
            if let GroupData::Shard(shard) = &handle.data {
                let watermark = shard.index.watermark();
                handle.purge_limit.store(watermark, Ordering::Release);
                let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
                metrics::gauge!("tessera_index_lag_entries", &labels)
                    .set(applied.saturating_sub(watermark) as f64);
                let shard = shard.clone();
                let _ = tokio::task::spawn_blocking(move || shard.gc_changes()).await;
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
    }
}

/// Why a proposal did not commit.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// This node does not lead the group; `leader` is the leader if known.
    #[error("not leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Anything else (no quorum, shutting down, storage failure).
    #[error("{0}")]
    Failed(String),
}

/// Proposes `request` on `raft` and waits for it to commit and apply.
pub async fn propose(raft: &Raft, request: Request) -> Result<crate::raft::Response, ProposeError> {
    propose_indexed(raft, request).await.map(|(_, r)| r)
}

/// Like `propose`, also returning the log index the entry committed at.
pub async fn propose_indexed(
    raft: &Raft,
    request: Request,
) -> Result<(u64, crate::raft::Response), ProposeError> {
    use openraft::error::{ClientWriteError, RaftError};
    match raft.client_write(request).await {
        Ok(resp) => Ok((resp.log_id.index, resp.data)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(ProposeError::NotLeader {
                leader: f.leader_id,
            })
        }
        Err(e) => Err(ProposeError::Failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(regions: &[(NodeId, &str)]) -> ClusterMap {
        let mut m = ClusterMap::default();
        m.apply(&MetaCommand::RegisterNodes(
            regions
                .iter()
                .map(|(id, region)| NodeEntry {
                    id: *id,
                    region: region.to_string(),
                    zone: "a".into(),
                    raft_addr: String::new(),
                    grpc_addr: String::new(),
                })
                .collect(),
        ));
        m
    }

    /// The chaos harness saw region-survival shards led from outside their
    /// home region: the lowest voter id initialised (and so led) them.
    #[test]
    fn a_home_region_voter_initialises_the_shard() {
        let m = map(&[(1, "us"), (3, "eu"), (5, "ap")]);
        let preferred = home_initializer(&m, &[1, 3, 5], "eu");
        assert_eq!(preferred, Some(3));
        let fresh = Instant::now();
        assert!(should_initialize(3, &[1, 3, 5], preferred, fresh));
        assert!(!should_initialize(1, &[1, 3, 5], preferred, fresh));
        assert!(!should_initialize(7, &[1, 3, 5], preferred, fresh));
        // No voter at home: the lowest id, as before.
        assert_eq!(home_initializer(&m, &[1, 5], "eu"), None);
        assert!(should_initialize(1, &[1, 5], None, fresh));
    }
}
