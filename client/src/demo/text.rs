//! Where page titles and bodies come from: the Wikipedia dump, streamed
//! straight out of its zstd file (never decompressed to disk), or a small
//! synthetic vocabulary for tests and machines without the dump.

use super::rng::Rng;
use super::DemoError;
use serde::Deserialize;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use tessera_proto::limits::MAX_TITLE_BYTES;

/// One article: a page's title and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Article {
    /// Page title.
    pub title: String,
    /// Page body.
    pub body: String,
}

/// An endless supply of articles, in a deterministic order.
pub trait TextSource {
    /// The next article.
    fn next_article(&mut self) -> Result<Article, DemoError>;
}

/// Articles shorter than this are skipped (stubs make dull pages).
const MIN_BODY_BYTES: usize = 80;

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}

#[derive(Deserialize)]
struct WikiLine {
    #[serde(default)]
    title: String,
    #[serde(default)]
    body: String,
}

/// Streams `{"id","url","title","body"}` lines out of a `.jsonl.zst` file
/// (or a plain `.jsonl`). At the end of the file it starts over, marking
/// repeated titles with the pass number, so any number of pages can be made.
pub struct WikiText {
    path: PathBuf,
    reader: Box<dyn BufRead>,
    max_body_bytes: usize,
    pass: u32,
    line: String,
    produced_this_pass: u64,
}

impl WikiText {
    /// Opens the dump; bodies longer than `max_body_bytes` are cut.
    pub fn open(path: &Path, max_body_bytes: usize) -> Result<Self, DemoError> {
        Ok(WikiText {
            reader: Self::reader(path)?,
            path: path.to_path_buf(),
            max_body_bytes,
            pass: 1,
            line: String::new(),
            produced_this_pass: 0,
        })
    }

    fn reader(path: &Path) -> Result<Box<dyn BufRead>, DemoError> {
        let file = File::open(path).map_err(|e| DemoError::Io {
            what: format!("opening {}", path.display()),
            source: e,
        })?;
        let is_zst = path.extension().is_some_and(|e| e == "zst");
        if is_zst {
            let dec = zstd::stream::read::Decoder::new(file).map_err(|e| DemoError::Io {
                what: format!("starting zstd on {}", path.display()),
                source: e,
            })?;
            Ok(Box::new(BufReader::with_capacity(1 << 20, dec)))
        } else {
            Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
        }
    }
}

impl TextSource for WikiText {
    fn next_article(&mut self) -> Result<Article, DemoError> {
        loop {
            self.line.clear();
            let n = self
                .reader
                .read_line(&mut self.line)
                .map_err(|e| DemoError::Io {
                    what: format!("reading {}", self.path.display()),
                    source: e,
                })?;
            if n == 0 {
                if self.produced_this_pass == 0 {
                    return Err(DemoError::Text(format!(
                        "{} holds no usable article (lines of {{\"title\",\"body\"}} with a body of at least {MIN_BODY_BYTES} bytes)",
                        self.path.display()
                    )));
                }
                self.reader = Self::reader(&self.path)?;
                self.pass += 1;
                self.produced_this_pass = 0;
                continue;
            }
            let Ok(w) = serde_json::from_str::<WikiLine>(self.line.trim_end()) else {
                continue;
            };
            let mut title = w.title.trim().to_string();
            let mut body = w.body.trim().to_string();
            if title.is_empty() || body.len() < MIN_BODY_BYTES {
                continue;
            }
            if self.pass > 1 {
                title = format!("{title} ({})", self.pass);
            }
            truncate_utf8(&mut title, MAX_TITLE_BYTES.min(200));
            truncate_utf8(&mut body, self.max_body_bytes);
            self.produced_this_pass += 1;
            return Ok(Article { title, body });
        }
    }
}

/// Made-up articles from a fixed vocabulary: deterministic for a seed and
/// needing no data file. Tests use it; so does `tessera-demo --synthetic-text`.
pub struct SyntheticText {
    rng: Rng,
    serial: u64,
}

const WORDS: &[&str] = &[
    "deploy",
    "runbook",
    "service",
    "incident",
    "review",
    "design",
    "budget",
    "release",
    "roadmap",
    "customer",
    "pipeline",
    "database",
    "latency",
    "migration",
    "security",
    "onboarding",
    "policy",
    "quarterly",
    "planning",
    "search",
    "cluster",
    "network",
    "storage",
    "backup",
    "metrics",
    "alert",
    "dashboard",
    "rollout",
    "feature",
    "testing",
    "village",
    "river",
    "music",
    "history",
    "football",
    "island",
    "election",
    "museum",
    "province",
    "album",
    "station",
    "church",
    "language",
    "mountain",
    "species",
    "railway",
];

impl SyntheticText {
    /// A source for `seed`.
    pub fn new(seed: u64) -> Self {
        SyntheticText {
            rng: Rng::derive(seed, "synthetic-text"),
            serial: 0,
        }
    }

    fn words(&mut self, n: usize) -> Vec<&'static str> {
        (0..n)
            .filter_map(|_| self.rng.pick(WORDS).copied())
            .collect()
    }
}

impl TextSource for SyntheticText {
    fn next_article(&mut self) -> Result<Article, DemoError> {
        self.serial += 1;
        let n = self.rng.range(2, 4);
        let mut title = self.words(n).join(" ");
        if let Some(first) = title.get(..1) {
            title = format!("{}{} {}", first.to_uppercase(), &title[1..], self.serial);
        }
        let sentences = self.rng.range(3, 12);
        let body = (0..sentences)
            .map(|_| {
                let n = self.rng.range(5, 14);
                format!("{}.", self.words(n).join(" "))
            })
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Article { title, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut s = "héllo".to_string();
        truncate_utf8(&mut s, 2);
        assert_eq!(s, "h");
        let mut t = "abc".to_string();
        truncate_utf8(&mut t, 10);
        assert_eq!(t, "abc");
    }

    #[test]
    fn wiki_stream_skips_stubs_cuts_bodies_and_wraps_around() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.jsonl.zst");
        let long = "word ".repeat(100);
        let text = format!(
            "{}\n{}\nnot json\n{}\n",
            serde_json::json!({"id":"1","url":"u","title":"Stub","body":"short"}),
            serde_json::json!({"id":"2","url":"u","title":"Alpha","body":long}),
            serde_json::json!({"id":"3","url":"u","title":"Beta","body":long}),
        );
        let file = std::fs::File::create(&path).expect("create");
        let mut enc = zstd::stream::write::Encoder::new(file, 3).expect("encoder");
        enc.write_all(text.as_bytes()).expect("write");
        enc.finish().expect("finish");
        let mut w = WikiText::open(&path, 100).expect("open");
        let a = w.next_article().expect("a");
        assert_eq!(a.title, "Alpha");
        assert!(a.body.len() <= 100);
        assert_eq!(w.next_article().expect("b").title, "Beta");
        assert_eq!(w.next_article().expect("c").title, "Alpha (2)");
    }

    #[test]
    fn synthetic_is_deterministic() {
        let mut a = SyntheticText::new(5);
        let mut b = SyntheticText::new(5);
        for _ in 0..5 {
            assert_eq!(a.next_article().expect("a"), b.next_article().expect("b"));
        }
    }
}
