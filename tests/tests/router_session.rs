//! Issue 3 acceptance, consistency: read-your-writes with session tokens
//! under replication lag. Every Raft link goes through a UDP fault proxy
//! (`[[route]]` in cluster.toml); once the shard has a leader, the links
//! into one follower get extra latency so it lags behind the quorum. A
//! search carrying a write's session token must never miss that write,
//! whichever replica the router picks.

use serde_json::json;
use tessera_chaos::{LinkControl, LinkFaults, UdpLinkProxy};
use tessera_client::TenantSpec;
use tessera_proto::pb;
use tessera_router::session::SessionToken;
use tessera_tests::cluster::Mode;
use tessera_tests::routers::{client, create_tenant, put_all, raw_client, spare_ip, spawn_router};
use tessera_tests::{docs, Layout, TestCluster};

/// One-way latency added to every Raft link into the lagging follower.
/// (openraft 0.9 times an AppendEntries out after one heartbeat interval,
/// 150 ms here, so the round trip must stay well below that.)
const LAG_ONE_WAY_MS: u64 = 40;

const WRITES: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_tokens_give_read_your_writes_under_replication_lag() {
    let mut cluster = TestCluster::prepare(&Layout::one_region_three_zones(), Mode::Process);
    // A proxy on every directed Raft link, healthy for now.
    let mut proxies = Vec::new();
    let mut k = 20u8;
    for from in 1..=3u64 {
        for to in (1..=3u64).filter(|t| *t != from) {
            let listen = std::net::SocketAddr::new(spare_ip(&cluster, k), 0);
            k += 1;
            let p = UdpLinkProxy::bind(listen, cluster.raft(to), LinkControl::healthy())
                .await
                .expect("bind raft proxy");
            cluster.add_route(from, to, p.local_addr());
            proxies.push((from, to, p));
        }
    }
    for id in [1, 2, 3] {
        cluster.start_node(id).await;
    }
    let router = spawn_router(&cluster, 1, "us-east", &[]).await;
    let c = client(&router.endpoint()).await;
    let tenant = create_tenant(&c, &TenantSpec::new("acme", ["us-east"])).await;
    let shard = tenant.partitions[0].shard;
    let seed = (0..100)
        .map(|i| docs::doc(&format!("p-{i}"), 1, i))
        .collect();
    put_all(&c, "acme", seed, 100).await;

    // The shard's leader, and the follower that is made to lag.
    let leader = cluster.leader_of(shard).await;
    let lagger = [3, 2, 1]
        .into_iter()
        .find(|n| *n != leader)
        .expect("a follower");
    for (_, to, p) in &proxies {
        if *to == lagger {
            p.control()
                .set(LinkFaults::with_latency(LAG_ONE_WAY_MS))
                .expect("set latency");
        }
    }
    let mut lag_node = cluster.client(lagger).await.expect("lagging node client");
    let mut router_raw = raw_client(&router.endpoint()).await.expect("router client");

    let (mut lagger_behind, mut lagger_served, mut stale_direct) = (0u64, 0u64, 0u64);
    let mut token = String::new();
    for i in 0..WRITES {
        let id = format!("rw-{i}");
        let word = format!("sessionmark{i}");
        let doc = json!({"id": id, "title": word, "body": "deploy runbook", "version": 1});
        let out = c
            .put_documents(
                "acme",
                vec![serde_json::to_vec(&doc).expect("json")],
                Vec::new(),
                &token,
            )
            .await
            .expect("write");
        assert_eq!(out.acked, 1);
        token = out.token;
        let need = SessionToken::decode(&token)
            .expect("token")
            .min_applied(shard);
        assert!(need > 0, "the token covers shard {shard}");

        // Right after the ack: is the lagging follower behind, and would a
        // search there without the token miss the write?
        let st = lag_node
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        let applied = st
            .groups
            .iter()
            .find(|g| g.group == shard)
            .map_or(0, |g| g.applied);
        lagger_behind += u64::from(applied < need);
        let direct = lag_node
            .search(pb::SearchRequest {
                tenant: "acme".into(),
                shard,
                user: "u:reader".into(),
                query: word.clone(),
                limit: 10,
                timeout_ms: 5_000,
                ..Default::default()
            })
            .await
            .expect("direct search")
            .into_inner();
        stale_direct += u64::from(!direct.hits.iter().any(|h| h.id == id));

        // Through the router with the token: round-robin, so the lagging
        // follower gets every third read; never a miss.
        let resp = router_raw
            .search(pb::RouterSearchRequest {
                tenant: "acme".into(),
                user: "u:reader".into(),
                query: word.clone(),
                limit: 10,
                token: token.clone(),
                timeout_ms: 10_000,
                selection: pb::ReplicaSelection::RoundRobin as i32,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("search {i} with the session token failed: {e}"))
            .into_inner();
        assert!(
            resp.hits.iter().any(|h| h.id == id),
            "search {i} with the session token missed {id}: served by {:?}",
            resp.served_by
        );
        for s in &resp.served_by {
            assert!(
                s.applied >= need,
                "served by a replica at {} < token {need}: {s:?}",
                s.applied
            );
            lagger_served += u64::from(s.node == lagger);
        }
    }
    println!(
        "leader {leader}, lagging follower {lagger}: behind at ack {lagger_behind}/{WRITES}, \
         token reads it served {lagger_served}, direct reads without token that missed {stale_direct}/{WRITES}"
    );
    assert!(
        lagger_behind > 0,
        "the follower never lagged: the test proves nothing"
    );
    assert!(
        lagger_served > 0,
        "the lagging follower never served a token read"
    );

    // The same holds for `get` with the token.
    let got = c
        .get(
            "acme",
            &format!("rw-{}", WRITES - 1),
            "u:reader",
            Some(&token),
        )
        .await
        .expect("get");
    assert!(got.found, "get with the session token sees the last write");
}
