//! A test cluster of real nodes, in-process or as `tessera-node` processes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tessera_chaos::process::ManagedProcess;
use tessera_node::config::{NodeSpec, RouteSpec};
use tessera_node::index::IndexConfig;
use tessera_node::meta::keys::{ensure_bootstrap_key, load_bootstrap_record, BOOTSTRAP_KEY_FILE};
use tessera_node::raft::network::{generate_cluster_certs, NodeTls};
use tessera_node::{ClusterConfig, NodeConfig, RaftTuning, TesseraNode};
use tessera_proto::pb;
use tessera_proto::pb::node_client::NodeClient;
use tessera_proto::transport::PeerIdentity;
use tessera_proto::NodeId;
use tonic::transport::Channel;

use crate::wait::eventually;

/// Raft port on every node's own IP.
const RAFT_PORT: u16 = 7100;
/// gRPC port on every node's own IP.
const GRPC_PORT: u16 = 7200;
/// Generous bound for cluster-level conditions on a loaded 2-core machine.
pub const SETTLE: Duration = Duration::from_secs(60);

static CLUSTER_SEQ: AtomicU8 = AtomicU8::new(1);

/// Regions and zones of the nodes, in node-id order (ids start at 1).
pub struct Layout(pub Vec<(&'static str, &'static str)>);

impl Layout {
    /// Three nodes in one region, one per zone.
    pub fn one_region_three_zones() -> Self {
        Self(vec![("us-east", "a"), ("us-east", "b"), ("us-east", "c")])
    }
}

/// How a node runs.
pub enum NodeSlot {
    InProc(Box<TesseraNode>),
    Proc(Box<ManagedProcess>),
    Down,
}

/// Whether nodes run in this process or as child processes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    InProc,
    Process,
}

/// A running test cluster. Dropping it kills the processes it started.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub config: ClusterConfig,
    pub slots: BTreeMap<NodeId, NodeSlot>,
    config_path: PathBuf,
    certs: PathBuf,
    mode: Mode,
    index: IndexConfig,
    /// Extra arguments for process nodes (e.g. a slow index commit).
    pub extra_args: BTreeMap<NodeId, Vec<String>>,
    /// Nodes left out of the cluster file the others start with; they join a running
    /// cluster (see [`Self::hold_back`]).
    held_back: BTreeMap<NodeId, NodeSpec>,
    /// Nodes serve gRPC in plaintext (`--unsecured`): only the benchmark
    /// that measures what security costs sets it (see [`Self::unsecured`]).
    unsecured: bool,
}

/// An IP base unique to this test process and cluster: 127.A.B.x.
fn ip_base() -> (u8, u8) {
    let a = 20 + (std::process::id() % 200) as u8;
    let b = CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed);
    (a, b)
}

/// Path of the `tessera-node` binary built next to the test binary.
pub fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // Test binaries live in `release/deps/`, benchmark binaries in `release/`.
    let bin = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("tessera-node"))
        .find(|b| b.exists())
        .unwrap_or_else(|| PathBuf::from("tessera-node"));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

impl TestCluster {
    /// Writes config and certificates for `layout`; starts no node.
    pub fn prepare(layout: &Layout, mode: Mode) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = ip_base();
        let nodes = layout
            .0
            .iter()
            .enumerate()
            .map(|(i, (region, zone))| {
                let ip = IpAddr::V4(Ipv4Addr::new(127, a, b, (i + 1) as u8));
                NodeSpec {
                    id: (i + 1) as NodeId,
                    region: region.to_string(),
                    zone: zone.to_string(),
                    raft: SocketAddr::new(ip, RAFT_PORT),
                    grpc: SocketAddr::new(ip, GRPC_PORT),
                    metrics: None,
                }
            })
            .collect::<Vec<_>>();
        let config = ClusterConfig {
            nodes,
            routes: Vec::<RouteSpec>::new(),
            placement: None,
            growth: None,
            rebalance: Default::default(),
        };
        let certs = dir.path().join("certs");
        let ids: Vec<(u64, Vec<IpAddr>)> = config
            .nodes
            .iter()
            .map(|n| (n.id, vec![n.raft.ip()]))
            .collect();
        generate_cluster_certs(&certs, &ids).expect("certificates");
        ensure_bootstrap_key(&certs).expect("bootstrap admin key");
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, cluster_toml(&config)).expect("write cluster.toml");
        let slots = config
            .nodes
            .iter()
            .map(|n| (n.id, NodeSlot::Down))
            .collect();
        Self {
            dir,
            config,
            slots,
            config_path,
            certs,
            mode,
            index: IndexConfig::default(),
            extra_args: BTreeMap::new(),
            held_back: BTreeMap::new(),
            unsecured: false,
        }
    }

    /// Makes nodes started after this call serve and dial gRPC in
    /// plaintext with no certificate checks (`--unsecured`), and this
    /// harness reach them so: the baseline of `bench_suite security`.
    pub fn unsecured(&mut self) {
        self.unsecured = true;
    }

    /// Sets the `[placement]` knobs for nodes started after this call.
    pub fn set_placement(&mut self, placement: tessera_node::meta::PlacementSettings) {
        self.config.placement = Some(placement);
        std::fs::write(&self.config_path, cluster_toml(&self.config)).expect("write cluster.toml");
    }

    /// Leaves node `id` out of the cluster file the other nodes start with: `start_node(id)`
    /// later starts it as a node joining the running cluster (`--join`, with a file that
    /// lists it and the others), the way an operator adds a node.
    pub fn hold_back(&mut self, id: NodeId) {
        let pos = self
            .config
            .nodes
            .iter()
            .position(|n| n.id == id)
            .expect("node in the layout");
        let spec = self.config.nodes.remove(pos);
        self.held_back.insert(id, spec);
        std::fs::write(&self.config_path, cluster_toml(&self.config)).expect("write cluster.toml");
    }

    /// The cluster file node `id` starts with: a held-back node's lists it too.
    fn config_of(&self, id: NodeId) -> (ClusterConfig, bool) {
        let mut config = self.config.clone();
        match self.held_back.get(&id) {
            Some(spec) => {
                config.nodes.push(spec.clone());
                (config, true)
            }
            None => (config, false),
        }
    }

    /// Sets the `[growth]` rule for nodes started after this call.
    pub fn set_growth(&mut self, growth: tessera_node::meta::growth::GrowthSettings) {
        self.config.growth = Some(growth);
        std::fs::write(&self.config_path, cluster_toml(&self.config)).expect("write cluster.toml");
    }

    /// Starts every node of `layout`.
    pub async fn start(layout: &Layout, mode: Mode) -> Self {
        let mut c = Self::prepare(layout, mode);
        let ids: Vec<NodeId> = c.slots.keys().copied().collect();
        for id in ids {
            c.start_node(id).await;
        }
        c
    }

    fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("n{id}"))
    }

    /// Starts (or restarts) node `id` on its data.
    pub async fn start_node(&mut self, id: NodeId) {
        let slot = match self.mode {
            Mode::InProc => {
                let tls = NodeTls::load(&self.certs, id).expect("node tls");
                let (cluster, join) = self.config_of(id);
                let bootstrap_key =
                    load_bootstrap_record(&self.certs).expect("bootstrap admin record");
                let node = TesseraNode::start(NodeConfig {
                    bootstrap_key,
                    id,
                    cluster,
                    data_dir: self.data_dir(id),
                    tls,
                    raft: RaftTuning::default(),
                    index: self.index.clone(),
                    join,
                    unsecured_grpc: self.unsecured,
                })
                .await
                .expect("node starts");
                NodeSlot::InProc(Box::new(node))
            }
            Mode::Process => {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join(format!("n{id}.log")))
                    .expect("log file");
                let err = log.try_clone().expect("log file");
                let (config, join) = self.config_of(id);
                let config_path = if join {
                    let path = self.dir.path().join(format!("cluster-join-{id}.toml"));
                    std::fs::write(&path, cluster_toml(&config)).expect("write the joiner's file");
                    path
                } else {
                    self.config_path.clone()
                };
                let mut cmd = tokio::process::Command::new(node_binary());
                cmd.arg("run")
                    .arg("--config")
                    .arg(&config_path)
                    .arg("--id")
                    .arg(id.to_string())
                    .arg("--data")
                    .arg(self.data_dir(id))
                    .arg("--certs")
                    .arg(&self.certs)
                    .args(join.then_some("--join"))
                    .args(self.unsecured.then_some("--unsecured"))
                    .args(self.extra_args.get(&id).cloned().unwrap_or_default())
                    .stdout(log)
                    .stderr(err);
                NodeSlot::Proc(Box::new(
                    ManagedProcess::spawn(format!("node-{id}"), &mut cmd).expect("spawn node"),
                ))
            }
        };
        self.slots.insert(id, slot);
        self.wait_serving(id).await;
    }

    /// Waits until node `id` answers gRPC.
    pub async fn wait_serving(&self, id: NodeId) {
        eventually(SETTLE, &format!("node {id} to serve gRPC"), || async move {
            let mut c = self.client(id).await?;
            c.status(pb::StatusRequest {})
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(Some(()))
        })
        .await
    }

    /// kill -9 of a process node, or an abrupt stop of an in-process one.
    pub async fn kill(&mut self, id: NodeId) {
        match self.slots.insert(id, NodeSlot::Down) {
            Some(NodeSlot::Proc(mut p)) => {
                p.kill9().expect("kill -9");
                let _ = p.wait().await;
            }
            Some(NodeSlot::InProc(n)) => n.shutdown().await,
            _ => {}
        }
    }

    /// SIGTERM to a process node: true when it exits within `grace`. A node
    /// that outlives the grace period is killed (and false returned), so a
    /// hang fails the calling test instead of leaking the process.
    pub async fn terminate(&mut self, id: NodeId, grace: Duration) -> bool {
        match self.slots.insert(id, NodeSlot::Down) {
            Some(NodeSlot::Proc(mut p)) => {
                p.terminate().expect("SIGTERM");
                let exited = tokio::time::timeout(grace, p.wait()).await.is_ok();
                if !exited {
                    let _ = p.kill9();
                    let _ = p.wait().await;
                }
                exited
            }
            Some(NodeSlot::InProc(n)) => {
                n.shutdown().await;
                true
            }
            _ => true,
        }
    }

    /// Stops every node.
    pub async fn stop_all(&mut self) {
        let ids: Vec<NodeId> = self.slots.keys().copied().collect();
        for id in ids {
            self.kill(id).await;
        }
    }

    /// Sends node `from`'s Raft traffic for node `to` through `addr` (a UDP
    /// fault proxy), for nodes started after this call: rewrites
    /// `cluster.toml` (process nodes) and the in-process config.
    pub fn add_route(&mut self, from: NodeId, to: NodeId, addr: SocketAddr) {
        self.config.routes.retain(|r| (r.from, r.to) != (from, to));
        self.config.routes.push(RouteSpec {
            from,
            to,
            raft: addr,
        });
        std::fs::write(&self.config_path, cluster_toml(&self.config))
            .expect("rewrite cluster.toml");
    }

    /// The Raft (QUIC) address of node `id`.
    pub fn raft(&self, id: NodeId) -> SocketAddr {
        self.spec(id).raft
    }

    fn spec(&self, id: NodeId) -> &NodeSpec {
        self.config
            .node(id)
            .or_else(|| self.held_back.get(&id))
            .expect("known node")
    }

    /// The gRPC address of node `id`.
    pub fn grpc(&self, id: NodeId) -> SocketAddr {
        self.spec(id).grpc
    }

    /// The directory with the cluster CA, the certificates and the
    /// bootstrap admin key.
    pub fn certs_dir(&self) -> &std::path::Path {
        &self.certs
    }

    /// The routers' certificate: what tests present to nodes, as a router
    /// would (nodes refuse callers without a cluster certificate).
    pub fn router_identity(&self) -> PeerIdentity {
        PeerIdentity::load(&self.certs, "router").expect("router certificate")
    }

    /// The bootstrap admin key's text (every scope, cluster-level).
    pub fn admin_key(&self) -> String {
        std::fs::read_to_string(self.certs.join(BOOTSTRAP_KEY_FILE))
            .expect("bootstrap admin key")
            .trim()
            .to_string()
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.certs.join("ca.pem")).expect("ca.pem")
    }

    /// A fresh gRPC client to node `id`, over mutual TLS with the router
    /// certificate.
    pub async fn client(&self, id: NodeId) -> Result<NodeClient<Channel>, String> {
        let mut identity = self.router_identity();
        identity.unsecured = self.unsecured;
        let endpoint = identity
            .node_endpoint(&self.grpc(id).to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(20));
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        Ok(NodeClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    /// Ids of nodes that are up.
    pub fn up(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, s)| !matches!(s, NodeSlot::Down))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Waits until every up node's map lists every node, then creates a tenant.
    pub async fn create_tenant(
        &self,
        id: &str,
        regions: &[&str],
        partitions: u32,
    ) -> pb::TenantInfo {
        let via = self.up()[0];
        let n = self.config.nodes.len();
        eventually(
            SETTLE,
            "the meta group to register every node",
            || async move {
                let mut c = self.client(via).await?;
                let map = c
                    .get_cluster_map(pb::ClusterMapRequest { known_epoch: 0 })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(
                    map.into_inner()
                        .map
                        .filter(|m| m.nodes.len() == n)
                        .map(|_| ()),
                )
            },
        )
        .await;
        let req = pb::CreateTenantRequest {
            id: id.to_string(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            home: regions[0].to_string(),
            survival: "zone".into(),
            partitions,
        };
        eventually(SETTLE, "tenant creation", || {
            let req = req.clone();
            async move {
                let mut c = self.client(via).await?;
                let resp = c.create_tenant(req).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(resp.into_inner().tenant)
            }
        })
        .await
    }

    /// The cluster map as node `id` sees it.
    pub async fn map(&self, id: NodeId) -> pb::ClusterMap {
        let mut c = self.client(id).await.expect("client");
        c.get_cluster_map(pb::ClusterMapRequest { known_epoch: 0 })
            .await
            .expect("map")
            .into_inner()
            .map
            .unwrap_or_default()
    }

    /// Writes one batch to the shard leader, following "not leader" hints
    /// and retrying transient failures until `deadline`. Returns the token.
    pub async fn write(
        &self,
        req: pb::WriteRequest,
        deadline: Duration,
    ) -> Result<pb::SessionToken, tonic::Status> {
        let start = std::time::Instant::now();
        let mut target = self.up().first().copied().unwrap_or(1);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            let result = match self.client(target).await {
                Ok(mut c) => c.write(req.clone()).await.map(|r| r.into_inner()),
                Err(e) => Err(tonic::Status::unavailable(e)),
            };
            let status = match result {
                Ok(resp) => {
                    return resp
                        .token
                        .ok_or_else(|| tonic::Status::internal("no token"))
                }
                Err(s) => s,
            };
            if status.code() == tonic::Code::InvalidArgument || start.elapsed() > deadline {
                return Err(status);
            }
            let hinted = status
                .metadata()
                .get("x-tessera-leader-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<NodeId>().ok())
                .filter(|l| self.up().contains(l));
            target = match hinted {
                Some(l) => l,
                None => {
                    tick.tick().await;
                    let up = self.up();
                    let pos = up
                        .iter()
                        .position(|n| *n == target)
                        .map(|p| p + 1)
                        .unwrap_or(0);
                    up[pos % up.len()]
                }
            };
        }
    }

    /// The node that currently leads `shard`, as the up nodes report it.
    pub async fn leader_of(&self, shard: u64) -> NodeId {
        eventually(
            SETTLE,
            &format!("a leader for shard {shard}"),
            || async move {
                for id in self.up() {
                    let mut c = self.client(id).await?;
                    let st = c
                        .status(pb::StatusRequest {})
                        .await
                        .map_err(|e| e.to_string())?
                        .into_inner();
                    if let Some(g) = st
                        .groups
                        .iter()
                        .find(|g| g.group == shard && g.role == "leader")
                    {
                        return Ok::<_, String>(Some(g.leader));
                    }
                }
                Ok(None)
            },
        )
        .await
    }

    /// The shard digest on node `id`.
    pub async fn digest(&self, id: NodeId, shard: u64) -> Result<pb::DigestResponse, String> {
        let mut c = self.client(id).await?;
        c.digest(pb::DigestRequest { shard })
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.to_string())
    }

    /// Waits until every listed node has applied at least `index` on `shard`
    /// and all report the same digest; returns it.
    pub async fn converged(&self, shard: u64, nodes: &[NodeId], index: u64) -> pb::DigestResponse {
        eventually(
            SETTLE,
            &format!("shard {shard} to converge on {nodes:?}"),
            || async move {
                let mut digests = Vec::new();
                for id in nodes {
                    let d = self.digest(*id, shard).await?;
                    if d.applied < index {
                        return Err(format!("node {id} applied {} < {index}", d.applied));
                    }
                    digests.push(d);
                }
                let first = digests[0].clone();
                if digests
                    .iter()
                    .all(|d| d.digest == first.digest && d.docs == first.docs)
                {
                    Ok(Some(first))
                } else {
                    Err(format!(
                        "digests differ: {:?}",
                        digests
                            .iter()
                            .map(|d| (d.docs, d.applied, d.digest.clone()))
                            .collect::<Vec<_>>()
                    ))
                }
            },
        )
        .await
    }

    /// Counts every document of `tenant` visible to an unrestricted search on
    /// node `id` once its index reflects `min_applied`.
    pub async fn count_all(
        &self,
        id: NodeId,
        tenant: &str,
        shard: u64,
        min_applied: u64,
    ) -> Result<u64, tonic::Status> {
        let mut c = self.client(id).await.map_err(tonic::Status::unavailable)?;
        let resp = c
            .search(pb::SearchRequest {
                tenant: tenant.into(),
                shard,
                user: "u:tester".into(),
                query: String::new(),
                limit: 1,
                min_applied,
                timeout_ms: 20_000,
                ..Default::default()
            })
            .await?;
        Ok(resp.into_inner().total_matches)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for slot in self.slots.values_mut() {
            if let NodeSlot::Proc(p) = slot {
                let _ = p.kill9();
            }
        }
        if std::thread::panicking() {
            // Keep data and node logs of a failed test for diagnosis.
            if let Ok(fresh) = tempfile::tempdir() {
                let failed = std::mem::replace(&mut self.dir, fresh);
                eprintln!("test cluster files kept in {}", failed.keep().display());
            }
        }
    }
}

fn cluster_toml(c: &ClusterConfig) -> String {
    let mut s = String::new();
    for n in &c.nodes {
        s.push_str(&format!(
            "[[node]]\nid = {}\nregion = \"{}\"\nzone = \"{}\"\nraft = \"{}\"\ngrpc = \"{}\"\n\n",
            n.id, n.region, n.zone, n.raft, n.grpc
        ));
    }
    for r in &c.routes {
        s.push_str(&format!(
            "[[route]]\nfrom = {}\nto = {}\nraft = \"{}\"\n\n",
            r.from, r.to, r.raft
        ));
    }
    if let Some(p) = &c.placement {
        s.push_str(&format!(
            "[placement]\nmin_shards = {}\nmax_tenants_per_shard = {}\ndead_after_secs = {}\n",
            p.min_shards, p.max_tenants_per_shard, p.dead_after_secs
        ));
    }
    if let Some(g) = &c.growth {
        s.push_str(&format!(
            "[growth]\nsplit_docs = {}\nsplit_bytes = {}\n",
            g.split_docs, g.split_bytes
        ));
    }
    s.push_str(&format!(
        "[rebalance]\nmoves_at_once = {}\n",
        c.rebalance.moves_at_once
    ));
    s
}
