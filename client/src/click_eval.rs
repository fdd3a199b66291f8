//! Comparing rankings on search sessions with a click (`tessera eval --clicks`): each session
//! is a query run as its user (with their permissions), judged by its one clicked page (grade
//! 1), under every variant (plain BM25 or a rank profile). Reports MRR@10 and nDCG@10 per
//! variant with 95% bootstrap intervals, and each variant's paired difference to the first
//! one (see [`crate::eval::variants`]). The demo set writes such sessions
//! (`<tenant>/clicks.jsonl`, see [`crate::demo::sessions`]); so can any click log reduced to
//! one click per search.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

pub use crate::demo::sessions::Session;
pub use crate::eval::variants::{paired_difference, Difference, Variant, VariantFigures};

use crate::error::ClientError;
use crate::eval::variants::{self, QueryScore};
use crate::eval::{ndcg_at_k, reciprocal_rank, retrying, Gain, RunError};
use crate::{SearchQuery, TesseraClient};

/// Depth of the metrics, and hits fetched per search.
pub const DEPTH: u32 = variants::DEPTH as u32;

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

/// How [`evaluate`] runs.
#[derive(Debug, Clone)]
pub struct ClickOptions {
    /// Bootstrap resamples of every interval.
    pub resamples: usize,
    /// Their seed (same seed, same intervals).
    pub seed: u64,
    /// Searches in flight at once.
    pub concurrency: usize,
    /// Session token of earlier writes every search must see (empty: none), so an evaluation
    /// right after loading ranks with every event counted.
    pub token: String,
    /// How long to keep retrying one search that fails with a retryable error.
    pub retry_for: Duration,
}

impl Default for ClickOptions {
    fn default() -> Self {
        Self {
            resamples: 1000,
            seed: 42,
            concurrency: 4,
            token: String::new(),
            retry_for: Duration::from_secs(60),
        }
    }
}

/// Why a clicks file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a session.
    #[error("{path} line {line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl From<SessionsError> for ClientError {
    fn from(e: SessionsError) -> Self {
        ClientError::InvalidInput(e.to_string())
    }
}

/// Checks one session: a `u:` user, a query with a word in it, a document id.
fn check(s: &Session) -> Result<(), String> {
    tessera_proto::document::validate_principal(&s.user).map_err(|e| format!("user: {e}"))?;
    if !s.user.starts_with("u:") {
        return Err(format!("user {:?} is not a u: principal", s.user));
    }
    if s.query.trim().is_empty() {
        return Err("empty query".into());
    }
    if s.doc.trim().is_empty() {
        return Err("empty doc".into());
    }
    Ok(())
}

/// Parses `clicks.jsonl` text (blank lines are skipped); errors name the 1-based line.
pub fn parse_sessions(path: &str, text: &str) -> Result<Vec<Session>, SessionsError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let line = |reason: String| SessionsError::Line {
                path: path.to_string(),
                line: i + 1,
                reason,
            };
            let s: Session = serde_json::from_str(l).map_err(|e| line(e.to_string()))?;
            check(&s).map_err(line)?;
            Ok(s)
        })
        .collect()
}

/// Reads `clicks.jsonl`; errors name the file and line.
pub fn load_sessions(path: &Path) -> Result<Vec<Session>, SessionsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SessionsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_sessions(&path.display().to_string(), &text)
}

/// One session's scores for a ranking.
fn score(ranked: &[String], clicked: &str) -> QueryScore {
    let judged: HashMap<String, u32> = HashMap::from([(clicked.to_string(), 1)]);
    let top = &ranked[..ranked.len().min(DEPTH as usize)];
    QueryScore {
        rr_at_10: reciprocal_rank(top, &judged).unwrap_or(0.0),
        ndcg_at_10: ndcg_at_k(top, &judged, DEPTH as usize, Gain::Linear).unwrap_or(0.0),
    }
}

/// Runs every session under every variant and reports the figures. `on_progress(done,
/// total)` is called after each search. Retryable failures are retried for
/// `opts.retry_for`; any other failure (an unknown tenant or profile) ends the evaluation.
pub async fn evaluate(
    client: &TesseraClient,
    tenant: &str,
    sessions: &[Session],
    variants: &[Variant],
    opts: &ClickOptions,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<ClickReport, ClientError> {
    if variants.is_empty() {
        return Err(ClientError::InvalidInput("no variant to evaluate".into()));
    }
    let total = sessions.len() * variants.len();
    let mut scores: Vec<Vec<QueryScore>> =
        vec![vec![QueryScore::default(); sessions.len()]; variants.len()];
    let mut pending = tokio::task::JoinSet::new();
    let mut queue = (0..sessions.len()).flat_map(|s| (0..variants.len()).map(move |v| (s, v)));
    let mut done = 0;
    loop {
        while pending.len() < opts.concurrency.max(1) {
            let Some((s, v)) = queue.next() else { break };
            let session = &sessions[s];
            let mut q = SearchQuery::new(tenant, &session.user, &session.query)
                .limit(DEPTH)
                .token(&opts.token);
            if let Some(p) = &variants[v].profile {
                q = q.profile(p);
            }
            let client = client.clone();
            let retry_for = opts.retry_for;
            pending.spawn(async move {
                let page = retrying(
                    || format!("session {}", s + 1),
                    retry_for,
                    || client.search(&q),
                )
                .await;
                (s, v, page)
            });
        }
        let Some(joined) = pending.join_next().await else {
            break;
        };
        let (s, v, page) = joined.map_err(|e| ClientError::Internal(e.to_string()))?;
        let page = page.map_err(|e| match e {
            RunError::Client { source, .. } => source,
            other => ClientError::Internal(other.to_string()),
        })?;
        let ranked: Vec<String> = page.hits.into_iter().map(|h| h.id).collect();
        scores[v][s] = score(&ranked, &sessions[s].doc);
        done += 1;
        on_progress(done, total);
    }
    Ok(report(tenant, variants, &scores, opts.resamples, opts.seed))
}

/// The report over per-session scores of each variant (`scores[v][s]`: same sessions, same
/// order).
pub fn report(
    tenant: &str,
    variants: &[Variant],
    scores: &[Vec<QueryScore>],
    resamples: usize,
    seed: u64,
) -> ClickReport {
    ClickReport {
        tenant: tenant.to_string(),
        sessions: scores.first().map_or(0, Vec::len),
        resamples,
        seed,
        variants: variants::figures(variants, scores, resamples, seed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_parse_and_bad_lines_are_named() {
        let ok = "{\"user\":\"u:a\",\"query\":\"deploy runbook\",\"doc\":\"p-1\",\"ts\":\"2026-09-20T00:00:00Z\"}\n\n";
        let s = parse_sessions("c.jsonl", ok).expect("parses");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].query, "deploy runbook");
        let bad = format!("{ok}{{oops\n");
        let e = parse_sessions("c.jsonl", &bad).expect_err("bad json");
        assert!(e.to_string().starts_with("c.jsonl line 3:"), "{e}");
        let no_doc = "{\"user\":\"u:a\",\"query\":\"x\",\"ts\":\"t\"}";
        let e = parse_sessions("c.jsonl", no_doc).expect_err("no doc");
        assert!(
            e.to_string().contains("line 1") && e.to_string().contains("doc"),
            "{e}"
        );
        let group = "{\"user\":\"g:a\",\"query\":\"x\",\"doc\":\"p\",\"ts\":\"t\"}";
        let e = parse_sessions("c.jsonl", group).expect_err("not a user");
        assert!(e.to_string().contains("u: principal"), "{e}");
        let blank = "{\"user\":\"u:a\",\"query\":\"  \",\"doc\":\"p\",\"ts\":\"t\"}";
        assert!(parse_sessions("c.jsonl", blank).is_err());
        let missing = load_sessions(Path::new("/nonexistent/clicks.jsonl")).expect_err("io");
        assert!(
            missing.to_string().contains("/nonexistent/clicks.jsonl"),
            "{missing}"
        );
    }

    #[test]
    fn a_click_scores_by_its_rank_within_the_top_10() {
        let ranked: Vec<String> = (1..=12).map(|i| format!("p-{i}")).collect();
        let first = score(&ranked, "p-1");
        assert_eq!((first.rr_at_10, first.ndcg_at_10), (1.0, 1.0));
        let third = score(&ranked, "p-3");
        assert!((third.rr_at_10 - 1.0 / 3.0).abs() < 1e-12);
        assert!((third.ndcg_at_10 - 0.5).abs() < 1e-12, "1/log2(4)");
        let below = score(&ranked, "p-11");
        assert_eq!((below.rr_at_10, below.ndcg_at_10), (0.0, 0.0));
        assert_eq!(score(&[], "p-1").rr_at_10, 0.0);
    }

    #[test]
    fn the_report_pairs_every_variant_with_the_first() {
        let v = [Variant::bm25(), Variant::parse("p=prof").expect("ok")];
        let q = |rr_at_10, ndcg_at_10| QueryScore {
            rr_at_10,
            ndcg_at_10,
        };
        let scores = vec![
            vec![q(0.5, 0.6), q(0.0, 0.0)],
            vec![q(1.0, 1.0), q(0.5, 0.63)],
        ];
        let r = report("t", &v, &scores, 100, 3);
        assert_eq!(r.sessions, 2);
        assert!(r.variants[0].mrr_vs_first.is_none());
        let d = r.variants[1].mrr_vs_first.expect("paired");
        assert!((d.mean - 0.5).abs() < 1e-12);
        assert!((r.variants[1].mrr_at_10.mean - 0.75).abs() < 1e-12);
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["variants"][1]["variant"]["name"], "p");
        assert!(json["variants"][1]["mrr_vs_first"]["excludes_zero"].is_boolean());
    }
}
