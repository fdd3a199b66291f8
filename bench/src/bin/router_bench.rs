//! The router benchmark behind `scripts/bench.sh router`: search latency
//! (p50/p90/p99) with adaptive replica selection and with round-robin, in
//! the same run, on a healthy cluster and with one replica slowed by an
//! injected +50 ms round trip. `scripts/bench.sh router` runs this binary;
//! it writes `docs/bench/router.md`.
//!
//! Knobs (environment): `BENCH_REQUESTS` (measured searches per policy and
//! scenario, default 2000), `BENCH_CONCURRENCY` (concurrent clients, 8),
//! `BENCH_DOCS` (documents, 5000), `BENCH_SLOW_MS` (added round trip, 50),
//! `BENCH_OUT` (report path, `docs/bench/router.md` under the project root).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use tessera_chaos::{LinkFaults, TcpLinkProxy};
use tessera_client::TenantSpec;
use tessera_proto::pb::ReplicaSelection;
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::routers::{
    client, create_tenant, grpc_proxy, node_route_args, put_all, search_load, spawn_router,
    wait_indexed, LoadReport,
};
use tessera_tests::{docs, Layout, TestCluster};

use tessera_bench::VOCABULARY_QUERIES as QUERIES;

/// The node the slow scenario slows down.
const SLOW_NODE: u64 = 2;

/// Rounds per scenario; each runs both policies (a warm-up, then
/// `BENCH_REQUESTS / ROUNDS` measured searches each).
const ROUNDS: usize = 4;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Row {
    scenario: &'static str,
    policy: &'static str,
    report: LoadReport,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let requests = knob("BENCH_REQUESTS", 2000) as usize;
    let concurrency = knob("BENCH_CONCURRENCY", 8) as usize;
    let n_docs = knob("BENCH_DOCS", 5000);
    let slow_rtt = knob("BENCH_SLOW_MS", 50);
    let out: PathBuf = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/bench/router.md")
        });

    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::Process).await;
    // Every router→node link goes through a proxy, so all replicas pay the
    // same proxy overhead; only node 2's gets latency in the slow scenario.
    let mut proxies: Vec<(u64, TcpLinkProxy)> = Vec::new();
    let mut args = Vec::new();
    for id in [1, 2, 3] {
        let p = grpc_proxy(&cluster, id, 100 + id as u8).await;
        args.extend(node_route_args(id, &p));
        proxies.push((id, p));
    }
    let router = spawn_router(&cluster, 1, "us-east", &args).await;
    let c = client(&router.endpoint())
        .await
        .with_timeout(Duration::from_secs(60));
    create_tenant(&c, &TenantSpec::new("bench", ["us-east"])).await;
    put_all(
        &c,
        "bench",
        (0..n_docs)
            .map(|i| docs::doc(&format!("p-{i}"), 1, i))
            .collect(),
        1000,
    )
    .await;
    let addr = router.endpoint();

    // Let the bulk load's index commits and merges finish on every replica
    // before measuring, so the first row does not pay for them.
    wait_indexed(&cluster, "bench").await;

    // Policies alternate in rounds, so slow drift (background merges, the
    // machine's other work) spreads over both instead of favouring one.
    let rounds = ROUNDS.min(requests.max(1));
    let mut rows = Vec::new();
    for (scenario, extra_ms) in [("healthy", 0), ("one replica slowed", slow_rtt)] {
        for (id, p) in &proxies {
            let faults = if *id == SLOW_NODE {
                LinkFaults::with_latency(extra_ms / 2)
            } else {
                LinkFaults::default()
            };
            p.control().set(faults).expect("set faults");
        }
        let policies = [
            ("adaptive", ReplicaSelection::Adaptive),
            ("round-robin", ReplicaSelection::RoundRobin),
        ];
        let mut reports = vec![LoadReport::default(); policies.len()];
        for round in 0..rounds {
            for (i, (_, selection)) in policies.iter().enumerate() {
                // Warm-up: let the router learn latencies (bounded in count and time).
                let warm = search_load(
                    &addr,
                    "bench",
                    &QUERIES,
                    concurrency,
                    200,
                    Duration::from_secs(5),
                    *selection,
                )
                .await;
                assert!(
                    warm.errors.is_empty(),
                    "warm-up errors: {:?}",
                    &warm.errors[..warm.errors.len().min(5)]
                );
                let share = requests / rounds + usize::from(round < requests % rounds);
                let rep = search_load(
                    &addr,
                    "bench",
                    &QUERIES,
                    concurrency,
                    share,
                    SETTLE * 10,
                    *selection,
                )
                .await;
                assert!(
                    rep.errors.is_empty(),
                    "errors: {:?}",
                    &rep.errors[..rep.errors.len().min(5)]
                );
                reports[i].absorb(rep);
            }
        }
        for ((policy, _), report) in policies.iter().zip(reports) {
            println!(
                "{scenario:>20} {policy:>12}: p50 {:.2} ms, p99 {:.2} ms, node {SLOW_NODE} share {:.1}%",
                ms(report.quantile(0.5)),
                ms(report.quantile(0.99)),
                report.share(SLOW_NODE) * 100.0
            );
            rows.push(Row {
                scenario,
                policy,
                report,
            });
        }
    }

    let report = render(&rows, requests, concurrency, n_docs, slow_rtt);
    println!("\n{report}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("report directory");
    }
    std::fs::write(&out, &report).expect("write the report");
    println!("report written to {}", out.display());
}

fn render(rows: &[Row], requests: usize, concurrency: usize, n_docs: u64, slow_rtt: u64) -> String {
    let mut s = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let commit = std::env::var("BENCH_COMMIT").unwrap_or_else(|_| "unknown".into());
    let date = std::env::var("BENCH_DATE").unwrap_or_else(|_| "unknown".into());
    let _ = writeln!(
        s,
        "# Router benchmark: adaptive replica selection vs round-robin\n"
    );
    let _ = writeln!(
        s,
        "Generated by `scripts/bench.sh router` ({date}, commit `{commit}`, {cores} cores). \
         Three `tessera-node` processes in one region hold one shard with three voters \
         ({n_docs} synthetic documents, one tenant); one `tessera-router` process reaches \
         every node through a chaos TCP proxy (`--node-route`). {concurrency} concurrent \
         clients send {requests} searches per row (top 10, {} rotating queries), in {ROUNDS} \
         rounds that alternate the two policies, each after a warm-up of up to 200 searches; \
         the bulk load is fully indexed on every replica before the first round. Latency is measured at the client, through the router. \
         In the slow scenario node {SLOW_NODE}'s link gets +{slow_rtt} ms per round trip \
         ({} ms each way). Both policies run in the same process against the same cluster; \
         the policy is chosen per request (`ReplicaSelection`), round-robin without hedging.\n",
        QUERIES.len(),
        slow_rtt / 2
    );
    let _ = writeln!(
        s,
        "| scenario | policy | searches | p50 ms | p90 ms | p99 ms | mean ms | max ms | node {SLOW_NODE} share | hedged |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let rep = &r.report;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}% | {} |",
            r.scenario,
            r.policy,
            rep.ok(),
            ms(rep.quantile(0.5)),
            ms(rep.quantile(0.9)),
            ms(rep.quantile(0.99)),
            ms(rep.mean()),
            ms(rep.quantile(1.0)),
            rep.share(SLOW_NODE) * 100.0,
            rep.hedged
        );
    }
    let find = |scenario: &str, policy: &str| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.policy == policy)
            .map(|r| &r.report)
    };
    if let (Some(a), Some(rr)) = (
        find("one replica slowed", "adaptive"),
        find("one replica slowed", "round-robin"),
    ) {
        let _ = writeln!(
            s,
            "\n**One replica slowed:** adaptive p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms; round-robin \
             p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms. Round-robin sends the slow replica its \
             third of the reads ({:.1}%), so everything from p90 up carries the injected \
             latency; the adaptive score moves reads off it ({:.1}%), re-trying it now and then \
             as its estimate decays, and hedges reads that are slower than a replica's p95.",
            ms(a.quantile(0.5)),
            ms(a.quantile(0.9)),
            ms(a.quantile(0.99)),
            ms(rr.quantile(0.5)),
            ms(rr.quantile(0.9)),
            ms(rr.quantile(0.99)),
            rr.share(SLOW_NODE) * 100.0,
            a.share(SLOW_NODE) * 100.0,
        );
    }
    if let (Some(a), Some(rr)) = (find("healthy", "adaptive"), find("healthy", "round-robin")) {
        let _ = writeln!(
            s,
            "\n**Healthy:** adaptive p50 {:.2} ms, p99 {:.2} ms ({} hedged); round-robin p50 {:.2} ms, \
             p99 {:.2} ms. With three equally fast replicas there is nothing to avoid, and on a \
             small machine where clients, proxies, router and nodes share the cores, hedges are \
             extra work{}.",
            ms(a.quantile(0.5)),
            ms(a.quantile(0.99)),
            a.hedged,
            ms(rr.quantile(0.5)),
            ms(rr.quantile(0.99)),
            if a.quantile(0.99) > rr.quantile(0.99) {
                ": here adaptive selection's tail is the longer one"
            } else {
                ""
            }
        );
    }
    s
}
