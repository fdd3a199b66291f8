//! Routers for the integration tests: `tessera-router` processes (or
//! in-process [`tessera_router::Router`]s) in front of a [`TestCluster`],
//! clients for them, fault proxies on router→node links, and the `tessera`
//! CLI.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use tessera_chaos::process::ManagedProcess;
use tessera_chaos::{LinkControl, TcpLinkProxy};
use tessera_client::{Credentials, TesseraClient};
use tessera_proto::pb;
use tessera_proto::pb::router_client::RouterClient;
use tessera_proto::NodeId;
use tessera_router::{Router, RouterConfig, RouterHandle};
use tonic::transport::Channel;

use crate::cluster::{node_binary, SETTLE};
use crate::wait::eventually;
use crate::TestCluster;

/// Port every router process of a test cluster listens on (each router has
/// its own IP in the cluster's 127.A.B.x range).
const ROUTER_PORT: u16 = 7300;

/// A binary built next to `tessera-node` (the workspace's release binaries).
pub fn sibling_binary(name: &str) -> PathBuf {
    let bin = node_binary().with_file_name(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release --bins` first",
        bin.display()
    );
    bin
}

/// The 127.A.B prefix of a cluster's addresses.
fn ip_prefix(cluster: &TestCluster) -> [u8; 3] {
    match cluster.config.nodes.first().map(|n| n.grpc.ip()) {
        Some(IpAddr::V4(ip)) => {
            let o = ip.octets();
            [o[0], o[1], o[2]]
        }
        _ => [127, 0, 0],
    }
}

/// An address in the cluster's 127.A.B.x range that no node uses: host
/// `100 + k` (routers: 101, 102, ...; proxies: 200+).
pub fn spare_ip(cluster: &TestCluster, k: u8) -> IpAddr {
    let [a, b, c] = ip_prefix(cluster);
    IpAddr::V4(Ipv4Addr::new(a, b, c, 100 + k))
}

/// A `tessera-router` process. Dropping it kills the process.
pub struct RouterProc {
    /// Its region.
    pub region: String,
    /// The address its API listens on.
    pub addr: SocketAddr,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    proc: Option<ManagedProcess>,
}

impl RouterProc {
    /// `host:port` for clients.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// kill -9.
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill9();
            let _ = p.wait().await;
        }
    }
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            let _ = p.kill9();
        }
    }
}

/// Every node's gRPC address, comma-separated (`--seeds`).
pub fn seeds(cluster: &TestCluster) -> String {
    cluster
        .config
        .nodes
        .iter()
        .map(|n| n.grpc.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// What a test needs to reach one router: the CA that signed its TLS
/// certificate, the certificate directory (for the CLI's `--ca`) and the
/// cluster's admin key.
#[derive(Clone)]
pub struct RouterAccess {
    /// Directory holding `ca.pem`.
    pub certs: PathBuf,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The bootstrap admin key.
    pub admin_key: String,
}

/// Access details of every router this test process started, by address:
/// helpers given only an address (`client`, `raw_client`, `cli`) find the
/// CA and key here. Addresses are unique per cluster (each has its own
/// 127.A.B.x range, in-process routers their own port).
static ACCESS: std::sync::LazyLock<
    parking_lot::Mutex<std::collections::HashMap<String, RouterAccess>>,
> = std::sync::LazyLock::new(Default::default);

/// Records how to reach the router at `addr` of `cluster`.
pub fn register_router(cluster: &TestCluster, addr: &str) {
    ACCESS.lock().insert(
        addr.to_string(),
        RouterAccess {
            certs: cluster.certs_dir().to_path_buf(),
            ca_pem: cluster.ca_pem(),
            admin_key: cluster.admin_key(),
        },
    );
}

/// How to reach the router at `addr`, if this process started it.
pub fn access(addr: &str) -> Option<RouterAccess> {
    ACCESS.lock().get(addr).cloned()
}

/// Credentials for the router at `addr` with `key` (the admin key when
/// `None`); plaintext and keyless for routers this process did not start.
pub fn credentials(addr: &str, key: Option<&str>) -> Credentials {
    match access(addr) {
        Some(a) => Credentials {
            ca_pem: Some(a.ca_pem),
            api_key: Some(key.map_or(a.admin_key, str::to_string)),
            user_token: None,
        },
        None => Credentials {
            api_key: key.map(str::to_string),
            ..Credentials::default()
        },
    }
}

/// The flags that make a `tessera-router` process a secure member of
/// `cluster`: its certificate directory and an audit log.
pub fn router_security_args(cluster: &TestCluster, k: u8) -> Vec<String> {
    vec![
        "--certs".into(),
        cluster.certs_dir().display().to_string(),
        "--audit-log".into(),
        cluster
            .dir
            .path()
            .join(format!("audit-{k}.jsonl"))
            .display()
            .to_string(),
    ]
}

/// Starts router number `k` (1-based) of `region` as a process, seeded with
/// every node, plus `extra` flags; waits until it has a cluster map that
/// lists every node.
pub async fn spawn_router(
    cluster: &TestCluster,
    k: u8,
    region: &str,
    extra: &[String],
) -> RouterProc {
    let addr = SocketAddr::new(spare_ip(cluster, k), ROUTER_PORT);
    let log = cluster.dir.path().join(format!("router-{k}-{region}.log"));
    let out = std::fs::File::create(&log).expect("router log file");
    let err = out.try_clone().expect("router log file");
    let mut cmd = tokio::process::Command::new(sibling_binary("tessera-router"));
    cmd.arg("--listen")
        .arg(addr.to_string())
        .arg("--seeds")
        .arg(seeds(cluster))
        .arg("--region")
        .arg(region)
        .args(router_security_args(cluster, k))
        .args(extra)
        .stdout(out)
        .stderr(err);
    let proc =
        ManagedProcess::spawn(format!("router-{k}"), &mut cmd).expect("spawn tessera-router");
    // An `--unsecured` baseline router is reached in plaintext, keyless.
    if !extra.iter().any(|a| a == "--unsecured") {
        register_router(cluster, &addr.to_string());
    }
    let r = RouterProc {
        region: region.to_string(),
        addr,
        log,
        proc: Some(proc),
    };
    wait_router_ready(&r.endpoint(), cluster.config.nodes.len()).await;
    r
}

/// Starts a router in this process on 127.0.0.1 (any free port) after
/// `edit` has adjusted its configuration; waits until it knows every node.
pub async fn start_inproc_router(
    cluster: &TestCluster,
    region: &str,
    edit: impl FnOnce(&mut RouterConfig),
) -> RouterHandle {
    let seeds = cluster
        .config
        .nodes
        .iter()
        .map(|n| n.grpc.to_string())
        .collect();
    let mut cfg = RouterConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), seeds, region);
    cfg.identity = Some(cluster.router_identity());
    cfg.audit_log = Some(
        cluster
            .dir
            .path()
            .join(format!("audit-inproc-{region}.jsonl")),
    );
    edit(&mut cfg);
    let handle = Router::start(cfg).await.expect("router starts");
    register_router(cluster, &handle.local_addr().to_string());
    wait_router_ready(&handle.local_addr().to_string(), cluster.config.nodes.len()).await;
    handle
}

/// Waits until the router at `addr` answers `Status` with a map of `nodes` nodes.
pub async fn wait_router_ready(addr: &str, nodes: usize) {
    eventually(
        SETTLE,
        &format!("router {addr} to know all {nodes} nodes"),
        || async move {
            let mut c = raw_client(addr).await.map_err(|e| e.to_string())?;
            let st = c
                .status(pb::RouterStatusRequest { timeout_ms: 2_000 })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if st.epoch > 0 && st.nodes.len() >= nodes {
                Ok(Some(()))
            } else {
                Err(format!("epoch {}, {} nodes", st.epoch, st.nodes.len()))
            }
        },
    )
    .await
}

/// A typed client of the router at `addr`, with the cluster's admin key.
pub async fn client(addr: &str) -> TesseraClient {
    client_with_key(addr, None).await
}

/// A typed client of the router at `addr` presenting `key` (the admin key
/// when `None`).
pub async fn client_with_key(addr: &str, key: Option<&str>) -> TesseraClient {
    let addr = addr.to_string();
    let creds = credentials(&addr, key);
    eventually(SETTLE, &format!("a connection to router {addr}"), || {
        let (addr, creds) = (addr.clone(), creds.clone());
        async move { TesseraClient::connect_with(&addr, &creds).await.map(Some) }
    })
    .await
}

/// Adds `authorization: Bearer <key>` to every call of a raw client.
#[derive(Clone)]
pub struct WithKey(pub Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for WithKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut()
                .insert(tessera_proto::keys::AUTHORIZATION_HEADER, v.clone());
        }
        Ok(req)
    }
}

/// A raw router client that sends a key with every call.
pub type RawRouter =
    RouterClient<tonic::service::interceptor::InterceptedService<Channel, WithKey>>;

/// A raw gRPC client of the router at `addr` (for fields the typed client
/// does not expose: replica selection, breaker states), with the admin key.
pub async fn raw_client(addr: &str) -> Result<RawRouter, tonic::transport::Error> {
    raw_client_with_key(addr, None).await
}

/// A raw gRPC client of the router at `addr` presenting `key` (the admin
/// key when `None`; nothing for a router this process did not start).
pub async fn raw_client_with_key(
    addr: &str,
    key: Option<&str>,
) -> Result<RawRouter, tonic::transport::Error> {
    let creds = credentials(addr, key);
    let endpoint = match &creds.ca_pem {
        Some(ca) => tessera_proto::transport::router_endpoint(addr, ca),
        None => tessera_proto::transport::plaintext_endpoint(addr),
    }
    .expect("router endpoint");
    let header = creds.api_key.as_ref().map(|k| {
        tonic::metadata::MetadataValue::try_from(format!("Bearer {k}")).expect("key header")
    });
    let channel = endpoint
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(RouterClient::with_interceptor(channel, WithKey(header))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Breaker state of `node` as the router at `addr` reports it.
pub async fn breaker_state(router: &mut RawRouter, node: NodeId) -> Result<String, String> {
    let st = router
        .status(pb::RouterStatusRequest { timeout_ms: 2_000 })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    st.nodes
        .iter()
        .find(|n| n.id == node)
        .map(|n| n.breaker.clone())
        .ok_or_else(|| format!("node {node} not in the router's status"))
}

/// A TCP fault proxy in front of node `id`'s gRPC, listening on spare host
/// `k` of the cluster's range (any free port). Pass
/// `--node-route ID=<local_addr>` (or `RouterConfig::node_routes`) to send
/// a router's traffic to that node through it.
pub async fn grpc_proxy(cluster: &TestCluster, id: NodeId, k: u8) -> TcpLinkProxy {
    let listen = SocketAddr::new(spare_ip(cluster, k), 0);
    TcpLinkProxy::bind(listen, cluster.grpc(id), LinkControl::healthy())
        .await
        .expect("bind grpc proxy")
}

/// `--node-route` flag pair for `proxy` in front of node `id`.
pub fn node_route_args(id: NodeId, proxy: &TcpLinkProxy) -> Vec<String> {
    vec![
        "--node-route".into(),
        format!("{id}={}", proxy.local_addr()),
    ]
}

/// Runs the `tessera` CLI with `args` and returns its output (exit code,
/// stdout, stderr). With `--router ADDR` of a router this process started,
/// the CLI gets the cluster CA and the admin key through the environment.
pub async fn cli(args: &[&str]) -> Output {
    let router = args
        .windows(2)
        .find(|w| w[0] == "--router")
        .and_then(|w| access(w[1]));
    let mut cmd = tokio::process::Command::new(sibling_binary("tessera"));
    if let Some(a) = router {
        cmd.env("TESSERA_CA", a.certs.join("ca.pem"))
            .env("TESSERA_API_KEY", a.admin_key);
    }
    cmd.args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the tessera CLI")
}

/// Writes `docs` (JSON documents) through the router in batches of `batch`,
/// retrying retryable errors until [`SETTLE`]; returns the session token
/// covering all of them.
pub async fn put_all(
    client: &TesseraClient,
    tenant: &str,
    docs: Vec<Vec<u8>>,
    batch: usize,
) -> String {
    let mut token = String::new();
    for chunk in docs.chunks(batch.max(1)) {
        let chunk = chunk.to_vec();
        let t = token.clone();
        let out = eventually(
            SETTLE,
            &format!("a batch of {} documents for {tenant}", chunk.len()),
            || {
                let chunk = chunk.clone();
                let t = t.clone();
                async move {
                    match client.put_documents(tenant, chunk, Vec::new(), &t).await {
                        Ok(out) => Ok(Some(out)),
                        Err(e) if e.is_retryable() => Err(e.to_string()),
                        Err(e) => panic!("put to {tenant} failed: {e}"),
                    }
                }
            },
        )
        .await;
        assert!(
            out.rejected.is_empty(),
            "documents rejected: {:?}",
            out.rejected
        );
        token = out.token;
    }
    token
}

/// One search through a raw router client with an explicit replica
/// selection policy (the benchmarks' and tests' override).
pub async fn search_with(
    router: &mut RawRouter,
    tenant: &str,
    query: &str,
    limit: u32,
    selection: pb::ReplicaSelection,
) -> Result<pb::RouterSearchResponse, tonic::Status> {
    router
        .search(pb::RouterSearchRequest {
            tenant: tenant.to_string(),
            user: "u:reader".into(),
            query: query.to_string(),
            limit,
            timeout_ms: 10_000,
            selection: selection as i32,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// What a bounded search load observed.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Client-side latency of every successful search.
    pub latencies: Vec<Duration>,
    /// Successful searches per serving node (every shard's replica counts).
    pub served: std::collections::BTreeMap<NodeId, u64>,
    /// Shard answers that came from a hedge or failover.
    pub hedged: u64,
    /// Failed searches, with their errors.
    pub errors: Vec<String>,
}

impl LoadReport {
    /// Successful searches.
    pub fn ok(&self) -> usize {
        self.latencies.len()
    }

    /// Share of shard answers served by `node` (0 when nothing was served).
    pub fn share(&self, node: NodeId) -> f64 {
        let total: u64 = self.served.values().sum();
        if total == 0 {
            return 0.0;
        }
        self.served.get(&node).copied().unwrap_or(0) as f64 / total as f64
    }

    /// The `q` quantile (0..=1) of the latencies, by nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.latencies.clone();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v.sort_unstable();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    /// Mean latency.
    pub fn mean(&self) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.iter().sum::<Duration>() / self.latencies.len() as u32
    }

    /// Adds `other`'s observations to this report.
    pub fn absorb(&mut self, other: LoadReport) {
        self.latencies.extend(other.latencies);
        for (n, c) in other.served {
            *self.served.entry(n).or_default() += c;
        }
        self.hedged += other.hedged;
        self.errors.extend(other.errors);
    }
}

/// Runs searches against the router at `addr` from `workers` concurrent
/// loops, each back to back, cycling through `queries`, until `max_requests`
/// searches were sent in all or `max_time` has passed (whichever first).
pub async fn search_load(
    addr: &str,
    tenant: &str,
    queries: &[&str],
    workers: usize,
    max_requests: usize,
    max_time: Duration,
    selection: pb::ReplicaSelection,
) -> LoadReport {
    let base = raw_client(addr).await.expect("router client");
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let queries: Vec<String> = queries.iter().map(|q| q.to_string()).collect();
    let tasks = (0..workers.max(1)).map(|w| {
        let mut c = base.clone();
        let sent = sent.clone();
        let queries = queries.clone();
        let tenant = tenant.to_string();
        async move {
            let mut rep = LoadReport::default();
            loop {
                let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= max_requests || started.elapsed() >= max_time {
                    break;
                }
                let q = &queries[(n + w) % queries.len().max(1)];
                let t0 = std::time::Instant::now();
                match search_with(&mut c, &tenant, q, 10, selection).await {
                    Ok(resp) => {
                        rep.latencies.push(t0.elapsed());
                        for s in &resp.served_by {
                            *rep.served.entry(s.node).or_default() += 1;
                            rep.hedged += u64::from(s.hedged);
                        }
                    }
                    Err(e) => rep.errors.push(format!("{:?}: {}", e.code(), e.message())),
                }
            }
            rep
        }
    });
    let mut all = LoadReport::default();
    for rep in futures::future::join_all(tasks).await {
        all.absorb(rep);
    }
    all
}

/// Creates a tenant through the router, retrying retryable errors.
pub async fn create_tenant(
    client: &TesseraClient,
    spec: &tessera_client::TenantSpec,
) -> tessera_client::TenantView {
    eventually(
        SETTLE,
        &format!("creation of tenant {}", spec.id),
        || async move {
            match client.create_tenant(spec).await {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.is_retryable() => Err(e.to_string()),
                Err(e) => panic!("create tenant {}: {e}", spec.id),
            }
        },
    )
    .await
}

/// Waits until every replica of the tenant's shard has applied and indexed
/// everything its leader committed, so that a benchmark measures a settled
/// index rather than the bulk load's commits and merges. Returns the shard.
pub async fn wait_indexed(cluster: &TestCluster, tenant: &str) -> u64 {
    let map = cluster.map(1).await;
    let shard = map
        .tenants
        .iter()
        .find(|t| t.id == tenant)
        .and_then(|t| t.partitions.first().copied())
        .expect("the tenant's shard");
    wait_shards_indexed(cluster, &[shard], SETTLE).await;
    shard
}

/// Waits (up to `timeout`) until every up replica of each of `shards` has
/// indexed everything its leader committed.
pub async fn wait_shards_indexed(cluster: &TestCluster, shards: &[u64], timeout: Duration) {
    eventually(timeout, "every replica to index the load", || async move {
        for shard in shards {
            let mut marks = Vec::new();
            for id in cluster.up() {
                let mut c = cluster.client(id).await?;
                let st = c
                    .status(pb::StatusRequest {})
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                let g = st
                    .groups
                    .iter()
                    .find(|g| g.group == *shard)
                    .ok_or_else(|| format!("shard {shard} not open on node {id}"))?;
                marks.push((g.committed.max(g.applied), g.index_watermark));
            }
            let top = marks.iter().map(|m| m.0).max().unwrap_or(0);
            if !marks.iter().all(|(_, w)| *w >= top) {
                return Ok::<_, String>(None);
            }
        }
        Ok(Some(()))
    })
    .await
}

/// Applies `features.toml` to `tenant` through the router, retrying while the tenant's shards
/// settle; returns `(registry version, changed, session token)`.
pub async fn apply_features(
    client: &TesseraClient,
    tenant: &str,
    toml: &str,
) -> (u64, bool, String) {
    eventually(SETTLE, &format!("features applied to {tenant}"), || async {
        client
            .apply_features(tenant, toml)
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    })
    .await
}

/// The Prometheus text a `--metrics` endpoint serves (HTTP/1.0 GET, read
/// to the end), for tests that assert on counters.
pub async fn scrape_metrics(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("request: {e}"))?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .await
        .map_err(|e| format!("response: {e}"))?;
    Ok(body)
}

/// The sum of every sample of counter `name` (all label sets) in Prometheus
/// text; 0 when absent.
pub fn counter_total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
