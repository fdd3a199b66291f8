//! Issue 6 acceptance: "`tessera eval` reports MRR@10 and nDCG@10 per variant with a 95%
//! bootstrap confidence interval, on judged queries and on the demo set's simulated clicks",
//! and "on the demo set, the space-affinity + contributor profile beats BM25 on MRR@10 with a
//! 95% interval that excludes zero".
//!
//! A demo tenant (the generator `scripts/cluster.sh up` runs, with its synthetic text so the
//! test needs no data file) is loaded into in-process nodes (RocksDB, tantivy, Raft) behind a
//! router, on two partitions: documents, groups and the event history. The features and the
//! `affinity_contributor` profile are `scripts/demo-features.toml`, the file the demo cluster
//! registers: BM25 (weight 1) plus 1.0 × log1p(views of the page's space by the user, all
//! time) plus 2.0 × log1p(the user's edits of the page, all time). Those are the demo's
//! hand-set weights, used unchanged and not fitted to these sessions. They are sensible on
//! scale alone: BM25 scores are a few units; a user's views of their home space run in the
//! tens to hundreds, about 3 to 5 after log1p, enough to reorder close BM25 scores but not to
//! lift a page that barely matches; an edit is rarer and a stronger sign, hence twice the
//! weight.
//! The held-out sessions (searches with a click, never written as events) are then run as
//! their users under plain BM25 and under the profile, and the paired bootstrap interval of
//! the MRR@10 difference must exclude zero. The same figures come out of `tessera eval
//! --clicks`, and judged queries of a collection are compared per variant too.

use tessera_client::click_eval::{evaluate, ClickOptions, Variant};
use tessera_client::demo::text::{SyntheticText, WikiText};
use tessera_client::demo::{generate_tenant, DemoConfig, TenantData};
use tessera_client::eval::{self, BootstrapSpec, Collection, Estimate, Gain, RunOptions};
use tessera_client::{GroupMembership, TesseraClient};
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::routers::{
    apply_features, cli, client, put_all, start_inproc_router, wait_indexed,
};
use tessera_tests::{eventually, Layout, TestCluster};

const FEATURES: &str = include_str!("../../scripts/demo-features.toml");
const TENANT: &str = "acme";

/// Resamples of every interval (the CLI's default is 1000; more makes the interval's ends
/// steadier).
const RESAMPLES: usize = 2000;
const SEED: u64 = 7;

fn config() -> DemoConfig {
    DemoConfig {
        tenants: 1,
        docs: 2000,
        events_per_doc: 4.0,
        regions: vec!["us-east".to_string()],
        ..DemoConfig::default()
    }
}

/// One demo tenant of 2000 pages with synthetic text.
fn demo() -> TenantData {
    let config = config();
    generate_tenant(
        &config,
        0,
        config.docs,
        &mut SyntheticText::new(config.seed),
    )
    .expect("demo tenant")
}

/// Writes the tenant's documents, groups and events; returns the session token covering all
/// of them.
async fn load(c: &TesseraClient, data: &TenantData) -> String {
    let docs = data
        .docs
        .iter()
        .map(|d| serde_json::to_vec(d).expect("json"))
        .collect();
    let token = put_all(c, TENANT, docs, 500).await;
    let groups: Vec<GroupMembership> = data
        .groups
        .iter()
        .map(|m| GroupMembership {
            user: m.user.clone(),
            groups: m.groups.clone(),
        })
        .collect();
    let mut token = eventually(SETTLE, "groups written", || {
        let (groups, token) = (groups.clone(), token.clone());
        async move {
            match c.put_groups(TENANT, groups, &token).await {
                Ok(out) => Ok(Some(out.token)),
                Err(e) if e.is_retryable() => Err(e.to_string()),
                Err(e) => panic!("groups: {e}"),
            }
        }
    })
    .await;
    for chunk in data.events.chunks(tessera_proto::limits::MAX_BATCH_OPS) {
        let lines: Vec<Vec<u8>> = chunk
            .iter()
            .map(|e| serde_json::to_vec(e).expect("json"))
            .collect();
        let (acked, next) = eventually(SETTLE, "events written", || {
            let (lines, token) = (lines.clone(), token.clone());
            async move {
                match c.put_events(TENANT, lines, &token).await {
                    Ok(out) => Ok(Some(out)),
                    Err(e) if e.is_retryable() => Err(e.to_string()),
                    Err(e) => panic!("events: {e}"),
                }
            }
        })
        .await;
        assert_eq!(acked as usize, chunk.len());
        token = next;
    }
    token
}

fn sane(e: &Estimate) {
    assert!((0.0..=1.0).contains(&e.mean), "{e:?}");
    assert!(e.ci_low <= e.mean && e.mean <= e.ci_high, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn affinity_contributor_beats_bm25_on_the_demo_clicks() {
    for name in ["user_space_views", "user_doc_edits", "affinity_contributor"] {
        assert!(
            FEATURES.contains(&format!("name = \"{name}\"")),
            "scripts/demo-features.toml defines {name}"
        );
    }
    let data = demo();
    let sessions = &data.sessions;
    assert!(sessions.len() >= 300, "{} sessions", sessions.len());

    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    cluster.create_tenant(TENANT, &["us-east"], 2).await;
    let router = start_inproc_router(&cluster, "us-east", |_| {}).await;
    let addr = router.local_addr().to_string();
    let c = client(&addr).await;
    apply_features(&c, TENANT, FEATURES).await;
    let token = load(&c, &data).await;
    wait_indexed(&cluster, TENANT).await;

    let variants = [
        Variant::parse("bm25").expect("variant"),
        Variant::parse("affinity_contributor=affinity_contributor@1").expect("variant"),
    ];
    let opts = ClickOptions {
        resamples: RESAMPLES,
        seed: SEED,
        token: token.clone(),
        ..ClickOptions::default()
    };
    let report = evaluate(&c, TENANT, sessions, &variants, &opts, |_, _| {})
        .await
        .expect("evaluation");
    assert_eq!(report.sessions, sessions.len());
    for v in &report.variants {
        eprintln!(
            "{}: MRR@10 {:.4} [{:.4}, {:.4}]  nDCG@10 {:.4} [{:.4}, {:.4}]  MRR@10 vs bm25 {:?}  nDCG@10 vs bm25 {:?}",
            v.variant.name,
            v.mrr_at_10.mean,
            v.mrr_at_10.ci_low,
            v.mrr_at_10.ci_high,
            v.ndcg_at_10.mean,
            v.ndcg_at_10.ci_low,
            v.ndcg_at_10.ci_high,
            v.mrr_vs_first,
            v.ndcg_vs_first
        );
        sane(&v.mrr_at_10);
        sane(&v.ndcg_at_10);
        // With one relevant page, nDCG@10 = 1/log2(rank + 1) >= 1/rank = RR@10.
        assert!(v.ndcg_at_10.mean >= v.mrr_at_10.mean - 1e-12, "{v:?}");
    }
    let bm25 = &report.variants[0];
    assert!(
        bm25.mrr_at_10.mean > 0.05 && bm25.mrr_at_10.mean < 0.9,
        "BM25 finds the clicked pages, but not always first, or the sessions are broken: {bm25:?}"
    );
    let diff = report.variants[1].mrr_vs_first.expect("paired difference");
    assert!(
        diff.ci_low > 0.0 && diff.excludes_zero,
        "the profile beats BM25 on MRR@10 with a 95% interval excluding zero: {diff:?}"
    );
    assert!(diff.ci_low <= diff.mean && diff.mean <= diff.ci_high);

    // The CLI over a clicks.jsonl file gives the same figures for the same sessions.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("clicks.jsonl");
    let lines: Vec<String> = sessions[..60]
        .iter()
        .map(|s| serde_json::to_string(s).expect("json"))
        .collect();
    std::fs::write(&file, lines.join("\n")).expect("write clicks");
    let path = file.display().to_string();
    let args = |tenant: &'static str, path: &str| -> Vec<String> {
        [
            "--router",
            &addr,
            "eval",
            "--clicks",
            path,
            "--tenant",
            tenant,
            "--variant",
            "bm25",
            "--variant",
            "a=affinity_contributor",
            "--resamples",
            "100",
            "--token",
            &token,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut json = args(TENANT, &path);
    json.push("--json".into());
    let out = cli(&json.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let small_opts = ClickOptions {
        resamples: 100,
        seed: 42,
        ..opts.clone()
    };
    let small = evaluate(
        &c,
        TENANT,
        &sessions[..60],
        &variants,
        &small_opts,
        |_, _| {},
    )
    .await
    .expect("evaluation");
    assert_eq!(printed["sessions"], 60);
    assert_eq!(printed["variants"][1]["variant"]["name"], "a");
    for (i, v) in small.variants.iter().enumerate() {
        for metric in ["mrr_at_10", "ndcg_at_10"] {
            let got = printed["variants"][i][metric]["mean"]
                .as_f64()
                .expect("mean");
            let want = if metric == "mrr_at_10" {
                v.mrr_at_10.mean
            } else {
                v.ndcg_at_10.mean
            };
            assert!((got - want).abs() < 1e-12, "{metric}: {got} vs {v:?}");
        }
    }
    assert!(printed["variants"][1]["mrr_vs_first"]["excludes_zero"].is_boolean());

    // The human table names every variant and the paired comparison.
    let human = cli(&args(TENANT, &path)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
    .await;
    let text = String::from_utf8_lossy(&human.stdout);
    eprintln!("{text}");
    assert!(
        human.status.success() && text.contains("a vs bm25 (paired): MRR@10"),
        "{text}"
    );

    // Clear errors, exit code 2: an unknown tenant, an unreadable file, a bad line.
    let missing = cli(&args("nope", &path)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
    .await;
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{err}");
    assert!(err.contains("tenant nope does not exist"), "{err}");
    let gone = dir.path().join("gone.jsonl").display().to_string();
    let unreadable = cli(&args(TENANT, &gone)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
    .await;
    assert_eq!(unreadable.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unreadable.stderr).contains("gone.jsonl"));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{}\n\n{{\"user\":\"u:a\"}}\n", lines[0])).expect("write");
    let bad_path = bad.display().to_string();
    let bad_line = cli(&args(TENANT, &bad_path)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
    .await;
    let err = String::from_utf8_lossy(&bad_line.stderr);
    assert_eq!(bad_line.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.jsonl line 3"), "{err}");

    // Judged queries compare variants too: the same ranking twice differs by exactly zero.
    judged_queries_per_variant(&c, &addr).await;
}

/// `eval::run` on a small judged collection under two identical BM25 variants: every variant
/// gets MRR@10 and nDCG@10 with intervals, the first variant's figures are the report's
/// classic ones, and the paired difference of identical rankings is exactly `[0, 0]`.
async fn judged_queries_per_variant(c: &TesseraClient, addr: &str) {
    let topics = ["deploy", "budget", "river", "museum", "railway"];
    let mut docs = String::new();
    let mut qrels = String::new();
    for i in 0..40 {
        let topic = topics[i % topics.len()];
        let other = topics[(i + 1) % topics.len()];
        docs.push_str(&format!(
            "{{\"id\":\"d{i}\",\"title\":\"{topic} note {i}\",\"body\":\"{}{other}\"}}\n",
            format!("{topic} ").repeat(1 + i % 3)
        ));
        if i % 3 == 0 {
            qrels.push_str(&format!("q{} 0 d{i} {}\n", i % topics.len(), 1 + i % 2));
        }
    }
    let queries: String = topics
        .iter()
        .enumerate()
        .map(|(i, t)| format!("q{i}\t{t} note\n"))
        .collect();
    let collection = Collection::parse(&docs, &queries, &qrels).expect("collection");
    let opts = RunOptions {
        tenant: "judged".into(),
        partitions: 1,
        regions: vec!["us-east".into()],
        user: "u:eval".into(),
        profile: None,
        variants: vec![
            Variant::bm25(),
            Variant::parse("again=bm25").expect("variant"),
        ],
        depth: 100,
        gain: Gain::Linear,
        bootstrap: BootstrapSpec {
            resamples: 200,
            seed: 1,
        },
        batch: 20,
        concurrency: 4,
        load: true,
        retry_for: SETTLE,
        per_query: false,
    };
    let report = eval::run(c, &collection, "tiny", &opts, &mut |_| {})
        .await
        .expect("judged evaluation");
    assert_eq!(report.queries, topics.len());
    assert_eq!(report.variants.len(), 2);
    let (first, again) = (&report.variants[0], &report.variants[1]);
    assert_eq!(
        first.ndcg_at_10, report.ndcg_at_10,
        "the classic figures are the first's"
    );
    for v in &report.variants {
        sane(&v.mrr_at_10);
        sane(&v.ndcg_at_10);
        assert!(v.mrr_at_10.mean <= report.mrr.mean + 1e-12, "MRR@10 <= MRR");
    }
    assert_eq!(first.mrr_at_10, again.mrr_at_10);
    let d = again.mrr_vs_first.expect("paired");
    assert_eq!(
        (d.mean, d.ci_low, d.ci_high, d.excludes_zero),
        (0.0, 0.0, 0.0, false)
    );
    let n = again.ndcg_vs_first.expect("paired");
    assert_eq!((n.ci_low, n.ci_high), (0.0, 0.0));

    // The CLI on the same collection (reloading it is harmless, and its token makes every
    // search see every document): the classic table, MRR@10, and the per-variant table with
    // the paired comparison.
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in [
        ("docs.jsonl", &docs),
        ("queries.tsv", &queries),
        ("qrels.txt", &qrels),
    ] {
        std::fs::write(dir.path().join(name), text).expect("write collection");
    }
    let path = dir.path().display().to_string();
    let out = cli(&[
        "--router",
        addr,
        "eval",
        &path,
        "--tenant",
        "judged",
        "--variant",
        "bm25",
        "--variant",
        "again=bm25",
        "--resamples",
        "200",
        "--seed",
        "1",
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("MRR@10"), "{text}");
    assert!(
        text.contains(
            "again vs bm25 (paired): MRR@10 +0.0000 [+0.0000, +0.0000] no clear difference"
        ),
        "{text}"
    );
}

/// The same comparison on Wikipedia text, as `scripts/cluster.sh up` generates the demo when
/// the dump is there. Not part of the suite (it reads the 262k-article dump's first 2000
/// articles and depends on that file); run it with `--ignored` to see the figures on real
/// text.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ../shared/data/enwiki2014_chunk_262k.jsonl.zst; run with --ignored"]
async fn affinity_contributor_on_wikipedia_text() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/enwiki2014_chunk_262k.jsonl.zst");
    let config = config();
    let mut text = WikiText::open(&path, config.max_body_bytes).expect("the Wikipedia dump");
    let data = generate_tenant(&config, 0, config.docs, &mut text).expect("demo tenant");
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    cluster.create_tenant(TENANT, &["us-east"], 2).await;
    let router = start_inproc_router(&cluster, "us-east", |_| {}).await;
    let c = client(&router.local_addr().to_string()).await;
    apply_features(&c, TENANT, FEATURES).await;
    let token = load(&c, &data).await;
    let variants = [
        Variant::bm25(),
        Variant::parse("affinity_contributor=affinity_contributor@1").expect("variant"),
    ];
    let opts = ClickOptions {
        resamples: RESAMPLES,
        seed: SEED,
        token,
        ..ClickOptions::default()
    };
    let report = evaluate(&c, TENANT, &data.sessions, &variants, &opts, |_, _| {})
        .await
        .expect("evaluation");
    for s in data.sessions.iter().take(8) {
        eprintln!("{s:?}");
    }
    for v in &report.variants {
        eprintln!(
            "{}: MRR@10 {:?} nDCG@10 {:?} vs first {:?}",
            v.variant.name, v.mrr_at_10, v.ndcg_at_10, v.mrr_vs_first
        );
    }
    let diff = report.variants[1].mrr_vs_first.expect("paired difference");
    assert!(diff.excludes_zero && diff.ci_low > 0.0, "{diff:?}");
}
