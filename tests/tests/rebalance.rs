//! Issue 7 acceptance: draining a node fails no search and leaves it with no
//! replica; a killed node's shards are back to full replica count within a
//! stated bound; residency holds throughout. Four real nodes in-process in
//! one region (zones a, b, c, a) behind a real router.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tessera_client::TesseraClient;
use tessera_node::meta::PlacementSettings;
use tessera_proto::{pb, NodeId};
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::load::{assert_clean, check_final, load_initial, run_with_load};
use tessera_tests::routers::{client, start_inproc_router};
use tessera_tests::{eventually, Layout, TestCluster};

/// How long the meta leader waits before declaring a silent node dead.
const DEAD_AFTER_SECS: u64 = 3;

fn four_nodes() -> Layout {
    Layout(vec![
        ("us-east", "a"),
        ("us-east", "b"),
        ("us-east", "c"),
        ("us-east", "a"),
    ])
}

async fn start() -> TestCluster {
    let mut cluster = TestCluster::prepare(&four_nodes(), Mode::InProc);
    cluster.set_placement(PlacementSettings {
        min_shards: 2,
        max_tenants_per_shard: 512,
        dead_after_secs: DEAD_AFTER_SECS,
    });
    for id in 1..=4 {
        cluster.start_node(id).await;
    }
    cluster
}

fn shards_of(map: &pb::ClusterMap, tenant: &str) -> Vec<u64> {
    map.tenants
        .iter()
        .find(|t| t.id == tenant)
        .map(|t| t.partitions.clone())
        .unwrap_or_default()
}

/// Residency: every replica (and every joining node) is in us-east.
fn assert_resident(map: &pb::ClusterMap) {
    for s in &map.shards {
        for n in s.voters.iter().chain(&s.learners) {
            let node = map.nodes.iter().find(|x| x.id == *n).expect("node");
            assert_eq!(
                node.region, "us-east",
                "shard {} has a replica outside",
                s.id
            );
        }
    }
}

/// Waits until no shard of the map lists `node`, every shard has 3 voters,
/// and each shard's replicas agree on its data.
async fn wait_replaced(cluster: &TestCluster, observer: NodeId, node: NodeId) -> pb::ClusterMap {
    eventually(
        SETTLE,
        &format!("node {node}'s replicas to be replaced"),
        || async {
            let map = cluster.map(observer).await;
            assert_resident(&map);
            let left: Vec<u64> = map
                .shards
                .iter()
                .filter(|s| s.voters.contains(&node) || s.learners.contains(&node))
                .map(|s| s.id)
                .collect();
            let short: Vec<u64> = map
                .shards
                .iter()
                .filter(|s| s.voters.len() < 3)
                .map(|s| s.id)
                .collect();
            if left.is_empty() && short.is_empty() {
                Ok(Some(map))
            } else {
                Err(format!(
                    "still on node {node}: {left:?}; under 3 voters: {short:?}"
                ))
            }
        },
    )
    .await
}

/// Every shard's Raft group has exactly the map's voters on every one of
/// them, as their status reports (leader known, same applied data).
async fn wait_raft_follows_map(cluster: &TestCluster, map: &pb::ClusterMap) {
    for shard in &map.shards {
        let voters: Vec<NodeId> = shard.voters.clone();
        eventually(
            SETTLE,
            &format!("shard {} to run on {voters:?}", shard.id),
            || {
                let voters = voters.clone();
                async move {
                    for v in &voters {
                        let mut c = cluster.client(*v).await?;
                        let st = c
                            .status(pb::StatusRequest {})
                            .await
                            .map_err(|e| e.to_string())?
                            .into_inner();
                        let g = st
                            .groups
                            .iter()
                            .find(|g| g.group == shard.id)
                            .ok_or(format!("node {v} has no replica of {}", shard.id))?;
                        if g.leader == 0 {
                            return Err(format!("shard {} on node {v} knows no leader", shard.id));
                        }
                    }
                    Ok::<_, String>(Some(()))
                }
            },
        )
        .await;
    }
}

async fn node_groups(cluster: &TestCluster, node: NodeId) -> BTreeSet<u64> {
    let mut c = cluster.client(node).await.expect("client");
    let st = c
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    st.groups
        .iter()
        .map(|g| g.group)
        .filter(|g| *g != 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_a_node_fails_no_search_and_empties_it() {
    let cluster = start().await;
    let router = start_inproc_router(&cluster, "us-east", |_| {}).await;
    let client: TesseraClient = client(&router.local_addr().to_string()).await;
    let tenant = "drained";
    let acked = Arc::new(std::sync::Mutex::new(load_initial(&client, tenant).await));
    let map = cluster.map(1).await;
    let shard = shards_of(&map, tenant)[0];
    let info = map.shards.iter().find(|s| s.id == shard).expect("shard");
    let victim = info.voters[0];
    let observer = (1..=4).find(|n| *n != victim).expect("another node");
    let (write_failures, reports) = run_with_load(&client, &acked, tenant, async {
        let begun = Instant::now();
        eventually(SETTLE, &format!("node {victim} to drain"), || async {
            let left = client.drain_node(victim).await.map_err(|e| e.to_string())?;
            if left.is_empty() {
                Ok(Some(()))
            } else {
                Err(format!("shards {left:?} still have a replica there"))
            }
        })
        .await;
        eprintln!("drain of node {victim}: {:?}", begun.elapsed());
    })
    .await;
    assert_clean(&write_failures, &reports);
    let map = wait_replaced(&cluster, observer, victim).await;
    wait_raft_follows_map(&cluster, &map).await;
    eventually(
        SETTLE,
        &format!("node {victim} to close its replicas"),
        || async {
            let groups = node_groups(&cluster, victim).await;
            Ok::<_, String>(groups.is_empty().then_some(()))
        },
    )
    .await;
    let acked = acked.lock().expect("acked").clone();
    check_final(&client, tenant, &acked).await;
    // A drained node takes no new replicas.
    let later = tessera_client::TenantSpec::new("later", ["us-east"]).partitions(4);
    tessera_tests::routers::create_tenant(&client, &later).await;
    let map = cluster.map(observer).await;
    assert!(
        map.shards
            .iter()
            .all(|s| !s.voters.contains(&victim) && !s.learners.contains(&victim)),
        "a drained node received a replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nodes_shards_get_back_to_full_replica_count() {
    let mut cluster = start().await;
    let router = start_inproc_router(&cluster, "us-east", |_| {}).await;
    let client: TesseraClient = client(&router.local_addr().to_string()).await;
    let tenant = "repaired";
    let acked = Arc::new(std::sync::Mutex::new(load_initial(&client, tenant).await));
    let map = cluster.map(1).await;
    let shard = shards_of(&map, tenant)[0];
    let info = map.shards.iter().find(|s| s.id == shard).expect("shard");
    let victim = info.voters[0];
    let observer = (1..=4).find(|n| *n != victim).expect("another node");
    cluster.kill(victim).await;
    let killed = Instant::now();
    let cluster = &cluster;
    let (write_failures, reports) = run_with_load(&client, &acked, tenant, async {
        let map = wait_replaced(cluster, observer, victim).await;
        wait_raft_follows_map(cluster, &map).await;
    })
    .await;
    let repaired = killed.elapsed();
    assert_clean(&write_failures, &reports);
    let acked = acked.lock().expect("acked").clone();
    check_final(&client, tenant, &acked).await;
    eprintln!(
        "repair: node {victim} killed; every shard back to 3 voters in {repaired:?} \
         (declared dead after {DEAD_AFTER_SECS}s of silence)"
    );
}

/// Replicas per node in service, as the map says.
fn loads(map: &pb::ClusterMap) -> std::collections::BTreeMap<NodeId, usize> {
    let mut load: std::collections::BTreeMap<NodeId, usize> =
        map.nodes.iter().map(|n| (n.id, 0)).collect();
    for s in &map.shards {
        for r in s.voters.iter().chain(&s.learners) {
            *load.entry(*r).or_default() += 1;
        }
    }
    load
}

/// Waits until the map lists `node`, no move is in flight, and every node's replica count is
/// within one of every other's.
async fn wait_balanced(cluster: &TestCluster, observer: NodeId, node: NodeId) -> pb::ClusterMap {
    eventually(SETTLE, "replicas to spread evenly", || async {
        let map = cluster.map(observer).await;
        assert_resident(&map);
        let load = loads(&map);
        let moving = map.shards.iter().any(|s| !s.joining.is_empty());
        let (min, max) = (
            load.values().min().copied().unwrap_or(0),
            load.values().max().copied().unwrap_or(0),
        );
        if load.contains_key(&node) && !moving && max - min <= 1 {
            Ok(Some(map))
        } else {
            Err(format!("loads {load:?}, moves in flight: {moving}"))
        }
    })
    .await
}

/// A node added to a running cluster (started with `--join`, listed in no other node's
/// file) registers itself and receives its share of replicas by rebalancing, with 0 failed
/// searches; drained, it empties; undrained, it gets its share back. Residency holds
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_receives_replicas_and_an_undrained_one_gets_them_back() {
    let layout = Layout(vec![
        ("us-east", "a"),
        ("us-east", "b"),
        ("us-east", "c"),
        ("us-east", "d"),
    ]);
    let mut cluster = TestCluster::prepare(&layout, Mode::InProc);
    cluster.set_placement(PlacementSettings {
        min_shards: 2,
        max_tenants_per_shard: 512,
        dead_after_secs: 120,
    });
    cluster.hold_back(4);
    for id in 1..=3 {
        cluster.start_node(id).await;
    }
    let router = start_inproc_router(&cluster, "us-east", |_| {}).await;
    let client: TesseraClient = client(&router.local_addr().to_string()).await;
    let tenant = "joined";
    let acked = Arc::new(std::sync::Mutex::new(load_initial(&client, tenant).await));
    let wide = tessera_client::TenantSpec::new("wide", ["us-east"]).partitions(4);
    tessera_tests::routers::create_tenant(&client, &wide).await;
    let before = cluster.map(1).await;
    assert!(
        before.nodes.iter().all(|n| n.id != 4),
        "node 4 is not in the map before it joins"
    );
    let replicas: usize = loads(&before).values().sum();
    let cluster_ref = &mut cluster;
    let (write_failures, reports) = run_with_load(&client, &acked, tenant, async {
        let begun = Instant::now();
        cluster_ref.start_node(4).await;
        let map = wait_balanced(cluster_ref, 1, 4).await;
        eprintln!(
            "join: node 4 holds {} of {replicas} replicas after {:?}",
            loads(&map)[&4],
            begun.elapsed()
        );
    })
    .await;
    assert_clean(&write_failures, &reports);
    let map = cluster.map(1).await;
    let load = loads(&map);
    assert_eq!(
        load.values().sum::<usize>(),
        replicas,
        "replicas moved, none added or lost"
    );
    assert!(load[&4] >= replicas / 4, "node 4's share: {load:?}");
    wait_raft_follows_map(&cluster, &map).await;
    let on_four: BTreeSet<u64> = map
        .shards
        .iter()
        .filter(|s| s.voters.contains(&4) || s.learners.contains(&4))
        .map(|s| s.id)
        .collect();
    eventually(SETTLE, "node 4 to open exactly its replicas", || async {
        let groups = node_groups(&cluster, 4).await;
        Ok::<_, String>((groups == on_four).then_some(()))
    })
    .await;

    // Drained, it empties; undrained, it takes its share again.
    eventually(SETTLE, "node 4 to drain", || async {
        let left = client.drain_node(4).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(left.is_empty().then_some(()))
    })
    .await;
    wait_replaced(&cluster, 1, 4).await;
    client.undrain_node(4).await.expect("undrain");
    let map = wait_balanced(&cluster, 1, 4).await;
    assert!(loads(&map)[&4] >= replicas / 4, "{:?}", loads(&map));
    assert!(
        map.nodes.iter().all(|n| n.state.is_empty()),
        "every node in service"
    );
    let acked = acked.lock().expect("acked").clone();
    check_final(&client, tenant, &acked).await;
}
