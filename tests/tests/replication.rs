//! Issue 2 acceptance: a 3-node shard group replicates 10,000 documents;
//! every replica finds them all and holds the same content digest.

use std::time::Duration;
use tessera_proto::pb;
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::{docs, Layout, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_docs_replicate_to_every_replica() {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    let tenant = cluster.create_tenant("acme", &["us-east"], 1).await;
    let shard = tenant.partitions[0];
    let map = cluster.map(1).await;
    let replicas = map
        .shards
        .iter()
        .find(|s| s.id == shard)
        .expect("shard in map");
    assert_eq!(replicas.voters.len(), 3, "three voters: {replicas:?}");

    let mut last = 0;
    for batch in 0..20u64 {
        let docs_json = (0..500u64)
            .map(|i| {
                let n = batch * 500 + i;
                docs::doc(&format!("d{n}"), 1, n)
            })
            .collect();
        let token = cluster
            .write(
                pb::WriteRequest {
                    tenant: "acme".into(),
                    shard,
                    docs_json,
                    ..Default::default()
                },
                SETTLE,
            )
            .await
            .expect("batch acknowledged");
        assert_eq!(token.shard, shard);
        assert!(token.applied > last, "tokens grow");
        last = token.applied;
    }

    for id in [1, 2, 3] {
        let found = cluster
            .count_all(id, "acme", shard, last)
            .await
            .expect("search");
        assert_eq!(found, 10_000, "node {id} finds every document");
        let mut c = cluster.client(id).await.expect("client");
        let hits = c
            .search(pb::SearchRequest {
                tenant: "acme".into(),
                shard,
                user: "u:x".into(),
                query: "quorum".into(),
                limit: 5,
                min_applied: last,
                ..Default::default()
            })
            .await
            .expect("text search")
            .into_inner();
        assert!(!hits.hits.is_empty(), "node {id} finds 'quorum'");
        assert!(hits.applied >= last);
    }
    let digest = cluster.converged(shard, &[1, 2, 3], last).await;
    assert_eq!(digest.docs, 10_000);

    // Re-sending an old version is a no-op: the digest does not move.
    let again = cluster
        .write(
            pb::WriteRequest {
                tenant: "acme".into(),
                shard,
                docs_json: vec![docs::doc("d1", 1, 999)],
                ..Default::default()
            },
            Duration::from_secs(30),
        )
        .await
        .expect("retry acknowledged");
    let after = cluster.converged(shard, &[1, 2, 3], again.applied).await;
    assert_eq!(
        after.digest, digest.digest,
        "a stale version changes nothing"
    );
}
