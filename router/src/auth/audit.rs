//! The audit log: one JSON line per admin or key operation (who, what,
//! when, and whether it was allowed), appended to a file per router.
//!
//! It records refusals too, since an attempt to create a key with a
//! stolen search key is exactly what an operator wants to find later.
//! Secrets never reach it: keys are named by their public id.

use parking_lot::Mutex;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// One audit line.
#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    /// Unix milliseconds.
    pub ts_ms: u64,
    /// The RPC (`create_key`, `create_tenant`, `drain_node`, ...).
    pub rpc: &'a str,
    /// The caller's key id; empty when it presented none that verified.
    pub key: &'a str,
    /// The caller key's tenant; empty for a cluster-level key.
    pub key_tenant: &'a str,
    /// What the operation was about (a tenant, a node, a key id).
    pub target: &'a str,
    /// `ok`, or the reason it was refused or failed.
    pub outcome: &'a str,
}

/// An append-only JSON Lines file, flushed after every line so that a crash
/// loses nothing already reported to the caller.
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating) `path` for appending, readable by its owner only.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(AuditLog {
            file: Mutex::new(file),
        })
    }

    /// Appends one entry. A failed write is logged, not returned: the
    /// operation itself already happened (or was refused).
    pub fn record(&self, entry: &AuditEntry<'_>) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "audit entry not serialisable");
                return;
            }
        };
        line.push(b'\n');
        let mut file = self.file.lock();
        if let Err(e) = file.write_all(&line).and_then(|()| file.flush()) {
            tracing::error!(error = %e, "audit log write failed");
        }
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).expect("open");
        for rpc in ["create_key", "revoke_key"] {
            log.record(&AuditEntry {
                ts_ms: 1,
                rpc,
                key: "0123456789abcdef",
                key_tenant: "",
                target: "acme",
                outcome: "ok",
            });
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["rpc"], "revoke_key");
        assert_eq!(lines[0]["target"], "acme");
    }
}
