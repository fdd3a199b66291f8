//! Issue 6, experiments: users split by hash between a BM25 control and a profile, shadow mode,
//! and the router's impression and click log, through real nodes (RocksDB, tantivy, Raft) and a
//! router on a tenant with two partitions.
//! - every user gets a stable variant, both variants are used, and each user's page is exactly
//!   what searching with their variant's profile (or plain BM25) returns;
//! - shadow mode serves the control to a treated user and logs the variant's ranking beside it;
//! - impressions and the clicks citing them land in the log, and the log reads back into
//!   per-variant figures;
//! - a profile together with an experiment, and unknown experiments, are clear errors.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use serde_json::json;
use tessera_client::experiments::{report, ExperimentLog};
use tessera_client::{SearchPage, SearchQuery, TesseraClient};
use tessera_tests::cluster::Mode;
use tessera_tests::{eventually, Layout, TestCluster};

const TOML: &str = r#"
[[feature]]
name = "user_space_views"
entity = "user+space"
source = "view"
aggregation = "count"

[[profile]]
name = "affinity"
version = 1
candidates = 40
[[profile.term]]
feature = "user_space_views"
weight = 3.0
transform = "log1p"

[[experiment]]
name = "split"
control = "bm25"
[[experiment.variant]]
name = "affinity"
profile = "affinity@1"
share = 0.5

[[experiment]]
name = "shadowed"
control = "bm25"
shadow = true
[[experiment.variant]]
name = "affinity"
profile = "affinity"
share = 1.0
"#;

const USERS: usize = 24;

/// 40 pages in two spaces, all matching "handbook"; ENG pages match more strongly.
fn documents() -> Vec<Vec<u8>> {
    (0..40)
        .map(|i| {
            let space = if i % 2 == 0 { "ENG" } else { "SALES" };
            let strength = if space == "ENG" { 3 } else { 1 } + i % 3;
            serde_json::to_vec(&json!({
                "id": format!("d-{i:02}"),
                "space": space,
                "title": format!("doc {i}"),
                "body": "handbook ".repeat(strength) + "notes",
                "version": 1,
            }))
            .expect("json")
        })
        .collect()
}

/// Every user views SALES pages, so the affinity profile lifts SALES above BM25's ENG.
fn events() -> Vec<Vec<u8>> {
    let ts = tessera_proto::event::format_ts_millis(tessera_node::features::now_ms() - 60_000);
    (0..USERS)
        .flat_map(|u| {
            let ts = ts.clone();
            (0..3).map(move |k| {
                serde_json::to_vec(&json!({
                    "kind": "view", "user": format!("u:{u}"), "doc": format!("d-{:02}", 2 * k + 1),
                    "space": "SALES", "ts": ts,
                }))
                .expect("json")
            })
        })
        .collect()
}

fn ids(page: &SearchPage) -> Vec<String> {
    page.hits.iter().map(|h| h.id.clone()).collect()
}

async fn search(c: &TesseraClient, q: &SearchQuery) -> SearchPage {
    c.search(q).await.expect("search")
}

fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn experiments_split_users_shadow_and_log_impressions_and_clicks() {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    cluster.create_tenant("acme", &["us-east"], 2).await;
    let log_path = cluster.dir.path().join("impressions.jsonl");
    let path = log_path.clone();
    let router = tessera_tests::routers::start_inproc_router(&cluster, "us-east", move |cfg| {
        cfg.impression_log = Some(path.clone());
    })
    .await;
    let client = tessera_tests::routers::client(&router.local_addr().to_string()).await;
    let (version, _, _) = tessera_tests::routers::apply_features(&client, "acme", TOML).await;
    assert_eq!(version, 1);
    let put = client
        .put_documents("acme", documents(), Vec::new(), "")
        .await
        .expect("documents");
    let (_, token) = client
        .put_events("acme", events(), &put.token)
        .await
        .expect("events");

    // Split: stable variants, both used, each page equal to its variant's own ranking.
    let mut seen = BTreeSet::new();
    let mut impressions = HashSet::new();
    for u in 0..USERS {
        let user = format!("u:{u}");
        let base = SearchQuery::new("acme", &user, "handbook")
            .limit(10)
            .token(&token);
        let page = search(&client, &base.clone().experiment("split")).await;
        let again = search(&client, &base.clone().experiment("split")).await;
        let variant = page.variant.clone().expect("variant reported");
        assert_eq!(
            again.variant.as_deref(),
            Some(variant.as_str()),
            "stable for {user}"
        );
        let expected = match variant.as_str() {
            "control" => search(&client, &base).await,
            "affinity" => search(&client, &base.clone().profile("affinity@1")).await,
            other => panic!("unexpected variant {other}"),
        };
        assert_eq!(ids(&page), ids(&expected), "{user} in {variant}");
        for p in [&page, &again] {
            assert!(impressions.insert(p.impression.clone().expect("impression id")));
        }
        seen.insert(variant);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec!["affinity".to_string(), "control".to_string()],
        "both variants get users"
    );
    let bm25 = search(
        &client,
        &SearchQuery::new("acme", "u:0", "handbook")
            .limit(10)
            .token(&token),
    )
    .await;
    let affinity = search(
        &client,
        &SearchQuery::new("acme", "u:0", "handbook")
            .limit(10)
            .token(&token)
            .profile("affinity"),
    )
    .await;
    assert_ne!(
        ids(&bm25),
        ids(&affinity),
        "the variants rank differently, or this proves nothing"
    );

    // Shadow: the control is served, the variant's ranking is logged.
    let shadowed = search(
        &client,
        &SearchQuery::new("acme", "u:0", "handbook")
            .limit(10)
            .token(&token)
            .experiment("shadowed"),
    )
    .await;
    assert_eq!(shadowed.variant.as_deref(), Some("affinity"));
    assert_eq!(ids(&shadowed), ids(&bm25), "shadow mode serves the control");
    let shadow_id = shadowed.impression.clone().expect("impression");
    // Page two continues the served (BM25) order.
    let next = search(
        &client,
        &SearchQuery::new("acme", "u:0", "handbook")
            .limit(10)
            .token(&token)
            .experiment("shadowed")
            .cursor(shadowed.cursor.clone().expect("more pages")),
    )
    .await;
    let plain_next = search(
        &client,
        &SearchQuery::new("acme", "u:0", "handbook")
            .limit(10)
            .token(&token)
            .cursor(bm25.cursor.clone().expect("more pages")),
    )
    .await;
    assert_eq!(ids(&next), ids(&plain_next));

    // A click citing the shadow impression, on the variant's top hit.
    let clicked = affinity.hits[0].id.clone();
    let click = serde_json::to_vec(&json!({
        "kind": "click", "user": "u:0", "doc": clicked, "space": "SALES",
        "ts": tessera_proto::event::format_ts_millis(tessera_node::features::now_ms()),
        "impression": shadow_id,
    }))
    .expect("json");
    client
        .put_events("acme", vec![click], &token)
        .await
        .expect("click");

    let expected_lines = 2 * USERS + 2 + 1;
    let lines = eventually(Duration::from_secs(30), "log written", || {
        let lines = log_lines(&log_path);
        async move { Ok::<_, String>((lines.len() >= expected_lines).then_some(lines)) }
    })
    .await;
    let shadow_line = lines
        .iter()
        .find(|l| l["id"] == shadow_id.as_str())
        .expect("shadow impression logged");
    assert_eq!(shadow_line["shadow"], true);
    assert_eq!(shadow_line["variant"], "affinity");
    assert_eq!(shadow_line["hits"], json!(ids(&bm25)));
    assert_eq!(shadow_line["shadow_hits"], json!(ids(&affinity)));
    let click_line = lines
        .iter()
        .find(|l| l["type"] == "click")
        .expect("click logged");
    assert_eq!(click_line["impression"], shadow_id.as_str());
    assert_eq!(click_line["doc"], clicked.as_str());

    // The log reads back: the click scores the served control and the shadow ranking.
    let log = ExperimentLog::load(&[&log_path]).expect("log");
    let reports = report(&log, 200, 1);
    let shadowed = reports
        .iter()
        .find(|r| r.experiment == "shadowed")
        .expect("shadowed report");
    let by_name = |n: &str| {
        shadowed
            .variants
            .iter()
            .find(|v| v.variant == n)
            .unwrap_or_else(|| panic!("{n} in {shadowed:?}"))
    };
    assert_eq!(by_name("affinity (shadow)").mrr_at_10.mean, 1.0);
    let served_rank = ids(&bm25).iter().position(|d| *d == clicked);
    let expected_rr = served_rank.map_or(0.0, |r| 1.0 / (r + 1) as f64);
    assert!((by_name("control").mrr_at_10.mean - expected_rr).abs() < 1e-12);
    let split = reports
        .iter()
        .find(|r| r.experiment == "split")
        .expect("split");
    assert_eq!(
        split.variants.iter().map(|v| v.impressions).sum::<usize>(),
        2 * USERS
    );

    // The CLI reads the same log without a cluster.
    let log_arg = log_path.display().to_string();
    let out = tessera_tests::routers::cli(&["eval", "--impressions", &log_arg, "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    let names: Vec<&str> = printed
        .as_array()
        .expect("one report per experiment")
        .iter()
        .filter_map(|r| r["experiment"].as_str())
        .collect();
    assert_eq!(names, vec!["shadowed", "split"]);

    // Errors: profile with experiment, unknown experiment.
    for (q, needle) in [
        (
            SearchQuery::new("acme", "u:0", "handbook")
                .profile("affinity")
                .experiment("split"),
            "exclusive",
        ),
        (
            SearchQuery::new("acme", "u:0", "handbook").experiment("nope"),
            "shadowed",
        ),
    ] {
        let err = client.search(&q).await.expect_err(needle);
        assert_eq!(err.exit_code(), tessera_client::exit::BAD_INPUT, "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
}
