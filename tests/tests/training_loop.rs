//! Issue 6, the training loop: `features historical` rows plus click labels
//! train a linear profile with the project's trainer (`tessera_client::train`),
//! the profile is applied as part of `features.toml` and served by the nodes,
//! and nothing is skewed between the two sides:
//! - the point-in-time values the trainer saw equal the online values of the
//!   same features at the same instants (one definition);
//! - every reranked hit's served score is the trainer's own model applied to
//!   the values the node explains, and those values are the online API's;
//! - the trained profile orders held-out sessions better than BM25 alone.
//!
//! Real nodes in-process (RocksDB, tantivy, Raft over QUIC, gRPC) behind a
//! real router; the tenant has two partitions.

use std::collections::BTreeMap;

use serde_json::json;
use tessera_client::features::{EntityKey, HistoricalRow};
use tessera_client::train::{
    is_holdout, pairwise_accuracy, profile_toml, train, Columns, Dataset, FeatureSpec, ProfileMeta,
    RankProfile, TrainOptions, DEFAULT_HOLDOUT_PERCENT,
};
use tessera_client::{SearchQuery, TesseraClient};
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::{eventually, Layout, TestCluster};

const FEATURES_TOML: &str = r#"
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
"#;

const FEATURES: [&str; 2] = ["user_space_views", "doc_views"];
const SPACES: [&str; 3] = ["ENG", "OPS", "HR"];
const USERS: usize = 6;
const DOCS: usize = 90;
const SESSIONS: usize = 60;
const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn user(u: usize) -> String {
    format!("u:user{u}")
}

/// User `u` works in one space and mostly reads there.
fn home_space(u: usize) -> &'static str {
    SPACES[u % SPACES.len()]
}

fn space_of(doc: usize) -> &'static str {
    SPACES[doc % SPACES.len()]
}

/// Pages over three spaces, all matching "river" with varying strength.
fn documents() -> Vec<Vec<u8>> {
    (0..DOCS)
        .map(|i| {
            let body = "river ".repeat(1 + (i * 7) % 5) + &"notes ".repeat(1 + i % 3);
            serde_json::to_vec(&json!({
                "id": format!("p-{i:02}"),
                "space": space_of(i),
                "title": format!("page {i}"),
                "body": body,
                "version": 1,
            }))
            .unwrap_or_default()
        })
        .collect()
}

/// Views over the ten days before `sessions_at`: each user views pages of
/// their home space six times as often as the others.
fn view_events(sessions_at: i64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for u in 0..USERS {
        for k in 0..70usize {
            let doc = if k % 7 == 0 {
                (u + k) % DOCS
            } else {
                let home = SPACES.iter().position(|s| *s == home_space(u)).unwrap_or(0);
                (home + SPACES.len() * ((u * 5 + k) % (DOCS / SPACES.len()))) % DOCS
            };
            let ts = sessions_at - DAY_MS - (k as i64) * 3_600_000 - u as i64;
            out.push(
                serde_json::to_vec(&json!({
                    "kind": "view", "user": user(u), "doc": format!("p-{doc:02}"),
                    "space": space_of(doc),
                    "ts": tessera_proto::event::format_ts_millis(ts),
                }))
                .unwrap_or_default(),
            );
        }
    }
    out
}

/// One shown candidate of a session.
struct Shown {
    session: usize,
    user: String,
    doc: String,
    space: String,
    bm25: f64,
    clicked: bool,
}

/// Each session: a user's BM25 search for "river"; the user clicks the
/// first two shown pages of their home space.
async fn sessions(client: &TesseraClient, token: &str) -> Vec<Shown> {
    let mut out = Vec::new();
    for s in 0..SESSIONS {
        let u = s % USERS;
        let q = SearchQuery::new("learn", user(u), "river")
            .limit(20)
            .token(token);
        let page = client.search(&q).await.expect("session search");
        assert!(
            page.hits.len() >= 10,
            "session {s} showed {} hits",
            page.hits.len()
        );
        let mut clicks = 0;
        for hit in page.hits {
            let doc: usize = hit.id[2..].parse().expect("page number");
            let space = space_of(doc);
            let clicked = space == home_space(u) && clicks < 2;
            clicks += usize::from(clicked);
            out.push(Shown {
                session: s,
                user: user(u),
                doc: hit.id,
                space: space.to_string(),
                bm25: f64::from(hit.score),
                clicked,
            });
        }
    }
    out
}

/// The CSV `tessera features historical` writes: the caller's columns, then
/// one per feature (empty = null).
fn historical_csv(shown: &[Shown], values: &[Vec<Option<f64>>]) -> String {
    let mut csv = String::from("group,label,bm25");
    for f in FEATURES {
        csv.push(',');
        csv.push_str(f);
    }
    csv.push('\n');
    for (row, vals) in shown.iter().zip(values) {
        csv.push_str(&format!(
            "s{},{},{}",
            row.session,
            u8::from(row.clicked),
            row.bm25
        ));
        for v in vals {
            csv.push(',');
            if let Some(x) = v {
                csv.push_str(&x.to_string());
            }
        }
        csv.push('\n');
    }
    csv
}

/// The (preferred, other) row pairs of the sessions the trainer holds out.
fn holdout_pairs(data: &Dataset) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (a, ra) in data.rows.iter().enumerate() {
        if !is_holdout(&ra.group, DEFAULT_HOLDOUT_PERCENT) {
            continue;
        }
        for (b, rb) in data.rows.iter().enumerate() {
            if ra.group == rb.group && ra.label > rb.label {
                out.push((a, b));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trained_weights_serve_online_with_the_values_they_were_trained_on() {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    cluster.create_tenant("learn", &["us-east"], 2).await;
    let router = tessera_tests::routers::start_inproc_router(&cluster, "us-east", |_| {}).await;
    let client = tessera_tests::routers::client(&router.local_addr().to_string()).await;

    eventually(SETTLE, "features applied", || async {
        client
            .apply_features("learn", FEATURES_TOML)
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    })
    .await;
    let token = tessera_tests::routers::put_all(&client, "learn", documents(), 100).await;
    let sessions_at = now_ms() - DAY_MS / 2;
    let (_, token) = client
        .put_events("learn", view_events(sessions_at), &token)
        .await
        .expect("events");

    // Impressions and clicks, then the point-in-time feature rows.
    let shown = sessions(&client, &token).await;
    let rows: Vec<HistoricalRow> = shown
        .iter()
        .map(|r| HistoricalRow {
            entity: EntityKey {
                user: r.user.clone(),
                space: r.space.clone(),
                doc: r.doc.clone(),
            },
            ts_ms: sessions_at,
        })
        .collect();
    let names: Vec<String> = FEATURES.iter().map(|f| f.to_string()).collect();
    let values = client
        .historical_features("learn", &rows, &names, false, &token)
        .await
        .expect("historical rows");
    assert_eq!(values.len(), shown.len(), "a row per impression");

    // Train on them with the project's trainer.
    let specs = FeatureSpec::from_options(&names, &["user_space_views=log1p".to_string()], &[])
        .expect("feature specs");
    let columns = Columns {
        label: "label".into(),
        group: "group".into(),
        bm25: "bm25".into(),
    };
    let csv = historical_csv(&shown, &values);
    let data = Dataset::parse_csv(&csv, &columns, &specs).expect("training rows");
    let meta = ProfileMeta {
        name: "trained".into(),
        version: 1,
        candidates: 100,
    };
    let report = train(&data, &meta, &TrainOptions::default()).expect("training");
    let affinity = &report.profile.terms[0];
    assert_eq!(affinity.feature, "user_space_views");
    assert!(
        affinity.weight > 0.0,
        "space affinity should help: {:?}",
        report.profile
    );
    let bm25_only = RankProfile {
        terms: Vec::new(),
        ..report.profile.clone()
    };
    let held_out = holdout_pairs(&data);
    assert!(!held_out.is_empty(), "some sessions are held out");
    let trained_acc = pairwise_accuracy(&report.profile, &data, &held_out);
    let bm25_acc = pairwise_accuracy(&bm25_only, &data, &held_out);
    assert!(
        trained_acc > bm25_acc && trained_acc >= 0.9,
        "held-out pairwise accuracy: trained {trained_acc:.3} vs BM25 {bm25_acc:.3}"
    );
    eprintln!(
        "training loop: {} rows, {} training pairs, {} held out; held-out pairwise accuracy \
         trained {trained_acc:.3} vs BM25 {bm25_acc:.3}; weights {:?}",
        report.rows,
        report.pairs,
        held_out.len(),
        report.profile.terms
    );

    // The point-in-time values equal the online values at that instant:
    // no event arrived after it, so "now" and `sessions_at` agree.
    let mut checked = 0;
    for (row, vals) in shown.iter().zip(&values).take(40) {
        let entity = EntityKey {
            user: row.user.clone(),
            space: row.space.clone(),
            doc: row.doc.clone(),
        };
        let online = client
            .online_features("learn", &entity, &names, &token)
            .await
            .expect("online values");
        assert_eq!(
            &online.values, vals,
            "online and offline differ for {}",
            row.doc
        );
        checked += 1;
    }
    assert_eq!(checked, 40);

    // Serve it: the same features.toml plus the trained profile.
    let profile = profile_toml(
        &report.profile,
        &["trained by the training-loop test".into()],
    )
    .expect("profile toml");
    let (_, changed, token) = client
        .apply_features("learn", &format!("{FEATURES_TOML}\n{profile}"))
        .await
        .expect("apply the trained profile");
    assert!(changed, "the profile is a new registry version");
    let mut served_sessions = 0;
    for u in 0..USERS {
        let q = SearchQuery::new("learn", user(u), "river")
            .limit(10)
            .profile("trained")
            .explain(true)
            .token(token.clone());
        let page = client.search(&q).await.expect("reranked search");
        assert_eq!(page.hits.len(), 10);
        let mut by_space: BTreeMap<String, usize> = BTreeMap::new();
        for hit in &page.hits {
            let e = hit.explanation.as_ref().expect("explained");
            let served: Vec<Option<f64>> = e.features.iter().map(|(_, v, _)| *v).collect();
            let expected = report.profile.score(e.bm25, &served) as f32;
            assert_eq!(
                hit.score, expected,
                "{}: the node's score is not the trainer's model over the same values",
                hit.id
            );
            let doc: usize = hit.id[2..].parse().expect("page number");
            let entity = EntityKey {
                user: user(u),
                space: space_of(doc).to_string(),
                doc: hit.id.clone(),
            };
            let online = client
                .online_features("learn", &entity, &names, &token)
                .await
                .expect("online values");
            assert_eq!(online.values, served, "{}: explained values", hit.id);
            *by_space.entry(space_of(doc).to_string()).or_default() += 1;
        }
        let home = by_space.get(home_space(u)).copied().unwrap_or(0);
        assert!(
            home >= 5,
            "{}: the trained profile should favour {}: {by_space:?}",
            user(u),
            home_space(u)
        );
        served_sessions += 1;
    }
    assert_eq!(served_sessions, USERS);
}
