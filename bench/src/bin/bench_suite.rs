//! The measurements behind `scripts/bench.sh` and docs/bench/RESULTS.md.
//! Each subcommand starts its own cluster (three `tessera-node` processes
//! and one `tessera-router` process on a private 127.A.B.x range), runs its
//! raw-tantivy baseline in the same run, and writes one JSON file; `report`
//! turns the JSON files into RESULTS.md and SVG plots.
//!
//! Latency is always measured at the client, around the whole call (every
//! hop: client → router → node(s) → router → client). Every measured query
//! is a distinct article title, used once per side, so no cache ever
//! answers a query it has seen.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tessera_bench::{read_articles, title_queries, Article, LatencySummary, RawIndex};
use tessera_client::{SearchQuery, TenantSpec, TesseraClient};
use tessera_tests::cluster::{Mode, NodeSlot, SETTLE};
use tessera_tests::routers::{client, create_tenant, spawn_router, RouterProc};
use tessera_tests::{Layout, TestCluster};

#[path = "../report.rs"]
mod report;
#[path = "../security.rs"]
mod security;
use security::SecurityShape;

#[derive(Parser)]
#[command(
    about = "Tessera benchmarks with same-run raw tantivy baselines (see docs/bench/README.md)"
)]
struct Cli {
    /// Where JSON results go (and where `report` reads them).
    #[arg(long, global = true, default_value = "docs/bench/data")]
    data: PathBuf,
    /// The Wikipedia corpus (.jsonl.zst).
    #[arg(long, global = true)]
    wiki: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Indexing docs/s through the router (3 replicas) vs raw tantivy; then
    /// search latency vs raw tantivy and throughput at several client counts
    /// on the loaded cluster.
    Core {
        /// Documents per indexing round.
        #[arg(long, default_value_t = 20_000)]
        docs: usize,
        /// Indexing rounds per side (medians are reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Measured search queries per side.
        #[arg(long, default_value_t = 1000)]
        queries: usize,
        /// Concurrent client counts for the throughput table.
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        clients: Vec<usize>,
        /// Searches per concurrency level.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
    },
    /// Latency and node memory as one tenant grows.
    Docs {
        /// Document counts, ascending.
        #[arg(long, value_delimiter = ',', default_value = "10000,30000,100000")]
        sizes: Vec<usize>,
        /// Measured queries per size and side.
        #[arg(long, default_value_t = 300)]
        queries: usize,
    },
    /// Latency of one tenant as more tenants share its shard.
    Tenants {
        /// Tenant counts (the probe tenant included), ascending.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        counts: Vec<usize>,
        /// Documents of the probe tenant.
        #[arg(long, default_value_t = 3000)]
        probe_docs: usize,
        /// Documents of every other tenant.
        #[arg(long, default_value_t = 5)]
        filler_docs: usize,
        /// Measured queries per step.
        #[arg(long, default_value_t = 300)]
        queries: usize,
    },
    /// Latency vs a tenant's partition count (same documents).
    Partitions {
        /// Partition counts.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
        counts: Vec<u32>,
        /// Documents per tenant.
        #[arg(long, default_value_t = 20_000)]
        docs: usize,
        /// Measured queries per partition count.
        #[arg(long, default_value_t = 300)]
        queries: usize,
    },
    /// What security costs: the same search load through a secured cluster
    /// (TLS on the client port, API key checked on every request, mutual TLS
    /// router → node) and, at the same time on the same machine, through an
    /// `--unsecured` twin (plaintext, no checks); latency queries alternate
    /// between the two so noise hits both alike. Writes a Markdown report.
    Security {
        /// Documents loaded into each cluster.
        #[arg(long, default_value_t = 20_000)]
        docs: usize,
        /// Measured search queries per side.
        #[arg(long, default_value_t = 1000)]
        queries: usize,
        /// Concurrent client counts for the throughput table.
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        clients: Vec<usize>,
        /// Searches per concurrency level, side and round.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Throughput rounds per level and side (medians are reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The Markdown report.
        #[arg(long, default_value = "docs/bench/security.md")]
        out: PathBuf,
    },
    /// Writes RESULTS.md and the SVG plots from the JSON results.
    Report {
        /// The Markdown report.
        #[arg(long, default_value = "docs/bench/RESULTS.md")]
        out: PathBuf,
        /// Where the plots go.
        #[arg(long, default_value = "docs/bench/plots")]
        plots: PathBuf,
        /// Extra Markdown sections to include, in order (missing files are
        /// listed as not run).
        #[arg(long = "include")]
        include: Vec<PathBuf>,
        /// Run label (quick or full).
        #[arg(long, default_value = "full")]
        label: String,
    },
}

/// The `core` results.
#[derive(Debug, Serialize, Deserialize)]
pub struct CoreResult {
    pub docs: usize,
    pub rounds: usize,
    pub raw_docs_per_s: Vec<f64>,
    pub router_docs_per_s: Vec<f64>,
    pub batch: usize,
    pub in_flight: usize,
    pub router_search: LatencySummary,
    pub raw_search: LatencySummary,
    pub throughput: Vec<ThroughputRow>,
    pub node_rss_bytes: Vec<u64>,
    /// Terms of each long query (`MAX_QUERY_TERMS`); 0 in older results.
    #[serde(default)]
    pub long_terms: usize,
    /// Queries at the term limit through the router.
    #[serde(default)]
    pub long_router_search: Option<LatencySummary>,
    /// The same queries on raw tantivy.
    #[serde(default)]
    pub long_raw_search: Option<LatencySummary>,
}

/// One concurrency level.
#[derive(Debug, Serialize, Deserialize)]
pub struct ThroughputRow {
    pub clients: usize,
    pub router_qps: f64,
    pub router: LatencySummary,
    pub raw_qps: f64,
    pub raw: LatencySummary,
    pub errors: usize,
}

/// One step of a scaling curve.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScalePoint {
    /// The x value (documents, tenants or partitions).
    pub x: u64,
    pub router: LatencySummary,
    /// Raw tantivy over the same documents, where it applies.
    pub raw: Option<LatencySummary>,
    /// Summed RSS of the three node processes, bytes.
    pub node_rss_bytes: u64,
    /// Shards the measured tenant's data lives on / the tenants share.
    pub shards: usize,
    /// Documents in the cluster (each held by three replicas).
    pub cluster_docs: u64,
}

/// A scaling curve.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScaleResult {
    pub what: String,
    pub params: serde_json::Value,
    /// Summed node RSS before any tenant existed.
    pub baseline_rss_bytes: u64,
    pub points: Vec<ScalePoint>,
}

fn wiki(cli: &Cli) -> PathBuf {
    cli.wiki.clone().unwrap_or_else(tessera_bench::default_wiki)
}

/// Articles `0..n`, reusing the corpus cyclically past its end (ids stay
/// distinct: document `i` is `w{i}`).
fn corpus(path: &Path, n: usize) -> anyhow::Result<Vec<Article>> {
    let mut a = read_articles(path, n).context("reading the corpus")?;
    ensure!(!a.is_empty(), "the corpus is empty");
    let have = a.len();
    for i in have..n {
        let src = a[i % have].clone();
        a.push(src);
    }
    Ok(a)
}

fn write_json<T: Serialize>(dir: &Path, name: &str, v: &T) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("writing {}", p.display()))?;
    eprintln!("wrote {}", p.display());
    Ok(())
}

/// A cluster of three node processes (3 voters in one region) and one
/// router process.
struct Bench {
    cluster: TestCluster,
    router: RouterProc,
    client: TesseraClient,
}

impl Bench {
    async fn start() -> Self {
        Self::start_secured(true).await
    }

    /// `secured = false` is the `--unsecured` baseline of `security`.
    async fn start_secured(secured: bool) -> Self {
        let mut cluster = TestCluster::prepare(&Layout::one_region_three_zones(), Mode::Process);
        if !secured {
            cluster.unsecured();
        }
        let ids: Vec<_> = cluster.slots.keys().copied().collect();
        for id in ids {
            cluster.start_node(id).await;
        }
        let extra: Vec<String> = if secured {
            Vec::new()
        } else {
            vec!["--unsecured".into()]
        };
        let router = spawn_router(&cluster, 1, "us-east", &extra).await;
        let client = client(&router.endpoint())
            .await
            .with_timeout(Duration::from_secs(60));
        Bench {
            cluster,
            router,
            client,
        }
    }

    fn node_rss(&self) -> u64 {
        self.cluster
            .slots
            .values()
            .map(|s| match s {
                NodeSlot::Proc(p) => tessera_bench::rss_bytes(p.pid()),
                _ => 0,
            })
            .sum()
    }

    async fn tenant(&self, id: &str, partitions: u32) -> Vec<u64> {
        let t = create_tenant(
            &self.client,
            &TenantSpec::new(id, ["us-east"]).partitions(partitions),
        )
        .await;
        t.partitions.iter().map(|p| p.shard).collect()
    }

    /// Writes articles `range` as documents through the router, `in_flight`
    /// batches at a time; returns when all are acknowledged (quorum-committed).
    async fn load(
        &self,
        tenant: &str,
        articles: &[Article],
        range: std::ops::Range<usize>,
        batch: usize,
        in_flight: usize,
    ) -> anyhow::Result<()> {
        let starts: Vec<usize> = range.clone().step_by(batch.max(1)).collect();
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(starts)
            .map(|s| {
                let end = (s + batch).min(range.end);
                let docs: Vec<Vec<u8>> = (s..end)
                    .map(|i| tessera_bench::to_doc_json(&articles[i], i))
                    .collect();
                async move { self.put_retrying(tenant, docs).await }
            })
            .buffer_unordered(in_flight.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn put_retrying(&self, tenant: &str, docs: Vec<Vec<u8>>) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            match self
                .client
                .put_documents(tenant, docs.clone(), Vec::new(), "")
                .await
            {
                Ok(out) => {
                    ensure!(
                        out.rejected.is_empty(),
                        "rejected: {:?}",
                        out.rejected.first()
                    );
                    return Ok(());
                }
                Err(e) if e.is_retryable() && start.elapsed() < SETTLE => {
                    tick.tick().await;
                }
                Err(e) => anyhow::bail!("put to {tenant}: {e}"),
            }
        }
    }

    /// Waits until every replica of `shards` has indexed everything its
    /// leader committed, so measurements never include catch-up work.
    async fn settle(&self, shards: &[u64]) {
        tessera_tests::routers::wait_shards_indexed(&self.cluster, shards, SETTLE * 5).await;
    }

    /// One search per query, sequentially, through the router; latency in ms.
    async fn search_each(&self, tenant: &str, queries: &[String]) -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            let query = SearchQuery::new(tenant, "u:bench", q.as_str()).limit(10);
            let t0 = Instant::now();
            self.client
                .search(&query)
                .await
                .with_context(|| format!("search {q:?}"))?;
            out.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(out)
    }

    async fn stop(mut self) {
        self.router.kill().await;
        self.cluster.stop_all().await;
    }
}

fn raw_each(raw: &RawIndex, queries: &[String]) -> anyhow::Result<Vec<f64>> {
    queries.iter().map(|q| raw.search_ms(q)).collect()
}

/// `clients` threads share one raw index and run `queries` between them
/// (each query once); returns (queries/s, latencies).
fn raw_concurrent(raw: &RawIndex, queries: &[String], clients: usize) -> (f64, Vec<f64>) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    let lat: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(q) = queries.get(i) else { break };
                        if let Ok(ms) = raw.search_ms(q) {
                            mine.push(ms);
                        }
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    (lat.len() as f64 / start.elapsed().as_secs_f64(), lat)
}

/// `clients` concurrent loops through the router, each query once.
async fn router_concurrent(
    b: &Bench,
    tenant: &str,
    queries: &[String],
    clients: usize,
) -> (f64, Vec<f64>, usize) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    let loops = (0..clients.max(1)).map(|_| async {
        let mut mine = Vec::new();
        let mut errors = 0;
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(q) = queries.get(i) else { break };
            let query = SearchQuery::new(tenant, "u:bench", q.as_str()).limit(10);
            let t0 = Instant::now();
            match b.client.search(&query).await {
                Ok(_) => mine.push(t0.elapsed().as_secs_f64() * 1000.0),
                Err(_) => errors += 1,
            }
        }
        (mine, errors)
    });
    let mut lat = Vec::new();
    let mut errors = 0;
    for (l, e) in futures::future::join_all(loops).await {
        lat.extend(l);
        errors += e;
    }
    (
        lat.len() as f64 / start.elapsed().as_secs_f64(),
        lat,
        errors,
    )
}

const BATCH: usize = 500;
/// The core benchmark draws disjoint query sets from every 8th article:
/// set 0 is measured latency, 1 warm-up, 2.. one per concurrency level.
const QUERY_SETS: usize = 8;
const IN_FLIGHT: usize = 4;
/// Queries at the term limit per side.
const LONG_QUERIES: usize = 100;

async fn core(
    cli: &Cli,
    docs: usize,
    rounds: usize,
    queries: usize,
    clients: &[usize],
    requests: usize,
) -> anyhow::Result<()> {
    let articles = corpus(&wiki(cli), docs)?;
    let refs: Vec<&Article> = articles.iter().collect();
    let mut raw_rates = Vec::new();
    let mut router_rates = Vec::new();
    let mut raw_index = None;
    let mut kept = None;
    for round in 0..rounds.max(1) {
        let mut raw = RawIndex::new()?;
        raw_rates.push(raw.add(&refs, 0)?);
        let b = Bench::start().await;
        let shards = b.tenant("bench", 1).await;
        // Warm-up outside the timed window: leader election, connections.
        b.load("bench", &articles, 0..1, 1, 1).await?;
        let t0 = Instant::now();
        b.load("bench", &articles, 1..docs, BATCH, IN_FLIGHT)
            .await?;
        router_rates.push((docs - 1) as f64 / t0.elapsed().as_secs_f64());
        eprintln!(
            "core round {round}: raw tantivy {:.0} docs/s, router (3 replicas) {:.0} docs/s",
            raw_rates[round], router_rates[round]
        );
        if round + 1 == rounds.max(1) {
            b.settle(&shards).await;
            kept = Some(b);
            raw_index = Some(raw);
        } else {
            b.stop().await;
        }
    }
    let (b, raw) = kept.zip(raw_index).context("at least one round ran")?;
    let rss = b
        .cluster
        .slots
        .values()
        .map(|s| match s {
            NodeSlot::Proc(p) => tessera_bench::rss_bytes(p.pid()),
            _ => 0,
        })
        .collect();

    // Latency: warm-up on its own queries, then disjoint measured queries.
    let warm = title_queries(&articles, 1, QUERY_SETS, 50);
    let measured = title_queries(&articles, 0, QUERY_SETS, queries);
    b.search_each("bench", &warm).await?;
    raw_each(&raw, &warm)?;
    let router_ms = b.search_each("bench", &measured).await?;
    let raw_ms = raw_each(&raw, &measured)?;
    let router_search = LatencySummary::of(router_ms);
    let raw_search = LatencySummary::of(raw_ms);
    eprintln!("search: router {router_search:?}, raw {raw_search:?}");
    // Queries at the term limit (a pasted paragraph): what the longest
    // allowed query costs, on both sides, against the title queries above.
    let long = tessera_bench::long_queries(&articles, 3, QUERY_SETS, LONG_QUERIES);
    b.search_each("bench", &long[..long.len().min(5)]).await?;
    let long_router_search = LatencySummary::of(b.search_each("bench", &long).await?);
    let long_raw_search = LatencySummary::of(raw_each(&raw, &long)?);
    eprintln!("long queries: router {long_router_search:?}, raw {long_raw_search:?}");

    // Throughput: each level gets its own queries (offset), each used once.
    let mut throughput = Vec::new();
    for (k, c) in clients.iter().enumerate() {
        let qs = title_queries(&articles, (2 + k) % QUERY_SETS, QUERY_SETS, requests);
        let (rq, rl, errors) = router_concurrent(&b, "bench", &qs, *c).await;
        let (wq, wl) = raw_concurrent(&raw, &qs, *c);
        eprintln!("{c} clients: router {rq:.0} q/s, raw {wq:.0} q/s, {errors} errors");
        throughput.push(ThroughputRow {
            clients: *c,
            router_qps: rq,
            router: LatencySummary::of(rl),
            raw_qps: wq,
            raw: LatencySummary::of(wl),
            errors,
        });
    }
    b.stop().await;
    write_json(
        &cli.data,
        "core.json",
        &CoreResult {
            docs,
            rounds: rounds.max(1),
            raw_docs_per_s: raw_rates,
            router_docs_per_s: router_rates,
            batch: BATCH,
            in_flight: IN_FLIGHT,
            router_search,
            raw_search,
            throughput,
            node_rss_bytes: rss,
            long_terms: tessera_proto::limits::MAX_QUERY_TERMS,
            long_router_search: Some(long_router_search),
            long_raw_search: Some(long_raw_search),
        },
    )
}

async fn docs_curve(cli: &Cli, sizes: &[usize], queries: usize) -> anyhow::Result<()> {
    let max = sizes.iter().copied().max().unwrap_or(0);
    let articles = corpus(&wiki(cli), max)?;
    let b = Bench::start().await;
    let baseline = b.node_rss();
    let shards = b.tenant("docs", 1).await;
    let mut raw = RawIndex::new()?;
    let mut points = Vec::new();
    let mut have = 0;
    for (step, &n) in sizes.iter().enumerate() {
        b.load("docs", &articles, have..n, BATCH, IN_FLIGHT).await?;
        let refs: Vec<&Article> = articles[have..n].iter().collect();
        raw.add(&refs, have)?;
        have = n;
        b.settle(&shards).await;
        // Queries from titles already loaded, disjoint between steps.
        let qs = title_queries(&articles[..n], step, sizes.len(), queries);
        let router = LatencySummary::of(b.search_each("docs", &qs).await?);
        let rawl = LatencySummary::of(raw_each(&raw, &qs)?);
        let rss = b.node_rss();
        eprintln!(
            "{n} docs: router p50 {:.2} ms, raw p50 {:.3} ms, node RSS {} MiB",
            router.p50,
            rawl.p50,
            rss >> 20
        );
        points.push(ScalePoint {
            x: n as u64,
            router,
            raw: Some(rawl),
            node_rss_bytes: rss,
            shards: shards.len(),
            cluster_docs: n as u64,
        });
    }
    b.stop().await;
    write_json(
        &cli.data,
        "docs.json",
        &ScaleResult {
            what: "documents".into(),
            params: serde_json::json!({"sizes": sizes, "queries": queries}),
            baseline_rss_bytes: baseline,
            points,
        },
    )
}

async fn tenants_curve(
    cli: &Cli,
    counts: &[usize],
    probe_docs: usize,
    filler_docs: usize,
    queries: usize,
) -> anyhow::Result<()> {
    let max = counts.iter().copied().max().unwrap_or(1);
    let total = probe_docs + max.saturating_sub(1) * filler_docs;
    let articles = corpus(&wiki(cli), total)?;
    let b = Bench::start().await;
    let baseline = b.node_rss();
    let probe_shards = b.tenant("probe", 1).await;
    b.load("probe", &articles, 0..probe_docs, BATCH, IN_FLIGHT)
        .await?;
    let mut shards: std::collections::BTreeSet<u64> = probe_shards.iter().copied().collect();
    let mut points = Vec::new();
    let mut have = 1usize;
    for (step, &n) in counts.iter().enumerate() {
        // New tenants (p = 1) and their documents, 16 at a time.
        let news: Vec<usize> = (have..n.max(have)).collect();
        let created: Vec<anyhow::Result<Vec<u64>>> = futures::stream::iter(news)
            .map(|t| {
                let b = &b;
                let articles = &articles;
                async move {
                    let id = format!("t{t}");
                    let s = b.tenant(&id, 1).await;
                    let first = probe_docs + (t - 1) * filler_docs;
                    b.load(
                        &id,
                        articles,
                        first..first + filler_docs,
                        filler_docs.max(1),
                        1,
                    )
                    .await?;
                    Ok(s)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for s in created {
            shards.extend(s?);
        }
        have = have.max(n);
        let all: Vec<u64> = shards.iter().copied().collect();
        b.settle(&all).await;
        let qs = title_queries(&articles[..probe_docs], step, counts.len(), queries);
        let router = LatencySummary::of(b.search_each("probe", &qs).await?);
        let rss = b.node_rss();
        eprintln!(
            "{n} tenants on {} shard(s): probe p50 {:.2} ms p99 {:.2} ms",
            shards.len(),
            router.p50,
            router.p99
        );
        points.push(ScalePoint {
            x: n as u64,
            router,
            raw: None,
            node_rss_bytes: rss,
            shards: shards.len(),
            cluster_docs: (probe_docs + (n - 1) * filler_docs) as u64,
        });
    }
    b.stop().await;
    write_json(
        &cli.data,
        "tenants.json",
        &ScaleResult {
            what: "tenants".into(),
            params: serde_json::json!({"counts": counts, "probe_docs": probe_docs,
                "filler_docs": filler_docs, "queries": queries}),
            baseline_rss_bytes: baseline,
            points,
        },
    )
}

async fn partitions_curve(
    cli: &Cli,
    counts: &[u32],
    docs: usize,
    queries: usize,
) -> anyhow::Result<()> {
    let articles = corpus(&wiki(cli), docs)?;
    let refs: Vec<&Article> = articles.iter().collect();
    let mut raw = RawIndex::new()?;
    raw.add(&refs, 0)?;
    let b = Bench::start().await;
    let baseline = b.node_rss();
    let mut points = Vec::new();
    let mut cluster_docs = 0u64;
    for (step, &p) in counts.iter().enumerate() {
        let tenant = format!("part{p}");
        let shards = b.tenant(&tenant, p).await;
        b.load(&tenant, &articles, 0..docs, BATCH, IN_FLIGHT)
            .await?;
        cluster_docs += docs as u64;
        b.settle(&shards).await;
        let qs = title_queries(&articles, step, counts.len(), queries);
        let router = LatencySummary::of(b.search_each(&tenant, &qs).await?);
        let rawl = LatencySummary::of(raw_each(&raw, &qs)?);
        eprintln!(
            "{p} partitions on {} shards: p50 {:.2} ms p99 {:.2} ms (raw p50 {:.3})",
            shards.len(),
            router.p50,
            router.p99,
            rawl.p50
        );
        points.push(ScalePoint {
            x: u64::from(p),
            router,
            raw: Some(rawl),
            node_rss_bytes: b.node_rss(),
            shards: shards.len(),
            cluster_docs,
        });
    }
    b.stop().await;
    write_json(
        &cli.data,
        "partitions.json",
        &ScaleResult {
            what: "partitions".into(),
            params: serde_json::json!({"counts": counts, "docs": docs, "queries": queries}),
            baseline_rss_bytes: baseline,
            points,
        },
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::Core {
            docs,
            rounds,
            queries,
            clients,
            requests,
        } => core(&cli, *docs, *rounds, *queries, clients, *requests).await,
        Cmd::Docs { sizes, queries } => docs_curve(&cli, sizes, *queries).await,
        Cmd::Tenants {
            counts,
            probe_docs,
            filler_docs,
            queries,
        } => tenants_curve(&cli, counts, *probe_docs, *filler_docs, *queries).await,
        Cmd::Partitions {
            counts,
            docs,
            queries,
        } => partitions_curve(&cli, counts, *docs, *queries).await,
        Cmd::Security {
            docs,
            queries,
            clients,
            requests,
            rounds,
            out,
        } => {
            let shape = SecurityShape {
                docs: *docs,
                queries: *queries,
                clients: clients.clone(),
                requests: *requests,
                rounds: *rounds,
            };
            security::run(&wiki(&cli), &shape, out).await
        }
        Cmd::Report {
            out,
            plots,
            include,
            label,
        } => report::write(&cli.data, out, plots, include, label),
    }
}
