//! Issue 2 acceptance with real processes: kill -9 of the leader while a
//! writer runs, a full restart of every node, and the crash window between
//! the RocksDB apply and the tantivy commit.

use std::sync::Arc;
use std::time::Duration;
use tessera_proto::pb;
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::{docs, eventually, Layout, TestCluster};
use tokio::sync::Mutex;

fn batch(shard: u64, from: u64, n: u64) -> pb::WriteRequest {
    pb::WriteRequest {
        tenant: "acme".into(),
        shard,
        docs_json: (from..from + n)
            .map(|i| docs::doc(&format!("d{i}"), 1, i))
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_loses_no_acknowledged_write() {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::Process).await;
    let shard = cluster
        .create_tenant("acme", &["us-east"], 1)
        .await
        .partitions[0];
    let first = cluster
        .write(batch(shard, 0, 100), SETTLE)
        .await
        .expect("first batch");
    let leader = cluster.leader_of(shard).await;

    // The writer runs in the background and records every acknowledged batch.
    let cluster = Arc::new(Mutex::new(cluster));
    let acked: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(vec![(0, first.applied)]));
    let writer = {
        let (cluster, acked) = (cluster.clone(), acked.clone());
        tokio::spawn(async move {
            for b in 1..40u64 {
                let req = batch(shard, b * 100, 100);
                let result = {
                    cluster
                        .lock()
                        .await
                        .write(req, Duration::from_secs(30))
                        .await
                };
                if let Ok(token) = result {
                    acked.lock().await.push((b, token.applied));
                }
            }
        })
    };
    // Kill the leader once some writes have landed after the first batch.
    eventually(SETTLE, "writes in flight", || async {
        Ok::<_, String>((acked.lock().await.len() >= 5).then_some(()))
    })
    .await;
    cluster.lock().await.kill(leader).await;
    let killed_at = acked.lock().await.len();
    writer.await.expect("writer task");
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() > killed_at,
        "writes resumed after the leader died"
    );

    let mut cluster = Arc::try_unwrap(cluster)
        .ok()
        .expect("sole owner")
        .into_inner();
    let new_leader = cluster.leader_of(shard).await;
    assert_ne!(new_leader, leader, "a new leader was elected");
    cluster.start_node(leader).await;
    let last = acked.iter().map(|(_, i)| *i).max().unwrap_or(0);
    let digest = cluster.converged(shard, &[1, 2, 3], last).await;
    for id in [1, 2, 3] {
        let mut c = cluster.client(id).await.expect("client");
        for (b, _) in &acked {
            let id_to_check = format!("d{}", b * 100 + 99);
            let got = c
                .get(pb::GetRequest {
                    tenant: "acme".into(),
                    shard,
                    id: id_to_check.clone(),
                    user: "u:x".into(),
                    min_applied: last,
                    map_epoch: 0,
                })
                .await
                .expect("get")
                .into_inner();
            assert!(got.found, "acknowledged {id_to_check} is on node {id}");
        }
        let found = cluster
            .count_all(id, "acme", shard, last)
            .await
            .expect("search");
        assert!(
            found >= acked.len() as u64 * 100,
            "node {id} indexes every acknowledged doc"
        );
        assert_eq!(found, digest.docs, "node {id}: index and RocksDB agree");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_restart_recovers_state_and_index_without_resending() {
    let mut cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::Process).await;
    let shard = cluster
        .create_tenant("acme", &["us-east"], 1)
        .await
        .partitions[0];
    let mut last = 0;
    for b in 0..5 {
        last = cluster
            .write(batch(shard, b * 200, 200), SETTLE)
            .await
            .expect("batch")
            .applied;
    }
    let before = cluster.converged(shard, &[1, 2, 3], last).await;
    cluster.stop_all().await;
    for id in [1, 2, 3] {
        cluster.start_node(id).await;
    }
    let after = cluster.converged(shard, &[1, 2, 3], last).await;
    assert_eq!(after.digest, before.digest);
    for id in [1, 2, 3] {
        let found = eventually(SETTLE, "search after restart", || {
            let c = &cluster;
            async move {
                c.count_all(id, "acme", shard, last)
                    .await
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        assert_eq!(found, 1000, "node {id} serves every document after restart");
    }
}

/// Node 3 commits its index only once an hour, so its RocksDB is ahead of
/// tantivy when it is killed; on restart it must re-index the change
/// sequence after the index watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_between_apply_and_index_commit_is_repaired() {
    let mut cluster = TestCluster::prepare(&Layout::one_region_three_zones(), Mode::Process);
    cluster.extra_args.insert(
        3,
        vec![
            "--index-commit-ms".into(),
            "3600000".into(),
            "--index-commit-ops".into(),
            "1000000".into(),
        ],
    );
    for id in [1, 2, 3] {
        cluster.start_node(id).await;
    }
    let shard = cluster
        .create_tenant("acme", &["us-east"], 1)
        .await
        .partitions[0];
    let mut last = 0;
    for b in 0..3 {
        last = cluster
            .write(batch(shard, b * 100, 100), SETTLE)
            .await
            .expect("batch")
            .applied;
    }
    let digest = cluster.converged(shard, &[1, 2, 3], last).await;
    assert_eq!(digest.docs, 300, "node 3's RocksDB has every document");
    let mut c = cluster.client(3).await.expect("client");
    let st = c
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let g = st
        .groups
        .iter()
        .find(|g| g.group == shard)
        .expect("shard on node 3");
    assert!(
        g.index_watermark < last,
        "node 3's index lags ({} < {last})",
        g.index_watermark
    );

    cluster.kill(3).await;
    cluster.extra_args.remove(&3);
    cluster.start_node(3).await;
    let found = cluster
        .count_all(3, "acme", shard, last)
        .await
        .expect("search after catch-up");
    assert_eq!(found, 300, "the catch-up re-indexed every applied change");
}

/// Chaos BUG-1: a node whose cluster map a router watches ignored SIGTERM.
/// The gRPC server drained gracefully, the watch stream never ended, and
/// the node kept leading while refusing writes until it was killed. Now
/// shutdown ends the watch streams, stops the Raft groups first and bounds
/// the drain: the node exits, the watcher sees its stream end, and the
/// other replicas take the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_a_watched_leader_and_writes_move_on() {
    let mut cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::Process).await;
    let shard = cluster
        .create_tenant("acme", &["us-east"], 1)
        .await
        .partitions[0];
    cluster
        .write(batch(shard, 0, 10), SETTLE)
        .await
        .expect("first batch");
    let leader = cluster.leader_of(shard).await;
    let mut watcher = cluster.client(leader).await.expect("client");
    let mut maps = watcher
        .watch_cluster_map(pb::ClusterMapRequest { known_epoch: 0 })
        .await
        .expect("watch")
        .into_inner();
    maps.message().await.expect("first map").expect("a map");

    // The grace is a hang detector, far above the node's 3 s drain bound.
    let exited = cluster.terminate(leader, Duration::from_secs(30)).await;
    assert!(exited, "node {leader} did not exit on SIGTERM");
    let ended = maps.message().await;
    assert!(
        !matches!(ended, Ok(Some(_))),
        "the watch stream ended with the node, got {ended:?}"
    );
    let after = cluster
        .write(batch(shard, 10, 10), SETTLE)
        .await
        .expect("writes after the leader stopped");
    assert_ne!(cluster.leader_of(shard).await, leader);
    cluster.start_node(leader).await;
    let digest = cluster.converged(shard, &[1, 2, 3], after.applied).await;
    assert_eq!(digest.docs, 20, "every acknowledged doc on every replica");
}
