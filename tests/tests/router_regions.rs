//! Issue 3 acceptance: three regions with a router each; a tenant allowed
//! in two of them. Both regions' routers return the same hits; with every
//! node of the home region killed (kill -9), searches through the other
//! region's router keep succeeding and writes fail loudly with UNAVAILABLE
//! (CLI exit code 3), never a silent success.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_client::{exit, ClientError, ErrorClass, SearchQuery, TenantSpec, TesseraClient};
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::routers::{cli, client, put_all, spawn_router};
use tessera_tests::{docs, eventually, Layout, TestCluster};

const QUERIES: [&str; 5] = [
    "deploy",
    "incident rollback",
    "database migration",
    "quorum leader",
    "capacity",
];

fn six_nodes() -> Layout {
    Layout(vec![
        ("us-east", "a"),
        ("us-east", "b"),
        ("eu-west", "a"),
        ("eu-west", "b"),
        ("ap-south", "a"),
        ("ap-south", "b"),
    ])
}

/// Hits of `query` as (id, score bits), with the token's consistency.
async fn hits(
    c: &TesseraClient,
    query: &str,
    token: &str,
) -> Result<Vec<(String, u32)>, ClientError> {
    let page = c
        .search(
            &SearchQuery::new("acme", "u:reader", query)
                .limit(50)
                .token(token),
        )
        .await?;
    Ok(page
        .hits
        .iter()
        .map(|h| (h.id.clone(), h.score.to_bits()))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn home_region_outage_keeps_reads_and_fails_writes_loudly() {
    let mut cluster = TestCluster::start(&six_nodes(), Mode::Process).await;
    let us = spawn_router(&cluster, 1, "us-east", &[]).await;
    let eu = spawn_router(&cluster, 2, "eu-west", &[]).await;
    let _ap = spawn_router(&cluster, 3, "ap-south", &[]).await;
    let us_c = client(&us.endpoint())
        .await
        .with_timeout(Duration::from_secs(20));
    let eu_c = client(&eu.endpoint())
        .await
        .with_timeout(Duration::from_secs(20));

    let spec = TenantSpec::new("acme", ["us-east", "eu-west"]).home("us-east");
    let tenant = eventually(SETTLE, "tenant creation", || {
        let (c, spec) = (&us_c, &spec);
        async move {
            match c.create_tenant(spec).await {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.is_retryable() => Err(e.to_string()),
                Err(e) => panic!("create tenant: {e}"),
            }
        }
    })
    .await;
    assert_eq!(tenant.partitions.len(), 1);

    // Residency: every replica of the tenant's shard is in us-east or eu-west.
    let status = us_c.status().await.expect("status");
    let region_of = |id: u64| {
        status
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.region.clone())
    };
    let shard = status
        .shards
        .iter()
        .find(|s| s.id == tenant.partitions[0].shard)
        .expect("the tenant's shard in the status")
        .clone();
    let replicas: Vec<u64> = shard
        .voters
        .iter()
        .chain(shard.learners.iter())
        .copied()
        .collect();
    for r in &replicas {
        let region = region_of(*r).expect("known node");
        assert!(
            region == "us-east" || region == "eu-west",
            "replica {r} in {region}"
        );
    }
    assert!(
        replicas
            .iter()
            .any(|r| region_of(*r).as_deref() == Some("eu-west")),
        "a replica in eu-west: {shard:?}"
    );
    // The same invariant through the residency API, over every shard of
    // every tenant, as placed and as hosted by every node.
    // Nodes open a new shard's group a moment after the map places it.
    let want = 2 * replicas.len();
    let report = eventually(
        SETTLE,
        "the tenant's replicas checked in the map and on their nodes",
        || async {
            let r = us_c.check_residency().await.map_err(|e| e.to_string())?;
            if r.replicas as usize >= want && r.unreachable.is_empty() {
                Ok(Some(r))
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    assert!(report.violations.is_empty(), "{report:?}");

    let docs: Vec<Vec<u8>> = (0..300)
        .map(|i| docs::doc(&format!("p-{i}"), 1, i))
        .collect();
    let token = put_all(&us_c, "acme", docs, 100).await;

    // Both regions' routers return the same hits (ids and exact scores).
    let mut expected = Vec::new();
    for q in QUERIES {
        let a = hits(&us_c, q, &token).await.expect("search via us-east");
        let b = hits(&eu_c, q, &token).await.expect("search via eu-west");
        assert!(!a.is_empty(), "{q:?} has hits");
        assert_eq!(a, b, "us-east and eu-west routers disagree on {q:?}");
        expected.push(a);
    }
    // A reader on the eu-west router, bounded in count and time, counts
    // failed searches and wrong answers before, during and after the outage.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, done, c, expected) =
            (stop.clone(), done.clone(), eu_c.clone(), expected.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut failures: Vec<String> = Vec::new();
            let mut n = 0u64;
            while n < 5_000
                && started.elapsed() < Duration::from_secs(240)
                && !stop.load(Ordering::SeqCst)
            {
                tick.tick().await;
                let i = (n as usize) % QUERIES.len();
                match hits(&c, QUERIES[i], "").await {
                    Ok(h) if h == expected[i] => {}
                    Ok(h) => failures.push(format!(
                        "search {n}: {:?} returned {} different hits",
                        QUERIES[i],
                        h.len()
                    )),
                    Err(e) => failures.push(format!("search {n}: {e}")),
                }
                n += 1;
                done.store(n, Ordering::SeqCst);
            }
            (n, failures)
        })
    };
    eventually(SETTLE, "reads before the outage", || async {
        Ok::<_, String>((done.load(Ordering::SeqCst) >= 25).then_some(()))
    })
    .await;

    // The outage: kill -9 every node of the home region.
    let before_kill = done.load(Ordering::SeqCst);
    for id in [1, 2] {
        cluster.kill(id).await;
    }
    let killed_at = Instant::now();

    // Writes through either router fail with a retryable UNAVAILABLE.
    let short_eu = eu_c.clone().with_timeout(Duration::from_secs(4));
    let short_us = us_c.clone().with_timeout(Duration::from_secs(4));
    for (i, c) in [&short_eu, &short_us, &short_eu].into_iter().enumerate() {
        let doc = docs::doc(&format!("outage-{i}"), 1, 1000 + i as u64);
        let result = c.put_documents("acme", vec![doc], Vec::new(), "").await;
        match result {
            Ok(out) => panic!("write {i} during the outage silently succeeded: {out:?}"),
            Err(e) => {
                assert!(
                    matches!(e, ClientError::Unavailable(_)),
                    "write {i}: expected UNAVAILABLE, got {e}"
                );
                assert_eq!(e.class(), ErrorClass::Retryable);
                assert_eq!(e.exit_code(), exit::UNAVAILABLE);
            }
        }
    }
    println!(
        "writes refused {:.1}s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    // The CLI says the same with exit code 3 and a one-line error.
    let file = cluster.dir.path().join("outage.jsonl");
    std::fs::write(
        &file,
        [docs::doc("outage-cli", 1, 7), b"\n".to_vec()].concat(),
    )
    .expect("write jsonl");
    let eu_addr = eu.endpoint();
    let out = cli(&[
        "--router",
        &eu_addr,
        "--timeout-ms",
        "4000",
        "put",
        "acme",
        file.to_str().expect("utf-8 path"),
        "--retry-secs",
        "0",
        "--json",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "CLI put during the outage: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
    println!(
        "CLI exit 3 {:.1}s after the kill: {}",
        killed_at.elapsed().as_secs_f64(),
        stderr.trim()
    );

    // Keep reading well past the kill, then stop the reader.
    let after_kill_target = done.load(Ordering::SeqCst) + 100;
    eventually(
        Duration::from_secs(120),
        "reads after the outage began",
        || async {
            Ok::<_, String>((done.load(Ordering::SeqCst) >= after_kill_target).then_some(()))
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let (total, failures) = reader.await.expect("reader task");
    let during = total - before_kill;
    println!(
        "outage window: {during} searches over {:.1}s after the kill, {} failed; {total} searches in all",
        killed_at.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed searches during the outage: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(during >= 100, "the outage window saw {during} searches");

    // No write sneaked in: the documents of the failed writes are absent.
    for id in ["outage-0", "outage-1", "outage-2", "outage-cli"] {
        let got = eu_c.get("acme", id, "u:reader", None).await.expect("get");
        assert!(!got.found, "{id} was written although the write failed");
    }
}
