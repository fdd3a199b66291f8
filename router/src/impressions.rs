//! The experiment log: one JSON line per page served under an experiment (an *impression*)
//! and per click that cites one, appended to a file (`tessera-router --impression-log PATH`)
//! that `tessera eval --impressions` reads back to compare variants.
//!
//! ```text
//! {"type":"impression","id":"…","ts_ms":…,"tenant":"…","user":"u:a","query":"…",
//!  "experiment":"…","variant":"…","shadow":false,"hits":["p-1",…],"shadow_hits":[]}
//! {"type":"click","impression":"…","ts_ms":…,"tenant":"…","user":"u:a","doc":"p-1"}
//! ```
//!
//! Lines are handed to a dedicated writer thread through a bounded channel, so a search never
//! waits on the disk; when the writer falls behind, lines are dropped and counted in
//! `tessera_router_impressions_dropped_total` rather than slowing searches down. Each router
//! writes its own file; an evaluation reads all of them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use serde::Serialize;

/// Lines queued before new ones are dropped.
const QUEUE: usize = 65_536;

/// A page served under an experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Impression<'a> {
    /// What clicks cite (returned to the caller as `impression`).
    pub id: &'a str,
    /// When the page was served (router clock, epoch ms).
    pub ts_ms: i64,
    /// The tenant searched.
    pub tenant: &'a str,
    /// Who searched; the experiment assigned the variant from it.
    pub user: &'a str,
    /// The query text.
    pub query: &'a str,
    /// The experiment named by the search.
    pub experiment: &'a str,
    /// The user's variant.
    pub variant: &'a str,
    /// Whether `hits` came from the control while `shadow_hits` is the variant's ranking.
    pub shadow: bool,
    /// The ids served, in order.
    pub hits: Vec<&'a str>,
    /// Shadow mode: the ids the variant would have served, in order.
    pub shadow_hits: Vec<&'a str>,
}

/// A click on a document of a logged impression.
#[derive(Debug, Clone, Serialize)]
pub struct Click<'a> {
    /// The impression the click cites.
    pub impression: &'a str,
    /// The click event's time (epoch ms).
    pub ts_ms: i64,
    /// The tenant.
    pub tenant: &'a str,
    /// Who clicked.
    pub user: &'a str,
    /// What was clicked.
    pub doc: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line<'a> {
    Impression(Impression<'a>),
    Click(Click<'a>),
}

/// The append-only experiment log of one router.
#[derive(Debug)]
pub struct ImpressionLog {
    path: PathBuf,
    lines: SyncSender<Vec<u8>>,
    writer: std::thread::JoinHandle<()>,
}

impl ImpressionLog {
    /// Opens (creating or appending to) `path` and starts its writer thread.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (lines, rx) = sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("tessera-impressions".to_string())
            .spawn(move || write_lines(file, rx))?;
        Ok(Self {
            path: path.to_path_buf(),
            lines,
            writer,
        })
    }

    /// Writes out every queued line and stops the writer (dropping the log also stops it,
    /// without waiting).
    pub fn close(self) {
        drop(self.lines);
        if self.writer.join().is_err() {
            tracing::warn!("the impression log writer panicked");
        }
    }

    /// Where the log is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs a served page.
    pub fn impression(&self, impression: Impression<'_>) {
        self.push(&Line::Impression(impression));
    }

    /// Logs a click.
    pub fn click(&self, click: Click<'_>) {
        self.push(&Line::Click(click));
    }

    fn push(&self, line: &Line<'_>) {
        let Ok(mut bytes) = serde_json::to_vec(line) else {
            return;
        };
        bytes.push(b'\n');
        match self.lines.try_send(bytes) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics::counter!("tessera_router_impressions_dropped_total").increment(1);
            }
        }
    }
}

/// Writes queued lines, flushing whenever the queue runs dry, until the log is dropped.
fn write_lines(file: std::fs::File, rx: Receiver<Vec<u8>>) {
    let mut out = std::io::BufWriter::new(file);
    while let Ok(line) = rx.recv() {
        let mut ok = out.write_all(&line).is_ok();
        while let Ok(more) = rx.try_recv() {
            ok &= out.write_all(&more).is_ok();
        }
        ok &= out.flush().is_ok();
        if !ok {
            tracing::warn!("writing the impression log failed");
            metrics::counter!("tessera_router_impressions_dropped_total").increment(1);
        }
    }
}

/// A fresh impression id: 128 random bits in hex.
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_as_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.jsonl");
        let log = ImpressionLog::open(&path).expect("open");
        {
            log.impression(Impression {
                id: "i1",
                ts_ms: 5,
                tenant: "t",
                user: "u:a",
                query: "q",
                experiment: "e",
                variant: "control",
                shadow: false,
                hits: vec!["p-1", "p-2"],
                shadow_hits: vec![],
            });
            log.click(Click {
                impression: "i1",
                ts_ms: 6,
                tenant: "t",
                user: "u:a",
                doc: "p-2",
            });
        }
        log.close();
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["type"], "impression");
        assert_eq!(lines[0]["hits"], serde_json::json!(["p-1", "p-2"]));
        assert_eq!(lines[1]["type"], "click");
        assert_eq!(lines[1]["doc"], "p-2");
        assert_ne!(new_id(), new_id());
        assert_eq!(new_id().len(), 32);
    }
}
