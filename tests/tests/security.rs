//! Nobody gets in without a credential that allows it: every RPC of the
//! router (`Router`, `FeatureRouter`) and of the nodes (`Node`, `Features`)
//! refused without a credential, with a revoked key, with another tenant's
//! key and with the wrong scope, and nothing changed by the attempts
//! (shard digests and the cluster map equal before and after); node ports
//! refusing plaintext and foreign certificates; revocation reaching every
//! router; signed user tokens; the CLI's exit code 4; and a property test of
//! random keys × tenants × scopes × RPCs against an oracle.
//!
//! Real nodes (RocksDB, tantivy, QUIC) and real routers over TLS.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tessera_node::raft::network::NodeTls;
use tessera_proto::keys::Scope;
use tessera_proto::pb;
use tessera_proto::pb::feature_router_client::FeatureRouterClient;
use tessera_proto::pb::features_client::FeaturesClient;
use tessera_proto::pb::node_client::NodeClient;
use tessera_proto::pb::router_client::RouterClient;
use tessera_proto::transport::{self, PeerIdentity};
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::routers::{self, client, create_tenant, put_all, start_inproc_router};
use tessera_tests::{eventually, Layout, TestCluster};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Code;

type Keyed = InterceptedService<Channel, routers::WithKey>;

/// Raw router and feature-router clients presenting `key` (none: no header).
async fn raw(
    addr: &str,
    ca_pem: &str,
    key: Option<&str>,
) -> (RouterClient<Keyed>, FeatureRouterClient<Keyed>) {
    let channel = transport::router_endpoint(addr, ca_pem)
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .expect("TLS connection to the router");
    let header = key
        .map(|k| tonic::metadata::MetadataValue::try_from(format!("Bearer {k}")).expect("header"));
    (
        RouterClient::with_interceptor(channel.clone(), routers::WithKey(header.clone())),
        FeatureRouterClient::with_interceptor(channel, routers::WithKey(header)),
    )
}

fn spec(id: &str) -> tessera_client::TenantSpec {
    tessera_client::TenantSpec {
        id: id.into(),
        regions: vec!["us-east".into()],
        home: "us-east".into(),
        survival: "zone".into(),
        partitions: 1,
    }
}

fn doc_json(id: &str) -> Vec<u8> {
    tessera_tests::docs::doc(id, 1, 7)
}

/// One public RPC, called through raw clients; returns the status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    CreateTenant,
    GetTenant,
    ResizeTenant,
    MoveTenant,
    DrainNode,
    PutDocuments,
    PutGroups,
    Search,
    Get,
    Status,
    CheckResidency,
    CreateKey,
    ListKeys,
    RevokeKey,
    SetUserTokens,
    ApplyFeatures,
    ListFeatures,
    PutEvents,
    OnlineFeatures,
    HistoricalFeatures,
}

const ALL_RPCS: [Rpc; 20] = [
    Rpc::CreateTenant,
    Rpc::GetTenant,
    Rpc::ResizeTenant,
    Rpc::MoveTenant,
    Rpc::DrainNode,
    Rpc::PutDocuments,
    Rpc::PutGroups,
    Rpc::Search,
    Rpc::Get,
    Rpc::Status,
    Rpc::CheckResidency,
    Rpc::CreateKey,
    Rpc::ListKeys,
    Rpc::RevokeKey,
    Rpc::SetUserTokens,
    Rpc::ApplyFeatures,
    Rpc::ListFeatures,
    Rpc::PutEvents,
    Rpc::OnlineFeatures,
    Rpc::HistoricalFeatures,
];

impl Rpc {
    /// The oracle: the scope this RPC needs, and whether it is cluster-level
    /// (any tenant key is refused).
    fn needs(self) -> (Option<Scope>, bool) {
        match self {
            Rpc::CreateTenant
            | Rpc::ResizeTenant
            | Rpc::MoveTenant
            | Rpc::DrainNode
            | Rpc::Status
            | Rpc::CheckResidency
            | Rpc::CreateKey
            | Rpc::ListKeys
            | Rpc::RevokeKey
            | Rpc::SetUserTokens => (Some(Scope::Admin), true),
            Rpc::GetTenant => (None, false),
            Rpc::PutDocuments | Rpc::PutGroups | Rpc::PutEvents => (Some(Scope::Write), false),
            Rpc::Search | Rpc::Get => (Some(Scope::Search), false),
            Rpc::ApplyFeatures
            | Rpc::ListFeatures
            | Rpc::OnlineFeatures
            | Rpc::HistoricalFeatures => (Some(Scope::Features), false),
        }
    }

    /// Calls the RPC about `tenant`; `Ok` or the refusal's code.
    async fn call(
        self,
        r: &mut RouterClient<Keyed>,
        f: &mut FeatureRouterClient<Keyed>,
        tenant: &str,
    ) -> Result<(), Code> {
        let t = tenant.to_string();
        let res: Result<(), tonic::Status> = match self {
            Rpc::CreateTenant => r
                .create_tenant(pb::CreateTenantRequest {
                    id: t,
                    regions: vec!["us-east".into()],
                    home: "us-east".into(),
                    survival: "zone".into(),
                    partitions: 1,
                })
                .await
                .map(drop),
            Rpc::GetTenant => r
                .get_tenant(pb::GetTenantRequest { id: t, timeout_ms: 5_000 })
                .await
                .map(drop),
            // Same count: a no-op or a refusal, never a change.
            Rpc::ResizeTenant => r
                .resize_tenant(pb::ResizeTenantRequest { id: t, partitions: 1 })
                .await
                .map(drop),
            Rpc::MoveTenant => r
                .move_tenant(pb::MoveTenantRequest {
                    id: t,
                    partitions: vec![],
                    to_shard: 999_999,
                })
                .await
                .map(drop),
            Rpc::DrainNode => r
                .drain_node(pb::DrainNodeRequest { node: 999, undrain: false })
                .await
                .map(drop),
            Rpc::PutDocuments => r
                .put_documents(pb::PutDocumentsRequest {
                    tenant: t,
                    docs_json: vec![doc_json("intruder")],
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::PutGroups => r
                .put_groups(pb::PutGroupsRequest {
                    tenant: t,
                    memberships: vec![pb::Membership {
                        user: "u:intruder".into(),
                        groups: vec!["g:eng".into()],
                    }],
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::Search => r
                .search(pb::RouterSearchRequest {
                    tenant: t,
                    user: "u:alice".into(),
                    query: "runbook".into(),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::Get => r
                .get(pb::RouterGetRequest {
                    tenant: t,
                    id: "p-1".into(),
                    user: "u:alice".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::Status => r.status(pb::RouterStatusRequest { timeout_ms: 5_000 }).await.map(drop),
            Rpc::CheckResidency => r
                .check_residency(pb::CheckResidencyRequest { timeout_ms: 5_000 })
                .await
                .map(drop),
            Rpc::CreateKey => r
                .create_key(pb::CreateKeyRequest {
                    tenant: t,
                    scopes: vec!["search".into()],
                    name: "intruder".into(),
                })
                .await
                .map(drop),
            Rpc::ListKeys => r.list_keys(pb::ListKeysRequest { tenant: t }).await.map(drop),
            Rpc::RevokeKey => r
                .revoke_key(pb::RevokeKeyRequest { id: "0000000000000000".into() })
                .await
                .map(drop),
            Rpc::SetUserTokens => r
                .set_user_tokens(pb::SetUserTokensRequest {
                    policy: Some(pb::UserTokenPolicy {
                        tenant: t,
                        public_key_pem: String::new(),
                        required: false,
                    }),
                })
                .await
                .map(drop),
            Rpc::ApplyFeatures => f
                .apply_features(pb::ApplyFeaturesRequest {
                    tenant: t,
                    toml: "# nothing\n".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::ListFeatures => f
                .list_features(pb::ListFeaturesRequest { tenant: t, ..Default::default() })
                .await
                .map(drop),
            Rpc::PutEvents => f
                .put_events(pb::PutEventsRequest {
                    tenant: t,
                    events_json: vec![br#"{"kind":"view","user":"u:intruder","doc":"p-1","space":"ENG","ts":"2026-01-01T00:00:00Z"}"#.to_vec()],
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::OnlineFeatures => f
                .online_features(pb::OnlineFeaturesRequest { tenant: t, ..Default::default() })
                .await
                .map(drop),
            Rpc::HistoricalFeatures => f
                .historical_features(pb::HistoricalFeaturesRequest { tenant: t, ..Default::default() })
                .await
                .map(drop),
        };
        res.map_err(|s| s.code())
    }
}

fn is_refusal(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

/// Everything that could change: every shard's digest on every node, and
/// the map's tenants and keys.
async fn state(cluster: &TestCluster) -> (BTreeMap<(u64, u64), String>, String) {
    let map = cluster.map(1).await;
    let mut digests = BTreeMap::new();
    for shard in map.shards.iter() {
        for node in shard.voters.iter().chain(shard.learners.iter()) {
            let mut c = cluster.client(*node).await.expect("node client");
            let d = c
                .digest(pb::DigestRequest { shard: shard.id })
                .await
                .expect("digest")
                .into_inner();
            digests.insert((shard.id, *node), format!("{}@{}", d.digest, d.applied));
        }
    }
    let keys: Vec<String> = map
        .keys
        .iter()
        .map(|k| format!("{}:{}", k.id, k.revoked_ms))
        .collect();
    let tenants: Vec<String> = map
        .tenants
        .iter()
        .map(|t| format!("{}:{:?}", t.id, t.partitions))
        .collect();
    (digests, format!("{tenants:?} {keys:?}"))
}

/// Waits until every replica has applied the same entries, so that two
/// snapshots of [`state`] compare what is stored, not replication progress.
async fn settled_state(cluster: &TestCluster) -> (BTreeMap<(u64, u64), String>, String) {
    eventually(SETTLE, "replicas to agree", || async move {
        let s = state(cluster).await;
        let mut per_shard: BTreeMap<u64, BTreeSet<&String>> = BTreeMap::new();
        for ((shard, _), d) in &s.0 {
            per_shard.entry(*shard).or_default().insert(d);
        }
        if per_shard.values().all(|v| v.len() == 1) {
            Ok(Some(s.clone()))
        } else {
            Err(format!("{:?}", s.0))
        }
    })
    .await
}

struct Fixture {
    cluster: TestCluster,
    router: tessera_router::RouterHandle,
    addr: String,
    ca: String,
    admin: String,
}

async fn fixture() -> Fixture {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    let router = start_inproc_router(&cluster, "us-east", |_| {}).await;
    let addr = router.local_addr().to_string();
    let admin_client = client(&addr).await;
    for t in ["acme", "globex"] {
        create_tenant(&admin_client, &spec(t)).await;
        put_all(&admin_client, t, vec![doc_json("p-1")], 10).await;
    }
    Fixture {
        ca: cluster.ca_pem(),
        admin: cluster.admin_key(),
        cluster,
        router,
        addr,
    }
}

async fn new_key(admin: &tessera_client::TesseraClient, tenant: &str, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    admin
        .create_key(tenant, &scopes, "test")
        .await
        .expect("create key")
        .key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_refuses_missing_revoked_foreign_and_underscoped_keys_and_changes_nothing() {
    let fx = fixture().await;
    let admin = client(&fx.addr).await;
    let revoked = new_key(&admin, "acme", &["search", "write", "features"]).await;
    let revoked_id = tessera_proto::keys::parse(&revoked)
        .expect("key")
        .id
        .to_string();
    admin.revoke_key(&revoked_id).await.expect("revoke");
    let globex = new_key(&admin, "globex", &["search", "write", "features"]).await;
    let search_only = new_key(&admin, "acme", &["search"]).await;
    let write_only = new_key(&admin, "acme", &["write"]).await;
    let full_tenant = new_key(&admin, "acme", &["search", "write", "features"]).await;

    // Positive control: the right key does get through.
    let (mut r, mut f) = raw(&fx.addr, &fx.ca, Some(&search_only)).await;
    assert_eq!(Rpc::Search.call(&mut r, &mut f, "acme").await, Ok(()));

    let before = settled_state(&fx.cluster).await;
    for rpc in ALL_RPCS {
        let wrong_scope = match rpc.needs() {
            (Some(Scope::Search), _) => Some(write_only.as_str()),
            (Some(Scope::Write | Scope::Features), _) => Some(search_only.as_str()),
            (Some(Scope::Admin), _) => Some(full_tenant.as_str()),
            (None, _) => None, // any scope of the tenant reads its description
        };
        let mut attempts: Vec<(&str, Option<&str>)> = vec![
            ("no key", None),
            ("revoked key", Some(revoked.as_str())),
            ("another tenant's key", Some(globex.as_str())),
            ("a malformed key", Some("tsk_nothex")),
        ];
        if let Some(k) = wrong_scope {
            attempts.push(("the wrong scope", Some(k)));
        }
        for (what, key) in attempts {
            let (mut r, mut f) = raw(&fx.addr, &fx.ca, key).await;
            let got = rpc.call(&mut r, &mut f, "acme").await;
            match got {
                Err(code) if is_refusal(code) => {}
                other => panic!("{rpc:?} with {what}: expected a refusal, got {other:?}"),
            }
        }
    }
    let after = settled_state(&fx.cluster).await;
    assert_eq!(before, after, "a refused request changed something");
    drop(fx.router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_ports_refuse_plaintext_foreign_certificates_and_api_keys() {
    let fx = fixture().await;
    let addr = fx.cluster.grpc(1).to_string();
    let before = settled_state(&fx.cluster).await;

    // Plaintext, even with a valid admin key in the header.
    let plain = transport::plaintext_endpoint(&addr)
        .expect("endpoint")
        .connect_lazy();
    // TLS that trusts the cluster CA but presents no certificate.
    let no_cert = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&fx.ca))
                .domain_name(transport::NODE_SERVER_NAME),
        )
        .expect("TLS config")
        .connect_lazy();
    // A certificate of another CA, valid for the right names.
    let foreign = NodeTls::generate_in_memory(&[1])
        .expect("foreign certs")
        .remove(0);
    let foreign = PeerIdentity {
        ca_pem: fx.ca.clone(),
        cert_pem: foreign.cert_pem,
        key_pem: foreign.key_pem,
        unsecured: false,
    }
    .node_endpoint(&addr)
    .expect("endpoint")
    .connect_lazy();

    for (what, channel) in [
        ("plaintext", plain),
        ("TLS without a certificate", no_cert),
        ("a foreign certificate", foreign),
    ] {
        let header = Some(
            tonic::metadata::MetadataValue::try_from(format!("Bearer {}", fx.admin))
                .expect("header"),
        );
        let mut n = NodeClient::with_interceptor(channel.clone(), routers::WithKey(header.clone()));
        let mut f = FeaturesClient::with_interceptor(channel, routers::WithKey(header));
        let results: Vec<(&str, Result<(), tonic::Status>)> = vec![
            (
                "Write",
                n.write(pb::WriteRequest::default()).await.map(drop),
            ),
            (
                "Search",
                n.search(pb::SearchRequest::default()).await.map(drop),
            ),
            (
                "Stats",
                n.stats(pb::StatsRequest::default()).await.map(drop),
            ),
            ("Get", n.get(pb::GetRequest::default()).await.map(drop)),
            (
                "GetClusterMap",
                n.get_cluster_map(pb::ClusterMapRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "WatchClusterMap",
                n.watch_cluster_map(pb::ClusterMapRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "CreateTenant",
                n.create_tenant(pb::CreateTenantRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "AddLearner",
                n.add_learner(pb::AddLearnerRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "Status",
                n.status(pb::StatusRequest::default()).await.map(drop),
            ),
            (
                "Digest",
                n.digest(pb::DigestRequest::default()).await.map(drop),
            ),
            (
                "Snapshot",
                n.snapshot(pb::SnapshotRequest::default()).await.map(drop),
            ),
            (
                "ResizeTenant",
                n.resize_tenant(pb::ResizeTenantRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "MoveTenant",
                n.move_tenant(pb::MoveTenantRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "TenantSizes",
                n.tenant_sizes(pb::TenantSizesRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "SwapReplica",
                n.swap_replica(pb::SwapReplicaRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "DrainNode",
                n.drain_node(pb::DrainNodeRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "JoinCluster",
                n.join_cluster(pb::JoinClusterRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "Fence",
                n.fence(pb::FenceRequest::default()).await.map(drop),
            ),
            (
                "Export",
                n.export(pb::ExportRequest {
                    tenant: "acme".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
            (
                "Drop",
                n.drop(pb::DropRequest {
                    tenant: "acme".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
            (
                "PutKey",
                n.put_key(pb::PutKeyRequest::default()).await.map(drop),
            ),
            (
                "RevokeKey",
                n.revoke_key(pb::RevokeKeyRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "SetUserTokens",
                n.set_user_tokens(pb::SetUserTokensRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "ApplyFeatures",
                f.apply_features(pb::ApplyFeaturesRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "ListFeatures",
                f.list_features(pb::ListFeaturesRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "PutEvents",
                f.put_events(pb::PutEventsRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "OnlineFeatures",
                f.online_features(pb::OnlineFeaturesRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "HistoricalFeatures",
                f.historical_features(pb::HistoricalFeaturesRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "ExportEvents",
                f.export_events(pb::ExportEventsRequest {
                    tenant: "acme".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
            (
                "ImportEvents",
                f.import_events(pb::ImportEventsRequest::default())
                    .await
                    .map(drop),
            ),
        ];
        for (rpc, result) in results {
            // The handshake fails, so no handler runs: the call ends in a
            // transport error (UNAVAILABLE/UNKNOWN), never in an answer.
            assert!(result.is_err(), "node {rpc} answered a caller with {what}");
        }
    }
    // Positive control: the router certificate is admitted.
    let mut ok = fx.cluster.client(1).await.expect("router identity");
    ok.status(pb::StatusRequest {})
        .await
        .expect("status with the router certificate");
    assert_eq!(
        before,
        settled_state(&fx.cluster).await,
        "a refused call changed something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_key_is_refused_by_every_router_and_tenants_cannot_see_each_other() {
    let fx = fixture().await;
    let other = start_inproc_router(&fx.cluster, "us-east", |_| {}).await;
    let other_addr = other.local_addr().to_string();
    let admin = client(&fx.addr).await;
    let key = new_key(&admin, "acme", &["search"]).await;
    let id = tessera_proto::keys::parse(&key)
        .expect("key")
        .id
        .to_string();

    // Created through the first router, usable through the second.
    let (mut r2, mut f2) = raw(&other_addr, &fx.ca, Some(&key)).await;
    assert_eq!(Rpc::Search.call(&mut r2, &mut f2, "acme").await, Ok(()));

    // Another tenant, and a tenant that does not exist: the same refusal.
    let globex = r2
        .search(pb::RouterSearchRequest {
            tenant: "globex".into(),
            user: "u:a".into(),
            query: "runbook".into(),
            ..Default::default()
        })
        .await
        .expect_err("acme's key must not read globex");
    let missing = r2
        .search(pb::RouterSearchRequest {
            tenant: "nosuch".into(),
            user: "u:a".into(),
            query: "runbook".into(),
            ..Default::default()
        })
        .await
        .expect_err("acme's key must not probe tenants");
    assert_eq!(globex.code(), Code::PermissionDenied);
    assert_eq!(missing.code(), globex.code());
    assert_eq!(
        globex.message().replace("\"globex\"", "T"),
        missing.message().replace("\"nosuch\"", "T")
    );

    admin.revoke_key(&id).await.expect("revoke");
    let (ca, key) = (&fx.ca, &key);
    for addr in [&fx.addr, &other_addr] {
        eventually(
            SETTLE,
            &format!("router {addr} to refuse the revoked key"),
            || async move {
                let (mut r, mut f) = raw(addr, ca, Some(key)).await;
                match Rpc::Search.call(&mut r, &mut f, "acme").await {
                    Err(Code::Unauthenticated) => Ok(Some(())),
                    other => Err(format!("still {other:?}")),
                }
            },
        )
        .await;
    }

    // Key operations are in the router's audit log, with the caller's key id.
    let audit = std::fs::read_to_string(fx.cluster.dir.path().join("audit-inproc-us-east.jsonl"))
        .expect("audit log");
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(lines.iter().any(|l| l["rpc"] == "revoke_key"
        && l["target"] == format!("key {id}")
        && l["outcome"] == "ok"));
    assert!(lines
        .iter()
        .any(|l| l["rpc"] == "create_key" && l["outcome"] == "ok"));
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_can_require_signed_user_tokens() {
    let fx = fixture().await;
    let admin = client(&fx.addr).await;
    let key = new_key(&admin, "acme", &["search"]).await;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    admin
        .set_user_tokens("acme", &pair.public_key_pem(), true)
        .await
        .expect("policy");
    let signing = jsonwebtoken::EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes())
        .expect("signing key");
    let token_for = |sub: &str, tenant: &str, exp_offset: i64| {
        let exp = chrono_now() + exp_offset;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &serde_json::json!({"sub": sub, "tenant": tenant, "exp": exp}),
            &signing,
        )
        .expect("token")
    };
    let search = |token: Option<String>| {
        let key = key.clone();
        let (addr, ca) = (fx.addr.clone(), fx.ca.clone());
        async move {
            let (mut r, _) = raw(&addr, &ca, Some(&key)).await;
            let mut req = tonic::Request::new(pb::RouterSearchRequest {
                tenant: "acme".into(),
                user: "u:alice".into(),
                query: "runbook".into(),
                ..Default::default()
            });
            if let Some(t) = token {
                req.metadata_mut().insert(
                    tessera_proto::keys::USER_TOKEN_HEADER,
                    t.parse().expect("header"),
                );
            }
            r.search(req).await.map(drop).map_err(|s| s.code())
        }
    };
    eventually(SETTLE, "the policy to reach the router", || async {
        match search(None).await {
            Err(Code::Unauthenticated) => Ok(Some(())),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        search(Some(token_for("u:alice", "acme", 600))).await,
        Ok(())
    );
    assert_eq!(
        search(Some(token_for("u:mallory", "acme", 600))).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        search(Some(token_for("u:alice", "globex", 600))).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        search(Some(token_for("u:alice", "acme", -3600))).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        search(Some("not.a.token".into())).await,
        Err(Code::Unauthenticated)
    );
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_exits_4_with_a_one_line_reason_when_not_allowed() {
    let fx = fixture().await;
    let admin = client(&fx.addr).await;
    let key = new_key(&admin, "globex", &["search"]).await;
    for (what, key) in [
        ("another tenant's key", key.as_str()),
        ("an unknown key", "tsk_0123456789abcdef_nope"),
    ] {
        let out = routers::cli(&[
            "--router",
            &fx.addr,
            "--api-key",
            key,
            "search",
            "acme",
            "--user",
            "u:alice",
            "runbook",
        ])
        .await;
        assert_eq!(out.status.code(), Some(4), "{what}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{what}: {stderr}");
    }
    // The admin key (from the environment the helper sets) is allowed.
    let ok = routers::cli(&[
        "--router", &fx.addr, "search", "acme", "--user", "u:alice", "runbook",
    ])
    .await;
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
}

/// Random keys × tenants × scopes × RPCs against the oracle: no request the
/// oracle forbids is accepted, and none it allows is refused for lack of a
/// credential.
#[test]
fn property_random_grants_never_exceed_the_oracle() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let fx = rt.block_on(fixture());
    let admin = rt.block_on(client(&fx.addr));
    // Every scope subset, for the cluster and for each tenant (admin only
    // for the cluster: tenants cannot hold it).
    let mut keys: Vec<(String, BTreeSet<Scope>, String)> = Vec::new();
    for owner in ["", "acme", "globex"] {
        for mask in 1u8..16 {
            let scopes: BTreeSet<Scope> = Scope::ALL
                .into_iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, s)| s)
                .collect();
            if !owner.is_empty() && scopes.contains(&Scope::Admin) {
                continue;
            }
            let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
            let key = rt.block_on(new_key(&admin, owner, &names));
            keys.push((owner.to_string(), scopes, key));
        }
    }
    // Safe RPCs only: a granted drain or revoke would disturb the others.
    let rpcs = [
        Rpc::GetTenant,
        Rpc::PutDocuments,
        Rpc::PutGroups,
        Rpc::Search,
        Rpc::Get,
        Rpc::Status,
        Rpc::ListKeys,
        Rpc::ListFeatures,
        Rpc::OnlineFeatures,
        Rpc::CreateTenant,
        Rpc::ResizeTenant,
        Rpc::DrainNode,
    ];
    let targets = ["acme", "globex", "nosuch"];
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 96,
        ..Default::default()
    });
    let strategy = (0..keys.len(), 0..rpcs.len(), 0..targets.len());
    let result = runner.run(&strategy, |(k, rpc, target)| {
        let (owner, scopes, key) = &keys[k];
        let (rpc, target) = (rpcs[rpc], targets[target]);
        let (need, cluster_level) = rpc.needs();
        let tenant_ok = owner.is_empty() || (!cluster_level && owner == target);
        let scope_ok = match need {
            Some(s) => scopes.contains(&s),
            None => !scopes.is_empty(),
        };
        let allowed = tenant_ok && scope_ok;
        let got = rt.block_on(async {
            let (mut r, mut f) = raw(&fx.addr, &fx.ca, Some(key)).await;
            rpc.call(&mut r, &mut f, target).await
        });
        let refused = matches!(got, Err(c) if is_refusal(c));
        proptest::prop_assert_eq!(
            refused,
            !allowed,
            "{:?} on {} with a key of {:?} {:?}: {:?}",
            rpc,
            target,
            owner,
            scopes,
            got
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    drop(fx);
}
