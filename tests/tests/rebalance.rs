//! Issue 7 acceptance: draining a node fails no search and leaves it with no
//! replica; a killed node's shards are back to full replica count within a
//! stated bound, in its own region and role when its tenants span several;
//! residency holds throughout. Real nodes in-process (four in one region, or
//! six across three regions) behind a real router.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tessera_client::{TenantSpec, TesseraClient};
use tessera_node::meta::PlacementSettings;
use tessera_proto::{pb, NodeId};
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::load::{assert_clean, check_final, doc, load_initial, run_with_load};
use tessera_tests::routers::{client, put_all, start_inproc_router};
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
    start_all(&four_nodes(), 2).await
}

/// Every node of `layout`, in-process, declared dead after [`DEAD_AFTER_SECS`].
async fn start_all(layout: &Layout, min_shards: u32) -> TestCluster {
    let mut cluster = TestCluster::prepare(layout, Mode::InProc);
    cluster.set_placement(PlacementSettings {
        min_shards,
        max_tenants_per_shard: 512,
        dead_after_secs: DEAD_AFTER_SECS,
    });
    for id in 1..=layout.0.len() as NodeId {
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

/// Residency: every replica and every joining node of a shard is in one of
/// the shard's allowed regions.
fn assert_resident(map: &pb::ClusterMap) {
    for s in &map.shards {
        for n in s.voters.iter().chain(&s.learners).chain(&s.joining) {
            let region = region_of(map, *n);
            assert!(
                s.regions.contains(&region),
                "shard {} (allowed {:?}) has a replica on node {n} in {region}",
                s.id,
                s.regions
            );
        }
    }
}

fn region_of(map: &pb::ClusterMap, node: NodeId) -> String {
    map.nodes
        .iter()
        .find(|x| x.id == node)
        .map(|x| x.region.clone())
        .unwrap_or_else(|| panic!("node {node} is not in the map"))
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
    let later = TenantSpec::new("later", ["us-east"]).partitions(4);
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

/// The shape of a shard's replica set: (is a voter, region) per replica, sorted.
fn roles_by_region(map: &pb::ClusterMap, shard: &pb::ShardInfo) -> Vec<(bool, String)> {
    let mut roles: Vec<(bool, String)> = shard
        .voters
        .iter()
        .map(|v| (true, region_of(map, *v)))
        .chain(shard.learners.iter().map(|l| (false, region_of(map, *l))))
        .collect();
    roles.sort();
    roles
}

/// Issue 7 across regions: a dead node's replicas are rebuilt in its own
/// region, in the same role. Node 4 or 5 (eu-west) holds a learner of a
/// us-east-homed tenant allowed in eu-west and a voter of a region-survival
/// tenant; when it dies, the other eu-west node takes both, never a node in
/// us-east (which would lose the region copy) or in ap-south (which only the
/// region-survival tenant allows). The new replicas hold every document and
/// answer searches; searches of a us-east tenant fail 0 times meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_nodes_replicas_are_rebuilt_in_its_region_in_the_same_role() {
    let layout = Layout(vec![
        ("us-east", "a"),
        ("us-east", "b"),
        ("us-east", "c"),
        ("eu-west", "a"),
        ("eu-west", "b"),
        ("ap-south", "a"),
    ]);
    let mut cluster = start_all(&layout, 1).await;
    let router = start_inproc_router(&cluster, "us-east", |_| {}).await;
    let client: TesseraClient = client(&router.local_addr().to_string()).await;
    let acked = Arc::new(std::sync::Mutex::new(load_initial(&client, "local").await));
    let wide = TenantSpec::new("wide", ["us-east", "eu-west"]).partitions(2);
    let spread = TenantSpec::new("spread", ["us-east", "eu-west", "ap-south"]).survival("region");
    for spec in [&wide, &spread] {
        tessera_tests::routers::create_tenant(&client, spec).await;
        let docs = (0..300)
            .map(|i| doc(&format!("{}-{i}", spec.id), 1))
            .collect();
        put_all(&client, &spec.id, docs, 100).await;
    }
    let before = cluster.map(1).await;
    assert_resident(&before);
    let spread_shard = shards_of(&before, "spread")[0];
    let spread_info = before
        .shards
        .iter()
        .find(|s| s.id == spread_shard)
        .expect("spread's shard");
    let victim = spread_info
        .voters
        .iter()
        .copied()
        .find(|v| region_of(&before, *v) == "eu-west")
        .expect("spread has a voter in eu-west");
    let affected: Vec<&pb::ShardInfo> = before
        .shards
        .iter()
        .filter(|s| s.voters.contains(&victim) || s.learners.contains(&victim))
        .collect();
    let wide_shards = shards_of(&before, "wide");
    assert!(
        affected
            .iter()
            .any(|s| wide_shards.contains(&s.id) && s.learners.contains(&victim)),
        "node {victim} also holds a learner of wide (two partitions, one per eu-west node): \
         {before:?}"
    );
    eprintln!(
        "node {victim} holds shards {:?}; spread is on {spread_shard}, wide on {wide_shards:?}",
        affected.iter().map(|s| s.id).collect::<Vec<_>>()
    );

    cluster.kill(victim).await;
    let killed = Instant::now();
    let cluster = &cluster;
    let (write_failures, reports) = run_with_load(&client, &acked, "local", async {
        let map = wait_replaced(cluster, 1, victim).await;
        wait_raft_follows_map(cluster, &map).await;
    })
    .await;
    eprintln!(
        "multi-region repair of node {victim}: {:?}",
        killed.elapsed()
    );
    assert_clean(&write_failures, &reports);
    let after = cluster.map(1).await;
    assert_resident(&after);
    for old in &affected {
        let new = after
            .shards
            .iter()
            .find(|s| s.id == old.id)
            .expect("shard still in the map");
        assert_eq!(
            roles_by_region(&after, new),
            roles_by_region(&before, old),
            "shard {} keeps a replica in each region, in the same role: {old:?} -> {new:?}",
            old.id
        );
        let replicas: Vec<NodeId> = new.voters.iter().chain(&new.learners).copied().collect();
        let leader = cluster.leader_of(new.id).await;
        let applied = cluster
            .digest(leader, new.id)
            .await
            .expect("digest")
            .applied;
        let digest = cluster.converged(new.id, &replicas, applied).await;
        let joined = replicas
            .iter()
            .copied()
            .find(|r| !old.voters.contains(r) && !old.learners.contains(r))
            .expect("a replacement replica");
        let tenant = after
            .tenants
            .iter()
            .find(|t| t.partitions.contains(&new.id))
            .map(|t| t.id.clone())
            .expect("the shard's tenant");
        let served = cluster
            .count_all(joined, &tenant, new.id, applied)
            .await
            .expect("search on the new replica");
        assert_eq!(
            served, digest.docs,
            "node {joined}'s copy of shard {} answers with every document",
            new.id
        );
        assert!(served > 0, "shard {} holds documents", new.id);
    }
    let acked = acked.lock().expect("acked").clone();
    check_final(&client, "local", &acked).await;
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
    let wide = TenantSpec::new("wide", ["us-east"]).partitions(4);
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
