//! Permission-filtered search latency as the documents hidden from the user
//! grow, beside a naive post-filter, in one run on one real tantivy index
//! (`ShardIndex`, in process).
//!
//! - **filtered** (Tessera): take the tenant's distinct acl tokens (listed
//!   from the term dictionary once per index reload), keep those the user's
//!   principals satisfy, and search with that token set as a filter. The
//!   per-user allowed set is recomputed every query, as for a user the
//!   node's cache has not seen at this index generation; the *cached*
//!   column is the steady state, and *listing* is what the first query of
//!   the tenant after a reload adds.
//! - **naive**: search without the permission filter (tenant term only),
//!   walk the hits in score order evaluating each document's permission
//!   levels against the brute-force oracle, and keep the first k allowed,
//!   fetching a twice larger page until k are found or the matches run out.
//!
//! The visible documents are fixed (`--visible`); hidden documents grow
//! through `--hidden` (10k, 100k, 1M), each step indexed in bulk with one
//! commit. Every document matches the queries, so the naive side has to
//! wade through hidden ones. The report gives median and p99 of each side
//! per step and their ratio, plus the largest DNF size of the demo data set.

use anyhow::Context;
use clap::Parser;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tessera_bench::{median, percentile};
use tessera_client::demo::text::SyntheticText;
use tessera_client::demo::{generate_tenant, tenant_sizes, DemoConfig};
use tessera_node::acl;
use tessera_node::index::{IndexConfig, IndexOp, IndexQuery, IndexedDoc, ShardIndex};
use tessera_proto::Permissions;

const TENANT: &str = "bench";
/// Words of titles and bodies; every document has "runbook" in its title.
const WORDS: [&str; 16] = [
    "deploy",
    "incident",
    "rollback",
    "database",
    "migration",
    "oncall",
    "latency",
    "cache",
    "replica",
    "quorum",
    "leader",
    "snapshot",
    "region",
    "budget",
    "roadmap",
    "review",
];
const QUERIES: [&str; 6] = [
    "runbook",
    "deploy runbook",
    "incident review",
    "database migration",
    "cache latency",
    "quorum leader",
];

#[derive(Parser)]
#[command(about = "Permission-filtered search vs a naive post-filter as hidden documents grow")]
struct Args {
    /// Documents the user may see (fixed over the steps).
    #[arg(long, default_value_t = 1_000)]
    visible: usize,
    /// Hidden-document counts, ascending (cumulative steps).
    #[arg(long, value_delimiter = ',', default_values_t = vec![10_000usize, 100_000, 1_000_000])]
    hidden: Vec<usize>,
    /// Hits wanted per query (k).
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Timed queries per side and step.
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// Distinct conjuncts the hidden documents are spread over.
    #[arg(long, default_value_t = 200)]
    hidden_conjuncts: usize,
    /// Also write the Markdown report here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// The user: alice, in `g:vis` and `g:staff`.
fn principals() -> BTreeSet<String> {
    acl::principals("u:alice", &["g:vis".to_string(), "g:staff".to_string()])
}

/// Document `n`'s permissions. Visible ones: open, `g:vis`, or `g:staff`
/// under a `g:vis` ancestor. Hidden ones: one of `conjuncts` group sets
/// the user is in none of, some combined with a user restriction.
fn permissions(n: usize, visible: bool, conjuncts: usize) -> Permissions {
    let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    if visible {
        match n % 3 {
            0 => Permissions::default(),
            1 => Permissions {
                space: s(&["g:vis"]),
                ..Permissions::default()
            },
            _ => Permissions {
                space: s(&["g:staff", "g:vis"]),
                ancestors: vec![s(&["g:vis"])],
                page: vec![],
            },
        }
    } else {
        let g = format!("g:h{}", n % conjuncts.max(1));
        if n.is_multiple_of(5) {
            Permissions {
                space: vec![g],
                ancestors: vec![],
                page: vec![format!("u:x{}", n % 7)],
            }
        } else {
            Permissions {
                space: vec![g, "g:hidden".to_string()],
                ancestors: vec![],
                page: vec![],
            }
        }
    }
}

fn text(n: usize) -> (String, String) {
    let w =
        |k: usize| WORDS[(n.wrapping_mul(2_654_435_761).wrapping_add(k * 40_503)) % WORDS.len()];
    (
        format!("runbook {} {}", w(1), w(2)),
        (3..9).map(w).collect::<Vec<_>>().join(" "),
    )
}

/// Indexes documents `from..to` and keeps their permissions for the oracle.
fn index_docs(
    index: &ShardIndex,
    perms: &mut HashMap<String, Permissions>,
    ids: std::ops::Range<usize>,
    visible: bool,
    conjuncts: usize,
    applied: &mut u64,
) -> anyhow::Result<()> {
    let mut ops = Vec::with_capacity(50_000);
    for n in ids {
        let id = if visible {
            format!("v{n}")
        } else {
            format!("h{n}")
        };
        let p = permissions(n, visible, conjuncts);
        let (title, body) = text(n + usize::from(visible) * 7_919);
        ops.push(IndexOp::Upsert(IndexedDoc {
            tenant: TENANT.to_string(),
            id: id.clone(),
            space: "ENG".to_string(),
            title,
            body,
            acl_tokens: acl::tokens(TENANT, &p)?,
            ..IndexedDoc::default()
        }));
        perms.insert(id, p);
        if ops.len() == 50_000 {
            *applied += 1;
            index.submit(*applied, std::mem::take(&mut ops));
        }
    }
    *applied += 1;
    index.submit(*applied, ops);
    Ok(())
}

/// Tessera's path for a new principal set: the tenant's tokens, subset test,
/// token-set filtered search.
fn filtered(index: &ShardIndex, text: &str, k: usize) -> anyhow::Result<Vec<String>> {
    let tokens = index.acl_tokens(TENANT)?;
    let allowed = acl::allowed_tokens(TENANT, tokens.iter(), &principals());
    let q = IndexQuery {
        tenant: TENANT.to_string(),
        text: text.to_string(),
        allowed_acl_tokens: allowed,
        limit: k,
        ..IndexQuery::default()
    };
    Ok(index
        .search(&q)?
        .hits
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

/// Tessera's path with the allowed tokens already cached (the node's steady
/// state for a returning user at an unchanged index generation).
fn filtered_cached(
    index: &ShardIndex,
    allowed: &[String],
    text: &str,
    k: usize,
) -> anyhow::Result<usize> {
    let q = IndexQuery {
        tenant: TENANT.to_string(),
        text: text.to_string(),
        allowed_acl_tokens: allowed.to_vec(),
        limit: k,
        ..IndexQuery::default()
    };
    Ok(index.search(&q)?.hits.len())
}

/// The baseline: unfiltered search, oracle per hit, first k allowed.
fn naive(
    index: &ShardIndex,
    perms: &HashMap<String, Permissions>,
    text: &str,
    k: usize,
) -> anyhow::Result<Vec<String>> {
    let me = principals();
    // Every token of the tenant: the tenant filter without the user filter.
    let everything = index.acl_tokens(TENANT)?;
    let mut limit = (k * 10).max(100);
    loop {
        let q = IndexQuery {
            tenant: TENANT.to_string(),
            text: text.to_string(),
            allowed_acl_tokens: everything.to_vec(),
            limit,
            ..IndexQuery::default()
        };
        let results = index.search(&q)?;
        let exhausted = results.hits.len() < limit;
        let kept: Vec<String> = results
            .hits
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| perms.get(id).is_some_and(|p| acl::oracle_allows(p, &me)))
            .take(k)
            .collect();
        if kept.len() >= k || exhausted {
            return Ok(kept);
        }
        limit *= 2;
    }
}

struct Row {
    hidden: usize,
    index_secs: f64,
    filtered: (f64, f64),
    cached: (f64, f64),
    listing: (f64, f64),
    naive: (f64, f64),
}

/// One measured operation, given the query text.
type Side<'a> = &'a mut dyn FnMut(&str) -> anyhow::Result<()>;

/// Median and p99 (ms) of each of `sides`, run in turn on the same query
/// before moving to the next one.
fn time_interleaved<const N: usize>(
    queries: usize,
    sides: [Side<'_>; N],
) -> anyhow::Result<[(f64, f64); N]> {
    let mut sides = sides;
    for q in QUERIES {
        for side in sides.iter_mut() {
            side(q)?; // warm-up
        }
    }
    let mut samples: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(queries));
    for i in 0..queries {
        let q = QUERIES[i % QUERIES.len()];
        for (side, times) in sides.iter_mut().zip(samples.iter_mut()) {
            let start = Instant::now();
            side(q)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(samples.map(|mut times| (median(&mut times), percentile(&mut times, 0.99))))
}

/// Largest DNF (conjuncts per document) and most distinct tokens per tenant
/// over the demo data set (`tessera-demo generate` defaults).
fn demo_dnf() -> anyhow::Result<(usize, usize, String, usize)> {
    let config = DemoConfig::default();
    let mut text = SyntheticText::new(config.seed);
    let mut largest = (0usize, String::new());
    let mut most_tokens = 0usize;
    let mut docs = 0usize;
    for (index, size) in tenant_sizes(&config).iter().enumerate() {
        let data = generate_tenant(&config, index, *size, &mut text)?;
        let tenant = data.manifest.id.clone();
        let mut distinct = BTreeSet::new();
        for d in &data.docs {
            let tokens = acl::tokens(&tenant, &d.permissions)?;
            if tokens.len() > largest.0 {
                largest = (tokens.len(), format!("{tenant}/{}", d.id));
            }
            distinct.extend(tokens);
            docs += 1;
        }
        most_tokens = most_tokens.max(distinct.len());
    }
    Ok((largest.0, most_tokens, largest.1, docs))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let index = ShardIndex::open(
        dir.path(),
        IndexConfig {
            commit_interval: Duration::from_secs(24 * 3600),
            commit_ops: usize::MAX,
            writer_memory: 256 << 20,
        },
    )?;
    let mut perms = HashMap::new();
    let mut applied = 0;
    index_docs(
        &index,
        &mut perms,
        0..args.visible,
        true,
        args.hidden_conjuncts,
        &mut applied,
    )?;
    let mut rows = Vec::new();
    let mut have = 0;
    for &hidden in &args.hidden {
        let start = Instant::now();
        index_docs(
            &index,
            &mut perms,
            have..hidden,
            false,
            args.hidden_conjuncts,
            &mut applied,
        )?;
        index.flush().context("committing")?;
        let index_secs = start.elapsed().as_secs_f64();
        have = hidden;
        // Both sides must return the same documents: the filter is exact.
        for q in QUERIES {
            let a: BTreeSet<String> = filtered(&index, q, args.k)?.into_iter().collect();
            let b: BTreeSet<String> = naive(&index, &perms, q, args.k)?.into_iter().collect();
            anyhow::ensure!(
                a.len() == args.k.min(args.visible),
                "filtered found {} for {q:?}",
                a.len()
            );
            anyhow::ensure!(
                a.iter().all(|id| id.starts_with('v')),
                "filtered leaked for {q:?}"
            );
            anyhow::ensure!(
                b.iter().all(|id| id.starts_with('v')),
                "naive leaked for {q:?}"
            );
        }
        // The three cheap measurements are interleaved query by query, so that background
        // merges and machine noise land on all of them alike.
        let allowed = acl::allowed_tokens(TENANT, index.acl_tokens(TENANT)?.iter(), &principals());
        let [f, c, listing] = time_interleaved(
            args.queries,
            [
                &mut |q: &str| filtered(&index, q, args.k).map(|_| ()),
                &mut |q: &str| filtered_cached(&index, &allowed, q, args.k).map(|_| ()),
                &mut |_: &str| {
                    index
                        .list_acl_tokens(TENANT)
                        .map(|_| ())
                        .map_err(Into::into)
                },
            ],
        )?;
        let n_queries = if hidden >= 1_000_000 {
            args.queries / 3
        } else {
            args.queries
        }
        .max(10);
        let [n] = time_interleaved(
            n_queries,
            [&mut |q: &str| naive(&index, &perms, q, args.k).map(|_| ())],
        )?;
        eprintln!(
            "hidden {hidden}: indexed in {index_secs:.1}s; filtered p50 {:.3} ms p99 {:.3} ms; cached p50 {:.3} ms; naive p50 {:.3} ms p99 {:.3} ms",
            f.0, f.1, c.0, n.0, n.1
        );
        rows.push(Row {
            hidden,
            index_secs,
            filtered: f,
            cached: c,
            listing,
            naive: n,
        });
    }
    let (max_conjuncts, max_tokens, at, demo_docs) = demo_dnf()?;
    let report = render(&args, &rows, (max_conjuncts, max_tokens, &at, demo_docs));
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn render(args: &Args, rows: &[Row], demo: (usize, usize, &str, usize)) -> String {
    let mut s = String::new();
    s.push_str("# Permission-filtered search vs naive post-filter\n\n");
    s.push_str(&format!(
        "Generated by `scripts/bench.sh acl` (`acl_filter`), {} on {}.\n\n",
        std::env::var("BENCH_DATE").unwrap_or_else(|_| "unknown date".into()),
        std::env::var("BENCH_COMMIT").unwrap_or_else(|_| "unknown commit".into()),
    ));
    s.push_str(&format!(
        "One in-process `ShardIndex` (real tantivy, one segment writer). The user sees {} documents \
         (fixed); the hidden documents grow, spread over {} conjuncts (some with a user restriction). \
         Every document matches the queries. k = {}; {} timed queries per side and step ({} for naive \
         at 1M), after a warm-up. Latency in ms per query, median and p99. *filtered* includes \
         the subset test of the tenant's tokens against the user's principals on every query (a \
         user the node has not cached at this index generation); *cached* reuses the allowed set \
         (the node's steady state); *listing* is the term-dictionary scan that the first query of \
         the tenant after an index reload adds (one scan per segment); *naive* runs the query without the permission filter, checks each hit's permission levels \
         against the oracle in score order and keeps the first k allowed, doubling the page until \
         it has k.\n\n",
        args.visible,
        args.hidden_conjuncts,
        args.k,
        args.queries,
        (args.queries / 3).max(10),
    ));
    s.push_str("| hidden docs | filtered p50 | filtered p99 | cached p50 | cached p99 | listing p50 | naive p50 | naive p99 | naive / filtered (p50) | bulk index time |\n");
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1}× | {:.1} s |\n",
            r.hidden,
            r.filtered.0,
            r.filtered.1,
            r.cached.0,
            r.cached.1,
            r.listing.0,
            r.naive.0,
            r.naive.1,
            r.naive.0 / r.filtered.0,
            r.index_secs
        ));
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        s.push_str(&format!(
            "\nFrom {} to {} hidden documents the filtered median moves {:.2}× (p99 {:.2}×; with \
             cached tokens {:.2}×) while the naive median moves {:.1}× (p99 {:.1}×).\n",
            first.hidden,
            last.hidden,
            last.filtered.0 / first.filtered.0,
            last.filtered.1 / first.filtered.1,
            last.cached.0 / first.cached.0,
            last.naive.0 / first.naive.0,
            last.naive.1 / first.naive.1,
        ));
    }
    s.push_str(&format!(
        "\nBulk indexing time is the time to submit and commit that step's new hidden documents \
         (one commit per step, 256 MB writer heap).\n\n\
         Demo data set (`tessera-demo generate` defaults: 20 tenants, 10,000 documents, seed 42, \
         synthetic text): the largest compiled DNF has **{} conjunct(s)** (first at `{}`), and the \
         tenant with the most distinct conjunct tokens has {} ({} documents compiled).\n",
        demo.0, demo.2, demo.1, demo.3
    ));
    s
}
