//! Shared pieces of the benchmarks: the Wikipedia corpus reader and the
//! summary statistics every report uses (medians and percentiles, because
//! the machines are noisy).

use anyhow::Context;
use std::io::BufRead;
use std::path::{Path, PathBuf};

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
