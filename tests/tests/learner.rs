//! Issue 2 acceptance: a learner in another region joins after the log was
//! compacted, catches up by snapshot and answers searches; residency holds.

use tessera_proto::pb;
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::{docs, eventually, Layout, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_catches_up_by_snapshot_after_compaction() {
    let layout = Layout(vec![
        ("us-east", "a"),
        ("us-east", "b"),
        ("us-east", "c"),
        ("eu-west", "a"),
    ]);
    let mut cluster = TestCluster::prepare(&layout, Mode::InProc);
    for id in [1, 2, 3, 4] {
        cluster.start_node(id).await;
    }
    // A tenant that may live only in us-east: no replica may appear in eu-west.
    let local = cluster.create_tenant("local", &["us-east"], 1).await;
    let shard = local.partitions[0];
    let mut last = 0;
    for b in 0..4u64 {
        let req = pb::WriteRequest {
            tenant: "local".into(),
            shard,
            docs_json: (0..250)
                .map(|i| docs::doc(&format!("d{}", b * 250 + i), 1, i))
                .collect(),
            ..Default::default()
        };
        last = cluster.write(req, SETTLE).await.expect("batch").applied;
    }
    cluster.converged(shard, &[1, 2, 3], last).await;
    for id in [1, 2, 3] {
        let mut c = cluster.client(id).await.expect("client");
        let snap = c
            .snapshot(pb::SnapshotRequest {
                group: shard,
                purge: true,
            })
            .await
            .expect("snapshot")
            .into_inner();
        assert!(snap.snapshot_index >= last, "snapshot covers the writes");
    }
    // Residency: an attempt to place a us-east-only shard in eu-west is refused.
    let mut c = cluster.client(1).await.expect("client");
    let refused = c
        .add_learner(pb::AddLearnerRequest { shard, node: 4 })
        .await;
    assert_eq!(
        refused.expect_err("residency").code(),
        tonic::Code::InvalidArgument
    );

    // A tenant allowed in both regions gets a learner in eu-west (node 4).
    let wide = cluster
        .create_tenant("wide", &["us-east", "eu-west"], 1)
        .await;
    let wide_shard = wide.partitions[0];
    let map = cluster.map(1).await;
    let s = map
        .shards
        .iter()
        .find(|s| s.id == wide_shard)
        .expect("shard");
    assert_eq!(s.learners, vec![4], "one learner in eu-west: {s:?}");
    assert!(!map
        .shards
        .iter()
        .find(|s| s.id == shard)
        .expect("shard")
        .learners
        .contains(&4));

    // Write, compact while the learner is down, then let it join.
    cluster.kill(4).await;
    let mut wide_last = 0;
    for b in 0..3u64 {
        let req = pb::WriteRequest {
            tenant: "wide".into(),
            shard: wide_shard,
            docs_json: (0..200)
                .map(|i| docs::doc(&format!("w{}", b * 200 + i), 1, i))
                .collect(),
            ..Default::default()
        };
        wide_last = cluster.write(req, SETTLE).await.expect("batch").applied;
    }
    for id in [1, 2, 3] {
        let mut c = cluster.client(id).await.expect("client");
        c.snapshot(pb::SnapshotRequest {
            group: wide_shard,
            purge: true,
        })
        .await
        .expect("snapshot and purge");
    }
    cluster.start_node(4).await;
    let digest = cluster
        .converged(wide_shard, &[1, 2, 3, 4], wide_last)
        .await;
    assert_eq!(digest.docs, 600);
    let found = eventually(SETTLE, "learner search", || {
        let c = &cluster;
        async move {
            c.count_all(4, "wide", wide_shard, wide_last)
                .await
                .map(Some)
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(found, 600, "the learner answers searches");
    let st = cluster
        .client(4)
        .await
        .expect("client")
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let g = st
        .groups
        .iter()
        .find(|g| g.group == wide_shard)
        .expect("group on learner");
    assert_eq!(g.role, "learner");

    // Residency, checked from the cluster map: every replica in allowed regions.
    let map = cluster.map(4).await;
    for t in &map.tenants {
        for p in &t.partitions {
            let shard = map.shards.iter().find(|s| s.id == *p).expect("shard");
            for r in shard.voters.iter().chain(&shard.learners) {
                let region = &map.nodes.iter().find(|n| n.id == *r).expect("node").region;
                assert!(
                    t.regions.contains(region),
                    "tenant {} has a replica in {region}",
                    t.id
                );
            }
        }
    }
}
