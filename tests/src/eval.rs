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

/// How a relevance grade turns into gain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gain {
    /// `2^rel − 1`.
    Exponential,
    /// `rel`.
    Linear,
}

impl Gain {
    fn of(self, rel: u32) -> f64 {
        match self {
            Gain::Exponential => 2f64.powi(rel.min(30) as i32) - 1.0,
            Gain::Linear => f64::from(rel),
        }
    }
}

/// DCG of a list of relevance grades, in rank order, cut at `k`.
pub fn dcg(grades: &[u32], k: usize, gain: Gain) -> f64 {
    grades
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, rel)| gain.of(*rel) / ((i + 2) as f64).log2())
        .sum()
}

/// nDCG@k of `ranked` document ids against one query's judgments
/// (doc id → grade; unjudged documents have grade 0). A query without any
/// relevant judgment has no defined nDCG and yields `None`.
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
    let idcg = dcg(&ideal, k, gain);
    let grades: Vec<u32> = ranked
        .iter()
        .map(|id| judged.get(id).copied().unwrap_or(0))
        .collect();
    Some(dcg(&grades, k, gain) / idcg)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn perfect_and_empty_rankings() {
        let j = judged(&[("a", 1), ("b", 1), ("c", 0)]);
        let perfect = ndcg_at_k(&ids(&["a", "b", "x"]), &j, 10, Gain::Exponential).expect("judged");
        assert!((perfect - 1.0).abs() < 1e-12);
        assert_eq!(
            ndcg_at_k(&ids(&["x", "c"]), &j, 10, Gain::Linear),
            Some(0.0)
        );
        assert_eq!(
            ndcg_at_k(&ids(&["a"]), &judged(&[("a", 0)]), 10, Gain::Linear),
            None
        );
    }

    #[test]
    fn matches_a_hand_computed_value() {
        // Relevant a (2) and b (1); ranking x, b, a.
        // DCG_exp = 0/1 + 1/log2(3) + 3/log2(4) = 0.63093 + 1.5 = 2.13093
        // IDCG_exp = 3/1 + 1/log2(3) = 3.63093  → 0.58688
        // DCG_lin = 1/log2(3) + 2/2 = 1.63093; IDCG_lin = 2 + 0.63093 = 2.63093 → 0.61991
        let j = judged(&[("a", 2), ("b", 1)]);
        let r = ids(&["x", "b", "a"]);
        let exp = ndcg_at_k(&r, &j, 10, Gain::Exponential).expect("judged");
        let lin = ndcg_at_k(&r, &j, 10, Gain::Linear).expect("judged");
        assert!((exp - 0.586_88).abs() < 1e-4, "{exp}");
        assert!((lin - 0.619_91).abs() < 1e-4, "{lin}");
        // The cut: only the first k ranks count.
        assert_eq!(ndcg_at_k(&r, &j, 1, Gain::Linear), Some(0.0));
    }

    #[test]
    fn binary_gains_agree() {
        let j = judged(&[("a", 1), ("b", 1), ("c", 1)]);
        let r = ids(&["c", "x", "a", "y"]);
        assert_eq!(
            ndcg_at_k(&r, &j, 10, Gain::Exponential),
            ndcg_at_k(&r, &j, 10, Gain::Linear)
        );
    }
}
