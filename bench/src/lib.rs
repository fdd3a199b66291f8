//! Shared pieces of the benchmarks: the Wikipedia corpus reader and the
//! summary statistics every report uses (medians and percentiles, because
//! the machines are noisy).

use anyhow::Context;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use tantivy::doc;

/// Queries over the vocabulary of `tessera_tests::docs::doc`, for the benchmarks that load
/// those synthetic documents (router, rerank): one and two words, every one matching.
pub const VOCABULARY_QUERIES: [&str; 8] = [
    "deploy",
    "incident rollback",
    "database migration",
    "quorum leader",
    "latency cache",
    "review design",
    "capacity budget",
    "snapshot replica",
];

/// One article of the Wikipedia corpus.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Article {
    pub id: String,
    pub title: String,
    pub body: String,
}

/// The default corpus path, relative to the project root.
pub fn default_wiki() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/enwiki2014_chunk_262k.jsonl.zst")
}

/// Streams the first `n` articles (never decompressing to disk).
pub fn read_articles(path: &Path, n: usize) -> anyhow::Result<Vec<Article>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = std::io::BufReader::new(zstd::stream::read::Decoder::new(file)?);
    let mut out = Vec::with_capacity(n);
    for line in reader.lines() {
        if out.len() >= n {
            break;
        }
        let line = line?;
        let a: Article = serde_json::from_str(&line).with_context(|| "parsing an article")?;
        out.push(a);
    }
    Ok(out)
}

/// The article as a Tessera document (JSON, version 1, open permissions).
pub fn to_doc_json(a: &Article, i: usize) -> Vec<u8> {
    let title: String = a.title.chars().take(1000).collect();
    let body: String = a.body.chars().take(100_000).collect();
    let v = serde_json::json!({
        "id": format!("w{i}"), "space": format!("S{}", i % 8), "title": title, "body": body,
        "version": 1, "updated_at": "2014-06-01T00:00:00Z",
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The value at quantile `q` (0..=1) of `samples` (sorted in place).
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// The median of `samples`.
pub fn median(samples: &mut [f64]) -> f64 {
    percentile(samples, 0.5)
}

/// The query a benchmark sends for an article title: lowercased words,
/// punctuation dropped (no phrase or field syntax), at most
/// `MAX_QUERY_TERMS` terms — the same normalisation `tessera eval` uses.
pub fn title_query(title: &str) -> String {
    tessera_client::eval::query_text(title).0
}

/// Queries of exactly `MAX_QUERY_TERMS` words (a pasted paragraph at the
/// limit): each article's body words from `offset` on, every `stride`-th
/// article, normalised like [`title_query`], cycled to the limit when the
/// body is shorter. Used to measure what the longest allowed query costs.
pub fn long_queries(articles: &[Article], offset: usize, stride: usize, n: usize) -> Vec<String> {
    let limit = tessera_proto::limits::MAX_QUERY_TERMS;
    articles
        .iter()
        .skip(offset)
        .step_by(stride.max(1))
        .filter_map(|a| {
            let text = tessera_client::eval::query_text(&a.body).0;
            let words: Vec<&str> = text.split_whitespace().collect();
            (!words.is_empty()).then(|| {
                words
                    .iter()
                    .cycle()
                    .take(limit)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        })
        .take(n)
        .collect()
}

/// Distinct, non-empty title queries from `articles`, starting at `offset`
/// and taking every `stride`-th article, so different measurements can use
/// disjoint query sets (no result cache ever sees a query twice).
pub fn title_queries(articles: &[Article], offset: usize, stride: usize, n: usize) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    let stride = stride.max(1);
    let mut i = offset;
    while out.len() < n && i < articles.len() {
        let q = title_query(&articles[i].title);
        if !q.is_empty() && seen.insert(q.clone()) {
            out.push(q);
        }
        i += stride;
    }
    out
}

/// Latency summary of one measurement, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

impl LatencySummary {
    /// Summarises latencies given in milliseconds.
    pub fn of(mut ms: Vec<f64>) -> Self {
        let n = ms.len();
        let mean = if n == 0 {
            f64::NAN
        } else {
            ms.iter().sum::<f64>() / n as f64
        };
        LatencySummary {
            n,
            p50: percentile(&mut ms, 0.5),
            p99: percentile(&mut ms, 0.99),
            mean,
        }
    }
}

/// Resident set size of process `pid`, in bytes (0 when unreadable).
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The machine a report was produced on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// Logical CPUs (`nproc`).
    pub nproc: usize,
    /// CPU model name.
    pub cpu: String,
    /// Total memory, GiB.
    pub ram_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads /proc.
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
        let mem_kb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            ram_gib: mem_kb / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// The baseline every Tessera figure is compared with: a plain in-process
/// tantivy index of the same articles, with Tessera's schema (so the same
/// `en_stem` analysis and BM25) and no replication, network or filters.
pub struct RawIndex {
    _dir: tempfile::TempDir,
    index: tantivy::Index,
    writer: tantivy::IndexWriter,
    reader: tantivy::IndexReader,
    fields: tessera_node::index::Fields,
    parser: tantivy::query::QueryParser,
    docs: usize,
}

impl RawIndex {
    /// An empty index in a temporary directory.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let schema = tessera_node::index::build_schema();
        let fields = tessera_node::index::Fields::from_schema(&schema)?;
        let index = tantivy::Index::create_in_dir(dir.path(), schema)?;
        let writer = index.writer(128 * 1024 * 1024)?;
        let reader = index
            .reader_builder()
            .reload_policy(tantivy::ReloadPolicy::Manual)
            .try_into()?;
        let parser =
            tantivy::query::QueryParser::for_index(&index, vec![fields.title, fields.body]);
        Ok(RawIndex {
            _dir: dir,
            index,
            writer,
            reader,
            fields,
            parser,
            docs: 0,
        })
    }

    /// Adds articles as documents `first..` (ids `w{i}`), commits and
    /// reloads the reader. Returns documents per second, commit included.
    pub fn add(&mut self, articles: &[&Article], first: usize) -> anyhow::Result<f64> {
        let f = self.fields;
        let start = std::time::Instant::now();
        for (k, a) in articles.iter().enumerate() {
            let id = format!("w{}", first + k);
            self.writer.add_document(doc!(
                f.tenant => "bench", f.key => format!("bench\u{1f}{id}"), f.id => id,
                f.space => "S0", f.title => a.title.clone(), f.body => a.body.clone(),
                f.acl => "bench|*", f.updated_at => 0i64,
            ))?;
        }
        self.writer.commit()?;
        let rate = articles.len() as f64 / start.elapsed().as_secs_f64();
        self.reader.reload()?;
        self.docs += articles.len();
        Ok(rate)
    }

    /// Documents indexed.
    pub fn len(&self) -> usize {
        self.docs
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.docs == 0
    }

    /// Top-10 search (OR of the words over title and body, as the node
    /// parses text) that also reads each hit's stored id, as a caller
    /// would; returns the latency in milliseconds.
    pub fn search_ms(&self, query: &str) -> anyhow::Result<f64> {
        use tantivy::schema::Value;
        let start = std::time::Instant::now();
        let searcher = self.reader.searcher();
        let (q, _) = self.parser.parse_query_lenient(query);
        let top = searcher.search(
            &q,
            &tantivy::collector::TopDocs::with_limit(10).order_by_score(),
        )?;
        let mut ids = 0usize;
        for (_, addr) in top {
            let d: tantivy::TantivyDocument = searcher.doc(addr)?;
            ids += d
                .get_first(self.fields.id)
                .and_then(|v| v.as_str())
                .map_or(0, |s| s.len());
        }
        std::hint::black_box(ids);
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    }

    /// The index, for callers that search from several threads.
    pub fn reader(&self) -> &tantivy::IndexReader {
        &self.reader
    }

    /// The underlying tantivy index.
    pub fn index(&self) -> &tantivy::Index {
        &self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn article(title: &str) -> Article {
        Article {
            id: String::new(),
            title: title.to_string(),
            body: String::new(),
        }
    }

    #[test]
    fn title_queries_are_distinct_normalised_and_strided() {
        let a: Vec<Article> = [
            "Alpha (band)",
            "Beta",
            "alpha band",
            "Gamma: ray",
            "!!!",
            "Delta",
        ]
        .iter()
        .map(|t| article(t))
        .collect();
        // Every article from 0: "alpha band" repeats and "!!!" is empty.
        assert_eq!(
            title_queries(&a, 0, 1, 10),
            vec!["alpha band", "beta", "gamma ray", "delta"]
        );
        // Every 2nd article from 1 (ids 1, 3, 5).
        assert_eq!(
            title_queries(&a, 1, 2, 10),
            vec!["beta", "gamma ray", "delta"]
        );
        assert_eq!(title_queries(&a, 0, 1, 2).len(), 2);
    }

    #[test]
    fn latency_summary_takes_nearest_rank_percentiles() {
        let s = LatencySummary::of((1..=100).map(f64::from).collect());
        assert_eq!(s.n, 100);
        assert_eq!(s.p50, 51.0);
        assert_eq!(s.p99, 99.0);
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert!(LatencySummary::of(Vec::new()).p50.is_nan());
    }

    #[test]
    fn rss_of_this_process_is_positive() {
        assert!(rss_bytes(std::process::id()) > 0);
    }
}
