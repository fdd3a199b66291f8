//! Issue 6 acceptance through real nodes: feature definitions and events go
//! through each shard's Raft log, online values equal the offline replay on
//! every replica, and still do after the leader is killed (-9), the log is
//! compacted into a snapshot and the old leader restarts.

use std::time::Duration;
use tessera_proto::pb;
use tessera_proto::pb::features_client::FeaturesClient;
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::{eventually, Layout, TestCluster};
use tonic::transport::Channel;

const TOML: &str = r#"
[[feature]]
name = "user_space_views_30m"
entity = "user+space"
source = "view"
aggregation = "count"
window = "30m"

[[feature]]
name = "doc_popularity"
entity = "doc"
source = "view"
aggregation = "decayed_count"
half_life = "10m"

[[feature]]
name = "doc_editors_1h"
entity = "doc"
source = "edit"
aggregation = "distinct_users"
window = "1h"

[[feature]]
name = "user_last_click"
entity = "user"
source = "click"
aggregation = "last"
ttl = "2h"
"#;

const FEATURES: [&str; 4] = [
    "user_space_views_30m",
    "doc_popularity",
    "doc_editors_1h",
    "user_last_click",
];

async fn features(cluster: &TestCluster, id: u64) -> Result<FeaturesClient<Channel>, String> {
    let channel = cluster
        .router_identity()
        .node_endpoint(&cluster.grpc(id).to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(FeaturesClient::new(channel))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339(ms: i64) -> String {
    tessera_proto::event::format_ts_millis(ms)
}

fn events(seed: u64, n: usize, now: i64) -> Vec<Vec<u8>> {
    let kinds = ["view", "view", "edit", "click"];
    (0..n)
        .map(|i| {
            let x = seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64 * 1442695040888963407);
            let kind = kinds[(x >> 7) as usize % kinds.len()];
            let user = format!("u:{}", (x >> 13) % 5);
            let doc = format!("p-{}", (x >> 19) % 7);
            let space = ["ENG", "OPS"][((x >> 23) % 2) as usize];
            // Up to 50 minutes old: some inside every window, some outside.
            let ts = now - ((x >> 29) % 3_000_000) as i64;
            format!(
                r#"{{"kind":"{kind}","user":"{user}","doc":"{doc}","space":"{space}","ts":"{}","value":{}}}"#,
                rfc3339(ts),
                (x >> 41) % 100
            )
            .into_bytes()
        })
        .collect()
}

/// Sends `f` to the shard's leader, following leadership changes.
async fn on_leader<T, F, Fut>(cluster: &TestCluster, shard: u64, what: &str, f: F) -> T
where
    F: Fn(FeaturesClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    eventually(SETTLE, what, || async {
        let leader = cluster.leader_of(shard).await;
        let c = features(cluster, leader).await?;
        match f(c).await {
            Ok(v) => Ok(Some(v)),
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                panic!("{what}: rejected: {}", s.message())
            }
            Err(s) => Err(s.to_string()),
        }
    })
    .await
}

fn entities() -> Vec<pb::EntityKey> {
    let mut out = Vec::new();
    for u in 0..5 {
        for (s, space) in ["ENG", "OPS"].iter().enumerate() {
            out.push(pb::EntityKey {
                user: format!("u:{u}"),
                space: space.to_string(),
                doc: format!("p-{}", (u + s) % 7),
            });
        }
    }
    out
}

/// Online values on node `id` equal that node's own offline replay at the
/// online read's time, with `as_of_known`, bit for bit; returns the pairs compared.
async fn online_equals_offline(
    cluster: &TestCluster,
    id: u64,
    shard: u64,
    min_applied: u64,
) -> Result<Vec<(i64, Vec<Option<f64>>)>, String> {
    let mut c = features(cluster, id).await?;
    let names: Vec<String> = FEATURES.iter().map(|s| s.to_string()).collect();
    let mut seen = Vec::new();
    for entity in entities() {
        let online = c
            .online_features(pb::OnlineFeaturesRequest {
                tenant: "acme".into(),
                shard,
                entity: Some(entity.clone()),
                features: names.clone(),
                min_applied,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let offline = c
            .historical_features(pb::HistoricalFeaturesRequest {
                tenant: "acme".into(),
                shard,
                rows: vec![pb::HistoricalRow {
                    entity: Some(entity.clone()),
                    ts_ms: online.as_of_ms,
                }],
                features: names.clone(),
                as_of_known: true,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let on: Vec<Option<f64>> = online.values.iter().map(|v| v.value).collect();
        let off: Vec<Option<f64>> = offline.rows[0].values.iter().map(|v| v.value).collect();
        let bits = |v: &[Option<f64>]| v.iter().map(|x| x.map(f64::to_bits)).collect::<Vec<_>>();
        assert_eq!(
            bits(&on),
            bits(&off),
            "node {id} shard {shard} entity {entity:?}: online {on:?} != offline {off:?}"
        );
        seen.push((online.as_of_ms, on));
    }
    Ok(seen)
}

/// Offline values at fixed times on node `id` (what every replica must agree on).
async fn offline_at(
    cluster: &TestCluster,
    id: u64,
    shard: u64,
    t: i64,
    min_applied: u64,
) -> Result<Vec<Vec<Option<f64>>>, String> {
    let mut c = features(cluster, id).await?;
    let resp = c
        .historical_features(pb::HistoricalFeaturesRequest {
            tenant: "acme".into(),
            shard,
            rows: entities()
                .into_iter()
                .map(|e| pb::HistoricalRow {
                    entity: Some(e),
                    ts_ms: t,
                })
                .collect(),
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
            as_of_known: false,
            min_applied,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    Ok(resp
        .rows
        .into_iter()
        .map(|r| r.values.into_iter().map(|v| v.value).collect())
        .collect())
}

/// Writes 200 events to every shard of the tenant (each through its
/// leader) and returns each shard's commit index.
async fn write_events(
    cluster: &TestCluster,
    shards: &[u64],
    seed: u64,
) -> std::collections::HashMap<u64, u64> {
    let mut tokens = std::collections::HashMap::new();
    for &shard in shards {
        let batch = events(seed, 200, now_ms());
        let out = on_leader(cluster, shard, "put events", |mut c| {
            let batch = batch.clone();
            async move {
                c.put_events(pb::PutEventsRequest {
                    tenant: "acme".into(),
                    shard,
                    events_json: batch,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
            }
        })
        .await;
        assert_eq!(out.acked, 200);
        tokens.insert(shard, out.token.map_or(0, |t| t.applied));
    }
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn features_survive_leader_kill_snapshot_and_restart() {
    let mut cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::Process).await;
    let tenant = cluster.create_tenant("acme", &["us-east"], 2).await;
    let shards = tenant.partitions.clone();
    assert_eq!(shards.len(), 2);

    // Bad definitions are refused with the rule named; nothing registered.
    let bad = TOML.replace("\"decayed_count\"", "\"median\"");
    let mut c = features(&cluster, cluster.leader_of(shards[0]).await)
        .await
        .expect("client");
    let err = c
        .apply_features(pb::ApplyFeaturesRequest {
            tenant: "acme".into(),
            shard: shards[0],
            toml: bad,
            timeout_ms: 0,
        })
        .await
        .expect_err("bad definitions");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("median"), "{}", err.message());

    for &shard in &shards {
        let out = on_leader(&cluster, shard, "apply features", |mut c| async move {
            c.apply_features(pb::ApplyFeaturesRequest {
                tenant: "acme".into(),
                shard,
                toml: TOML.into(),
                timeout_ms: 0,
            })
            .await
            .map(|r| r.into_inner())
        })
        .await;
        assert_eq!(out.version, 1);
    }
    // Events: a bad line rejects the whole batch.
    let mut bad_batch = events(1, 3, now_ms());
    bad_batch
        .push(br#"{"kind":"view","user":"u:1","doc":"p-1","space":"ENG","ts":"soon"}"#.to_vec());
    let err = c
        .put_events(pb::PutEventsRequest {
            tenant: "acme".into(),
            shard: shards[0],
            events_json: bad_batch,
            ..Default::default()
        })
        .await
        .expect_err("bad event");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("event 3"), "{}", err.message());

    let mut last = std::collections::HashMap::new();
    for seed in 10..13 {
        last = write_events(&cluster, &shards, seed).await;
    }
    for &shard in &shards {
        for id in [1, 2, 3] {
            let seen = online_equals_offline(&cluster, id, shard, last[&shard])
                .await
                .expect("online vs offline");
            assert!(
                seen.iter()
                    .any(|(_, v)| v.iter().any(|x| x.is_some_and(|x| x > 0.0))),
                "node {id} shard {shard} serves real values"
            );
        }
    }

    // Kill the leader of the first shard, write more, compact every
    // survivor's log into a snapshot, then restart the old leader.
    let victim = cluster.leader_of(shards[0]).await;
    cluster.kill(victim).await;
    for seed in 20..22 {
        write_events(&cluster, &shards, seed).await;
    }
    for id in cluster.up() {
        let mut node = cluster.client(id).await.expect("client");
        for &shard in &shards {
            node.snapshot(pb::SnapshotRequest {
                group: shard,
                purge: true,
            })
            .await
            .expect("snapshot and purge");
        }
    }
    last = write_events(&cluster, &shards, 30).await;
    cluster.start_node(victim).await;
    let t_fixed = now_ms();
    for &shard in &shards {
        let min = last[&shard];
        let reference = eventually(SETTLE, "reference replay", || {
            let c = &cluster;
            async move {
                offline_at(c, c.up()[0], shard, t_fixed, min)
                    .await
                    .map(Some)
            }
        })
        .await;
        for id in [1, 2, 3] {
            let seen = eventually(SETTLE, "restarted node caught up", || {
                let c = &cluster;
                async move { online_equals_offline(c, id, shard, min).await.map(Some) }
            })
            .await;
            assert_eq!(seen.len(), entities().len());
            let replay = eventually(SETTLE, "replay", || {
                let c = &cluster;
                async move { offline_at(c, id, shard, t_fixed, min).await.map(Some) }
            })
            .await;
            assert_eq!(
                replay, reference,
                "node {id} shard {shard}: every replica replays the same values"
            );
        }
    }
}

/// The same contract through a router and the client API (what the CLI
/// uses): definitions reach every shard, a bad event line writes nothing,
/// online values equal the historical replay at their time, rows keep their
/// order and unknown entities come back null.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn features_through_router_and_client() {
    use tessera_client::features::{EntityKey, HistoricalRow};
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    cluster.create_tenant("acme", &["us-east"], 3).await;
    let router = tessera_tests::routers::start_inproc_router(&cluster, "us-east", |_| {}).await;
    let client = tessera_tests::routers::client(&router.local_addr().to_string()).await;

    let err = client
        .apply_features("acme", "[[feature]]\nname = \"x\"\nentity = \"org\"\nsource = \"view\"\naggregation = \"count\"\n")
        .await
        .expect_err("bad definitions");
    assert_eq!(err.exit_code(), tessera_client::exit::BAD_INPUT, "{err}");
    assert!(err.to_string().contains("entity"), "{err}");

    let (version, changed, _) = tessera_tests::routers::apply_features(&client, "acme", TOML).await;
    assert_eq!((version, changed), (1, true));
    let (_, defs) = client.list_features("acme").await.expect("list");
    assert_eq!(defs.len(), FEATURES.len());
    assert_eq!(defs[0].window, "30m");

    let mut bad = events(5, 10, now_ms());
    bad.push(b"{\"kind\":\"view\"}".to_vec());
    let err = client
        .put_events("acme", bad, "")
        .await
        .expect_err("bad batch");
    assert_eq!(err.exit_code(), tessera_client::exit::BAD_INPUT, "{err}");

    let batch = events(7, 300, now_ms());
    let (acked, token) = client
        .put_events("acme", batch.clone(), "")
        .await
        .expect("events");
    assert_eq!(acked, 300);
    let names: Vec<String> = FEATURES.iter().map(|s| s.to_string()).collect();
    let mut rows = Vec::new();
    let mut online = Vec::new();
    for e in entities() {
        let entity = EntityKey {
            user: e.user,
            space: e.space,
            doc: e.doc,
        };
        let v = client
            .online_features("acme", &entity, &names, &token)
            .await
            .expect("online");
        rows.push(HistoricalRow {
            entity,
            ts_ms: v.as_of_ms,
        });
        online.push(v.values);
    }
    // An entity nobody touched, before any event: kept, in place, null or 0.
    rows.insert(
        3,
        HistoricalRow {
            entity: EntityKey {
                user: "u:nobody".into(),
                space: "NONE".into(),
                doc: "p-none".into(),
            },
            ts_ms: 0,
        },
    );
    let offline = client
        .historical_features("acme", &rows, &names, true, &token)
        .await
        .expect("historical");
    assert_eq!(offline.len(), rows.len());
    assert_eq!(offline[3], vec![Some(0.0), Some(0.0), Some(0.0), None]);
    let mut offline = offline;
    offline.remove(3);
    assert_eq!(
        online, offline,
        "online through the router equals the replay"
    );
    assert!(online.iter().flatten().any(|v| v.is_some_and(|v| v > 0.0)));

    // Exactly once: the same batch again (a client retrying after a lost
    // acknowledgement) and a batch of its first ten lines change no value.
    // Late events count here (as_of_known off), so a double count would show.
    let all_known = |token: String| {
        let (client, rows, names) = (&client, &rows, &names);
        async move {
            client
                .historical_features("acme", rows, names, false, &token)
                .await
                .expect("historical")
        }
    };
    let before = all_known(token.clone()).await;
    let (acked, retried) = client
        .put_events("acme", batch.clone(), &token)
        .await
        .expect("retried events");
    assert_eq!(acked, 300, "a duplicate is acknowledged: it is durable");
    let (_, retried) = client
        .put_events("acme", batch[..10].to_vec(), &retried)
        .await
        .expect("a partial retry");
    assert_eq!(
        before,
        all_known(retried).await,
        "a retried batch changed feature values"
    );
}

/// The `tessera` CLI end to end: `features apply|list|describe`, `events`,
/// `features online` and `features historical` with CSV in and out, and
/// exit code 2 with one stderr line for bad definitions and bad events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn features_cli() {
    use tessera_tests::routers::cli;
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    cluster.create_tenant("acme", &["us-east"], 2).await;
    let router = tessera_tests::routers::start_inproc_router(&cluster, "us-east", |_| {}).await;
    let addr = router.local_addr().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_string_lossy().to_string();

    std::fs::write(path("bad.toml"), "[[feature]]\nname = \"x\"\n").expect("write");
    let out = cli(&[
        "--router",
        &addr,
        "features",
        "apply",
        "acme",
        &path("bad.toml"),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing field"),
        "{out:?}"
    );

    std::fs::write(path("features.toml"), TOML).expect("write");
    let out = eventually(SETTLE, "features apply", || async {
        let out = cli(&[
            "--router",
            &addr,
            "features",
            "apply",
            "acme",
            &path("features.toml"),
        ])
        .await;
        Ok::<_, String>(out.status.success().then_some(out))
    })
    .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("version 1"),
        "{out:?}"
    );
    let out = cli(&["--router", &addr, "features", "list", "acme", "--json"]).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list["version"], 1);
    assert_eq!(
        list["features"].as_array().map(Vec::len),
        Some(FEATURES.len())
    );
    let out = cli(&[
        "--router",
        &addr,
        "features",
        "describe",
        "acme",
        "doc_popularity",
    ])
    .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("half_life: 10m"),
        "{out:?}"
    );

    let mut lines = events(3, 50, now_ms());
    let good: Vec<u8> = lines.join(&b'\n');
    lines.push(b"{\"kind\":\"view\",\"user\":\"u:1\",\"doc\":\"p-1\",\"space\":\"ENG\",\"ts\":\"2026-13-01\"}".to_vec());
    std::fs::write(path("bad.jsonl"), lines.join(&b'\n')).expect("write");
    let out = cli(&["--router", &addr, "events", "acme", &path("bad.jsonl")]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 51"),
        "{out:?}"
    );

    std::fs::write(path("events.jsonl"), good).expect("write");
    let out = cli(&[
        "--router",
        &addr,
        "events",
        "acme",
        &path("events.jsonl"),
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let written: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(written["acked"], 50);
    let token = written["token"].as_str().unwrap_or_default().to_string();

    let out = cli(&[
        "--router",
        &addr,
        "features",
        "online",
        "acme",
        "--entity",
        "user=u:1,space=ENG,doc=p-1",
        "--features",
        "user_space_views_30m,user_last_click",
        "--token",
        &token,
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let online: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        online["features"]["user_space_views_30m"].is_number(),
        "{online}"
    );

    std::fs::write(
        path("rows.csv"),
        "user,space,doc,ts\nu:1,ENG,p-1,1970-01-01T00:00:00Z\nu:2,OPS,p-2,2100-01-01T00:00:00Z\n",
    )
    .expect("write");
    let out = cli(&[
        "--router",
        &addr,
        "features",
        "historical",
        "acme",
        "--rows",
        &path("rows.csv"),
        "--features",
        "user_space_views_30m,user_last_click",
        "--out",
        &path("out.csv"),
        "--token",
        &token,
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let csv = std::fs::read_to_string(path("out.csv")).expect("out.csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "user,space,doc,ts,user_space_views_30m,user_last_click"
    );
    assert_eq!(
        lines[1], "u:1,ENG,p-1,1970-01-01T00:00:00Z,0,",
        "no events yet: 0 and null"
    );
    assert_eq!(
        lines[2], "u:2,OPS,p-2,2100-01-01T00:00:00Z,0,",
        "long after: out of window, ttl expired"
    );
    assert_eq!(lines.len(), 3, "rows kept, in order");
}
