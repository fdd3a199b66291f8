//! A throwaway multi-region Tessera cluster for chaos runs: `tessera-node`
//! and `tessera-router` child processes on unique 127.A.B.x addresses, with
//! a fault proxy on every link.
//!
//! Every node→node Raft link (QUIC over UDP) goes through its own proxy,
//! wired in with `[[route]]` entries of `cluster.toml`; every router→node
//! gRPC link (TCP) goes through its own proxy, wired in with the router's
//! `--seeds` and `--node-route`. The proxies run inside this process, so a
//! nemesis changes faults with a function call. Only the harness's own
//! observer calls (Status, Digest, Get for the checkers) bypass the
//! proxies: the observer must see the truth, not the fault.
//!
//! Links are named `n{a}->n{b}` (node `a` dialling node `b`) and
//! `r{k}->n{b}` (router `k` dialling node `b`). Each carries the one-way
//! latency of its region pair as its baseline, which `heal` returns to.
//!
//! The cluster only ever signals the processes it spawned (through
//! [`ManagedProcess`]), and kills all of them when dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tessera_client::TesseraClient;
use tessera_proto::pb;
use tessera_proto::pb::features_client::FeaturesClient;
use tessera_proto::pb::node_client::NodeClient;
use tessera_proto::transport::{self, PeerIdentity};
use tessera_proto::{NodeId, ShardId};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::control::ProxySet;
use crate::error::{ChaosError, Result};
use crate::process::{ManagedProcess, ProcessSpec};
use crate::proxy::{LinkFaults, LinkSpec, Proto};

/// Raft (QUIC) port on every node's own IP.
const RAFT_PORT: u16 = 7100;
/// gRPC port on every node's own IP.
const GRPC_PORT: u16 = 7200;
/// API port on every router's own IP.
const ROUTER_PORT: u16 = 7300;
/// Host byte of the first router (routers are .101, .102, ...).
const ROUTER_HOST: u8 = 101;
/// Host byte the UDP proxies listen on (port chosen by the OS).
const UDP_PROXY_HOST: u8 = 250;
/// Host byte the TCP proxies listen on.
const TCP_PROXY_HOST: u8 = 251;
/// How long a condition of the cluster (a node serving, a router knowing
/// the map) may take on a loaded two-core machine before we give up.
pub const SETTLE: Duration = Duration::from_secs(90);
/// How often conditions are re-checked while waiting for them.
pub const POLL: Duration = Duration::from_millis(100);
/// Deadline of one observer RPC (Status, Digest, Get) to a node.
pub const OBSERVER_RPC: Duration = Duration::from_secs(3);

static CLUSTER_SEQ: AtomicU8 = AtomicU8::new(0);

/// Where the nodes are: region names in order, and nodes per region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Region names; the first is "region 0".
    pub regions: Vec<String>,
    /// Nodes in each region (zones a, b, ... inside it).
    pub nodes_per_region: usize,
}

impl Layout {
    /// Three regions of two nodes: the smallest layout with a meta voter
    /// per region (so a region outage keeps the map writable) and with
    /// room for both zone- and region-survival tenants.
    pub fn three_regions() -> Self {
        Layout {
            regions: vec!["us-east".into(), "eu-west".into(), "ap-south".into()],
            nodes_per_region: 2,
        }
    }

    /// Total nodes.
    pub fn node_count(&self) -> usize {
        self.regions.len() * self.nodes_per_region
    }

    /// Region index of node `id` (ids start at 1, region by region).
    pub fn region_of(&self, id: NodeId) -> usize {
        (id.saturating_sub(1) as usize) / self.nodes_per_region.max(1)
    }
}

/// How to build the cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Regions and nodes.
    pub layout: Layout,
    /// Directory holding `tessera-node` and `tessera-router`.
    pub bin_dir: PathBuf,
    /// One-way latency between two different regions, in ms, by region
    /// index pair; pairs not listed get `default_latency_ms`.
    pub latency_ms: BTreeMap<(usize, usize), u64>,
    /// Inter-region latency for pairs not in `latency_ms`.
    pub default_latency_ms: u64,
    /// Jitter added on inter-region links.
    pub jitter_ms: u64,
    /// `--index-commit-ms` for the nodes, when set.
    pub index_commit_ms: Option<u64>,
    /// Keep the data directory (logs, RocksDB) after the cluster stops.
    pub keep_dir: bool,
    /// Parent of the cluster's temp directory (the system temp dir if unset).
    pub parent_dir: Option<PathBuf>,
}

impl ClusterOptions {
    /// The default topology with binaries from `bin_dir`: 20/40/30 ms one
    /// way between the three regions (the local cluster's shape, scaled
    /// down so short runs still see many round trips).
    pub fn new(bin_dir: PathBuf) -> Self {
        ClusterOptions {
            layout: Layout::three_regions(),
            bin_dir,
            latency_ms: BTreeMap::from([((0, 1), 20), ((0, 2), 40), ((1, 2), 30)]),
            default_latency_ms: 30,
            jitter_ms: 5,
            index_commit_ms: None,
            keep_dir: false,
            parent_dir: None,
        }
    }

    /// Baseline faults of a link between regions `a` and `b`.
    pub fn link_baseline(&self, a: usize, b: usize) -> LinkFaults {
        if a == b {
            return LinkFaults::default();
        }
        let key = (a.min(b), a.max(b));
        LinkFaults {
            latency_ms: self
                .latency_ms
                .get(&key)
                .copied()
                .unwrap_or(self.default_latency_ms),
            jitter_ms: self.jitter_ms,
            ..LinkFaults::default()
        }
    }
}

/// The directory with the workspace's release binaries: next to the
/// running executable (`target/release/tessera-chaos`), or one level up
/// when running as a test (`target/release/deps/...`).
pub fn default_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if !dir.join("tessera-node").exists() && dir.ends_with("deps") {
        if let Some(parent) = dir.parent() {
            dir = parent.to_path_buf();
        }
    }
    Ok(dir)
}

/// One storage node of the cluster.
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    /// Node id (1-based).
    pub id: NodeId,
    /// Region index into the layout.
    pub region: usize,
    /// Region name.
    pub region_name: String,
    /// Zone inside the region.
    pub zone: String,
    /// Its own Raft (QUIC) address.
    pub raft: SocketAddr,
    /// Its own gRPC address (the observer dials this directly).
    pub grpc: SocketAddr,
}

/// One router of the cluster (one per region).
#[derive(Clone, Debug, Serialize)]
pub struct RouterInfo {
    /// Router index (0-based; equal to its region index).
    pub index: usize,
    /// Region index.
    pub region: usize,
    /// Region name.
    pub region_name: String,
    /// Its API address.
    pub addr: SocketAddr,
}

/// A process of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Proc {
    /// A storage node.
    Node(NodeId),
    /// A router, by index.
    Router(usize),
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proc::Node(id) => write!(f, "node-{id}"),
            Proc::Router(k) => write!(f, "router-{k}"),
        }
    }
}

/// Name of the link node `from` uses to reach node `to`.
pub fn node_link(from: NodeId, to: NodeId) -> String {
    format!("n{from}->n{to}")
}

/// Name of the link router `k` uses to reach node `to`.
pub fn router_link(k: usize, to: NodeId) -> String {
    format!("r{k}->n{to}")
}

/// A running chaos cluster. Dropping it kills every process it started.
pub struct Cluster {
    dir: parking_lot::Mutex<Option<tempfile::TempDir>>,
    path: PathBuf,
    opts: ClusterOptions,
    nodes: Vec<NodeInfo>,
    routers: Vec<RouterInfo>,
    proxies: Arc<ProxySet>,
    procs: tokio::sync::Mutex<BTreeMap<Proc, ManagedProcess>>,
    node_channels: BTreeMap<NodeId, Channel>,
    /// The cluster CA (PEM) routers' TLS certificates chain to.
    ca_pem: String,
    /// The bootstrap admin key the harness drives routers with.
    admin_key: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("path", &self.path)
            .field("nodes", &self.nodes)
            .field("routers", &self.routers)
            .finish()
    }
}

impl Cluster {
    /// Builds and starts the whole cluster: proxies, certificates, nodes
    /// (waiting until the meta group lists all of them), then routers
    /// (waiting until each knows every node).
    pub async fn start(opts: ClusterOptions) -> Result<Cluster> {
        for bin in ["tessera-node", "tessera-router"] {
            if !opts.bin_dir.join(bin).exists() {
                return Err(ChaosError::Cluster(format!(
                    "{} is missing: run `cargo build --release --bins` (or pass --bin-dir)",
                    opts.bin_dir.join(bin).display()
                )));
            }
        }
        let dir = match &opts.parent_dir {
            Some(parent) => {
                std::fs::create_dir_all(parent)?;
                tempfile::Builder::new()
                    .prefix("tessera-chaos-")
                    .tempdir_in(parent)?
            }
            None => tempfile::Builder::new()
                .prefix("tessera-chaos-")
                .tempdir()?,
        };
        let path = dir.path().to_path_buf();
        std::fs::create_dir_all(path.join("logs"))?;
        let (a, b) = free_ip_base()?;
        let ip = |host: u8| IpAddr::V4(Ipv4Addr::new(127, a, b, host));
        let layout = &opts.layout;
        let mut nodes = Vec::new();
        for r in 0..layout.regions.len() {
            for z in 0..layout.nodes_per_region {
                let id = (r * layout.nodes_per_region + z + 1) as NodeId;
                let host = u8::try_from(id)
                    .ok()
                    .filter(|h| *h < ROUTER_HOST)
                    .ok_or_else(|| ChaosError::Cluster("too many nodes for one /24".into()))?;
                nodes.push(NodeInfo {
                    id,
                    region: r,
                    region_name: layout.regions[r].clone(),
                    zone: zone_name(z),
                    raft: SocketAddr::new(ip(host), RAFT_PORT),
                    grpc: SocketAddr::new(ip(host), GRPC_PORT),
                });
            }
        }
        let routers: Vec<RouterInfo> = (0..layout.regions.len())
            .map(|r| RouterInfo {
                index: r,
                region: r,
                region_name: layout.regions[r].clone(),
                addr: SocketAddr::new(ip(ROUTER_HOST + r as u8), ROUTER_PORT),
            })
            .collect();

        // Proxies first: the config and the router flags name their ports.
        let proxies = Arc::new(ProxySet::new());
        let mut routes = String::new();
        for from in &nodes {
            for to in &nodes {
                if from.id == to.id {
                    continue;
                }
                let status = proxies
                    .start(LinkSpec {
                        name: node_link(from.id, to.id),
                        proto: Proto::Udp,
                        listen: SocketAddr::new(ip(UDP_PROXY_HOST), 0),
                        target: to.raft,
                        faults: opts.link_baseline(from.region, to.region),
                    })
                    .await?;
                routes.push_str(&format!(
                    "[[route]]\nfrom = {}\nto = {}\nraft = \"{}\"\n\n",
                    from.id, to.id, status.listen
                ));
            }
        }
        let mut router_routes: BTreeMap<usize, Vec<(NodeId, SocketAddr)>> = BTreeMap::new();
        for r in &routers {
            for to in &nodes {
                let status = proxies
                    .start(LinkSpec {
                        name: router_link(r.index, to.id),
                        proto: Proto::Tcp,
                        listen: SocketAddr::new(ip(TCP_PROXY_HOST), 0),
                        target: to.grpc,
                        faults: opts.link_baseline(r.region, to.region),
                    })
                    .await?;
                router_routes
                    .entry(r.index)
                    .or_default()
                    .push((to.id, status.listen));
            }
        }
        let mut toml = String::new();
        for n in &nodes {
            toml.push_str(&format!(
                "[[node]]\nid = {}\nregion = \"{}\"\nzone = \"{}\"\nraft = \"{}\"\ngrpc = \"{}\"\n\n",
                n.id, n.region_name, n.zone, n.raft, n.grpc
            ));
        }
        toml.push_str(&routes);
        let config = path.join("cluster.toml");
        std::fs::write(&config, toml)?;
        let certs = path.join("certs");
        run_to_completion(
            &opts.bin_dir.join("tessera-node"),
            &[
                "certs".into(),
                "--config".into(),
                config.display().to_string(),
                "--out".into(),
                certs.display().to_string(),
            ],
            &path.join("logs").join("certs.log"),
        )
        .await?;

        // The harness observes nodes as a router would: with the router
        // certificate (nodes refuse callers without one), and drives routers
        // with the bootstrap admin key over TLS.
        let identity = PeerIdentity::load(&certs, "router")?;
        let admin_key = std::fs::read_to_string(certs.join("admin.key"))?
            .trim()
            .to_string();
        let mut node_channels = BTreeMap::new();
        for n in &nodes {
            let endpoint = identity
                .node_endpoint(&n.grpc.to_string())
                .map_err(|e| ChaosError::Cluster(format!("node address {}: {e}", n.grpc)))?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true);
            node_channels.insert(n.id, endpoint.connect_lazy());
        }
        let cluster = Cluster {
            dir: parking_lot::Mutex::new(Some(dir)),
            path,
            opts,
            nodes,
            routers,
            proxies,
            procs: tokio::sync::Mutex::new(BTreeMap::new()),
            node_channels,
            ca_pem: identity.ca_pem.clone(),
            admin_key,
        };
        {
            let mut procs = cluster.procs.lock().await;
            for n in &cluster.nodes {
                let spec = cluster.node_spec(n.id, &config, &certs);
                procs.insert(Proc::Node(n.id), ManagedProcess::spawn_spec(spec)?);
            }
        }
        let deadline = Instant::now() + SETTLE;
        for n in &cluster.nodes {
            cluster.wait_node_serving(n.id, deadline).await?;
        }
        cluster.wait_map_complete(deadline).await?;
        {
            let mut procs = cluster.procs.lock().await;
            for r in &cluster.routers {
                let spec = cluster.router_spec(r, router_routes.get(&r.index));
                procs.insert(Proc::Router(r.index), ManagedProcess::spawn_spec(spec)?);
            }
        }
        for r in &cluster.routers {
            cluster.wait_router_ready(r.index, deadline).await?;
        }
        tracing::info!(dir = %cluster.path.display(), nodes = cluster.nodes.len(), routers = cluster.routers.len(), "chaos cluster up");
        Ok(cluster)
    }

    fn node_spec(&self, id: NodeId, config: &Path, certs: &Path) -> ProcessSpec {
        let mut spec =
            ProcessSpec::new(format!("node-{id}"), self.opts.bin_dir.join("tessera-node")).args([
                "run".to_string(),
                "--config".into(),
                config.display().to_string(),
                "--id".into(),
                id.to_string(),
                "--data".into(),
                self.path.join(format!("n{id}")).display().to_string(),
                "--certs".into(),
                certs.display().to_string(),
            ]);
        if let Some(ms) = self.opts.index_commit_ms {
            spec = spec.args(["--index-commit-ms".to_string(), ms.to_string()]);
        }
        spec.log = Some(self.path.join("logs").join(format!("node-{id}.log")));
        spec.env
            .insert("RUST_LOG".into(), "info,openraft=warn,tantivy=warn".into());
        spec
    }

    fn router_spec(
        &self,
        r: &RouterInfo,
        routes: Option<&Vec<(NodeId, SocketAddr)>>,
    ) -> ProcessSpec {
        let routes = routes.cloned().unwrap_or_default();
        let seeds = routes
            .iter()
            .map(|(_, a)| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "--listen".to_string(),
            r.addr.to_string(),
            "--region".into(),
            r.region_name.clone(),
            "--seeds".into(),
            seeds,
        ];
        for (id, addr) in routes {
            args.push("--node-route".into());
            args.push(format!("{id}={addr}"));
        }
        args.extend([
            "--certs".to_string(),
            self.path.join("certs").display().to_string(),
            "--audit-log".to_string(),
            self.path
                .join("logs")
                .join(format!("audit-{}.jsonl", r.index))
                .display()
                .to_string(),
        ]);
        let mut spec = ProcessSpec::new(
            format!("router-{}", r.index),
            self.opts.bin_dir.join("tessera-router"),
        )
        .args(args);
        spec.log = Some(
            self.path
                .join("logs")
                .join(format!("router-{}-{}.log", r.index, r.region_name)),
        );
        spec
    }

    /// The cluster's directory (config, certs, data, `logs/`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options it was built with.
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// Its layout.
    pub fn layout(&self) -> &Layout {
        &self.opts.layout
    }

    /// Every node, by id.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Every router, by index.
    pub fn routers(&self) -> &[RouterInfo] {
        &self.routers
    }

    /// Node ids in `region`.
    pub fn nodes_in_region(&self, region: usize) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.region == region)
            .map(|n| n.id)
            .collect()
    }

    /// Region index of a node.
    pub fn region_of(&self, id: NodeId) -> usize {
        self.opts.layout.region_of(id)
    }

    /// The in-process proxies, for nemeses.
    pub fn proxies(&self) -> &Arc<ProxySet> {
        &self.proxies
    }

    /// Every link with node `id` at either end: node links both ways and
    /// router links to it.
    pub fn links_of_node(&self, id: NodeId, with_routers: bool) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            if n.id != id {
                out.push(node_link(id, n.id));
                out.push(node_link(n.id, id));
            }
        }
        if with_routers {
            for r in &self.routers {
                out.push(router_link(r.index, id));
            }
        }
        out
    }

    /// Every link router `k` dials.
    pub fn links_of_router(&self, k: usize) -> Vec<String> {
        self.nodes.iter().map(|n| router_link(k, n.id)).collect()
    }

    /// An observer client straight to node `id` (no proxy), with the
    /// observer deadline on every call.
    pub fn node_client(&self, id: NodeId) -> Result<NodeClient<Channel>> {
        Ok(NodeClient::new(self.observer_channel(id)?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    /// The feature-store API of node `id`, over the observer's channel:
    /// the event checker reads each replica's values directly.
    pub fn features_client(&self, id: NodeId) -> Result<FeaturesClient<Channel>> {
        Ok(FeaturesClient::new(self.observer_channel(id)?))
    }

    /// The observer's lazy channel to node `id` (router certificate, no proxy).
    fn observer_channel(&self, id: NodeId) -> Result<Channel> {
        self.node_channels
            .get(&id)
            .cloned()
            .ok_or_else(|| ChaosError::Cluster(format!("no node {id}")))
    }

    /// A client of router `k` that connects lazily (so a router that is
    /// down or cut off makes calls fail, not the constructor).
    pub fn router_client(&self, k: usize, timeout: Duration) -> Result<TesseraClient> {
        let r = self
            .routers
            .get(k)
            .ok_or_else(|| ChaosError::Cluster(format!("no router {k}")))?;
        let channel = transport::router_endpoint(&r.addr.to_string(), &self.ca_pem)
            .map_err(|e| ChaosError::Cluster(format!("router address {}: {e}", r.addr)))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        TesseraClient::from_channel(channel)
            .with_timeout(timeout)
            .with_api_key(&self.admin_key)
            .map_err(|e| ChaosError::Cluster(format!("admin key: {e}")))
    }

    /// `Status` of node `id`, within the observer deadline.
    pub async fn status(&self, id: NodeId) -> Result<pb::StatusResponse> {
        let mut c = self.node_client(id)?;
        let mut req = tonic::Request::new(pb::StatusRequest {});
        req.set_timeout(OBSERVER_RPC);
        match tokio::time::timeout(OBSERVER_RPC, c.status(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(ChaosError::Rpc(format!(
                "node {id} status: {}",
                s.message()
            ))),
            Err(_) => Err(ChaosError::Rpc(format!("node {id} status: no answer"))),
        }
    }

    /// `Digest` of `shard` on node `id`.
    pub async fn digest(&self, id: NodeId, shard: ShardId) -> Result<pb::DigestResponse> {
        let mut c = self.node_client(id)?;
        let mut req = tonic::Request::new(pb::DigestRequest { shard });
        req.set_timeout(OBSERVER_RPC * 3);
        match tokio::time::timeout(OBSERVER_RPC * 3, c.digest(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(ChaosError::Rpc(format!(
                "node {id} digest of shard {shard}: {}",
                s.message()
            ))),
            Err(_) => Err(ChaosError::Rpc(format!(
                "node {id} digest of shard {shard}: no answer"
            ))),
        }
    }

    /// The cluster map as node `id` has it.
    pub async fn cluster_map(&self, id: NodeId) -> Result<pb::ClusterMap> {
        let mut c = self.node_client(id)?;
        let mut req = tonic::Request::new(pb::ClusterMapRequest { known_epoch: 0 });
        req.set_timeout(OBSERVER_RPC);
        match tokio::time::timeout(OBSERVER_RPC, c.get_cluster_map(req)).await {
            Ok(Ok(r)) => r
                .into_inner()
                .map
                .ok_or_else(|| ChaosError::Rpc(format!("node {id} returned no map"))),
            Ok(Err(s)) => Err(ChaosError::Rpc(format!("node {id} map: {}", s.message()))),
            Err(_) => Err(ChaosError::Rpc(format!("node {id} map: no answer"))),
        }
    }

    /// The newest cluster map any running node returns.
    pub async fn any_map(&self) -> Result<pb::ClusterMap> {
        let mut best: Option<pb::ClusterMap> = None;
        let mut last = String::from("no node answered");
        let answers =
            futures::future::join_all(self.nodes.iter().map(|n| self.cluster_map(n.id))).await;
        for answer in answers {
            match answer {
                Ok(m) if best.as_ref().is_none_or(|b| m.epoch > b.epoch) => best = Some(m),
                Ok(_) => {}
                Err(e) => last = e.to_string(),
            }
        }
        best.ok_or(ChaosError::Rpc(last))
    }

    /// The node that leads `shard` right now, as the leaders themselves
    /// report it (the highest term wins when an old leader has not yet
    /// noticed it was deposed). `None` during an election.
    pub async fn leader_of(&self, shard: ShardId) -> Option<NodeId> {
        let mut best: Option<(u64, NodeId)> = None;
        let statuses =
            futures::future::join_all(self.nodes.iter().map(|n| self.status(n.id))).await;
        for st in statuses.into_iter().flatten() {
            for g in st
                .groups
                .iter()
                .filter(|g| g.group == shard && g.role == "leader")
            {
                if best.is_none_or(|(t, _)| g.term > t) {
                    best = Some((g.term, st.node));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Waits until node `id` answers `Status`.
    pub async fn wait_node_serving(&self, id: NodeId, deadline: Instant) -> Result<()> {
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            let err = match self.status(id).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if self.exited(Proc::Node(id)).await {
                return Err(ChaosError::Cluster(format!(
                    "node {id} exited while starting; see {}",
                    self.path
                        .join("logs")
                        .join(format!("node-{id}.log"))
                        .display()
                )));
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Deadline(format!(
                    "node {id} to serve gRPC: {err}"
                )));
            }
        }
    }

    async fn wait_map_complete(&self, deadline: Instant) -> Result<()> {
        let want = self.nodes.len();
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            let last = match self.cluster_map(self.nodes[0].id).await {
                Ok(m) if m.nodes.len() == want => return Ok(()),
                Ok(m) => format!("map lists {} of {want} nodes", m.nodes.len()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(ChaosError::Deadline(format!(
                    "the meta group to register every node: {last}"
                )));
            }
        }
    }

    /// Waits until router `k` answers `Status` listing every node.
    pub async fn wait_router_ready(&self, k: usize, deadline: Instant) -> Result<()> {
        let client = self.router_client(k, OBSERVER_RPC)?;
        let want = self.nodes.len();
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            let last = match client.status().await {
                Ok(s) if s.nodes.len() == want => return Ok(()),
                Ok(s) => format!("router lists {} of {want} nodes", s.nodes.len()),
                Err(e) => e.to_string(),
            };
            if self.exited(Proc::Router(k)).await {
                return Err(ChaosError::Cluster(format!(
                    "router {k} exited while starting; see its log in {}",
                    self.path.join("logs").display()
                )));
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Deadline(format!(
                    "router {k} to be ready: {last}"
                )));
            }
        }
    }

    async fn exited(&self, p: Proc) -> bool {
        let mut procs = self.procs.lock().await;
        procs.get_mut(&p).is_some_and(|m| !m.is_alive())
    }

    /// Whether a process runs (paused counts as running).
    pub async fn is_up(&self, p: Proc) -> bool {
        let mut procs = self.procs.lock().await;
        procs.get_mut(&p).is_some_and(|m| m.is_alive())
    }

    /// Processes that are not running.
    pub async fn down(&self) -> BTreeSet<Proc> {
        let mut procs = self.procs.lock().await;
        procs
            .iter_mut()
            .filter_map(|(p, m)| (!m.is_alive()).then_some(*p))
            .collect()
    }

    /// Processes that are paused (SIGSTOP).
    pub async fn paused(&self) -> BTreeSet<Proc> {
        let mut procs = self.procs.lock().await;
        procs
            .iter_mut()
            .filter_map(|(p, m)| m.is_stopped().then_some(*p))
            .collect()
    }

    /// kill -9 and reap. Killing a process that is already down is a no-op.
    pub async fn kill(&self, p: Proc) -> Result<()> {
        let mut procs = self.procs.lock().await;
        let m = procs
            .get_mut(&p)
            .ok_or_else(|| ChaosError::Cluster(format!("no process {p}")))?;
        if m.is_alive() {
            m.kill9()?;
        }
        m.wait().await?;
        Ok(())
    }

    /// SIGSTOP.
    pub async fn pause(&self, p: Proc) -> Result<()> {
        let mut procs = self.procs.lock().await;
        let m = procs
            .get_mut(&p)
            .ok_or_else(|| ChaosError::Cluster(format!("no process {p}")))?;
        m.pause()
    }

    /// SIGCONT (a no-op for a process that is down).
    pub async fn resume(&self, p: Proc) -> Result<()> {
        let mut procs = self.procs.lock().await;
        let m = procs
            .get_mut(&p)
            .ok_or_else(|| ChaosError::Cluster(format!("no process {p}")))?;
        if m.is_alive() {
            m.resume()?;
        }
        Ok(())
    }

    /// Starts a process again with its original command line and data
    /// (killing it first if it still runs), then waits until it serves.
    pub async fn restart(&self, p: Proc, deadline: Instant) -> Result<()> {
        {
            let mut procs = self.procs.lock().await;
            let m = procs
                .get_mut(&p)
                .ok_or_else(|| ChaosError::Cluster(format!("no process {p}")))?;
            m.restart().await?;
        }
        self.wait_serving(p, deadline).await
    }

    /// Starts a process that is down (no-op if it runs) and waits until it
    /// serves.
    pub async fn ensure_up(&self, p: Proc, deadline: Instant) -> Result<()> {
        if self.is_up(p).await {
            let stopped = {
                let mut procs = self.procs.lock().await;
                procs.get_mut(&p).is_some_and(|m| m.is_stopped())
            };
            if stopped {
                self.resume(p).await?;
            }
            return self.wait_serving(p, deadline).await;
        }
        self.restart(p, deadline).await
    }

    async fn wait_serving(&self, p: Proc, deadline: Instant) -> Result<()> {
        match p {
            Proc::Node(id) => self.wait_node_serving(id, deadline).await,
            Proc::Router(k) => self.wait_router_ready(k, deadline).await,
        }
    }

    /// A graceful stop: SIGTERM, then wait for the exit until `deadline`,
    /// then kill -9 if it is still there. Returns whether it exited on its
    /// own (false: it hung and had to be killed, which is a bug worth
    /// reporting).
    pub async fn stop_gracefully(&self, p: Proc, deadline: Instant) -> Result<bool> {
        let mut procs = self.procs.lock().await;
        let m = procs
            .get_mut(&p)
            .ok_or_else(|| ChaosError::Cluster(format!("no process {p}")))?;
        if !m.is_alive() {
            return Ok(true);
        }
        if m.is_stopped() {
            m.resume()?;
        }
        m.terminate()?;
        if tokio::time::timeout_at(deadline, m.wait()).await.is_err() {
            tracing::warn!(%p, "did not exit after SIGTERM; kill -9");
            m.kill9()?;
            m.wait().await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Heals every link and brings every process back (resumed or
    /// restarted), waiting until all serve.
    pub async fn heal_everything(&self, deadline: Instant) -> Result<()> {
        self.proxies.heal_all();
        let all: Vec<Proc> = self
            .nodes
            .iter()
            .map(|n| Proc::Node(n.id))
            .chain(self.routers.iter().map(|r| Proc::Router(r.index)))
            .collect();
        for p in all {
            self.ensure_up(p, deadline).await?;
        }
        Ok(())
    }

    /// Kills every process and removes the directory (unless asked to keep
    /// it, or `keep` is set because a run failed).
    pub async fn shutdown(&self, keep: bool) -> Option<PathBuf> {
        {
            let mut procs = self.procs.lock().await;
            for (p, m) in procs.iter_mut() {
                if m.is_alive() {
                    if let Err(e) = m.kill9() {
                        tracing::warn!(%p, error = %e, "kill at shutdown failed");
                    }
                }
                let _ = m.wait().await;
            }
        }
        let dir = self.dir.lock().take()?;
        if keep || self.opts.keep_dir {
            Some(dir.keep())
        } else {
            None
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // kill_on_drop of every ManagedProcess does the killing; a cluster
        // dropped without `shutdown` (an error path) keeps its files so the
        // failure can be looked at.
        if let Some(dir) = self.dir.lock().take() {
            let kept = dir.keep();
            eprintln!("chaos cluster files kept in {}", kept.display());
        }
    }
}

fn zone_name(z: usize) -> String {
    let letters = "abcdefghijklmnopqrstuvwxyz";
    letters
        .chars()
        .nth(z % letters.len())
        .map(String::from)
        .unwrap_or_else(|| "a".into())
}

/// Picks 127.A.B so nothing else (another test cluster, `scripts/cluster.sh`
/// at 127.0.0.x, the `tests` crate at 127.20-219.x.x) uses it: A is in
/// 220..250 by pid, B counts per cluster, and the choice is checked by
/// binding the first node's gRPC port.
fn free_ip_base() -> Result<(u8, u8)> {
    let a = 220 + (std::process::id() % 30) as u8;
    for _ in 0..=255 {
        let b = CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed);
        if b == 0 {
            continue;
        }
        let probe = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, a, b, 1)), GRPC_PORT);
        let udp = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, a, b, 1)), RAFT_PORT);
        if std::net::TcpListener::bind(probe).is_ok() && std::net::UdpSocket::bind(udp).is_ok() {
            return Ok((a, b));
        }
    }
    Err(ChaosError::Cluster(format!(
        "no free 127.{a}.x.0/24 address range for a test cluster"
    )))
}

/// Runs a helper command (certificate generation) and fails with its log
/// when it does not succeed.
async fn run_to_completion(program: &Path, args: &[String], log: &Path) -> Result<()> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(ChaosError::Cluster(format!(
            "{} {} failed ({status}); see {}",
            program.display(),
            args.join(" "),
            log.display()
        )))
    }
}
