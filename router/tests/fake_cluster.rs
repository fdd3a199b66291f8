//! The router against in-process fake storage nodes that speak the node API
//! (tessera.proto) with scripted behaviour: leaders that redirect, replicas
//! that lag, stall or fail. Exercises routing, merging, hedging, breakers,
//! session tokens and residency end to end through the client library,
//! without the real node binary.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tessera_client::{ClientError, ErrorClass, SearchQuery, TenantSpec, TesseraClient};
use tessera_proto::pb::node_server::{Node, NodeServer};
use tessera_proto::pb::router_client::RouterClient;
use tessera_proto::pb::*;
use tessera_proto::{Document, NodeId, ShardId};
use tessera_router::{Router, RouterConfig, RouterHandle};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, WatchStream};
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

/// One shard's documents of one tenant: id → (parsed, original JSON).
type ShardDocs = BTreeMap<String, (Document, Vec<u8>)>;

/// State every fake node shares: the map and a perfectly replicated store.
#[derive(Default)]
struct Store {
    docs: BTreeMap<(String, ShardId), ShardDocs>,
    applied: HashMap<ShardId, u64>,
    memberships: HashMap<(String, ShardId), Vec<Membership>>,
}

struct Cluster {
    map: watch::Sender<ClusterMap>,
    store: Mutex<Store>,
    leaders: Mutex<HashMap<ShardId, NodeId>>,
    addrs: Mutex<HashMap<NodeId, String>>,
}

/// Per-node knobs.
#[derive(Default)]
struct Behaviour {
    /// Searches never answer.
    stall_search: AtomicBool,
    /// Every call fails with UNAVAILABLE.
    fail: AtomicBool,
    /// The replica reports applied index 0 (it lags behind everything).
    lag: AtomicBool,
    /// Searches answered.
    searches: AtomicU64,
    /// `num_docs` of the last global stats received (0 = none).
    last_global_docs: AtomicU64,
}

#[derive(Clone)]
struct FakeNode {
    id: NodeId,
    region: String,
    cluster: Arc<Cluster>,
    b: Arc<Behaviour>,
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_lowercase).collect()
}

impl FakeNode {
    fn check(&self) -> Result<(), Status> {
        if self.b.fail.load(Ordering::SeqCst) {
            return Err(Status::unavailable("fake node failing"));
        }
        Ok(())
    }

    fn visible_applied(&self, shard: ShardId) -> u64 {
        if self.b.lag.load(Ordering::SeqCst) {
            0
        } else {
            self.cluster
                .store
                .lock()
                .applied
                .get(&shard)
                .copied()
                .unwrap_or(0)
        }
    }

    fn wait_applied(&self, shard: ShardId, min: u64) -> Result<u64, Status> {
        let a = self.visible_applied(shard);
        if min > a {
            let mut s = Status::unavailable(format!("behind: applied {a} < {min}"));
            s.metadata_mut().insert(
                "x-tessera-behind",
                MetadataValue::try_from(a.to_string()).expect("ascii"),
            );
            return Err(s);
        }
        Ok(a)
    }

    fn matches(&self, tenant: &str, shard: ShardId, query: &str) -> Vec<Hit> {
        let q = words(query);
        let store = self.cluster.store.lock();
        let mut hits: Vec<Hit> = store
            .docs
            .get(&(tenant.to_string(), shard))
            .map(|docs| {
                docs.values()
                    .filter_map(|(d, _)| {
                        let text = words(&format!("{} {}", d.title, d.body));
                        let tf = text.iter().filter(|w| q.contains(w)).count();
                        (tf > 0).then(|| Hit {
                            id: d.id.clone(),
                            score: tf as f32,
                            explanation: None,
                            ..Default::default()
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        hits
    }
}

type WatchResult =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ClusterMapResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Node for FakeNode {
    async fn write(&self, r: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        self.check()?;
        let req = r.into_inner();
        let leader = self.cluster.leaders.lock().get(&req.shard).copied();
        if leader != Some(self.id) {
            let mut s = Status::failed_precondition(format!("not leader of shard {}", req.shard));
            if let Some(l) = leader {
                let addr = self
                    .cluster
                    .addrs
                    .lock()
                    .get(&l)
                    .cloned()
                    .unwrap_or_default();
                s.metadata_mut().insert(
                    "x-tessera-leader-id",
                    MetadataValue::try_from(l.to_string()).expect("ascii"),
                );
                s.metadata_mut().insert(
                    "x-tessera-leader-addr",
                    MetadataValue::try_from(addr).expect("ascii"),
                );
            }
            return Err(s);
        }
        let mut store = self.cluster.store.lock();
        let key = (req.tenant.clone(), req.shard);
        let mut applied_ops = 0;
        for json in &req.docs_json {
            let d = Document::from_json_bytes(json)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let docs = store.docs.entry(key.clone()).or_default();
            if docs
                .get(&d.id)
                .is_none_or(|(old, _)| old.version < d.version)
            {
                docs.insert(d.id.clone(), (d, json.clone()));
                applied_ops += 1;
            }
        }
        for del in &req.deletes {
            if let Some(docs) = store.docs.get_mut(&key) {
                if docs
                    .get(&del.id)
                    .is_some_and(|(old, _)| old.version < del.version)
                {
                    docs.remove(&del.id);
                    applied_ops += 1;
                }
            }
        }
        if !req.memberships.is_empty() {
            store
                .memberships
                .entry(key)
                .or_default()
                .extend(req.memberships.clone());
        }
        let applied = store.applied.entry(req.shard).or_insert(0);
        *applied += 1;
        Ok(Response::new(WriteResponse {
            token: Some(SessionToken {
                shard: req.shard,
                applied: *applied,
            }),
            applied_ops,
            noop_ops: 0,
        }))
    }

    async fn search(&self, r: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        self.check()?;
        if self.b.stall_search.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let req = r.into_inner();
        let applied = self.wait_applied(req.shard, req.min_applied)?;
        if let Some(g) = &req.global_stats {
            self.b.last_global_docs.store(g.num_docs, Ordering::SeqCst);
        }
        let all = self.matches(&req.tenant, req.shard, &req.query);
        let total = all.len() as u64;
        let hits: Vec<Hit> = all
            .into_iter()
            .filter(|h| match &req.after {
                None => true,
                Some(a) => h.score < a.score || (h.score == a.score && h.id > a.id),
            })
            .take(req.limit as usize)
            .collect();
        self.b.searches.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(SearchResponse {
            hits,
            shard: req.shard,
            node: self.id,
            region: self.region.clone(),
            applied,
            total_matches: total,
            ..SearchResponse::default()
        }))
    }

    async fn stats(&self, r: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        self.check()?;
        let req = r.into_inner();
        self.wait_applied(req.shard, req.min_applied)?;
        let store = self.cluster.store.lock();
        let docs = store.docs.get(&(req.tenant.clone(), req.shard));
        let num_docs = docs.map_or(0, |d| d.len() as u64);
        let terms = words(&req.query)
            .into_iter()
            .map(|t| TermStat {
                field: "body".into(),
                doc_freq: docs.map_or(0, |d| {
                    d.values()
                        .filter(|(doc, _)| words(&doc.body).contains(&t))
                        .count() as u64
                }),
                term: t,
            })
            .collect();
        Ok(Response::new(StatsResponse {
            stats: Some(GlobalStats {
                num_docs,
                title_tokens: 0,
                body_tokens: 0,
                terms,
            }),
        }))
    }

    async fn get(&self, r: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.check()?;
        let req = r.into_inner();
        let applied = self.wait_applied(req.shard, req.min_applied)?;
        let store = self.cluster.store.lock();
        let found = store
            .docs
            .get(&(req.tenant.clone(), req.shard))
            .and_then(|d| d.get(&req.id));
        Ok(Response::new(GetResponse {
            found: found.is_some(),
            doc_json: found.map(|(_, j)| j.clone()).unwrap_or_default(),
            applied,
        }))
    }

    async fn get_cluster_map(
        &self,
        _r: Request<ClusterMapRequest>,
    ) -> Result<Response<ClusterMapResponse>, Status> {
        self.check()?;
        Ok(Response::new(ClusterMapResponse {
            map: Some(self.cluster.map.borrow().clone()),
        }))
    }

    type WatchClusterMapStream = WatchResult;

    async fn watch_cluster_map(
        &self,
        _r: Request<ClusterMapRequest>,
    ) -> Result<Response<WatchResult>, Status> {
        self.check()?;
        let s = WatchStream::new(self.cluster.map.subscribe())
            .map(|m| Ok(ClusterMapResponse { map: Some(m) }));
        Ok(Response::new(Box::pin(s)))
    }

    async fn create_tenant(
        &self,
        r: Request<CreateTenantRequest>,
    ) -> Result<Response<CreateTenantResponse>, Status> {
        self.check()?;
        let req = r.into_inner();
        let mut out = None;
        self.cluster.map.send_modify(|m| {
            if m.tenants.iter().any(|t| t.id == req.id) {
                return;
            }
            let shards: Vec<u64> = m.shards.iter().map(|s| s.id).collect();
            let t = TenantInfo {
                id: req.id.clone(),
                regions: req.regions.clone(),
                home: req.home.clone(),
                survival: if req.survival.is_empty() {
                    "zone".into()
                } else {
                    req.survival.clone()
                },
                partitions: (0..req.partitions.max(1) as usize)
                    .map(|i| shards[i % shards.len()])
                    .collect(),
                resize: None,
                read_floors: Vec::new(),
            };
            m.tenants.push(t.clone());
            m.epoch += 1;
            out = Some((t, m.epoch));
        });
        match out {
            Some((t, epoch)) => Ok(Response::new(CreateTenantResponse {
                tenant: Some(t),
                epoch,
            })),
            None => Err(Status::already_exists(format!("tenant {} exists", req.id))),
        }
    }

    async fn add_learner(
        &self,
        _r: Request<AddLearnerRequest>,
    ) -> Result<Response<AddLearnerResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.check()?;
        let map = self.cluster.map.borrow().clone();
        let leaders = self.cluster.leaders.lock().clone();
        let groups = map
            .shards
            .iter()
            .filter(|s| s.voters.contains(&self.id) || s.learners.contains(&self.id))
            .map(|s| {
                let leader = leaders.get(&s.id).copied().unwrap_or(0);
                GroupStatus {
                    group: s.id,
                    role: if leader == self.id {
                        "leader"
                    } else {
                        "follower"
                    }
                    .into(),
                    leader,
                    ..Default::default()
                }
            })
            .collect();
        Ok(Response::new(StatusResponse {
            node: self.id,
            region: self.region.clone(),
            groups,
            ..Default::default()
        }))
    }

    async fn digest(&self, _r: Request<DigestRequest>) -> Result<Response<DigestResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn snapshot(
        &self,
        _r: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn resize_tenant(
        &self,
        _r: Request<tessera_proto::pb::ResizeTenantRequest>,
    ) -> Result<Response<CreateTenantResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn move_tenant(
        &self,
        _r: Request<tessera_proto::pb::MoveTenantRequest>,
    ) -> Result<Response<CreateTenantResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn tenant_sizes(
        &self,
        _r: Request<tessera_proto::pb::TenantSizesRequest>,
    ) -> Result<Response<tessera_proto::pb::TenantSizesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn swap_replica(
        &self,
        _r: Request<tessera_proto::pb::SwapReplicaRequest>,
    ) -> Result<Response<tessera_proto::pb::AddLearnerResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn drain_node(
        &self,
        _r: Request<tessera_proto::pb::DrainNodeRequest>,
    ) -> Result<Response<tessera_proto::pb::DrainNodeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn join_cluster(
        &self,
        _r: Request<tessera_proto::pb::JoinClusterRequest>,
    ) -> Result<Response<tessera_proto::pb::AddLearnerResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn fence(
        &self,
        _r: Request<tessera_proto::pb::FenceRequest>,
    ) -> Result<Response<tessera_proto::pb::FenceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn export(
        &self,
        _r: Request<tessera_proto::pb::ExportRequest>,
    ) -> Result<Response<tessera_proto::pb::ExportResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn drop(
        &self,
        _r: Request<tessera_proto::pb::DropRequest>,
    ) -> Result<Response<tessera_proto::pb::DropResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn put_key(
        &self,
        _r: Request<tessera_proto::pb::PutKeyRequest>,
    ) -> Result<Response<tessera_proto::pb::SecurityResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn revoke_key(
        &self,
        _r: Request<tessera_proto::pb::RevokeKeyRequest>,
    ) -> Result<Response<tessera_proto::pb::SecurityResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn set_user_tokens(
        &self,
        _r: Request<tessera_proto::pb::SetUserTokensRequest>,
    ) -> Result<Response<tessera_proto::pb::SecurityResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Four fake nodes (1, 2 in us-east; 3 in eu-west; 4 in ap-south), shards 1
/// and 2 with voters 1,2,3 and learner 4; leaders: shard 1 → node 2,
/// shard 2 → node 3. Tenants: `acme` (us-east, eu-west; partitions [1, 2])
/// and `solo` (eu-west only; partition [1]).
struct Harness {
    cluster: Arc<Cluster>,
    nodes: HashMap<NodeId, Arc<Behaviour>>,
    router: RouterHandle,
    client: TesseraClient,
}

async fn start(tweak: impl FnOnce(&mut RouterConfig)) -> Harness {
    let regions = [
        (1, "us-east"),
        (2, "us-east"),
        (3, "eu-west"),
        (4, "ap-south"),
    ];
    let mut listeners = Vec::new();
    for (id, region) in regions {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = l.local_addr().expect("addr");
        listeners.push((id, region, l, addr));
    }
    let map = ClusterMap {
        epoch: 1,
        nodes: listeners
            .iter()
            .map(|(id, region, _, addr)| NodeInfo {
                id: *id,
                region: (*region).into(),
                zone: "a".into(),
                raft_addr: String::new(),
                grpc_addr: addr.to_string(),
                state: String::new(),
            })
            .collect(),
        shards: [1u64, 2]
            .iter()
            .map(|s| ShardInfo {
                id: *s,
                voters: vec![1, 2, 3],
                learners: vec![4],
                ..Default::default()
            })
            .collect(),
        tenants: vec![
            TenantInfo {
                id: "acme".into(),
                regions: vec!["us-east".into(), "eu-west".into()],
                home: "us-east".into(),
                survival: "zone".into(),
                partitions: vec![1, 2],
                resize: None,
                read_floors: Vec::new(),
            },
            TenantInfo {
                id: "solo".into(),
                regions: vec!["eu-west".into()],
                home: "eu-west".into(),
                survival: "zone".into(),
                partitions: vec![1],
                resize: None,
                read_floors: Vec::new(),
            },
        ],
        placement: None,
        keys: vec![test_key_record()],
        user_tokens: Vec::new(),
    };
    let (tx, _) = watch::channel(map);
    let cluster = Arc::new(Cluster {
        map: tx,
        store: Mutex::new(Store::default()),
        leaders: Mutex::new(HashMap::from([(1, 2), (2, 3)])),
        addrs: Mutex::new(
            listeners
                .iter()
                .map(|(id, _, _, a)| (*id, a.to_string()))
                .collect(),
        ),
    });
    let mut nodes = HashMap::new();
    let mut seeds = Vec::new();
    for (id, region, l, addr) in listeners {
        let b = Arc::new(Behaviour::default());
        nodes.insert(id, Arc::clone(&b));
        seeds.push(addr.to_string());
        let node = FakeNode {
            id,
            region: region.into(),
            cluster: Arc::clone(&cluster),
            b,
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(NodeServer::new(node))
                .serve_with_incoming(TcpListenerStream::new(l)),
        );
    }
    let mut cfg = RouterConfig::new("127.0.0.1:0".parse().expect("addr"), seeds, "us-east");
    tweak(&mut cfg);
    let router = Router::start(cfg).await.expect("router starts");
    let client = TesseraClient::connect(router.local_addr().to_string())
        .await
        .expect("client connects")
        .with_api_key(&test_key().token)
        .expect("key header")
        .with_timeout(Duration::from_secs(5));
    Harness {
        cluster,
        nodes,
        router,
        client,
    }
}

fn doc(id: &str, body: &str) -> Vec<u8> {
    format!(r#"{{"id":"{id}","title":"page {id}","body":"{body}","version":1}}"#).into_bytes()
}

async fn load_acme(h: &Harness, n: usize) -> String {
    let docs: Vec<Vec<u8>> = (0..n)
        .map(|i| doc(&format!("p-{i:03}"), &"deploy ".repeat(1 + i % 5)))
        .collect();
    let out = h
        .client
        .put_documents("acme", docs, vec![], "")
        .await
        .expect("put");
    assert_eq!(out.acked, n as u64);
    assert!(out.rejected.is_empty());
    assert!(!out.token.is_empty());
    out.token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_leader_hints_and_pages_merge_without_gaps() {
    let h = start(|_| {}).await;
    let token = load_acme(&h, 40).await;
    {
        let store = h.cluster.store.lock();
        let on1 = store
            .docs
            .get(&("acme".to_string(), 1))
            .map_or(0, |d| d.len());
        let on2 = store
            .docs
            .get(&("acme".to_string(), 2))
            .map_or(0, |d| d.len());
        assert_eq!(on1 + on2, 40);
        assert!(
            on1 > 0 && on2 > 0,
            "both partitions receive documents: {on1} / {on2}"
        );
    }

    // Page through everything; DFS statistics are sent because p = 2.
    let mut q = SearchQuery::new("acme", "u:alice", "deploy")
        .limit(7)
        .token(&token);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = h.client.search(&q).await.expect("search");
        pages += 1;
        assert!(page.hits.len() <= 7);
        assert_eq!(page.served_by.len(), 2, "one replica per shard");
        for w in page.hits.windows(2) {
            assert!(w[0].score > w[1].score || (w[0].score == w[1].score && w[0].id < w[1].id));
        }
        seen.extend(page.hits.iter().map(|h| h.id.clone()));
        match page.cursor {
            Some(c) => q = q.cursor(c),
            None => break,
        }
    }
    assert_eq!(pages, 6);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 40, "no duplicates, no gaps");
    let dfs: Vec<u64> = h
        .nodes
        .values()
        .map(|b| b.last_global_docs.load(Ordering::SeqCst))
        .collect();
    assert!(
        dfs.contains(&40),
        "global stats summed over both shards: {dfs:?}"
    );

    // Point read with the token, then a delete.
    let got = h
        .client
        .get("acme", "p-007", "u:alice", Some(&token))
        .await
        .expect("get");
    assert!(got.found);
    assert_eq!(got.document().map(|d| d.id), Some("p-007".to_string()));
    let del = h
        .client
        .delete("acme", "p-007", 2, &token)
        .await
        .expect("delete");
    assert_eq!(del.acked, 1);
    let gone = h
        .client
        .get("acme", "p-007", "u:alice", Some(&del.token))
        .await
        .expect("get");
    assert!(!gone.found);

    let t = h.client.tenant("acme").await.expect("tenant");
    assert_eq!(t.docs, 39);
    assert_eq!(t.partitions.len(), 2);
    h.router.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_token_skips_a_lagging_replica() {
    let h = start(|_| {}).await;
    let token = load_acme(&h, 10).await;
    // Node 1 is local and preferred, but lags behind every write.
    h.nodes[&1].lag.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let page = h
            .client
            .search(
                &SearchQuery::new("acme", "u:alice", "deploy")
                    .limit(20)
                    .token(&token),
            )
            .await
            .expect("search with token");
        assert_eq!(page.hits.len(), 10);
        assert!(
            page.served_by.iter().all(|s| s.node != 1 && s.applied > 0),
            "{:?}",
            page.served_by
        );
    }
    // Without a token, a lagging replica may serve.
    let page = h
        .client
        .search(&SearchQuery::new("acme", "u:alice", "deploy"))
        .await
        .expect("search without token");
    assert!(!page.served_by.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_behind_is_a_clear_retryable_error() {
    let h = start(|_| {}).await;
    let token = load_acme(&h, 3).await;
    for b in h.nodes.values() {
        b.lag.store(true, Ordering::SeqCst);
    }
    let err = h
        .client
        .search(&SearchQuery::new("acme", "u:alice", "deploy").token(&token))
        .await
        .expect_err("nobody has applied the token");
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
    assert!(err.to_string().contains("session token"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replica_is_hedged_around() {
    let h = start(|_| {}).await;
    load_acme(&h, 10).await;
    h.nodes[&1].stall_search.store(true, Ordering::SeqCst);
    h.nodes[&2].stall_search.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let page = h
            .client
            .search(&SearchQuery::new("acme", "u:alice", "deploy").limit(20))
            .await
            .expect("hedged search");
        assert_eq!(page.hits.len(), 10);
        assert!(
            page.served_by.iter().all(|s| s.node == 3),
            "only node 3 answers: {:?}",
            page.served_by
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_a_failing_node_and_closes_when_it_returns() {
    let h = start(|c| c.breaker.cool_down = Duration::from_millis(100)).await;
    load_acme(&h, 5).await;
    h.nodes[&1].fail.store(true, Ordering::SeqCst);
    for _ in 0..8 {
        let page = h
            .client
            .search(&SearchQuery::new("acme", "u:alice", "deploy"))
            .await
            .expect("fails over");
        assert!(page.served_by.iter().all(|s| s.node != 1));
    }
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", h.router.local_addr()))
            .expect("endpoint")
            .connect()
            .await
            .expect("raw");
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {}", test_key().token)
        .parse()
        .expect("header");
    let mut raw = RouterClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });
    let breaker_of_1 = |st: &RouterStatusResponse| {
        st.nodes
            .iter()
            .find(|n| n.id == 1)
            .map(|n| (n.state.clone(), n.breaker.clone()))
    };
    let st = raw
        .status(RouterStatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    let (state, breaker) = breaker_of_1(&st).expect("node 1 listed");
    assert_eq!(state, "down");
    assert_ne!(breaker, "closed");
    assert_eq!(
        st.shards.iter().find(|s| s.id == 1).and_then(|s| s.leader),
        Some(2)
    );

    h.nodes[&1].fail.store(false, Ordering::SeqCst);
    // The background prober closes the breaker; wait for that condition.
    let mut closed = false;
    for _ in 0..200 {
        let st = raw
            .status(RouterStatusRequest::default())
            .await
            .expect("status")
            .into_inner();
        if breaker_of_1(&st).is_some_and(|(s, b)| s == "up" && b == "closed") {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "breaker of node 1 closes after it recovers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_leave_the_tenants_regions() {
    let h = start(|_| {}).await;
    h.cluster.leaders.lock().insert(1, 3);
    let out = h
        .client
        .put_documents("solo", vec![doc("s-1", "deploy")], vec![], "")
        .await
        .expect("put");
    assert_eq!(out.acked, 1);
    let page = h
        .client
        .search(&SearchQuery::new("solo", "u:alice", "deploy"))
        .await
        .expect("search");
    assert_eq!(
        page.served_by.iter().map(|s| s.node).collect::<Vec<_>>(),
        vec![3]
    );
    // With its only allowed replica down, the read fails rather than leave eu-west.
    h.nodes[&3].fail.store(true, Ordering::SeqCst);
    let err = h
        .client
        .search(&SearchQuery::new("solo", "u:alice", "deploy"))
        .await
        .expect_err("no replica in eu-west");
    assert_eq!(err.class(), ErrorClass::Retryable);
    for id in [1, 2, 4] {
        assert_eq!(
            h.nodes[&id].searches.load(Ordering::SeqCst),
            0,
            "node {id} must not serve solo"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_a_leader_are_unavailable_not_silent() {
    let h = start(|_| {}).await;
    for b in h.nodes.values() {
        b.fail.store(true, Ordering::SeqCst);
    }
    let client = h.client.clone().with_timeout(Duration::from_millis(600));
    let err = client
        .put_documents("acme", vec![doc("p-1", "x")], vec![], "")
        .await
        .expect_err("no leader");
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
    assert_eq!(err.exit_code(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_unknown_tenants_are_refused_up_front() {
    let h = start(|_| {}).await;
    let out = h
        .client
        .put_documents(
            "acme",
            vec![
                doc("ok-1", "x"),
                b"{\"id\":\"x\"}".to_vec(),
                b"\xff".to_vec(),
            ],
            vec![],
            "",
        )
        .await
        .expect("partial put");
    assert_eq!(out.acked, 1);
    assert_eq!(
        out.rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![1, 2]
    );

    let cases: Vec<(SearchQuery, &str)> = vec![
        (
            SearchQuery::new("acme", "u:alice", "x").limit(1001),
            "MAX_PAGE_SIZE",
        ),
        (
            SearchQuery::new(
                "acme",
                "u:alice",
                vec!["w"; tessera_proto::limits::MAX_QUERY_TERMS + 1].join(" "),
            ),
            "MAX_QUERY_TERMS",
        ),
        (SearchQuery::new("acme", "g:eng", "x"), "u:"),
        (
            SearchQuery::new("acme", "u:alice", "x").cursor("garbage"),
            "cursor",
        ),
        (
            SearchQuery::new("acme", "u:alice", "x").token("garbage"),
            "session token",
        ),
    ];
    for (q, needle) in cases {
        let e = h.client.search(&q).await.expect_err(needle);
        assert!(matches!(e, ClientError::InvalidInput(_)), "{e}");
        assert!(
            e.to_string().contains(needle),
            "{e} should mention {needle}"
        );
    }
    let e = h
        .client
        .search(&SearchQuery::new("nope", "u:alice", "x"))
        .await
        .expect_err("unknown");
    assert!(matches!(e, ClientError::NotFound(_)), "{e}");
    assert_eq!(e.exit_code(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_created_and_visible_at_once() {
    let h = start(|_| {}).await;
    let t = h
        .client
        .create_tenant(&TenantSpec::new("fresh", ["us-east"]).partitions(2))
        .await
        .expect("create");
    assert_eq!(t.partitions.len(), 2);
    assert_eq!(t.home, "us-east");
    let shown = h.client.tenant("fresh").await.expect("show");
    assert_eq!(shown.docs, 0);
    let again = h
        .client
        .create_tenant(&TenantSpec::new("fresh", ["us-east"]))
        .await
        .expect_err("exists");
    assert_eq!(again.class(), ErrorClass::BadInput);
    let groups = h
        .client
        .put_groups(
            "fresh",
            vec![tessera_client::GroupMembership {
                user: "u:a".into(),
                groups: vec!["g:eng".into()],
            }],
            "",
        )
        .await
        .expect("groups");
    assert_eq!(groups.acked, 1);
    let store = h.cluster.store.lock();
    assert_eq!(
        store.memberships.len(),
        2,
        "memberships go to every shard of the tenant"
    );
}

/// One cluster-level key with every scope, generated once per test binary
/// (argon2 is slow), that the fake map lists and the harness's clients send:
/// the router authenticates against fake nodes' maps exactly as against
/// real ones.
fn test_key() -> &'static tessera_proto::keys::NewKey {
    static KEY: std::sync::OnceLock<tessera_proto::keys::NewKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| tessera_proto::keys::generate().expect("test key"))
}

fn test_key_record() -> tessera_proto::pb::ApiKeyInfo {
    let key = test_key();
    tessera_proto::keys::KeyRecord {
        id: key.id.clone(),
        tenant: String::new(),
        scopes: tessera_proto::keys::Scope::ALL.into_iter().collect(),
        hash: key.hash.clone(),
        name: "fake cluster".into(),
        created_ms: 1,
        revoked_ms: 0,
    }
    .to_proto(true)
}
