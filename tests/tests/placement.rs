//! Issue 7 acceptance: 2,000 tenants with Zipf-distributed sizes on 16 or
//! more shards; a small tenant's search touches exactly one shard (visible
//! in `served_by`). Also reports the placement balance (largest and
//! smallest shard by documents). Real nodes in-process behind a real router.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use tessera_client::{SearchQuery, TenantSpec, TesseraClient};
use tessera_node::meta::PlacementSettings;
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::routers::{client, create_tenant, put_all, start_inproc_router};
use tessera_tests::{eventually, Layout, TestCluster};

const TENANTS: usize = 2_000;
/// The largest tenant's size; tenant of rank k has `LARGEST / k` documents (at least 1).
const LARGEST: usize = 2_000;
/// Tenants created at once.
const PARALLEL: usize = 16;
const MIN_SHARDS: u32 = 16;
const MAX_TENANTS_PER_SHARD: u32 = 150;

fn tenant_id(rank: usize) -> String {
    format!("t{rank:04}")
}

fn size(rank: usize) -> usize {
    (LARGEST / rank).max(1)
}

fn doc(tenant: &str, i: usize) -> Vec<u8> {
    let v = json!({
        "id": format!("{tenant}-{i}"), "space": "S", "title": format!("page {i}"),
        "body": format!("marker{tenant} text {i}"), "version": 1,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Creates and loads the tenant of `rank`; returns its session token.
async fn load_tenant(client: &TesseraClient, rank: usize) -> (usize, String) {
    let id = tenant_id(rank);
    create_tenant(client, &TenantSpec::new(&id, ["us-east"])).await;
    let docs = (0..size(rank)).map(|i| doc(&id, i)).collect();
    (rank, put_all(client, &id, docs, 500).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_zipf_tenants_spread_over_shards_and_small_ones_touch_one() {
    let mut cluster = TestCluster::prepare(&Layout::one_region_three_zones(), Mode::InProc);
    cluster.set_placement(PlacementSettings {
        min_shards: MIN_SHARDS,
        max_tenants_per_shard: MAX_TENANTS_PER_SHARD,
        ..PlacementSettings::default()
    });
    for id in 1..=3 {
        cluster.start_node(id).await;
    }
    // The meta leader writes the [placement] knobs into the map; tenants
    // created before that would be placed with the defaults.
    eventually(SETTLE, "the placement knobs in the map", || async {
        let map = cluster.map(1).await;
        let p = map.placement.unwrap_or_default();
        Ok::<_, String>((p.min_shards == MIN_SHARDS).then_some(()))
    })
    .await;
    let router = start_inproc_router(&cluster, "us-east", |_| {}).await;
    let client = client(&router.local_addr().to_string()).await;

    let ranks: Vec<usize> = (1..=TENANTS).collect();
    let mut tokens: BTreeMap<usize, String> = BTreeMap::new();
    for chunk in ranks.chunks(PARALLEL) {
        tokens.extend(
            futures::future::join_all(chunk.iter().map(|r| load_tenant(&client, *r))).await,
        );
    }

    let map = cluster.map(1).await;
    let mut docs_per_shard: BTreeMap<u64, usize> = BTreeMap::new();
    let mut tenants_per_shard: BTreeMap<u64, usize> = BTreeMap::new();
    for t in &map.tenants {
        let rank: usize = t.id[1..].parse().expect("rank");
        assert_eq!(t.partitions.len(), 1, "{} has one partition", t.id);
        *docs_per_shard.entry(t.partitions[0]).or_default() += size(rank);
        *tenants_per_shard.entry(t.partitions[0]).or_default() += 1;
    }
    assert_eq!(map.tenants.len(), TENANTS);
    assert!(
        docs_per_shard.len() >= 16,
        "tenants over {} shards",
        docs_per_shard.len()
    );
    assert!(
        tenants_per_shard
            .values()
            .all(|n| *n <= MAX_TENANTS_PER_SHARD as usize),
        "a shard holds more tenants than allowed: {tenants_per_shard:?}"
    );

    // The smallest tenants (one document each): one shard each, and they find it.
    let small: Vec<usize> = (TENANTS - 20..=TENANTS).collect();
    for rank in small {
        let id = tenant_id(rank);
        let q =
            SearchQuery::new(&id, "u:someone", format!("marker{id}")).token(tokens[&rank].clone());
        let page = client.search(&q).await.expect("search");
        let served: BTreeSet<u64> = page.served_by.iter().map(|s| s.shard).collect();
        assert_eq!(served.len(), 1, "{id} was served by {served:?}");
        assert_eq!(page.hits.len(), size(rank), "{id} finds its documents");
    }

    let largest = docs_per_shard.values().max().copied().unwrap_or(0);
    let smallest = docs_per_shard.values().min().copied().unwrap_or(0);
    let tenants_max = tenants_per_shard.values().max().copied().unwrap_or(0);
    let tenants_min = tenants_per_shard.values().min().copied().unwrap_or(0);
    eprintln!(
        "placement: {TENANTS} tenants, {} documents on {} shards; documents per shard \
         largest {largest}, smallest {smallest} (ratio {:.2}); tenants per shard {tenants_min}..{tenants_max}",
        docs_per_shard.values().sum::<usize>(),
        docs_per_shard.len(),
        largest as f64 / smallest.max(1) as f64
    );
}
