//! Relevance evaluation: test collections, the standard IR metrics and
//! bootstrap confidence intervals. `tessera eval` runs a collection through
//! a cluster and reports these; the integration tests check the figures
//! against raw tantivy.
//!
//! A collection is a directory with three files (the format of
//! `../shared/data/ir/*`):
//!
//! - `docs.jsonl`: one `{"id","title","body"}` object per line;
//! - `queries.tsv`: `qid<TAB>text` per line;
//! - `qrels.txt`: TREC judgments, `qid 0 docid grade` per line.
//!
//! Metrics follow trec_eval, over the queries that have at least one
//! relevant (grade > 0) judgment:
//!
//! ```text
//! nDCG@k = DCG@k / IDCG@k,  DCG@k = Σ_{rank ≤ k} gain(grade) / log2(rank + 1)
//! AP     = Σ_{relevant hits at rank r} P@r / (number of relevant documents)
//! RR     = 1 / rank of the first relevant hit (0 when none is retrieved)
//! P@k    = relevant hits in the first k / k
//! R@k    = relevant hits in the first k / number of relevant documents
//! ```
//!
//! MAP and MRR are the means of AP and RR. Gain is linear (`grade`, as in
//! trec_eval's `ndcg_cut`) unless [`Gain::Exponential`] (`2^grade − 1`) is
//! asked for; the two agree on binary judgments. MRR@10 cuts RR at rank 10
//! (0 when the first relevant hit is below it).
//!
//! Rankings are compared as [`variants`]: every judged query runs under
//! every variant (plain BM25 or a rank profile), and each variant's MRR@10
//! and nDCG@10 come with its paired difference to the first variant.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::demo::rng::Rng;
use tessera_proto::limits::MAX_QUERY_TERMS;

pub mod variants;

pub use variants::{Difference, Variant, VariantFigures};

/// Why a collection could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line does not follow the collection format.
    #[error("{file} line {line}: {reason}")]
    Format {
        /// Which of the three files.
        file: &'static str,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// How a relevance grade becomes gain in nDCG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gain {
    /// `grade` (trec_eval `ndcg_cut`).
    #[default]
    Linear,
    /// `2^grade − 1` (Burges et al.); weighs highly relevant documents more.
    Exponential,
}

impl Gain {
    fn of(self, grade: u32) -> f64 {
        match self {
            Gain::Linear => f64::from(grade),
            Gain::Exponential => 2f64.powi(grade.min(30) as i32) - 1.0,
        }
    }
}

/// One document of a collection.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct EvalDoc {
    /// Collection id (becomes the Tessera document id).
    pub id: String,
    /// Title (may be empty).
    #[serde(default)]
    pub title: String,
    /// Body text.
    #[serde(default)]
    pub body: String,
}

impl EvalDoc {
    /// The document as Tessera takes it: version 1, no permissions, so that
    /// loading the same collection again changes nothing.
    pub fn to_tessera_json(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "id": self.id, "title": self.title, "body": self.body, "version": 1,
        });
        v.to_string().into_bytes()
    }
}

/// A test collection: documents, queries and judgments.
#[derive(Debug, Clone, Default)]
pub struct Collection {
    /// Every document, in file order.
    pub docs: Vec<EvalDoc>,
    /// `(query id, raw text)`, in file order.
    pub queries: Vec<(String, String)>,
    /// query id → (doc id → grade).
    pub qrels: BTreeMap<String, HashMap<String, u32>>,
}

/// Non-blank lines with their 1-based numbers.
fn numbered(s: &str) -> impl Iterator<Item = (usize, &str)> {
    s.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
}

fn read(dir: &Path, name: &str) -> Result<String, EvalError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| EvalError::Io { path, source })
}

impl Collection {
    /// Loads `docs.jsonl`, `queries.tsv` and `qrels.txt` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, EvalError> {
        let docs_text = read(dir, "docs.jsonl")?;
        let queries_text = read(dir, "queries.tsv")?;
        let qrels_text = read(dir, "qrels.txt")?;
        Self::parse(&docs_text, &queries_text, &qrels_text)
    }

    /// Parses the three files' contents.
    pub fn parse(docs: &str, queries: &str, qrels: &str) -> Result<Self, EvalError> {
        let mut out = Collection::default();
        for (line, l) in numbered(docs) {
            let d: EvalDoc = serde_json::from_str(l).map_err(|e| EvalError::Format {
                file: "docs.jsonl",
                line,
                reason: e.to_string(),
            })?;
            if d.id.is_empty() {
                return Err(EvalError::Format {
                    file: "docs.jsonl",
                    line,
                    reason: "empty id".into(),
                });
            }
            out.docs.push(d);
        }
        for (line, l) in numbered(queries) {
            let (q, t) = l.split_once('\t').ok_or_else(|| EvalError::Format {
                file: "queries.tsv",
                line,
                reason: "expected `qid<TAB>text`".into(),
            })?;
            out.queries.push((q.trim().to_string(), t.to_string()));
        }
        for (line, l) in numbered(qrels) {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [q, _, doc, grade] = f[..] else {
                return Err(EvalError::Format {
                    file: "qrels.txt",
                    line,
                    reason: "expected `qid 0 docid grade`".into(),
                });
            };
            let grade: i64 = grade.parse().map_err(|e| EvalError::Format {
                file: "qrels.txt",
                line,
                reason: format!("grade {grade:?}: {e}"),
            })?;
            out.qrels
                .entry(q.to_string())
                .or_default()
                .insert(doc.to_string(), grade.max(0) as u32);
        }
        Ok(out)
    }

    /// The queries that have at least one relevant judgment: the only ones
    /// on which the metrics are defined (trec_eval's convention).
    pub fn judged_queries(&self) -> Vec<(String, String)> {
        self.queries
            .iter()
            .filter(|(q, _)| {
                self.qrels
                    .get(q)
                    .is_some_and(|j| j.values().any(|g| *g > 0))
            })
            .cloned()
            .collect()
    }
}

/// The query text as sent to Tessera, and whether it had to be cut.
///
/// The reference figures OR the lowercased words of the query. Lowercasing
/// keeps words such as AND, OR and NOT from being read as operators, and
/// replacing every non-alphanumeric character by a space keeps quotes,
/// colons and parentheses from being read as phrase or field syntax.
///
/// A node rejects a query of more than [`MAX_QUERY_TERMS`] (1,024) terms,
/// so a longer query keeps its first `MAX_QUERY_TERMS` words (the flag is
/// true then). No query of the collections in `../shared/data/ir` is that
/// long (CACM's longest has 81 words), so every one is sent whole.
pub fn query_text(raw: &str) -> (String, bool) {
    let lower: String = raw
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { ' ' })
        .collect();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let cut = words.len() > MAX_QUERY_TERMS;
    (words[..words.len().min(MAX_QUERY_TERMS)].join(" "), cut)
}

/// DCG of grades in rank order, cut at `k`.
pub fn dcg(grades: &[u32], k: usize, gain: Gain) -> f64 {
    grades
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, g)| gain.of(*g) / ((i + 2) as f64).log2())
        .sum()
}

fn grade(judged: &HashMap<String, u32>, id: &str) -> u32 {
    judged.get(id).copied().unwrap_or(0)
}

fn relevant_count(judged: &HashMap<String, u32>) -> usize {
    judged.values().filter(|g| **g > 0).count()
}

/// nDCG@k of a ranking; `None` when the query has no relevant judgment.
pub fn ndcg_at_k(
    ranked: &[String],
    judged: &HashMap<String, u32>,
    k: usize,
    gain: Gain,
) -> Option<f64> {
    let mut ideal: Vec<u32> = judged.values().copied().filter(|g| *g > 0).collect();
    if ideal.is_empty() {
        return None;
    }
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let grades: Vec<u32> = ranked.iter().map(|id| grade(judged, id)).collect();
    Some(dcg(&grades, k, gain) / dcg(&ideal, k, gain))
}

/// Average precision of a ranking (the whole ranking, as retrieved).
pub fn average_precision(ranked: &[String], judged: &HashMap<String, u32>) -> Option<f64> {
    let relevant = relevant_count(judged);
    if relevant == 0 {
        return None;
    }
    let mut hits = 0usize;
    let mut sum = 0.0;
    let mut seen = HashSet::new();
    for (i, id) in ranked.iter().enumerate() {
        if grade(judged, id) > 0 && seen.insert(id) {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    Some(sum / relevant as f64)
}

/// Reciprocal rank of the first relevant document (0 when none is ranked).
pub fn reciprocal_rank(ranked: &[String], judged: &HashMap<String, u32>) -> Option<f64> {
    if relevant_count(judged) == 0 {
        return None;
    }
    Some(
        ranked
            .iter()
            .position(|id| grade(judged, id) > 0)
            .map_or(0.0, |i| 1.0 / (i + 1) as f64),
    )
}

/// Precision at `k` (the denominator is `k` even when fewer were ranked).
pub fn precision_at_k(ranked: &[String], judged: &HashMap<String, u32>, k: usize) -> Option<f64> {
    if relevant_count(judged) == 0 || k == 0 {
        return None;
    }
    let hits = ranked
        .iter()
        .take(k)
        .filter(|id| grade(judged, id) > 0)
        .count();
    Some(hits as f64 / k as f64)
}

/// Recall at `k`.
pub fn recall_at_k(ranked: &[String], judged: &HashMap<String, u32>, k: usize) -> Option<f64> {
    let relevant = relevant_count(judged);
    if relevant == 0 {
        return None;
    }
    let hits = ranked
        .iter()
        .take(k)
        .filter(|id| grade(judged, id) > 0)
        .count();
    Some(hits as f64 / relevant as f64)
}

/// Every metric of one judged query.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueryScores {
    /// Query id.
    pub qid: String,
    /// nDCG@10.
    pub ndcg10: f64,
    /// Average precision.
    pub ap: f64,
    /// Reciprocal rank.
    pub rr: f64,
    /// Reciprocal rank within the top 10 (0 below it).
    pub rr10: f64,
    /// P@10.
    pub p10: f64,
    /// R@100.
    pub r100: f64,
}

/// Scores every judged query of `collection`. A judged query missing from
/// `runs` counts as an empty ranking (all zeros), so a failed query cannot
/// raise the mean.
pub fn score_runs(
    collection: &Collection,
    runs: &HashMap<String, Vec<String>>,
    gain: Gain,
) -> Vec<QueryScores> {
    let empty = Vec::new();
    collection
        .judged_queries()
        .into_iter()
        .filter_map(|(qid, _)| {
            let judged = collection.qrels.get(&qid)?;
            let run = runs.get(&qid).unwrap_or(&empty);
            Some(QueryScores {
                ndcg10: ndcg_at_k(run, judged, 10, gain)?,
                ap: average_precision(run, judged)?,
                rr: reciprocal_rank(run, judged)?,
                rr10: reciprocal_rank(&run[..run.len().min(10)], judged)?,
                p10: precision_at_k(run, judged, 10)?,
                r100: recall_at_k(run, judged, 100)?,
                qid,
            })
        })
        .collect()
}

/// A mean with its percentile-bootstrap 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// Mean over the queries.
    pub mean: f64,
    /// Lower bound of the 95% interval.
    pub ci_low: f64,
    /// Upper bound of the 95% interval.
    pub ci_high: f64,
}

/// The mean of `values` and its 95% interval from `resamples` bootstrap
/// resamples of the queries, drawn with a generator seeded by `seed` so the
/// interval is reproducible. Queries, not documents, are the sampling unit:
/// the interval says how much the figure would move on another query set.
pub fn bootstrap(values: &[f64], resamples: usize, seed: u64) -> Estimate {
    let n = values.len();
    if n == 0 {
        return Estimate {
            mean: 0.0,
            ci_low: 0.0,
            ci_high: 0.0,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if resamples == 0 {
        return Estimate {
            mean,
            ci_low: mean,
            ci_high: mean,
        };
    }
    let mut rng = Rng::new(seed);
    let means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    percentile_interval(mean, means)
}

/// `mean` with the 2.5th and 97.5th percentiles of its bootstrap replicates (non-empty) as
/// the 95% interval: the one rule every interval of the evaluators uses.
pub fn percentile_interval(mean: f64, mut replicates: Vec<f64>) -> Estimate {
    replicates.sort_by(f64::total_cmp);
    let last = replicates.len().saturating_sub(1);
    let at = |q: f64| {
        replicates
            .get(((q * last as f64).round() as usize).min(last))
            .copied()
            .unwrap_or(mean)
    };
    Estimate {
        mean,
        ci_low: at(0.025),
        ci_high: at(0.975),
    }
}

/// The figures `tessera eval` reports (its `--json` shape; fields may be
/// added but never removed).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// Collection name (its directory's name).
    pub collection: String,
    /// The tenant that was searched.
    pub tenant: String,
    /// Its partition count.
    pub partitions: u32,
    /// Documents loaded.
    pub docs: usize,
    /// Judged queries evaluated.
    pub queries: usize,
    /// Ids of queries cut to `MAX_QUERY_TERMS` terms.
    pub cut_queries: Vec<String>,
    /// Rank profile of the first variant, if any: the one the figures above `variants` (and
    /// `per_query`) are of.
    pub profile: Option<String>,
    /// Hits fetched per query (MAP and MRR are computed over them).
    pub depth: u32,
    /// Bootstrap resamples and seed of the intervals.
    pub bootstrap: BootstrapSpec,
    /// nDCG@10.
    pub ndcg_at_10: Estimate,
    /// Mean average precision.
    pub map: Estimate,
    /// Mean reciprocal rank.
    pub mrr: Estimate,
    /// Precision at 10.
    pub p_at_10: Estimate,
    /// Recall at 100.
    pub r_at_100: Estimate,
    /// Every query's scores under the first variant (only when asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_query: Option<Vec<QueryScores>>,
    /// MRR@10 and nDCG@10 of every variant, in the order given, each later one with its
    /// paired difference to the first.
    pub variants: Vec<VariantFigures>,
}

/// How the intervals were drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BootstrapSpec {
    /// Resamples.
    pub resamples: usize,
    /// Generator seed.
    pub seed: u64,
}

/// The five means with intervals, from per-query scores.
pub fn summarise(scores: &[QueryScores], spec: BootstrapSpec) -> [Estimate; 5] {
    let col = |f: fn(&QueryScores) -> f64| -> Estimate {
        let v: Vec<f64> = scores.iter().map(f).collect();
        bootstrap(&v, spec.resamples, spec.seed)
    };
    [
        col(|s| s.ndcg10),
        col(|s| s.ap),
        col(|s| s.rr),
        col(|s| s.p10),
        col(|s| s.r100),
    ]
}

/// What [`run`] does.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Tenant to load and search.
    pub tenant: String,
    /// Its partition count (a new tenant is created with it; an existing
    /// one must have it).
    pub partitions: u32,
    /// Regions of a new tenant (the first is home).
    pub regions: Vec<String>,
    /// The searching user.
    pub user: String,
    /// Rank profile passed through to search when `variants` is empty.
    pub profile: Option<String>,
    /// Rankings to compare on the same queries; the first is the baseline and the one the
    /// classic figures are of. Empty: one variant of `profile` (or plain BM25).
    pub variants: Vec<Variant>,
    /// Hits fetched per query (at most the page-size limit).
    pub depth: u32,
    /// nDCG gain.
    pub gain: Gain,
    /// Bootstrap resamples and seed.
    pub bootstrap: BootstrapSpec,
    /// Documents per write batch.
    pub batch: usize,
    /// Searches in flight at once.
    pub concurrency: usize,
    /// Whether to load the documents (false: the tenant already holds them).
    pub load: bool,
    /// How long to keep retrying one call that fails with a retryable error.
    pub retry_for: std::time::Duration,
    /// Keep per-query scores in the report.
    pub per_query: bool,
}

/// Where [`run`] is, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// `done` of `total` documents acknowledged.
    Loading {
        /// Acknowledged so far.
        done: u64,
        /// All of them.
        total: u64,
    },
    /// `done` of `total` searches (queries times variants) answered.
    Searching {
        /// Answered so far.
        done: u64,
        /// All of them.
        total: u64,
    },
}

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A call to the cluster failed (after retries, for retryable errors).
    #[error("{what}: {source}")]
    Client {
        /// What was being done.
        what: String,
        /// The client's error.
        source: crate::ClientError,
    },
    /// The tenant exists with another partition count.
    #[error(
        "tenant {tenant} exists with {actual} partitions, not {wanted}; pass another --tenant"
    )]
    PartitionMismatch {
        /// The tenant.
        tenant: String,
        /// Its partitions.
        actual: usize,
        /// Asked for.
        wanted: u32,
    },
    /// A document of the collection was rejected.
    #[error("document {id} was rejected: {error}")]
    Rejected {
        /// Its id.
        id: String,
        /// The node's reason.
        error: String,
    },
}

impl RunError {
    /// The CLI exit code (DESIGN.md "Interfaces").
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Client { source, .. } => source.exit_code(),
            RunError::PartitionMismatch { .. } | RunError::Rejected { .. } => {
                crate::exit::BAD_INPUT
            }
        }
    }
}

/// Calls `f` until it succeeds, fails with a non-retryable error, or
/// `retry_for` has passed; waits 100 ms (or the router's hint) between tries.
pub(crate) async fn retrying<T, F, Fut>(
    what: impl Fn() -> String,
    retry_for: std::time::Duration,
    mut f: F,
) -> Result<T, RunError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::ClientError>>,
{
    let start = std::time::Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && start.elapsed() < retry_for => {
                let wait = e
                    .retry_after()
                    .unwrap_or(std::time::Duration::from_millis(100));
                // A one-shot interval: its first tick is immediate, the
                // second comes after `wait`.
                let mut tick = tokio::time::interval(wait);
                tick.tick().await;
                tick.tick().await;
            }
            Err(source) => {
                return Err(RunError::Client {
                    what: what(),
                    source,
                })
            }
        }
    }
}

/// Loads `collection` into a tenant through `client`'s router, runs every
/// judged query, and scores the rankings. Creates the tenant, or reuses it
/// when it exists with the same partition count.
pub async fn run(
    client: &crate::TesseraClient,
    collection: &Collection,
    name: &str,
    opts: &RunOptions,
    on_progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Report, RunError> {
    let spec = crate::TenantSpec::new(opts.tenant.clone(), opts.regions.clone())
        .partitions(opts.partitions);
    let created = retrying(
        || format!("creating tenant {}", opts.tenant),
        opts.retry_for,
        || async {
            match client.create_tenant(&spec).await {
                Ok(_) => Ok(true),
                Err(crate::ClientError::AlreadyExists(_)) => Ok(false),
                Err(e) => Err(e),
            }
        },
    )
    .await?;
    if !created {
        let view = retrying(
            || format!("reading tenant {}", opts.tenant),
            opts.retry_for,
            || client.tenant(&opts.tenant),
        )
        .await?;
        if view.partitions.len() != opts.partitions as usize {
            return Err(RunError::PartitionMismatch {
                tenant: opts.tenant.clone(),
                actual: view.partitions.len(),
                wanted: opts.partitions,
            });
        }
    }

    // Load: the session token of the last batch covers every earlier one,
    // so the searches below see every document.
    let mut token = String::new();
    if opts.load {
        let total = collection.docs.len() as u64;
        let mut done = 0u64;
        for chunk in collection.docs.chunks(opts.batch.max(1)) {
            let json: Vec<Vec<u8>> = chunk.iter().map(EvalDoc::to_tessera_json).collect();
            let session = token.clone();
            let out = retrying(
                || format!("loading documents into {}", opts.tenant),
                opts.retry_for,
                || client.put_documents(&opts.tenant, json.clone(), Vec::new(), &session),
            )
            .await?;
            if let Some(r) = out.rejected.first() {
                return Err(RunError::Rejected {
                    id: chunk
                        .get(r.index as usize)
                        .map_or_else(|| format!("#{}", r.index), |d| d.id.clone()),
                    error: r.error.clone(),
                });
            }
            token = out.token;
            done += chunk.len() as u64;
            on_progress(Progress::Loading { done, total });
        }
    }

    // Search: every judged query under every variant, a bounded number in flight; rankings
    // keyed by query id, one map per variant.
    let variants = if opts.variants.is_empty() {
        vec![opts
            .profile
            .clone()
            .map_or_else(Variant::bm25, |p| Variant {
                name: p.clone(),
                profile: Some(p),
            })]
    } else {
        opts.variants.clone()
    };
    let judged = collection.judged_queries();
    let total = (judged.len() * variants.len()) as u64;
    let mut cut_queries = Vec::new();
    let mut runs: Vec<HashMap<String, Vec<String>>> = vec![HashMap::new(); variants.len()];
    let mut pending = tokio::task::JoinSet::new();
    let mut queue = judged
        .into_iter()
        .flat_map(|(qid, raw)| (0..variants.len()).map(move |v| (v, qid.clone(), raw.clone())));
    let mut done = 0u64;
    loop {
        while pending.len() < opts.concurrency.max(1) {
            let Some((v, qid, raw)) = queue.next() else {
                break;
            };
            let (text, cut) = query_text(&raw);
            if cut && v == 0 {
                cut_queries.push(qid.clone());
            }
            let mut q = crate::SearchQuery::new(&opts.tenant, &opts.user, text)
                .limit(opts.depth)
                .token(&token);
            if let Some(p) = &variants[v].profile {
                q = q.profile(p);
            }
            let client = client.clone();
            let retry_for = opts.retry_for;
            pending.spawn(async move {
                let page =
                    retrying(|| format!("query {qid}"), retry_for, || client.search(&q)).await;
                (v, qid, page)
            });
        }
        let Some(joined) = pending.join_next().await else {
            break;
        };
        let (v, qid, page) = joined.map_err(|e| RunError::Client {
            what: "a search task".into(),
            source: crate::ClientError::Internal(e.to_string()),
        })?;
        let page = page?;
        runs[v].insert(qid, page.hits.into_iter().map(|h| h.id).collect());
        done += 1;
        on_progress(Progress::Searching { done, total });
    }
    cut_queries.sort();

    let per_variant: Vec<Vec<QueryScores>> = runs
        .iter()
        .map(|r| score_runs(collection, r, opts.gain))
        .collect();
    let paired: Vec<Vec<variants::QueryScore>> = per_variant
        .iter()
        .map(|scores| {
            scores
                .iter()
                .map(|s| variants::QueryScore {
                    rr_at_10: s.rr10,
                    ndcg_at_10: s.ndcg10,
                })
                .collect()
        })
        .collect();
    let figures = variants::figures(
        &variants,
        &paired,
        opts.bootstrap.resamples,
        opts.bootstrap.seed,
    );
    let scores = per_variant.into_iter().next().unwrap_or_default();
    let [ndcg_at_10, map, mrr, p_at_10, r_at_100] = summarise(&scores, opts.bootstrap);
    Ok(Report {
        collection: name.to_string(),
        tenant: opts.tenant.clone(),
        partitions: opts.partitions,
        docs: collection.docs.len(),
        queries: scores.len(),
        cut_queries,
        profile: variants.first().and_then(|v| v.profile.clone()),
        depth: opts.depth,
        bootstrap: opts.bootstrap,
        ndcg_at_10,
        map,
        mrr,
        p_at_10,
        r_at_100,
        per_query: opts.per_query.then_some(scores),
        variants: figures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn ndcg_matches_hand_computed_values() {
        // Relevant a (2), b (1); ranking x, b, a.
        // linear: DCG = 1/log2 3 + 2/log2 4 = 0.63093 + 1 = 1.63093;
        //         IDCG = 2 + 0.63093 = 2.63093 → 0.61991
        // exponential: DCG = 0.63093 + 3/2 = 2.13093; IDCG = 3 + 0.63093 → 0.58688
        let j = judged(&[("a", 2), ("b", 1), ("c", 0)]);
        let r = ids(&["x", "b", "a"]);
        let lin = ndcg_at_k(&r, &j, 10, Gain::Linear).expect("judged");
        let exp = ndcg_at_k(&r, &j, 10, Gain::Exponential).expect("judged");
        assert!(close(lin, 0.619_91), "{lin}");
        assert!(close(exp, 0.586_88), "{exp}");
        assert_eq!(ndcg_at_k(&r, &j, 1, Gain::Linear), Some(0.0));
        let perfect = ndcg_at_k(&ids(&["a", "b"]), &j, 10, Gain::Linear).expect("judged");
        assert!(close(perfect, 1.0));
        assert_eq!(ndcg_at_k(&r, &judged(&[("a", 0)]), 10, Gain::Linear), None);
    }

    #[test]
    fn ap_rr_precision_recall_match_hand_computed_values() {
        // Relevant: a, b, c (3). Ranking: x a y b z → hits at ranks 2 and 4.
        // AP = (1/2 + 2/4) / 3 = 0.33333; RR = 1/2; P@2 = 0.5; P@10 = 0.2;
        // R@2 = 1/3; R@100 = 2/3.
        let j = judged(&[("a", 1), ("b", 1), ("c", 1), ("x", 0)]);
        let r = ids(&["x", "a", "y", "b", "z"]);
        assert!(close(average_precision(&r, &j).expect("judged"), 1.0 / 3.0));
        assert!(close(reciprocal_rank(&r, &j).expect("judged"), 0.5));
        assert!(close(precision_at_k(&r, &j, 2).expect("judged"), 0.5));
        assert!(close(precision_at_k(&r, &j, 10).expect("judged"), 0.2));
        assert!(close(recall_at_k(&r, &j, 2).expect("judged"), 1.0 / 3.0));
        assert!(close(recall_at_k(&r, &j, 100).expect("judged"), 2.0 / 3.0));
        // Nothing relevant retrieved.
        let none = ids(&["x", "y"]);
        assert_eq!(average_precision(&none, &j), Some(0.0));
        assert_eq!(reciprocal_rank(&none, &j), Some(0.0));
        // A repeated id counts once.
        let dup = ids(&["a", "a"]);
        assert!(close(
            average_precision(&dup, &j).expect("judged"),
            1.0 / 3.0
        ));
    }

    #[test]
    fn missing_runs_score_zero_and_unjudged_queries_are_skipped() {
        let c = Collection::parse(
            "{\"id\":\"a\",\"title\":\"t\",\"body\":\"b\"}\n{\"id\":\"b\",\"body\":\"x\"}\n",
            "1\tfirst query\n2\tsecond\n3\tunjudged\n",
            "1 0 a 1\n2 0 b 2\n3 0 a 0\n",
        )
        .expect("parses");
        assert_eq!(c.docs.len(), 2);
        assert_eq!(c.docs[1].title, "");
        assert_eq!(c.judged_queries().len(), 2);
        let runs: HashMap<String, Vec<String>> = [("1".to_string(), ids(&["a", "b"]))].into();
        let s = score_runs(&c, &runs, Gain::Linear);
        assert_eq!(s.len(), 2);
        assert!(close(s[0].ndcg10, 1.0) && close(s[0].ap, 1.0) && close(s[0].rr, 1.0));
        assert_eq!((s[1].ndcg10, s[1].ap, s[1].rr), (0.0, 0.0, 0.0));
        // MRR@10 cuts at rank 10; MRR does not.
        let deep: Vec<String> = (0..10)
            .map(|i| format!("x{i}"))
            .chain(ids(&["b"]))
            .collect();
        let deep_runs: HashMap<String, Vec<String>> = [("2".to_string(), deep)].into();
        let d = score_runs(&c, &deep_runs, Gain::Linear);
        assert!(close(d[1].rr, 1.0 / 11.0) && d[1].rr10 == 0.0, "{:?}", d[1]);
        let [ndcg, map, mrr, p10, r100] = summarise(
            &s,
            BootstrapSpec {
                resamples: 0,
                seed: 1,
            },
        );
        assert!(close(ndcg.mean, 0.5) && close(map.mean, 0.5) && close(mrr.mean, 0.5));
        assert!(close(p10.mean, 0.05) && close(r100.mean, 0.5));
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let e = Collection::parse("{\"id\":\"a\"}\n\n{oops\n", "", "").expect_err("bad json");
        assert!(e.to_string().starts_with("docs.jsonl line 3:"), "{e}");
        let e = Collection::parse("", "1 no tab\n", "").expect_err("no tab");
        assert!(e.to_string().starts_with("queries.tsv line 1:"), "{e}");
        let e = Collection::parse("", "", "1 0 a\n").expect_err("three fields");
        assert!(e.to_string().contains("qrels.txt line 1"), "{e}");
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_mean() {
        let v: Vec<f64> = (0..50).map(|i| f64::from(i % 7) / 6.0).collect();
        let a = bootstrap(&v, 1000, 42);
        let b = bootstrap(&v, 1000, 42);
        assert_eq!(a, b, "same seed, same interval");
        assert!(a.ci_low < a.mean && a.mean < a.ci_high, "{a:?}");
        // Standard error ≈ sd/√n ≈ 0.33/7.07 ≈ 0.047: the 95% interval is
        // about ±0.09 wide on each side, certainly within ±0.2.
        assert!(
            a.ci_high - a.ci_low < 0.4 && a.ci_high - a.ci_low > 0.05,
            "{a:?}"
        );
        let constant = bootstrap(&[0.3; 10], 200, 7);
        assert!(close(constant.ci_low, 0.3) && close(constant.ci_high, 0.3));
        assert_eq!(bootstrap(&[], 100, 1).mean, 0.0);
    }

    #[test]
    fn query_text_lowercases_strips_syntax_and_cuts_long_queries() {
        assert_eq!(
            query_text("What AND \"Fast\" (OR) not:x-y."),
            ("what and fast or not x y".to_string(), false)
        );
        let long = vec!["Word"; MAX_QUERY_TERMS + 5].join(" ");
        let (q, cut) = query_text(&long);
        assert!(cut);
        assert_eq!(q.split_whitespace().count(), MAX_QUERY_TERMS);
        assert!(q.starts_with("word word"));
    }

    #[test]
    fn documents_become_version_1_tessera_json() {
        let d = EvalDoc {
            id: "CACM-1".into(),
            title: "T".into(),
            body: "B".into(),
        };
        let doc = tessera_proto::Document::from_json_bytes(&d.to_tessera_json()).expect("valid");
        assert_eq!((doc.id.as_str(), doc.version), ("CACM-1", 1));
    }
}
