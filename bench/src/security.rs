//! `bench_suite security`: what TLS and API keys cost on the search path.
//!
//! Two clusters run side by side on the same machine, loaded with the same
//! articles: one secured as in production (TLS on the router's client port,
//! the API key checked on every request, mutual TLS with role checks from
//! router to node) and one started with `--unsecured` (plaintext, no
//! checks), the baseline. Before measuring, the run proves each side is
//! what it claims: the secured router refuses a keyless search and the
//! baseline serves one. Latency queries alternate between the sides (the
//! order flipping every query) so machine noise lands on both alike;
//! throughput levels alternate the same way, round by round.

use std::path::Path;

use anyhow::{ensure, Context};
use tessera_bench::{median, title_queries, Article, LatencySummary, Machine};
use tessera_client::{ErrorClass, SearchQuery, TesseraClient};

use super::{corpus, router_concurrent, Bench, BATCH, IN_FLIGHT, QUERY_SETS};

/// What one run measures.
pub struct SecurityShape {
    pub docs: usize,
    pub queries: usize,
    pub clients: Vec<usize>,
    pub requests: usize,
    pub rounds: usize,
}

/// One concurrency level: queries/s of every round, per side.
struct Level {
    clients: usize,
    secured_qps: Vec<f64>,
    baseline_qps: Vec<f64>,
    secured: LatencySummary,
    baseline: LatencySummary,
    errors: usize,
}

/// Runs the comparison and writes the Markdown report to `out`.
pub async fn run(wiki: &Path, shape: &SecurityShape, out: &Path) -> anyhow::Result<()> {
    let articles = corpus(wiki, shape.docs)?;
    eprintln!("security: starting a secured and an --unsecured cluster");
    let secured = Bench::start_secured(true).await;
    let baseline = Bench::start_secured(false).await;
    prove_sides(&secured, &baseline).await?;
    for b in [&secured, &baseline] {
        let shards = b.tenant("bench", 1).await;
        b.load("bench", &articles, 0..shape.docs, BATCH, IN_FLIGHT)
            .await?;
        b.settle(&shards).await;
    }
    let warm = title_queries(&articles, 1, QUERY_SETS, 100);
    secured.search_each("bench", &warm).await?;
    baseline.search_each("bench", &warm).await?;

    let measured = title_queries(&articles, 0, QUERY_SETS, shape.queries);
    let (sec_ms, base_ms) = alternating_latency(&secured, &baseline, &measured).await?;
    let sec = LatencySummary::of(sec_ms);
    let base = LatencySummary::of(base_ms);
    eprintln!("security: search secured {sec:?}, baseline {base:?}");

    let levels = throughput(&secured, &baseline, &articles, shape).await;
    secured.stop().await;
    baseline.stop().await;
    std::fs::write(out, report(shape, &sec, &base, &levels))
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Fails the run unless the secured router refuses a search without a key
/// and the baseline serves one: a comparison of two unsecured clusters (or
/// two secured ones) would report a cost of zero and mean nothing.
async fn prove_sides(secured: &Bench, baseline: &Bench) -> anyhow::Result<()> {
    let keyless = |b: &Bench| {
        let addr = b.router.endpoint();
        async move {
            let creds = tessera_tests::routers::credentials(&addr, None);
            let creds = tessera_client::Credentials {
                api_key: None,
                ..creds
            };
            TesseraClient::connect_with(&addr, &creds).await
        }
    };
    let probe = SearchQuery::new("bench-probe", "u:bench", "anything").limit(1);
    let refused = keyless(secured).await?.search(&probe).await;
    ensure!(
        matches!(&refused, Err(e) if e.class() == ErrorClass::NotAllowed),
        "the secured router did not refuse a keyless search: {refused:?}"
    );
    let served = keyless(baseline).await?.status().await;
    ensure!(
        served.is_ok(),
        "the --unsecured baseline refused a keyless call: {served:?}"
    );
    Ok(())
}

/// Each query once per side, sequentially; the side that goes first flips
/// every query.
async fn alternating_latency(
    secured: &Bench,
    baseline: &Bench,
    queries: &[String],
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut sec = Vec::with_capacity(queries.len());
    let mut base = Vec::with_capacity(queries.len());
    for (i, q) in queries.iter().enumerate() {
        let one = std::slice::from_ref(q);
        if i % 2 == 0 {
            sec.extend(secured.search_each("bench", one).await?);
            base.extend(baseline.search_each("bench", one).await?);
        } else {
            base.extend(baseline.search_each("bench", one).await?);
            sec.extend(secured.search_each("bench", one).await?);
        }
    }
    Ok((sec, base))
}

/// Every level, `rounds` times per side, alternating which side runs first.
async fn throughput(
    secured: &Bench,
    baseline: &Bench,
    articles: &[Article],
    shape: &SecurityShape,
) -> Vec<Level> {
    let mut levels = Vec::new();
    for (k, &clients) in shape.clients.iter().enumerate() {
        let qs = title_queries(articles, (2 + k) % QUERY_SETS, QUERY_SETS, shape.requests);
        let mut level = Level {
            clients,
            secured_qps: Vec::new(),
            baseline_qps: Vec::new(),
            secured: LatencySummary::default(),
            baseline: LatencySummary::default(),
            errors: 0,
        };
        let (mut sec_lat, mut base_lat) = (Vec::new(), Vec::new());
        for round in 0..shape.rounds.max(1) {
            let order = if round % 2 == 0 {
                [(secured, true), (baseline, false)]
            } else {
                [(baseline, false), (secured, true)]
            };
            for (b, is_secured) in order {
                let (qps, lat, errors) = router_concurrent(b, "bench", &qs, clients).await;
                level.errors += errors;
                if is_secured {
                    level.secured_qps.push(qps);
                    sec_lat.extend(lat);
                } else {
                    level.baseline_qps.push(qps);
                    base_lat.extend(lat);
                }
            }
        }
        level.secured = LatencySummary::of(sec_lat);
        level.baseline = LatencySummary::of(base_lat);
        eprintln!(
            "security: {clients} clients: secured {:.0} q/s, baseline {:.0} q/s, {} errors",
            median(&mut level.secured_qps.clone()),
            median(&mut level.baseline_qps.clone()),
            level.errors
        );
        levels.push(level);
    }
    levels
}

/// `secured / baseline - 1` as a signed percentage.
fn cost(secured: f64, baseline: f64) -> String {
    if baseline > 0.0 && secured.is_finite() {
        format!("{:+.1}%", (secured / baseline - 1.0) * 100.0)
    } else {
        "n/a".into()
    }
}

fn report(
    shape: &SecurityShape,
    sec: &LatencySummary,
    base: &LatencySummary,
    levels: &[Level],
) -> String {
    let m = Machine::describe();
    let commit = std::env::var("BENCH_COMMIT").unwrap_or_else(|_| "unknown".into());
    let date = std::env::var("BENCH_DATE").unwrap_or_default();
    let mut out = format!(
        "## Security: TLS + API keys vs the same cluster without them\n\n\
         Commit `{commit}`, {date}; {} CPUs ({}), {:.0} GiB. Two three-node clusters (3 replicas, \
         one region) and one router each, side by side on this machine, {} documents each. \
         **Secured**: TLS on the router's client port, the API key checked on every request, \
         mutual TLS with role checks router → node. **Baseline**: the same binaries with \
         `--unsecured` (plaintext everywhere, no key checks). The run first proved the secured \
         router refuses a keyless search and the baseline serves one. Latency is measured at \
         the client, {} distinct title queries per side, sides alternating query by query.\n\n",
        m.nproc, m.cpu, m.ram_gib, shape.docs, sec.n
    );
    out.push_str("| search (1 client) | secured | baseline | cost |\n|---|---|---|---|\n");
    for (name, s, b) in [
        ("p50 ms", sec.p50, base.p50),
        ("p99 ms", sec.p99, base.p99),
        ("mean ms", sec.mean, base.mean),
    ] {
        out.push_str(&format!("| {name} | {s:.3} | {b:.3} | {} |\n", cost(s, b)));
    }
    out.push_str(&format!(
        "\nThroughput: {} searches per level, side and round; {} rounds, sides alternating; \
         median queries/s of the rounds.\n\n\
         | clients | secured q/s | baseline q/s | cost | secured p50 / p99 ms | baseline p50 / p99 ms | errors |\n\
         |---|---|---|---|---|---|---|\n",
        shape.requests,
        shape.rounds.max(1)
    ));
    for l in levels {
        let s = median(&mut l.secured_qps.clone());
        let b = median(&mut l.baseline_qps.clone());
        out.push_str(&format!(
            "| {} | {s:.0} | {b:.0} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {} |\n",
            l.clients,
            cost(s, b),
            l.secured.p50,
            l.secured.p99,
            l.baseline.p50,
            l.baseline.p99,
            l.errors
        ));
    }
    out.push_str(&format!(
        "\nGoal (issue 20): at most +10% at p50. Measured: {} at p50.\n",
        cost(sec.p50, base.p50)
    ));
    out
}
