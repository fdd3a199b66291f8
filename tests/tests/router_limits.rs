//! Issue 3 acceptance, admission control: a tenant over its rate budget
//! gets RESOURCE_EXHAUSTED with a retry-after (CLI exit code 5), while
//! another tenant on the same router is unaffected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_client::{exit, ClientError, ErrorClass, SearchQuery, TenantSpec, TesseraClient};
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::routers::{cli, client, create_tenant, put_all, spawn_router};
use tessera_tests::{docs, eventually, Layout, TestCluster};

/// Requests per second (and burst) each tenant may make.
const QPS: &str = "5";

/// Searches `tenant` back to back, `n` times at most and for `max` at most
/// (stopping early when `stop` is set); returns (ok, limited, other errors).
async fn hammer(
    c: &TesseraClient,
    tenant: &str,
    n: usize,
    max: Duration,
    stop: &AtomicBool,
) -> (u64, u64, Vec<String>) {
    let started = Instant::now();
    let (mut ok, mut limited, mut other) = (0, 0, Vec::new());
    for _ in 0..n {
        if started.elapsed() >= max || stop.load(Ordering::SeqCst) {
            break;
        }
        match c
            .search(&SearchQuery::new(tenant, "u:reader", "deploy"))
            .await
        {
            Ok(_) => ok += 1,
            Err(e @ ClientError::Limited { .. }) => {
                assert_eq!(e.class(), ErrorClass::Limited);
                assert_eq!(e.exit_code(), exit::LIMITED);
                let hint = e.retry_after().expect("a retry-after hint");
                assert!(
                    hint > Duration::ZERO && hint <= Duration::from_secs(2),
                    "retry after {hint:?}"
                );
                assert!(
                    e.to_string().contains(tenant),
                    "the error names the tenant: {e}"
                );
                limited += 1;
            }
            Err(e) => other.push(e.to_string()),
        }
    }
    (ok, limited, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_over_budget_is_limited_and_others_are_not() {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::Process).await;
    let router = spawn_router(
        &cluster,
        1,
        "us-east",
        &["--tenant-qps".to_string(), QPS.to_string()],
    )
    .await;
    let c = client(&router.endpoint()).await;
    for t in ["noisy", "quiet"] {
        create_tenant(&c, &TenantSpec::new(t, ["us-east"])).await;
        let docs = (0..50)
            .map(|i| docs::doc(&format!("p-{i}"), 1, i))
            .collect();
        put_all(&c, t, docs, 50).await;
    }

    // The noisy tenant hammers the router while the quiet one searches at
    // 2 requests a second, well inside its own budget.
    let stop = Arc::new(AtomicBool::new(false));
    let noisy = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(
            async move { hammer(&c, "noisy", 1_000_000, Duration::from_secs(60), &stop).await },
        )
    };
    let mut quiet_ok = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    for _ in 0..8 {
        tick.tick().await;
        c.search(&SearchQuery::new("quiet", "u:reader", "deploy"))
            .await
            .unwrap_or_else(|e| panic!("the quiet tenant was affected: {e}"));
        quiet_ok += 1;
    }

    // The CLI reports the limit with exit code 5 (the hammer keeps the
    // noisy bucket empty; a CLI call may still win a token now and then).
    let addr = router.endpoint();
    let mut codes = Vec::new();
    for _ in 0..5 {
        let out = cli(&[
            "--router", &addr, "search", "noisy", "--user", "u:reader", "deploy", "--json",
        ])
        .await;
        codes.push(out.status.code());
        if out.status.code() == Some(i32::from(exit::LIMITED)) {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (ok, limited, other) = noisy.await.expect("noisy task");
    println!(
        "noisy: {ok} served, {limited} limited; quiet: {quiet_ok} served; CLI exit codes {codes:?}"
    );
    assert!(
        other.is_empty(),
        "unexpected errors for the noisy tenant: {other:?}"
    );
    assert!(limited > 0, "the noisy tenant was never limited");
    assert!(ok > 0, "the noisy tenant still gets its budget");
    assert!(
        codes.contains(&Some(i32::from(exit::LIMITED))),
        "CLI exit codes {codes:?}"
    );
    assert!(
        codes
            .iter()
            .all(|c| *c == Some(0) || *c == Some(i32::from(exit::LIMITED))),
        "{codes:?}"
    );

    // Once the noisy tenant calms down, its budget comes back.
    eventually(SETTLE, "the noisy tenant's refilled budget", || {
        let c = &c;
        async move {
            match c
                .search(&SearchQuery::new("noisy", "u:reader", "deploy"))
                .await
            {
                Ok(_) => Ok(Some(())),
                Err(e @ ClientError::Limited { .. }) => Err(e.to_string()),
                Err(e) => panic!("noisy search after the burst: {e}"),
            }
        }
    })
    .await;
}
