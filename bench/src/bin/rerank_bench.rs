//! The reranking benchmark behind `scripts/bench.sh rerank`: what a rank profile (100
//! candidates, 5 features) adds to a node's search, and the same reranking done the two-hop
//! way a separate online store implies, in one run on one cluster.
//!
//! Four ways to get the top 10 for a (user, query), interleaved query by query so that
//! machine noise lands on all of them alike, each timed from the caller of the leader node's
//! gRPC `Search` (every hop included):
//! - **bm25**: the node's plain search, top 10;
//! - **candidates only**: a profile without features over 100 candidates (splits the cost);
//! - **one hop**: the node's search with the profile: the top 100 BM25 candidates reranked on
//!   the node with 5 feature values read from its own RocksDB;
//! - **two hops**: the node's plain search for the top 100, then one pipelined `MGET` of the
//!   same 5 × 100 feature values from a Redis server on loopback, reranked by the caller with
//!   the same profile code.
//!
//! Between rounds a few events are written (untimed), so the node's online feature cache
//! sees live writes (counts absorb them, other values of their kind are dropped); no figure
//! comes from a cache that never changes.
//!
//! Redis holds exactly the values the node serves (loaded from the node's historical API
//! before timing; all 5 features are all-time aggregates, so they do not drift while the
//! benchmark runs), and the benchmark checks that both reranked top 10s are identical.
//!
//! `--redis URL` is required: `scripts/bench.sh rerank` installs Debian's `redis-server`,
//! starts it on 127.0.0.1 and stops it by its pid afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use tessera_bench::{median, percentile};
use tessera_client::features::{EntityKey, HistoricalRow};
use tessera_client::TenantSpec;
use tessera_node::rank::{parse_profiles, RankProfile};
use tessera_proto::pb;
use tessera_tests::cluster::Mode;
use tessera_tests::routers::{client, create_tenant, put_all, spawn_router, wait_indexed};
use tessera_tests::{docs, Layout, TestCluster};

const TENANT: &str = "bench";
const SPACES: u64 = 4;

/// Five all-time features: affinity, contribution, popularity, editors and clicks.
const FEATURES_TOML: &str = r#"
[[feature]]
name = "user_space_views"
entity = "user+space"
source = "view"
aggregation = "count"

[[feature]]
name = "user_doc_edits"
entity = "user+doc"
source = "edit"
aggregation = "count"

[[feature]]
name = "doc_views"
entity = "doc"
source = "view"
aggregation = "count"

[[feature]]
name = "doc_editors"
entity = "doc"
source = "edit"
aggregation = "distinct_users"

[[feature]]
name = "doc_clicks"
entity = "doc"
source = "click"
aggregation = "count"

[[profile]]
name = "bench"
version = 1
candidates = 100
bm25 = 1.0
[[profile.term]]
feature = "user_space_views"
weight = 0.3
transform = "log1p"
[[profile.term]]
feature = "user_doc_edits"
weight = 1.0
transform = "log1p"
[[profile.term]]
feature = "doc_views"
weight = 0.1
transform = "log1p"
[[profile.term]]
feature = "doc_editors"
weight = 0.2
[[profile.term]]
feature = "doc_clicks"
weight = 0.2
transform = "log1p"

# The same 100 candidates without features: splits the one-hop cost into the
# deeper first phase and the feature reads.
[[profile]]
name = "candidates_only"
version = 1
candidates = 100
bm25 = 1.0
"#;

use tessera_bench::VOCABULARY_QUERIES as QUERIES;

#[derive(Parser)]
#[command(about = "Reranking on the node vs plain BM25 vs a two-hop Redis feature fetch")]
struct Args {
    /// Redis server to load the feature values into (redis://127.0.0.1:PORT/).
    #[arg(long)]
    redis: String,
    /// Documents in the tenant.
    #[arg(long, default_value_t = 5000)]
    docs: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 20)]
    users: u64,
    /// Events (views, edits, clicks).
    #[arg(long, default_value_t = 30_000)]
    events: u64,
    /// Timed rounds (each runs all four ways once).
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Events written (untimed) before each round, changing cached feature values as live
    /// traffic does.
    #[arg(long, default_value_t = 4)]
    writes_per_round: usize,
    /// Write the Markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Document `i`'s space, as `tessera_tests::docs::doc` assigns it.
fn space_of(i: u64) -> String {
    format!("S{}", i % SPACES)
}

/// A deterministic event stream: users favour a home space, edits and clicks are rarer.
fn events(args: &Args) -> Vec<(String, String, u64)> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..args.events)
        .map(|_| {
            let user = next() % args.users;
            let kind = match next() % 10 {
                0 => "edit",
                1 | 2 => "click",
                _ => "view",
            };
            let home = next() % 3 != 0;
            let mut doc = next() % args.docs;
            if home {
                doc = doc - doc % SPACES + user % SPACES;
                doc = doc.min(args.docs - 1);
            }
            (kind.to_string(), format!("u:{user}"), doc)
        })
        .collect()
}

/// When the `k`-th of `n` history events happened: spread evenly over the 30 days before the
/// run, newest first, as a real history is. (All of them "today" would put every event in the
/// current, not yet tiled, day and make each cache miss re-read them all.)
fn history_ts(now_ms: i64, k: usize, n: usize) -> i64 {
    const SPAN_MS: i64 = 30 * 86_400_000;
    now_ms - 1000 - (k as i64).saturating_mul(SPAN_MS) / (n.max(1) as i64)
}

fn event_json(kind: &str, user: &str, doc: u64, ts_ms: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "kind": kind,
        "user": user,
        "doc": format!("p-{doc}"),
        "space": space_of(doc),
        "ts": tessera_proto::event::format_ts_millis(ts_ms),
    }))
    .unwrap_or_default()
}

fn redis_key(feature: &str, user: &str, space: &str, doc: &str) -> String {
    match feature {
        "user_space_views" => format!("{feature}|{user}|{space}"),
        "user_doc_edits" => format!("{feature}|{user}|{doc}"),
        _ => format!("{feature}|{doc}"),
    }
}

/// Loads into Redis every non-zero value the node serves for the entities the events touched
/// (absent keys read as null, which the profile treats exactly like the node's 0).
async fn load_redis(
    c: &tessera_client::TesseraClient,
    redis: &mut redis::Connection,
    names: &[String],
    touched: &BTreeSet<(String, u64)>,
    token: &str,
    now_ms: i64,
) -> anyhow::Result<usize> {
    let rows: Vec<HistoricalRow> = touched
        .iter()
        .map(|(user, doc)| HistoricalRow {
            entity: EntityKey {
                user: user.clone(),
                space: space_of(*doc),
                doc: format!("p-{doc}"),
            },
            ts_ms: now_ms,
        })
        .collect();
    let mut keys: BTreeMap<String, f64> = BTreeMap::new();
    for chunk in rows.chunks(2000) {
        let values = c
            .historical_features(TENANT, chunk, names, false, token)
            .await
            .context("historical features")?;
        for (row, vals) in chunk.iter().zip(values) {
            for (name, v) in names.iter().zip(vals) {
                if let Some(v) = v.filter(|v| *v != 0.0) {
                    let e = &row.entity;
                    keys.insert(redis_key(name, &e.user, &e.space, &e.doc), v);
                }
            }
        }
    }
    let mut pipe = redis::pipe();
    pipe.cmd("FLUSHDB").ignore();
    for chunk in keys.iter().collect::<Vec<_>>().chunks(1000) {
        let mut mset = redis::cmd("MSET");
        for (k, v) in chunk {
            mset.arg(k.as_str()).arg(**v);
        }
        pipe.add_command(mset).ignore();
    }
    pipe.query::<()>(redis).context("loading redis")?;
    Ok(keys.len())
}

type Ranked = Vec<(String, f32)>;

async fn node_search(
    node: &mut pb::node_client::NodeClient<tonic::transport::Channel>,
    shard: u64,
    user: &str,
    query: &str,
    limit: u32,
    profile: &str,
) -> anyhow::Result<Vec<pb::Hit>> {
    let resp = node
        .search(pb::SearchRequest {
            tenant: TENANT.to_string(),
            shard,
            user: user.to_string(),
            query: query.to_string(),
            limit,
            profile: profile.to_string(),
            ..Default::default()
        })
        .await
        .context("node search")?;
    Ok(resp.into_inner().hits)
}

/// The two-hop path: candidates from the node, features from Redis, rerank here.
async fn two_hop(
    node: &mut pb::node_client::NodeClient<tonic::transport::Channel>,
    redis: &mut redis::Connection,
    profile: &RankProfile,
    shard: u64,
    user: &str,
    query: &str,
) -> anyhow::Result<Ranked> {
    let hits = node_search(node, shard, user, query, profile.candidates, "").await?;
    let names = profile.features();
    let mut keys = Vec::with_capacity(hits.len() * names.len());
    for h in &hits {
        let n: u64 = h.id.trim_start_matches("p-").parse().unwrap_or(0);
        for name in &names {
            keys.push(redis_key(name, user, &space_of(n), &h.id));
        }
    }
    let values: Vec<Option<f64>> = redis::cmd("MGET")
        .arg(&keys)
        .query(redis)
        .context("redis MGET")?;
    let mut ranked: Ranked = hits
        .iter()
        .zip(values.chunks(names.len()))
        .map(|(h, vals)| {
            let score = profile.score(f64::from(h.score), vals).score as f32;
            (h.id.clone(), score)
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(10);
    Ok(ranked)
}

struct Timings {
    bm25: Vec<f64>,
    candidates_only: Vec<f64>,
    one_hop: Vec<f64>,
    two_hop: Vec<f64>,
}

fn elapsed_ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let profile = parse_profiles(
        FEATURES_TOML,
        &[
            "user_space_views",
            "user_doc_edits",
            "doc_views",
            "doc_editors",
            "doc_clicks",
        ],
    )?
    .remove(0);
    let mut redis = redis::Client::open(args.redis.as_str())
        .context("redis URL")?
        .get_connection()
        .context("connecting to redis")?;

    eprintln!(
        "rerank: starting a 3-node cluster and loading {} documents",
        args.docs
    );
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::Process).await;
    let router = spawn_router(&cluster, 1, "us-east", &[]).await;
    let c = client(&router.endpoint())
        .await
        .with_timeout(Duration::from_secs(60));
    create_tenant(&c, &TenantSpec::new(TENANT, ["us-east"])).await;
    let mut token = put_all(
        &c,
        TENANT,
        (0..args.docs)
            .map(|i| docs::doc(&format!("p-{i}"), 1, i))
            .collect(),
        1000,
    )
    .await;
    let (version, _, t) = c
        .apply_features(TENANT, FEATURES_TOML)
        .await
        .context("features")?;
    ensure!(version >= 1, "features registered");
    token = if t.is_empty() { token } else { t };
    let now_ms = tessera_node::features::now_ms();
    let stream = events(&args);
    let touched: BTreeSet<(String, u64)> = stream.iter().map(|(_, u, d)| (u.clone(), *d)).collect();
    eprintln!("rerank: writing {} events", stream.len());
    for (i, chunk) in stream.chunks(2000).enumerate() {
        let lines = chunk
            .iter()
            .enumerate()
            .map(|(j, (kind, user, doc))| {
                event_json(
                    kind,
                    user,
                    *doc,
                    history_ts(now_ms, i * 2000 + j, stream.len()),
                )
            })
            .collect();
        let (_, t) = c
            .put_events(TENANT, lines, &token)
            .await
            .context("events")?;
        token = t;
    }
    let shard = wait_indexed(&cluster, TENANT).await;
    let names = profile.features();
    let loaded = load_redis(&c, &mut redis, &names, &touched, &token, now_ms).await?;
    eprintln!("rerank: {loaded} feature values in redis");
    let leader = cluster.leader_of(shard).await;
    let mut node = cluster.client(leader).await.map_err(anyhow::Error::msg)?;

    // The two ways to rerank must agree before either is timed.
    for (i, q) in QUERIES.iter().enumerate() {
        let user = format!("u:{}", i as u64 % args.users);
        let one: Ranked = node_search(&mut node, shard, &user, q, 10, "bench")
            .await?
            .into_iter()
            .map(|h| (h.id, h.score))
            .collect();
        let two = two_hop(&mut node, &mut redis, &profile, shard, &user, q).await?;
        ensure!(
            one == two,
            "one hop and two hops disagree for {user} {q:?}: {one:?} vs {two:?}"
        );
    }

    let mut t = Timings {
        bm25: Vec::new(),
        candidates_only: Vec::new(),
        one_hop: Vec::new(),
        two_hop: Vec::new(),
    };
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for i in 0..args.queries + QUERIES.len() {
        let q = QUERIES[i % QUERIES.len()];
        let user = format!("u:{}", (i as u64 / QUERIES.len() as u64) % args.users);
        // Untimed writes between rounds, so the online cache sees writes as it would in
        // service: this round's user views pages (touching their user, user×space and
        // user×doc values), and so do others (touching document values).
        let mut lines = Vec::with_capacity(args.writes_per_round);
        for w in 0..args.writes_per_round {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let who = if w == 0 {
                user.clone()
            } else {
                format!("u:{}", x % args.users)
            };
            lines.push(event_json(
                "view",
                &who,
                (x >> 17) % args.docs,
                tessera_node::features::now_ms() - 500,
            ));
        }
        if !lines.is_empty() {
            let (_, t2) = c
                .put_events(TENANT, lines, &token)
                .await
                .context("events during timing")?;
            token = t2;
        }
        // The way that runs first after the writes pays for what they left behind (index
        // refresh, cold caches), so the order rotates: each way goes first in a quarter of
        // the rounds.
        let mut took = [0.0; 4];
        for k in 0..4 {
            let way = (i + k) % 4;
            let start = Instant::now();
            let profile_of_way = ["", "candidates_only", "bench"];
            match profile_of_way.get(way) {
                Some(p) => drop(node_search(&mut node, shard, &user, q, 10, p).await?),
                None => drop(two_hop(&mut node, &mut redis, &profile, shard, &user, q).await?),
            }
            took[way] = elapsed_ms(start);
        }
        if i >= QUERIES.len() {
            t.bm25.push(took[0]);
            t.candidates_only.push(took[1]);
            t.one_hop.push(took[2]);
            t.two_hop.push(took[3]);
        }
    }
    let report = render(&args, &mut t, loaded);
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn render(args: &Args, t: &mut Timings, loaded: usize) -> String {
    let row = |v: &mut Vec<f64>| (median(v), percentile(v, 0.99));
    let (b50, b99) = row(&mut t.bm25);
    let (c50, c99) = row(&mut t.candidates_only);
    let (o50, o99) = row(&mut t.one_hop);
    let (w50, w99) = row(&mut t.two_hop);
    format!(
        "# Reranking on the node vs a two-hop online store\n\n\
         Generated by `scripts/bench.sh rerank` (`rerank_bench`), {} on {}.\n\n\
         A 3-node cluster of `tessera-node` processes (one region, 3 replicas); tenant of {} \
         documents, {} users and {} events (spread over the 30 days before the run) over 5 all-time features; profile `bench`: 100 \
         BM25 candidates, 5 feature terms. Each round runs the four ways once on the same \
         (user, query), in an order that rotates so each way runs first after the writes in a \
         quarter of the rounds, timed by the caller of the leader's gRPC `Search` on loopback; {} \
         rounds after a warm-up; ms per query. Redis (Debian's `redis-server`, loopback) holds \
         the same {} non-zero values the node serves; both reranked top-10s were checked equal \
         before timing. Before each round {} view events are written (untimed; the first by \
         that round's user), so the node's online cache sees live writes (counts absorb them; \
         other values of their kind are dropped) \
         ({} events during timing; Redis is not updated by them, which only affects values, \
         not its latency).\n\n\
         | way | p50 | p99 |\n|---|---:|---:|\n\
         | BM25 top 10 (no reranking) | {b50:.3} | {b99:.3} |\n\
         | top 10 of 100 candidates, no features (profile without terms) | {c50:.3} | {c99:.3} |\n\
         | one hop: node reranks 100 candidates with 5 features | {o50:.3} | {o99:.3} |\n\
         | two hops: node top 100 + Redis MGET of 500 values + rerank in the caller | {w50:.3} | {w99:.3} |\n\n\
         - Reranking adds **{:+.1}%** to the node's search (p50 one hop / BM25 top 10 = {:.3}; \
         the issue's goal is ≤ 1.15). Of that, the deeper first phase (100 candidates; only the \
         page is re-checked against stored rows) is {:.3}× and the 500 feature values {:.3}× \
         (one hop / 100 candidates without features).\n\
         - Two hops / one hop = **{:.2}×** at p50 ({:.2}× at p99).\n",
        std::env::var("BENCH_DATE").unwrap_or_else(|_| "unknown date".into()),
        std::env::var("BENCH_COMMIT").unwrap_or_else(|_| "unknown commit".into()),
        args.docs,
        args.users,
        args.events,
        args.queries,
        loaded,
        args.writes_per_round,
        args.writes_per_round * (args.queries + QUERIES.len()),
        (o50 / b50 - 1.0) * 100.0,
        o50 / b50,
        c50 / b50,
        o50 / c50,
        w50 / o50,
        w99 / o99,
    )
}
