//! Issue 8 acceptance: `tessera eval` through a router reproduces the raw
//! tantivy figures of ../shared/data/README.md (nDCG@10, MAP, MRR within
//! 0.005) on a tenant with 1 partition and on one with 4 partitions, for
//! CACM, Cranfield and Vaswani.
//!
//! Each test starts three `tessera-node` processes and a `tessera-router`
//! process and runs the `tessera` binary, so run `cargo build --release
//! --bins` first (scripts/test.sh does) and `--test-threads=1` on small
//! machines.

use serde_json::Value;
use tessera_tests::cluster::Mode;
use tessera_tests::eval::collection_dir;
use tessera_tests::routers::{cli, spawn_router};
use tessera_tests::{Layout, TestCluster};

/// Raw single-node tantivy figures (../shared/data/README.md):
/// nDCG@10, MAP, MRR.
fn reference(collection: &str) -> [f64; 3] {
    match collection {
        "cranfield" => [0.3708, 0.3032, 0.5401],
        "cacm" => [0.4025, 0.2581, 0.6683],
        "vaswani" => [0.4385, 0.2849, 0.6853],
        other => panic!("no reference for {other}"),
    }
}

const TOLERANCE: f64 = 0.005;

async fn eval_matches_reference(collection: &str, judged: u64) {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::Process).await;
    let router = spawn_router(&cluster, 1, "us-east", &[]).await;
    let dir = collection_dir(collection);
    let dir = dir.to_string_lossy();
    let [ndcg_ref, map_ref, mrr_ref] = reference(collection);
    for partitions in ["1", "4"] {
        let out = cli(&[
            "--router",
            &router.endpoint(),
            "--timeout-ms",
            "30000",
            "eval",
            &dir,
            "--partitions",
            partitions,
            "--json",
        ])
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "tessera eval {collection} --partitions {partitions} failed: {stderr}"
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "eval --json printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let mean = |k: &str| report[k]["mean"].as_f64().unwrap_or(f64::NAN);
        let (ndcg, map, mrr) = (mean("ndcg_at_10"), mean("map"), mean("mrr"));
        println!(
            "{collection} p={partitions}: nDCG@10 {ndcg:.4} (ref {ndcg_ref}), MAP {map:.4} (ref {map_ref}), \
             MRR {mrr:.4} (ref {mrr_ref}), P@10 {:.4}, R@100 {:.4}; cut queries {}",
            mean("p_at_10"),
            mean("r_at_100"),
            report["cut_queries"]
        );
        assert_eq!(report["queries"].as_u64(), Some(judged), "{report}");
        assert_eq!(
            report["partitions"].as_u64(),
            partitions.parse::<u64>().ok()
        );
        for (key, name, want) in [
            ("ndcg_at_10", "nDCG@10", ndcg_ref),
            ("map", "MAP", map_ref),
            ("mrr", "MRR", mrr_ref),
        ] {
            let got = mean(key);
            assert!(
                (got - want).abs() < TOLERANCE,
                "{collection} with {partitions} partition(s): {name} {got:.4}, reference {want}"
            );
            let lo = report[key]["ci_low"].as_f64().unwrap_or(f64::NAN);
            let hi = report[key]["ci_high"].as_f64().unwrap_or(f64::NAN);
            assert!(
                lo <= got && got <= hi,
                "{name}: 95% CI [{lo}, {hi}] around {got}"
            );
        }
    }
    // A second run reuses the tenant (same partitions) and scores the same.
    let again = cli(&[
        "--router",
        &router.endpoint(),
        "eval",
        &dir,
        "--partitions",
        "4",
        "--skip-load",
        "--json",
    ])
    .await;
    assert!(
        again.status.success(),
        "reusing the tenant: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    // Asking for another partition count on the same tenant is bad input.
    let clash = cli(&[
        "--router",
        &router.endpoint(),
        "eval",
        &dir,
        "--partitions",
        "2",
        "--tenant",
        &format!("eval-{collection}-p4"),
    ])
    .await;
    assert_eq!(clash.status.code(), Some(2), "partition mismatch exits 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eval_cacm_matches_raw_tantivy_on_one_and_four_partitions() {
    eval_matches_reference("cacm", 52).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eval_cranfield_matches_raw_tantivy_on_one_and_four_partitions() {
    eval_matches_reference("cranfield", 225).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eval_vaswani_matches_raw_tantivy_on_one_and_four_partitions() {
    eval_matches_reference("vaswani", 93).await;
}
