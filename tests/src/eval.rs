//! Relevance evaluation over the classic IR collections in
//! `../shared/data/ir/` (see that folder's README): loading a collection
//! and nDCG@k.
//!
//! nDCG@k follows the standard (Järvelin & Kekäläinen; trec_eval `ndcg_cut`)
//! definition:
//!
//! ```text
//! DCG@k  = Σ_{rank=1..k} g(rel(rank)) / log2(rank + 1)
//! nDCG@k = DCG@k / IDCG@k
//! ```
//!
//! where IDCG@k is the DCG of the ideal ranking of every judged document of
//! the query, `g(r) = 2^r − 1` ([`Gain::Exponential`]) or `g(r) = r`
//! ([`Gain::Linear`], trec_eval's convention). For binary judgments
//! (`r ∈ {0, 1}`) the two gains are identical. The mean is taken over the
//! queries that have at least one relevant judgment.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The metric code is the client's (`tessera eval` uses the same), so the
/// tests and the CLI can never disagree on what nDCG means.
pub use tessera_client::eval::{dcg, ndcg_at_k, Gain};

/// One document of a collection.
#[derive(Debug, Clone)]
pub struct EvalDoc {
    /// Collection id, e.g. `CACM-2636`.
    pub id: String,
    /// Title (may be empty).
    pub title: String,
    /// Body text.
    pub body: String,
}

impl EvalDoc {
    fn parse(line: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("docs.jsonl: {e}: {line}"))?;
        let text = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let id = text("id");
        if id.is_empty() {
            return Err(format!("docs.jsonl: no id in {line}"));
        }
        Ok(EvalDoc {
            id,
            title: text("title"),
            body: text("body"),
        })
    }
}

/// A test collection: documents, queries and judgments.
#[derive(Debug, Clone)]
pub struct Collection {
    /// Every document, in file order.
    pub docs: Vec<EvalDoc>,
    /// `(query id, text)`, in file order.
    pub queries: Vec<(String, String)>,
    /// query id → (doc id → grade).
    pub qrels: BTreeMap<String, HashMap<String, u32>>,
}

impl Collection {
    /// Loads `docs.jsonl`, `queries.tsv` and `qrels.txt` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
        };
        let docs = read("docs.jsonl")?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(EvalDoc::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let queries = read("queries.tsv")?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split_once('\t')
                    .map(|(q, t)| (q.trim().to_string(), t.to_string()))
                    .ok_or_else(|| format!("queries.tsv: no tab in {l:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut qrels: BTreeMap<String, HashMap<String, u32>> = BTreeMap::new();
        for l in read("qrels.txt")?.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [q, _, doc, grade] = f[..] else {
                return Err(format!("qrels.txt: expected `qid 0 docid gain`, got {l:?}"));
            };
            let grade: u32 = grade
                .parse()
                .map_err(|e| format!("qrels.txt: {l:?}: {e}"))?;
            qrels
                .entry(q.to_string())
                .or_default()
                .insert(doc.to_string(), grade);
        }
        Ok(Collection {
            docs,
            queries,
            qrels,
        })
    }

    /// The queries that have at least one relevant judgment.
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

    /// Mean nDCG@k over the judged queries, given each query's ranking.
    /// Queries missing from `runs` count as an empty ranking (nDCG 0).
    pub fn mean_ndcg(&self, runs: &HashMap<String, Vec<String>>, k: usize, gain: Gain) -> f64 {
        let judged = self.judged_queries();
        if judged.is_empty() {
            return 0.0;
        }
        let empty = Vec::new();
        let total: f64 = judged
            .iter()
            .filter_map(|(q, _)| {
                let run = runs.get(q).unwrap_or(&empty);
                self.qrels.get(q).and_then(|j| ndcg_at_k(run, j, k, gain))
            })
            .sum();
        total / judged.len() as f64
    }
}

/// `../shared/data/ir/<name>`, relative to the project root.
pub fn collection_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/ir")
        .join(name)
}
