//! Issue 6, reranking on the node: a rank profile registered in features.toml reorders the
//! first phase's candidates with feature values read on the shard itself, through real nodes
//! and a router, on a tenant with two partitions.
//! - the order follows the profile's score, and `explain` reports the feature values the
//!   online API serves and contributions that add up to the score;
//! - the reranked order pages with cursors without duplicates or gaps;
//! - reranking never shows a document the user may not see, however strong its features;
//! - unknown profiles and versions are clear errors.

use std::collections::HashSet;

use serde_json::json;
use tessera_client::features::EntityKey;
use tessera_client::{SearchPage, SearchQuery, TesseraClient};
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::{eventually, Layout, TestCluster};

const TOML: &str = r#"
[[feature]]
name = "user_space_views"
entity = "user+space"
source = "view"
aggregation = "count"

[[feature]]
name = "doc_views"
entity = "doc"
source = "view"
aggregation = "count"

[[profile]]
name = "affinity"
version = 1
candidates = 50
bm25 = 1.0
[[profile.term]]
feature = "user_space_views"
weight = 0.5
transform = "log1p"
[[profile.term]]
feature = "doc_views"
weight = 0.01

[[profile]]
name = "affinity"
version = 2
candidates = 50
bm25 = 1.0
[[profile.term]]
feature = "user_space_views"
weight = 2.0
transform = "log1p"
"#;

const SPACES: [&str; 3] = ["ENG", "OPS", "HR"];

/// 60 pages over three spaces, all matching "runbook" with varying strength. Pages 0, 10, 20,
/// ... of OPS are restricted to `g:secret`, which alice is not in.
fn documents() -> Vec<Vec<u8>> {
    (0..60)
        .map(|i| {
            let space = SPACES[i % 3];
            let body = "runbook ".repeat(1 + i % 4) + "deploy notes";
            let mut doc = json!({
                "id": format!("p-{i:02}"),
                "space": space,
                "title": format!("page {i}"),
                "body": body,
                "version": 1,
            });
            if space == "OPS" && i % 10 == 1 {
                doc["permissions"] = json!({"space": [], "ancestors": [], "page": ["g:secret"]});
            }
            serde_json::to_vec(&doc).expect("json")
        })
        .collect()
}

/// Alice views OPS pages a lot (including the ones she cannot see), ENG a little.
fn events() -> Vec<Vec<u8>> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut out = Vec::new();
    for i in 0..40 {
        let (doc, space) = if i < 30 {
            (format!("p-{:02}", 1 + 3 * (i % 20)), "OPS")
        } else {
            (format!("p-{:02}", 3 * (i % 20)), "ENG")
        };
        let ts = tessera_proto::event::format_ts_millis(now_ms - 1_000 * (60 + i));
        out.push(
            serde_json::to_vec(&json!({
                "kind": "view", "user": "u:alice", "doc": doc, "space": space, "ts": ts
            }))
            .expect("json"),
        );
    }
    out
}

async fn search(c: &TesseraClient, q: SearchQuery) -> Result<SearchPage, String> {
    c.search(&q).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn profiles_rerank_on_the_node_explain_page_and_never_leak() {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    cluster.create_tenant("acme", &["us-east"], 2).await;
    let router = tessera_tests::routers::start_inproc_router(&cluster, "us-east", |_| {}).await;
    let client = tessera_tests::routers::client(&router.local_addr().to_string()).await;

    // A profile over an unregistered feature is rejected with the registry unchanged.
    let bad = TOML.replace(
        "feature = \"doc_views\"\nweight",
        "feature = \"nope\"\nweight",
    );
    let err = eventually(SETTLE, "bad profile rejected", || async {
        match client.apply_features("acme", &bad).await {
            Err(e) if e.exit_code() == tessera_client::exit::BAD_INPUT => Ok(Some(e)),
            Err(e) => Err(e.to_string()),
            Ok(_) => Ok(None),
        }
    })
    .await;
    assert!(err.to_string().contains("nope"), "{err}");
    let (version, _, _) = tessera_tests::routers::apply_features(&client, "acme", TOML).await;
    assert_eq!(version, 1, "the rejected file registered nothing");

    let put = client
        .put_documents("acme", documents(), Vec::new(), "")
        .await
        .expect("documents");
    assert_eq!(put.acked, 60);
    let (acked, token) = client
        .put_events("acme", events(), &put.token)
        .await
        .expect("events");
    assert_eq!(acked, 40);

    let base = SearchQuery::new("acme", "u:alice", "runbook")
        .limit(100)
        .token(&token);
    let bm25 = search(&client, base.clone()).await.expect("bm25");
    let ranked = search(&client, base.clone().profile("affinity").explain(true))
        .await
        .expect("profile");
    let visible = 60 - 2;
    assert_eq!(bm25.hits.len(), visible);
    assert_eq!(ranked.hits.len(), visible, "same candidates, reordered");
    assert!(bm25.hits.iter().all(|h| h.explanation.is_none()));

    // Nothing alice may not see, however much she viewed it.
    let restricted: HashSet<String> = ["p-01", "p-31"].iter().map(|s| s.to_string()).collect();
    for page in [&bm25, &ranked] {
        assert!(page.hits.iter().all(|h| !restricted.contains(&h.id)));
    }

    // Newest version by default: v2 weighs space affinity only, so her OPS pages lead.
    let top = &ranked.hits[0];
    let e = top.explanation.as_ref().expect("explained");
    assert_eq!((e.profile.as_str(), e.version), ("affinity", 2));
    let ops: HashSet<String> = (0..60)
        .filter(|i| i % 3 == 1)
        .map(|i| format!("p-{i:02}"))
        .collect();
    assert!(
        ranked.hits[..10].iter().all(|h| ops.contains(&h.id)),
        "OPS pages lead: {:?}",
        ranked.hits.iter().map(|h| &h.id).collect::<Vec<_>>()
    );
    assert!(
        !bm25.hits[..10].iter().all(|h| ops.contains(&h.id)),
        "BM25 alone does not put OPS first, or the test proves nothing"
    );
    // Scores are descending, and each explanation adds up and reports the served values.
    for w in ranked.hits.windows(2) {
        assert!(
            (w[0].score, &w[1].id) >= (w[1].score, &w[0].id),
            "order {w:?}"
        );
    }
    let names = vec!["user_space_views".to_string()];
    for (i, hit) in ranked.hits.iter().enumerate().take(12) {
        let e = hit.explanation.as_ref().expect("explained");
        let sum: f64 = e.bm25 + e.features.iter().map(|f| f.2).sum::<f64>();
        assert!((sum - e.score).abs() < 1e-9, "{e:?}");
        assert!((e.score as f32 - hit.score).abs() <= 1e-6 * e.score.abs() as f32 + 1e-6);
        let space = SPACES[hit.id[2..].parse::<usize>().expect("id") % 3];
        if i < 3 {
            let served = client
                .online_features(
                    "acme",
                    &EntityKey {
                        user: "u:alice".into(),
                        space: space.into(),
                        doc: hit.id.clone(),
                    },
                    &names,
                    &token,
                )
                .await
                .expect("online");
            assert_eq!(
                served.values[0], e.features[0].1,
                "explain shows served values"
            );
        }
    }

    // Pinned versions and bad names.
    let v1 = search(&client, base.clone().profile("affinity@1").explain(true))
        .await
        .expect("v1");
    let e1 = v1.hits[0].explanation.as_ref().expect("explained");
    assert_eq!((e1.version, e1.features.len()), (1, 2));
    for wrong in ["nope", "affinity@9", "affinity@x"] {
        let err = search(&client, base.clone().profile(wrong))
            .await
            .expect_err("unknown profile");
        assert!(err.contains("rank profile"), "{wrong}: {err}");
    }

    // Paging the reranked order: pages of 7 give exactly the one-page order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let mut q = SearchQuery::new("acme", "u:alice", "runbook")
            .limit(7)
            .token(&token)
            .profile("affinity");
        if let Some(c) = &cursor {
            q = q.cursor(c);
        }
        let page = search(&client, q).await.expect("page");
        paged.extend(page.hits.into_iter().map(|h| h.id));
        cursor = page.cursor;
        if cursor.is_none() {
            break;
        }
    }
    let whole: Vec<String> = ranked.hits.iter().map(|h| h.id.clone()).collect();
    assert_eq!(paged, whole);

    // Bob has no views: the profile keeps BM25's order (every feature is 0).
    let bob = SearchQuery::new("acme", "u:bob", "runbook")
        .limit(100)
        .token(&token);
    let plain: Vec<String> = search(&client, bob.clone())
        .await
        .expect("bob")
        .hits
        .into_iter()
        .map(|h| h.id)
        .collect();
    let reranked: Vec<String> = search(&client, bob.profile("affinity"))
        .await
        .expect("bob ranked")
        .hits
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(plain, reranked);
}
