//! Comparing rankings on search sessions with clicks (`tessera eval --clicks`): each session
//! is a query run as its user, judged by its one clicked page, under every variant (plain BM25
//! or a rank profile). Reports MRR@10 and nDCG@10 per variant with 95% bootstrap intervals,
//! and each variant's paired difference to the first one: the same sessions are run under
//! every variant, so the interval resamples sessions jointly.

use std::collections::HashMap;
use std::path::Path;

use crate::demo::sessions::Session;
use crate::error::ClientError;
use crate::eval::{bootstrap, ndcg_at_k, reciprocal_rank, Estimate, Gain};
use crate::{SearchQuery, TesseraClient};

/// Depth of the metrics (and hits fetched per search).
pub const DEPTH: u32 = 10;

/// One ranking to evaluate: a name and a profile (`None` = plain BM25).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Variant {
    /// Label in the report.
    pub name: String,
    /// `name` or `name@version` of a registered profile; `None` ranks by BM25.
    pub profile: Option<String>,
}

impl Variant {
    /// Parses `NAME=PROFILE`, `NAME=bm25` or `NAME=` (plain BM25), or a bare `PROFILE` (named
    /// after itself).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (name, profile) = spec.split_once('=').unwrap_or((spec, spec));
        if name.is_empty() {
            return Err(format!("variant {spec:?}: expected NAME=PROFILE"));
        }
        Ok(Self {
            name: name.to_string(),
            profile: match profile {
                "" | "bm25" => None,
                p => Some(p.to_string()),
            },
        })
    }
}

/// One variant's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VariantFigures {
    /// The variant.
    pub variant: Variant,
    /// Mean reciprocal rank of the clicked page within the top 10 (0 below it).
    pub mrr_at_10: Estimate,
    /// nDCG@10 with the clicked page as the one relevant document.
    pub ndcg_at_10: Estimate,
    /// MRR@10 minus the first variant's, paired by session (absent for the first).
    pub mrr_vs_first: Option<Estimate>,
    /// nDCG@10 minus the first variant's, paired by session (absent for the first).
    pub ndcg_vs_first: Option<Estimate>,
}

/// What `tessera eval --clicks` reports (its `--json` shape; fields may be added, never
/// removed).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClickReport {
    /// The tenant searched.
    pub tenant: String,
    /// Sessions evaluated.
    pub sessions: usize,
    /// Bootstrap resamples behind every interval.
    pub resamples: usize,
    /// Their seed.
    pub seed: u64,
    /// Per variant, in the order given.
    pub variants: Vec<VariantFigures>,
}

/// Reads `clicks.jsonl`; errors name the line.
pub fn load_sessions(path: &Path) -> Result<Vec<Session>, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::InvalidInput(format!("reading {}: {e}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                ClientError::InvalidInput(format!("{}:{}: {e}", path.display(), i + 1))
            })
        })
        .collect()
}

/// Runs every session under every variant and reports the figures. `on_progress(done,
/// total)` is called after each search.
pub async fn evaluate(
    client: &TesseraClient,
    tenant: &str,
    sessions: &[Session],
    variants: &[Variant],
    resamples: usize,
    seed: u64,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<ClickReport, ClientError> {
    if variants.is_empty() {
        return Err(ClientError::InvalidInput("no variant to evaluate".into()));
    }
    let total = sessions.len() * variants.len();
    let mut scores: Vec<Vec<(f64, f64)>> = vec![Vec::with_capacity(sessions.len()); variants.len()];
    for (s, session) in sessions.iter().enumerate() {
        let judged: HashMap<String, u32> = HashMap::from([(session.doc.clone(), 1)]);
        for (v, variant) in variants.iter().enumerate() {
            let mut q = SearchQuery::new(tenant, &session.user, &session.query).limit(DEPTH);
            if let Some(p) = &variant.profile {
                q = q.profile(p);
            }
            let ranked: Vec<String> = client
                .search(&q)
                .await?
                .hits
                .into_iter()
                .map(|h| h.id)
                .collect();
            scores[v].push((
                reciprocal_rank(&ranked, &judged).unwrap_or(0.0),
                ndcg_at_k(&ranked, &judged, DEPTH as usize, Gain::Linear).unwrap_or(0.0),
            ));
            on_progress(s * variants.len() + v + 1, total);
        }
    }
    Ok(report(tenant, variants, &scores, resamples, seed))
}

/// The report over per-session `(reciprocal rank, nDCG)` of each variant (same sessions, same
/// order).
pub fn report(
    tenant: &str,
    variants: &[Variant],
    scores: &[Vec<(f64, f64)>],
    resamples: usize,
    seed: u64,
) -> ClickReport {
    let rr = |v: &Vec<(f64, f64)>| v.iter().map(|s| s.0).collect::<Vec<_>>();
    let nd = |v: &Vec<(f64, f64)>| v.iter().map(|s| s.1).collect::<Vec<_>>();
    let figures = variants
        .iter()
        .zip(scores)
        .enumerate()
        .map(|(i, (variant, s))| VariantFigures {
            variant: variant.clone(),
            mrr_at_10: bootstrap(&rr(s), resamples, seed),
            ndcg_at_10: bootstrap(&nd(s), resamples, seed),
            mrr_vs_first: (i > 0)
                .then(|| paired_difference(&rr(s), &rr(&scores[0]), resamples, seed)),
            ndcg_vs_first: (i > 0)
                .then(|| paired_difference(&nd(s), &nd(&scores[0]), resamples, seed)),
        })
        .collect();
    ClickReport {
        tenant: tenant.to_string(),
        sessions: scores.first().map_or(0, Vec::len),
        resamples,
        seed,
        variants: figures,
    }
}

/// `mean(a - b)` over paired observations, with a percentile-bootstrap 95% interval that
/// resamples the pairs (sessions) jointly: the bootstrap of the per-session differences.
pub fn paired_difference(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> Estimate {
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    bootstrap(&diffs, resamples, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse() {
        assert_eq!(
            Variant::parse("aff=affinity@2").expect("ok"),
            Variant {
                name: "aff".into(),
                profile: Some("affinity@2".into())
            }
        );
        assert_eq!(Variant::parse("base=bm25").expect("ok").profile, None);
        assert_eq!(Variant::parse("bm25").expect("ok").profile, None);
        assert_eq!(Variant::parse("affinity").expect("ok").name, "affinity");
        assert!(Variant::parse("=x").is_err());
    }

    #[test]
    fn paired_difference_is_exactly_zero_for_identical_rankings_and_excludes_zero_when_better() {
        let a: Vec<f64> = (0..200).map(|i| f64::from(i % 5) / 5.0).collect();
        let same = paired_difference(&a, &a, 500, 1);
        assert_eq!((same.mean, same.ci_low, same.ci_high), (0.0, 0.0, 0.0));
        let better: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, x)| if i % 3 == 0 { 1.0 } else { *x })
            .collect();
        let d = paired_difference(&better, &a, 500, 1);
        assert!(
            d.ci_low > 0.0 && d.ci_low <= d.mean && d.mean <= d.ci_high,
            "{d:?}"
        );
    }

    #[test]
    fn the_report_pairs_every_variant_with_the_first() {
        let v = [
            Variant::parse("bm25").expect("ok"),
            Variant::parse("p=prof").expect("ok"),
        ];
        let scores = vec![vec![(0.5, 0.6), (0.0, 0.0)], vec![(1.0, 1.0), (0.5, 0.63)]];
        let r = report("t", &v, &scores, 100, 3);
        assert_eq!(r.sessions, 2);
        assert!(r.variants[0].mrr_vs_first.is_none());
        let d = r.variants[1].mrr_vs_first.expect("paired");
        assert!((d.mean - 0.5).abs() < 1e-12);
        assert!((r.variants[1].mrr_at_10.mean - 0.75).abs() < 1e-12);
    }
}
