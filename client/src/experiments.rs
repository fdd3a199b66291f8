//! Reading experiment logs back: the impressions a router logged for searches under an
//! experiment (`tessera-router --impression-log`) joined with the clicks that cite them, turned
//! into MRR@10 and nDCG@10 per variant with 95% bootstrap intervals (`tessera eval
//! --impressions`).
//!
//! - The unit is an impression with at least one click: its clicked documents are its
//!   relevant set (grade 1), as the judged documents of a test-collection query are. Pages
//!   without a click say nothing about the order and only enter the click-through rate.
//! - Served rankings are credited to the variant that served them; in shadow mode the page
//!   served the control, so it counts for `control`, and the variant's logged (unserved)
//!   ranking is scored against the same clicks under `<variant> (shadow)`. That shadow figure
//!   is counterfactual and biased towards the control (users clicked what the control showed);
//!   it is a sanity check before a real split, not a verdict.
//! - Differences between variants compare different users, so their intervals resample each
//!   variant's impressions independently.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use crate::demo::rng::Rng;
use crate::eval::{bootstrap, ndcg_at_k, percentile_interval, reciprocal_rank, Estimate, Gain};

/// Depth of the metrics.
pub const DEPTH: usize = 10;

/// Why an experiment log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a log record.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// One log line, as `tessera_router::impressions` writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Record {
    Impression(Impression),
    Click(Click),
}

/// A page served under an experiment.
#[derive(Debug, Clone, Deserialize)]
pub struct Impression {
    /// What clicks cite.
    pub id: String,
    /// The experiment.
    pub experiment: String,
    /// The user's variant.
    pub variant: String,
    /// Shadow mode: `hits` is the control's, `shadow_hits` the variant's.
    #[serde(default)]
    pub shadow: bool,
    /// Served ids, in order.
    pub hits: Vec<String>,
    /// Shadow mode: the variant's ids, in order.
    #[serde(default)]
    pub shadow_hits: Vec<String>,
}

/// A click citing an impression.
#[derive(Debug, Clone, Deserialize)]
pub struct Click {
    /// The impression.
    pub impression: String,
    /// The clicked document.
    pub doc: String,
}

/// Impressions and clicks, from one or more logs.
#[derive(Debug, Default, Clone)]
pub struct ExperimentLog {
    /// Every impression, in file order.
    pub impressions: Vec<Impression>,
    /// Clicked documents per impression id.
    pub clicks: HashMap<String, HashSet<String>>,
}

impl ExperimentLog {
    /// Reads and merges logs (one per router).
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Self, LogError> {
        let mut log = Self::default();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|source| LogError::Io {
                path: path.display().to_string(),
                source,
            })?;
            log.add_text(&path.display().to_string(), &text)?;
        }
        Ok(log)
    }

    /// Adds the records of one log's text; `name` labels errors.
    pub fn add_text(&mut self, name: &str, text: &str) -> Result<(), LogError> {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = serde_json::from_str(line).map_err(|e| LogError::Line {
                path: name.to_string(),
                line: i + 1,
                message: e.to_string(),
            })?;
            match record {
                Record::Impression(imp) => self.impressions.push(imp),
                Record::Click(c) => {
                    self.clicks.entry(c.impression).or_default().insert(c.doc);
                }
            }
        }
        Ok(())
    }
}

/// One variant's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VariantReport {
    /// `control`, a variant's name, or `<variant> (shadow)`.
    pub variant: String,
    /// Impressions.
    pub impressions: usize,
    /// Impressions with at least one click (the metrics' sample).
    pub clicked: usize,
    /// Fraction of impressions with a click.
    pub click_rate: f64,
    /// Mean reciprocal rank of the first clicked document within the top 10 (0 below it).
    pub mrr_at_10: Estimate,
    /// nDCG@10 with the clicked documents as relevant.
    pub ndcg_at_10: Estimate,
    /// MRR@10 minus the control's, resampling both independently (absent for the control).
    pub mrr_vs_control: Option<Estimate>,
}

/// The figures of one experiment.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExperimentReport {
    /// The experiment.
    pub experiment: String,
    /// Control first, then variants by name.
    pub variants: Vec<VariantReport>,
}

/// Per-impression (reciprocal rank, nDCG) for the clicked impressions of each ranking.
type Samples = BTreeMap<String, (usize, Vec<(f64, f64)>)>;

fn score(ranked: &[String], clicked: &HashSet<String>) -> (f64, f64) {
    let judged: HashMap<String, u32> = clicked.iter().map(|d| (d.clone(), 1)).collect();
    let top: Vec<String> = ranked.iter().take(DEPTH).cloned().collect();
    (
        reciprocal_rank(&top, &judged).unwrap_or(0.0),
        ndcg_at_k(&top, &judged, DEPTH, Gain::Linear).unwrap_or(0.0),
    )
}

/// Reports every experiment in `log`, with `resamples` bootstrap resamples seeded by `seed`.
pub fn report(log: &ExperimentLog, resamples: usize, seed: u64) -> Vec<ExperimentReport> {
    let mut by_experiment: BTreeMap<&str, Samples> = BTreeMap::new();
    let none = HashSet::new();
    for imp in &log.impressions {
        let samples = by_experiment.entry(&imp.experiment).or_default();
        let clicked = log.clicks.get(&imp.id).unwrap_or(&none);
        let served_by = if imp.shadow {
            "control".to_string()
        } else {
            imp.variant.clone()
        };
        let mut add = |name: String, ranked: &[String]| {
            let entry = samples.entry(name).or_default();
            entry.0 += 1;
            if !clicked.is_empty() {
                entry.1.push(score(ranked, clicked));
            }
        };
        add(served_by, &imp.hits);
        if imp.shadow {
            add(format!("{} (shadow)", imp.variant), &imp.shadow_hits);
        }
    }
    by_experiment
        .into_iter()
        .map(|(experiment, samples)| ExperimentReport {
            experiment: experiment.to_string(),
            variants: variant_reports(&samples, resamples, seed),
        })
        .collect()
}

fn variant_reports(samples: &Samples, resamples: usize, seed: u64) -> Vec<VariantReport> {
    let control_rr: Option<Vec<f64>> = samples
        .get("control")
        .map(|(_, s)| s.iter().map(|(rr, _)| *rr).collect());
    let mut names: Vec<&String> = samples.keys().collect();
    names.sort_by_key(|n| (n.as_str() != "control", n.as_str()));
    names
        .into_iter()
        .map(|name| {
            let (impressions, s) = &samples[name];
            let rr: Vec<f64> = s.iter().map(|(rr, _)| *rr).collect();
            let ndcg: Vec<f64> = s.iter().map(|(_, n)| *n).collect();
            VariantReport {
                variant: name.clone(),
                impressions: *impressions,
                clicked: s.len(),
                click_rate: if *impressions == 0 {
                    0.0
                } else {
                    s.len() as f64 / *impressions as f64
                },
                mrr_at_10: bootstrap(&rr, resamples, seed),
                ndcg_at_10: bootstrap(&ndcg, resamples, seed),
                mrr_vs_control: match (&control_rr, name.as_str()) {
                    (Some(c), n) if n != "control" && !c.is_empty() && !rr.is_empty() => {
                        Some(bootstrap_difference(&rr, c, resamples, seed))
                    }
                    _ => None,
                },
            }
        })
        .collect()
}

/// `mean(a) - mean(b)` for two independent samples, with a percentile-bootstrap 95% interval
/// that resamples each sample on its own.
pub fn bootstrap_difference(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> Estimate {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let point = mean(a) - mean(b);
    if a.is_empty() || b.is_empty() || resamples == 0 {
        return Estimate {
            mean: point,
            ci_low: point,
            ci_high: point,
        };
    }
    let mut rng = Rng::new(seed);
    let mut draw =
        |v: &[f64]| (0..v.len()).map(|_| v[rng.below(v.len())]).sum::<f64>() / v.len() as f64;
    let diffs: Vec<f64> = (0..resamples).map(|_| draw(a) - draw(b)).collect();
    percentile_interval(point, diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_imp(
        id: &str,
        variant: &str,
        shadow: bool,
        hits: &[&str],
        shadow_hits: &[&str],
    ) -> String {
        serde_json::json!({
            "type": "impression", "id": id, "ts_ms": 1, "tenant": "t", "user": "u:a",
            "query": "q", "experiment": "e", "variant": variant, "shadow": shadow,
            "hits": hits, "shadow_hits": shadow_hits,
        })
        .to_string()
    }

    fn line_click(imp: &str, doc: &str) -> String {
        serde_json::json!({"type": "click", "impression": imp, "ts_ms": 2, "tenant": "t",
            "user": "u:a", "doc": doc})
        .to_string()
    }

    #[test]
    fn clicks_score_the_ranking_that_was_served_and_the_shadow() {
        let text = [
            line_imp("a", "control", false, &["p-1", "p-2", "p-3"], &[]),
            line_click("a", "p-2"),
            line_imp("b", "treat", false, &["p-2", "p-1"], &[]),
            line_click("b", "p-2"),
            line_imp("c", "treat", false, &["p-5"], &[]),
            line_imp("d", "treat", true, &["p-9", "p-8"], &["p-8", "p-9"]),
            line_click("d", "p-8"),
        ]
        .join("\n");
        let mut log = ExperimentLog::default();
        log.add_text("mem", &text).expect("parse");
        let reports = report(&log, 200, 7);
        assert_eq!(reports.len(), 1);
        let v = &reports[0].variants;
        let names: Vec<&str> = v.iter().map(|r| r.variant.as_str()).collect();
        assert_eq!(names, vec!["control", "treat", "treat (shadow)"]);
        // control: "a" (p-2 at rank 2) and the shadow page "d" (p-8 at rank 2).
        assert_eq!((v[0].impressions, v[0].clicked), (2, 2));
        assert!((v[0].mrr_at_10.mean - 0.5).abs() < 1e-12);
        // treat: "b" (rank 1) and "c" (no click: rate only).
        assert_eq!((v[1].impressions, v[1].clicked), (2, 1));
        assert!((v[1].mrr_at_10.mean - 1.0).abs() < 1e-12);
        assert!((v[1].click_rate - 0.5).abs() < 1e-12);
        assert!((v[1].mrr_vs_control.expect("diff").mean - 0.5).abs() < 1e-12);
        // shadow: the variant would have put p-8 first.
        assert!((v[2].mrr_at_10.mean - 1.0).abs() < 1e-12);
        assert_eq!(v[0].mrr_vs_control, None);
    }

    #[test]
    fn a_click_below_ten_scores_zero_and_bad_lines_are_named() {
        let hits: Vec<String> = (0..20).map(|i| format!("p-{i}")).collect();
        let refs: Vec<&str> = hits.iter().map(String::as_str).collect();
        let text = [
            line_imp("a", "control", false, &refs, &[]),
            line_click("a", "p-15"),
        ]
        .join("\n");
        let mut log = ExperimentLog::default();
        log.add_text("mem", &text).expect("parse");
        assert_eq!(report(&log, 0, 1)[0].variants[0].mrr_at_10.mean, 0.0);
        let err = log
            .add_text("f.jsonl", "{\"type\":\"nope\"}")
            .expect_err("bad");
        assert!(err.to_string().starts_with("f.jsonl:1:"), "{err}");
    }

    #[test]
    fn independent_difference_excludes_zero_only_when_it_should() {
        let better: Vec<f64> = (0..300)
            .map(|i| if i % 4 == 0 { 0.5 } else { 1.0 })
            .collect();
        let worse: Vec<f64> = (0..300)
            .map(|i| if i % 2 == 0 { 0.5 } else { 0.25 })
            .collect();
        let d = bootstrap_difference(&better, &worse, 1000, 3);
        assert!(
            d.ci_low > 0.0 && d.ci_low <= d.mean && d.mean <= d.ci_high,
            "{d:?}"
        );
        let same = bootstrap_difference(&worse, &worse, 1000, 3);
        assert!(same.ci_low < 0.0 && same.ci_high > 0.0, "{same:?}");
    }
}
