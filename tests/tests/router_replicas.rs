//! Issue 3 acceptance, replica choice: a replica slowed by +50 ms loses its
//! share of reads to adaptive selection, and a node's circuit breaker opens
//! when it dies and closes again when it returns.
//!
//! Both start `tessera-node` and `tessera-router` processes; run with
//! `--test-threads=1` on small machines.

use std::time::Duration;

use tessera_chaos::LinkFaults;
use tessera_client::TenantSpec;
use tessera_proto::pb::ReplicaSelection;
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::routers::{
    breaker_state, client, create_tenant, grpc_proxy, node_route_args, put_all, raw_client,
    search_load, search_with, spawn_router,
};
use tessera_tests::{docs, eventually, Layout, TestCluster};

const QUERIES: [&str; 6] = [
    "deploy",
    "incident",
    "database migration",
    "quorum",
    "latency cache",
    "review",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_replica_share_of_reads_falls_below_ten_percent() {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::Process).await;
    // The router reaches every node through a fault proxy (so all pay the
    // same proxy overhead); node 2's is the one that gets slow.
    let mut proxies = Vec::new();
    let mut args = Vec::new();
    for id in [1, 2, 3] {
        let p = grpc_proxy(&cluster, id, 100 + id as u8).await;
        args.extend(node_route_args(id, &p));
        proxies.push(p);
    }
    let proxy = &proxies[1];
    let router = spawn_router(&cluster, 1, "us-east", &args).await;
    let c = client(&router.endpoint()).await;
    let tenant = create_tenant(&c, &TenantSpec::new("acme", ["us-east"])).await;
    assert_eq!(tenant.partitions.len(), 1);
    let docs = (0..500)
        .map(|i| docs::doc(&format!("p-{i}"), 1, i))
        .collect();
    put_all(&c, "acme", docs, 250).await;
    let addr = router.endpoint();

    // Healthy and round-robin: node 2 serves its turn, through the proxy.
    let healthy = search_load(
        &addr,
        "acme",
        &QUERIES,
        1,
        60,
        SETTLE,
        ReplicaSelection::RoundRobin,
    )
    .await;
    assert!(healthy.errors.is_empty(), "{:?}", healthy.errors);
    assert!(
        healthy.share(2) > 0.2,
        "round-robin uses node 2: {:?}",
        healthy.served
    );
    let forwarded = proxy.control().counters().forward.forwarded_bytes;
    assert!(forwarded > 0, "node 2's reads go through the proxy");

    // Healthy and adaptive: node 2 gets a share like the others.
    let before = search_load(
        &addr,
        "acme",
        &QUERIES,
        4,
        400,
        SETTLE,
        ReplicaSelection::Adaptive,
    )
    .await;
    assert!(before.errors.is_empty(), "{:?}", before.errors);
    assert!(
        before.share(2) > 0.15,
        "healthy node 2 serves adaptive reads too: {:?}",
        before.served
    );

    // +50 ms on every round trip between the router and node 2.
    proxy
        .control()
        .set(LinkFaults::with_latency(25))
        .expect("set latency");

    // A few seconds of adaptive load to let the router notice...
    let warm = search_load(
        &addr,
        "acme",
        &QUERIES,
        4,
        5_000,
        Duration::from_secs(3),
        ReplicaSelection::Adaptive,
    )
    .await;
    assert!(warm.errors.is_empty(), "{:?}", warm.errors);
    // ...then node 2's share over a bounded window.
    let adaptive = search_load(
        &addr,
        "acme",
        &QUERIES,
        4,
        400,
        SETTLE,
        ReplicaSelection::Adaptive,
    )
    .await;
    assert!(adaptive.errors.is_empty(), "{:?}", adaptive.errors);
    // The same window with round-robin, for contrast.
    let rr = search_load(
        &addr,
        "acme",
        &QUERIES,
        4,
        400,
        SETTLE,
        ReplicaSelection::RoundRobin,
    )
    .await;
    assert!(rr.errors.is_empty(), "{:?}", rr.errors);
    println!(
        "healthy adaptive: node 2 share {:.1}% ({:?})",
        before.share(2) * 100.0,
        before.served
    );
    println!(
        "slow node 2: warm-up {} searches ({:.1}% node 2), adaptive share {:.1}% of {} ({:?}, {} hedged), round-robin share {:.1}% ({:?})",
        warm.ok(),
        warm.share(2) * 100.0,
        adaptive.share(2) * 100.0,
        adaptive.ok(),
        adaptive.served,
        adaptive.hedged,
        rr.share(2) * 100.0,
        rr.served
    );
    assert!(
        adaptive.share(2) < 0.10,
        "the slowed replica still serves {:.1}% of adaptive reads: {:?}",
        adaptive.share(2) * 100.0,
        adaptive.served
    );
    assert!(
        rr.share(2) > 0.2,
        "round-robin keeps sending node 2 its turn: {:?}",
        rr.served
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_opens_on_a_dead_node_and_closes_when_it_returns() {
    let mut cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::Process).await;
    let router = spawn_router(&cluster, 1, "us-east", &[]).await;
    let c = client(&router.endpoint()).await;
    create_tenant(&c, &TenantSpec::new("acme", ["us-east"])).await;
    let docs = (0..200)
        .map(|i| docs::doc(&format!("p-{i}"), 1, i))
        .collect();
    put_all(&c, "acme", docs, 200).await;
    let mut raw = raw_client(&router.endpoint()).await.expect("router client");

    // Round-robin reads touch every replica; all breakers are closed.
    for q in QUERIES {
        search_with(&mut raw, "acme", q, 10, ReplicaSelection::RoundRobin)
            .await
            .expect("search");
    }
    for id in [1, 2, 3] {
        assert_eq!(
            breaker_state(&mut raw, id).await.expect("status"),
            "closed",
            "node {id}"
        );
    }

    cluster.kill(3).await;
    // Reads keep succeeding (they fail over) while node 3's breaker opens.
    let mut searches = 0u64;
    let raw_ref = &raw;
    let searched = &mut searches;
    eventually(SETTLE, "node 3's breaker to open", || {
        let mut r = raw_ref.clone();
        *searched += 5;
        async move {
            for q in &QUERIES[..5] {
                let resp = search_with(&mut r, "acme", q, 10, ReplicaSelection::RoundRobin)
                    .await
                    .unwrap_or_else(|e| panic!("a search failed while node 3 was down: {e}"));
                assert!(
                    resp.served_by.iter().all(|s| s.node != 3),
                    "dead node 3 served a read"
                );
            }
            let state = breaker_state(&mut r, 3).await?;
            Ok::<_, String>((state == "open").then_some(()))
        }
    })
    .await;
    println!("node 3's breaker opened after about {searches} round-robin searches");
    // While it is open, round-robin reads skip node 3 and still succeed.
    let open = search_load(
        &router.endpoint(),
        "acme",
        &QUERIES,
        2,
        50,
        SETTLE,
        ReplicaSelection::RoundRobin,
    )
    .await;
    assert!(open.errors.is_empty(), "{:?}", open.errors);
    assert_eq!(open.share(3), 0.0);

    // Node 3 returns: a probe closes the breaker and it serves reads again.
    cluster.start_node(3).await;
    eventually(SETTLE, "node 3's breaker to close", || {
        let mut r = raw.clone();
        async move {
            let state = breaker_state(&mut r, 3).await?;
            Ok::<_, String>((state == "closed").then_some(()))
        }
    })
    .await;
    eventually(SETTLE, "node 3 to serve reads again", || {
        let mut r = raw.clone();
        async move {
            let resp = search_with(&mut r, "acme", "deploy", 10, ReplicaSelection::RoundRobin)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(resp.served_by.iter().any(|s| s.node == 3).then_some(()))
        }
    })
    .await;
}

/// Hedging on a real cluster: once the replica a router would read from
/// first is frozen (SIGSTOP: its sockets stay open, it just never answers),
/// reads are answered by a hedge to another replica within their deadline,
/// every one of them, with the right hits; the router says so in `served_by`
/// and counts the hedges in `tessera_router_hedges_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_replica_is_hedged_around_within_the_deadline() {
    let mut cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::Process).await;
    let metrics = std::net::SocketAddr::new(tessera_tests::routers::spare_ip(&cluster, 9), 9390);
    let router = spawn_router(
        &cluster,
        1,
        "us-east",
        &["--metrics".into(), metrics.to_string()],
    )
    .await;
    let c = client(&router.endpoint()).await;
    create_tenant(&c, &TenantSpec::new("acme", ["us-east"])).await;
    let docs = (0..200)
        .map(|i| docs::doc(&format!("p-{i}"), 1, i))
        .collect();
    let token = put_all(&c, "acme", docs, 100).await;
    tessera_tests::routers::wait_indexed(&cluster, "acme").await;
    let mut raw = raw_client(&router.endpoint()).await.expect("raw client");
    let search = |query: &str| tessera_proto::pb::RouterSearchRequest {
        tenant: "acme".into(),
        user: "u:alice".into(),
        query: query.into(),
        limit: 10,
        token: token.clone(),
        timeout_ms: 5_000,
        ..Default::default()
    };
    // Warm up: latency estimates for every replica, and the first pick.
    let mut expected = std::collections::BTreeMap::new();
    let mut first_pick = 0;
    for round in 0..20 {
        for q in QUERIES {
            let r = raw
                .search(search(q))
                .await
                .expect("warm-up search")
                .into_inner();
            first_pick = r.served_by[0].node;
            if round == 0 {
                expected.insert(q, r.hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>());
            }
        }
    }
    let hedges_before = tessera_tests::routers::counter_total(
        &tessera_tests::routers::scrape_metrics(metrics)
            .await
            .expect("metrics"),
        "tessera_router_hedges_total",
    );

    let frozen_pid = match cluster.slots.get_mut(&first_pick) {
        Some(tessera_tests::cluster::NodeSlot::Proc(p)) => {
            p.pause().expect("SIGSTOP");
            p.pid()
        }
        _ => panic!("node {first_pick} is not a process"),
    };
    // SIGSTOP takes effect thread by thread; until all are stopped the node
    // may still answer.
    eventually(SETTLE, "every thread of the paused node to stop", || async move {
        Ok::<_, String>(tessera_chaos::process::is_stopped(frozen_pid).then_some(()))
    })
    .await;
    let mut hedged = 0;
    for q in QUERIES.iter().cycle().take(30) {
        let r = raw
            .search(search(q))
            .await
            .unwrap_or_else(|e| panic!("{q:?} with node {first_pick} frozen: {e}"))
            .into_inner();
        let served = &r.served_by[0];
        assert_ne!(served.node, first_pick, "a frozen node answered");
        hedged += usize::from(served.hedged);
        let ids: Vec<String> = r.hits.iter().map(|h| h.id.clone()).collect();
        assert_eq!(
            Some(&ids),
            expected.get(q),
            "{q:?}: the hedge's answer differs"
        );
    }
    match cluster.slots.get_mut(&first_pick) {
        Some(tessera_tests::cluster::NodeSlot::Proc(p)) => p.resume().expect("SIGCONT"),
        _ => unreachable!("checked above"),
    }
    assert!(hedged >= 1, "no read was answered by a hedge");
    let hedges_after = tessera_tests::routers::counter_total(
        &tessera_tests::routers::scrape_metrics(metrics)
            .await
            .expect("metrics"),
        "tessera_router_hedges_total",
    );
    assert!(
        hedges_after > hedges_before,
        "tessera_router_hedges_total did not grow: {hedges_before} -> {hedges_after}"
    );
}
