//! What the workload did and saw: every write it attempted with its outcome,
//! every read with its result, and every invariant violation it caught on
//! the spot. Checkers judge the cluster against this record.
//!
//! A write is recorded *before* it is sent, so when a read returns, every
//! version it could possibly show is already known: the permission oracle
//! never has to guess about writes in flight.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tessera_proto::Document;
use tokio::time::Instant;

use crate::model;

/// Examples kept per violation kind; counts are always exact.
const MAX_EXAMPLES: usize = 20;

/// Milliseconds since the start of the run, the time base of every record.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    t0: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Clock { t0: Instant::now() }
    }

    /// The instant the clock started at.
    pub fn origin(&self) -> Instant {
        self.t0
    }

    /// Milliseconds since the start.
    pub fn ms(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The fate of one write operation, as the client learned it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    /// Sent, no answer yet.
    Pending,
    /// Acknowledged: durably committed, must never be lost.
    Acked,
    /// Failed or timed out: may or may not have been applied.
    Indeterminate,
    /// Refused item by item (never applied).
    Rejected,
}

/// One write of one document version.
#[derive(Clone, Debug, Serialize)]
pub struct OpRecord {
    /// The version written.
    pub version: u64,
    /// A delete rather than an upsert.
    pub delete: bool,
    /// What the client learned.
    pub status: OpStatus,
    /// When it was sent (ms).
    pub sent_ms: u64,
    /// When the answer came (ms).
    pub done_ms: Option<u64>,
}

/// Every operation on one document, in version order (each document has
/// exactly one writer, which writes sequentially).
#[derive(Clone, Debug, Default)]
pub struct DocHistory {
    /// The operations.
    pub ops: Vec<OpRecord>,
    /// Bit `i` is set when some attempted upsert admits user `i` of
    /// [`model::USERS`]: the set of users who may ever see the document.
    pub visible_mask: u64,
}

impl DocHistory {
    /// The newest acknowledged operation.
    pub fn newest_acked(&self) -> Option<&OpRecord> {
        self.ops
            .iter()
            .filter(|o| o.status == OpStatus::Acked)
            .max_by_key(|o| o.version)
    }

    /// Whether some write of `version` as an upsert was attempted (so a
    /// replica may legitimately hold it).
    pub fn attempted_upsert(&self, version: u64) -> bool {
        self.ops.iter().any(|o| o.version == version && !o.delete)
    }

    /// Judges one replica's final state of the document after the cluster
    /// healed. `found` is the version it holds (`None`: absent or deleted).
    ///
    /// The final state must be the effect of the newest applied operation,
    /// and every acknowledged operation was applied, so it must come from
    /// an operation at or above the newest acknowledged version that was
    /// acknowledged or indeterminate (never a rejected one).
    pub fn judge(&self, found: Option<u64>) -> Verdict {
        let floor = self.newest_acked().map_or(0, |o| o.version);
        let may_apply = |o: &&OpRecord| {
            o.version >= floor
                && matches!(
                    o.status,
                    OpStatus::Acked | OpStatus::Indeterminate | OpStatus::Pending
                )
        };
        match found {
            Some(v) => {
                if self
                    .ops
                    .iter()
                    .filter(may_apply)
                    .any(|o| !o.delete && o.version == v)
                {
                    Verdict::Ok
                } else if v < floor {
                    Verdict::Lost {
                        found: Some(v),
                        acked: floor,
                    }
                } else {
                    Verdict::Unexplained { found: Some(v) }
                }
            }
            None => {
                if floor == 0 || self.ops.iter().filter(may_apply).any(|o| o.delete) {
                    Verdict::Ok
                } else {
                    Verdict::Lost {
                        found: None,
                        acked: floor,
                    }
                }
            }
        }
    }
}

/// What [`DocHistory::judge`] concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Consistent with the history.
    Ok,
    /// An acknowledged write is missing: the replica holds an older
    /// version (or nothing).
    Lost {
        /// What the replica holds.
        found: Option<u64>,
        /// The newest acknowledged version.
        acked: u64,
    },
    /// The replica holds a version nobody may have applied (rejected or
    /// never written).
    Unexplained {
        /// What the replica holds.
        found: Option<u64>,
    },
}

/// A read, for availability accounting.
#[derive(Clone, Debug, Serialize)]
pub struct ReadSample {
    /// Sent (ms).
    pub start_ms: u64,
    /// Answered or failed (ms).
    pub end_ms: u64,
    /// Router index it went through.
    pub router: usize,
    /// Tenant read.
    pub tenant: String,
    /// Whether it succeeded.
    pub ok: bool,
}

/// A write, for write availability (informational).
#[derive(Clone, Debug, Serialize)]
pub struct WriteSample {
    /// Sent (ms).
    pub start_ms: u64,
    /// Router index.
    pub router: usize,
    /// Tenant written.
    pub tenant: String,
    /// Acknowledged.
    pub ok: bool,
}

/// A count with a few examples.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tally {
    /// Exact count.
    pub count: u64,
    /// The first few occurrences, described.
    pub examples: Vec<String>,
}

impl Tally {
    /// Counts one occurrence.
    pub fn add(&mut self, what: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(what());
        }
    }
}

/// Violations caught while the workload ran.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OnlineFindings {
    /// A hit or get result the user may not see under every version ever
    /// written (the node's filter leaked), or a document of another tenant.
    pub leaks: Tally,
    /// A hit or get for a document id never written.
    pub phantoms: Tally,
    /// The same id twice in one page of results.
    pub duplicates: Tally,
    /// A get returned a document whose content is not what was written
    /// for its version.
    pub corrupt: Tally,
    /// A read with a session token did not see the write that produced it.
    pub rw_violations: Tally,
    /// Read-your-writes checks that could not run (the read failed).
    pub rw_unavailable: u64,
    /// Read-your-writes checks that ran and passed.
    pub rw_ok: u64,
    /// A router refused a valid item (should never happen).
    pub rejected_writes: Tally,
    /// Reads that failed, with their error (not a violation by itself:
    /// read availability judges them).
    pub failed_reads: Tally,
    /// Search hits the oracle checked.
    pub hits_checked: u64,
    /// Documents returned by gets that the oracle checked.
    pub gets_checked: u64,
    /// Of those, hits and documents returned to users other than root
    /// (whose permissions are the interesting ones).
    pub non_root_checked: u64,
}

#[derive(Default)]
struct Inner {
    docs: HashMap<(String, u32), DocHistory>,
    reads: Vec<ReadSample>,
    writes: Vec<WriteSample>,
    findings: OnlineFindings,
}

/// The shared record of a run.
#[derive(Default)]
pub struct History {
    inner: parking_lot::Mutex<Inner>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.inner.lock();
        f.debug_struct("History")
            .field("docs", &g.docs.len())
            .field("reads", &g.reads.len())
            .field("writes", &g.writes.len())
            .finish()
    }
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        History::default()
    }

    /// The version the next write of a document should carry.
    pub fn next_version(&self, tenant: &str, k: u32) -> u64 {
        let g = self.inner.lock();
        g.docs
            .get(&(tenant.to_string(), k))
            .and_then(|d| d.ops.last())
            .map_or(1, |o| o.version + 1)
    }

    /// Whether the document has any attempted upsert (deletes of documents
    /// that never existed are pointless).
    pub fn has_upsert(&self, tenant: &str, k: u32) -> bool {
        let g = self.inner.lock();
        g.docs
            .get(&(tenant.to_string(), k))
            .is_some_and(|d| d.ops.iter().any(|o| !o.delete))
    }

    /// Records a write about to be sent.
    pub fn attempt(&self, tenant: &str, k: u32, version: u64, delete: bool, now_ms: u64) {
        let mask = if delete {
            0
        } else {
            let perms = model::document(tenant, k, version).permissions;
            model::USERS
                .iter()
                .enumerate()
                .filter(|(_, (u, _))| model::admits(&perms, &model::principals_of(u)))
                .fold(0u64, |m, (i, _)| m | (1 << i))
        };
        let mut g = self.inner.lock();
        let d = g.docs.entry((tenant.to_string(), k)).or_default();
        d.visible_mask |= mask;
        d.ops.push(OpRecord {
            version,
            delete,
            status: OpStatus::Pending,
            sent_ms: now_ms,
            done_ms: None,
        });
    }

    /// Records the outcome of a write.
    pub fn finish(&self, tenant: &str, k: u32, version: u64, status: OpStatus, now_ms: u64) {
        let mut g = self.inner.lock();
        if let Some(op) = g
            .docs
            .get_mut(&(tenant.to_string(), k))
            .and_then(|d| d.ops.iter_mut().find(|o| o.version == version))
        {
            op.status = status;
            op.done_ms = Some(now_ms);
        }
    }

    /// Whether `user` may see document `k` under some attempted version;
    /// `None` when no upsert of it was ever attempted.
    pub fn may_see(&self, tenant: &str, k: u32, user: &str) -> Option<bool> {
        let bit = model::USERS.iter().position(|(u, _)| *u == user)?;
        let g = self.inner.lock();
        let d = g.docs.get(&(tenant.to_string(), k))?;
        if !d.ops.iter().any(|o| !o.delete) {
            return None;
        }
        Some(d.visible_mask & (1 << bit) != 0)
    }

    /// Checks a document a get returned for `user`: it must be a version
    /// that was written, with exactly the content written, and its own
    /// permissions must admit the user.
    pub fn check_returned(&self, tenant: &str, user: &str, doc: &Document) -> Result<(), Finding> {
        self.with_findings(|f| {
            f.gets_checked += 1;
            if user != model::ROOT_USER {
                f.non_root_checked += 1;
            }
        });
        let Some(k) = model::parse_doc_id(tenant, &doc.id) else {
            return Err(Finding::Leak(format!(
                "get as {user} in {tenant} returned foreign document {}",
                doc.id
            )));
        };
        let attempted = {
            let g = self.inner.lock();
            g.docs
                .get(&(tenant.to_string(), k))
                .is_some_and(|d| d.attempted_upsert(doc.version))
        };
        if !attempted {
            return Err(Finding::Phantom(format!(
                "get as {user} returned {} at version {}, which was never written",
                doc.id, doc.version
            )));
        }
        let expected = model::document(tenant, k, doc.version);
        if &expected != doc {
            return Err(Finding::Corrupt(format!(
                "{} v{} differs from what was written: got {doc:?}",
                doc.id, doc.version
            )));
        }
        if !model::admits(&doc.permissions, &model::principals_of(user)) {
            return Err(Finding::Leak(format!(
                "get as {user} returned {} v{} whose permissions {:?} do not admit {user}",
                doc.id, doc.version, doc.permissions
            )));
        }
        Ok(())
    }

    /// Write operations recorded so far (cheap, for progress polling).
    pub fn write_count(&self) -> usize {
        self.inner.lock().writes.len()
    }

    /// Records a read.
    pub fn record_read(&self, s: ReadSample) {
        self.inner.lock().reads.push(s);
    }

    /// Records a write.
    pub fn record_write(&self, s: WriteSample) {
        self.inner.lock().writes.push(s);
    }

    /// Records an online violation or result.
    pub fn with_findings<R>(&self, f: impl FnOnce(&mut OnlineFindings) -> R) -> R {
        f(&mut self.inner.lock().findings)
    }

    /// Records a finding from a check.
    pub fn report(&self, finding: Finding) {
        self.with_findings(|f| match finding {
            Finding::Leak(s) => f.leaks.add(|| s),
            Finding::Phantom(s) => f.phantoms.add(|| s),
            Finding::Corrupt(s) => f.corrupt.add(|| s),
            Finding::Duplicate(s) => f.duplicates.add(|| s),
        });
    }

    /// A copy of everything, for the checkers and the report.
    pub fn snapshot(&self) -> Snapshot {
        let g = self.inner.lock();
        let mut docs: BTreeMap<String, BTreeMap<u32, DocHistory>> = BTreeMap::new();
        for ((t, k), d) in &g.docs {
            docs.entry(t.clone()).or_default().insert(*k, d.clone());
        }
        Snapshot {
            docs,
            reads: g.reads.clone(),
            writes: g.writes.clone(),
            findings: g.findings.clone(),
        }
    }
}

/// A violation found by checking one read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// See [`OnlineFindings::leaks`].
    Leak(String),
    /// See [`OnlineFindings::phantoms`].
    Phantom(String),
    /// See [`OnlineFindings::corrupt`].
    Corrupt(String),
    /// See [`OnlineFindings::duplicates`].
    Duplicate(String),
}

/// A copy of a [`History`].
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Tenant → document number → history.
    pub docs: BTreeMap<String, BTreeMap<u32, DocHistory>>,
    /// Every read.
    pub reads: Vec<ReadSample>,
    /// Every write operation (batch).
    pub writes: Vec<WriteSample>,
    /// Online violations.
    pub findings: OnlineFindings,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(version: u64, delete: bool, status: OpStatus) -> OpRecord {
        OpRecord {
            version,
            delete,
            status,
            sent_ms: 0,
            done_ms: None,
        }
    }

    #[test]
    fn judge_accepts_newest_acked_or_later_indeterminate() {
        let h = DocHistory {
            ops: vec![
                op(1, false, OpStatus::Acked),
                op(2, false, OpStatus::Acked),
                op(3, false, OpStatus::Indeterminate),
                op(4, false, OpStatus::Rejected),
            ],
            visible_mask: 0,
        };
        assert_eq!(h.judge(Some(2)), Verdict::Ok);
        assert_eq!(h.judge(Some(3)), Verdict::Ok);
        assert_eq!(
            h.judge(Some(1)),
            Verdict::Lost {
                found: Some(1),
                acked: 2
            }
        );
        assert_eq!(
            h.judge(None),
            Verdict::Lost {
                found: None,
                acked: 2
            }
        );
        assert_eq!(h.judge(Some(4)), Verdict::Unexplained { found: Some(4) });
        assert_eq!(h.judge(Some(9)), Verdict::Unexplained { found: Some(9) });
    }

    #[test]
    fn judge_handles_deletes_and_unacked_documents() {
        let deleted = DocHistory {
            ops: vec![op(1, false, OpStatus::Acked), op(2, true, OpStatus::Acked)],
            visible_mask: 0,
        };
        assert_eq!(deleted.judge(None), Verdict::Ok);
        assert_eq!(
            deleted.judge(Some(1)),
            Verdict::Lost {
                found: Some(1),
                acked: 2
            }
        );
        let maybe = DocHistory {
            ops: vec![op(1, false, OpStatus::Indeterminate)],
            visible_mask: 0,
        };
        assert_eq!(maybe.judge(None), Verdict::Ok);
        assert_eq!(maybe.judge(Some(1)), Verdict::Ok);
    }

    #[test]
    fn oracle_masks_follow_every_attempted_version() {
        let h = History::new();
        let tenant = "zt";
        // Find a document alice cannot see at v1 but can at some later version.
        let alice = model::principals_of("u:alice");
        let (k, v) = (0..200u32)
            .find_map(|k| {
                let hidden = !model::admits(&model::document(tenant, k, 1).permissions, &alice);
                let later = (2..10u64)
                    .find(|v| model::admits(&model::document(tenant, k, *v).permissions, &alice));
                hidden.then_some(()).and(later.map(|v| (k, v)))
            })
            .expect("some document changes visibility");
        assert_eq!(h.may_see(tenant, k, "u:alice"), None);
        h.attempt(tenant, k, 1, false, 0);
        assert_eq!(h.may_see(tenant, k, "u:alice"), Some(false));
        h.attempt(tenant, k, v, false, 1);
        assert_eq!(h.may_see(tenant, k, "u:alice"), Some(true));
        assert_eq!(h.may_see(tenant, k, "u:root"), Some(true));
        let doc = model::document(tenant, k, v);
        assert_eq!(h.check_returned(tenant, "u:alice", &doc), Ok(()));
        let old = model::document(tenant, k, 1);
        assert!(matches!(
            h.check_returned(tenant, "u:alice", &old),
            Err(Finding::Leak(_))
        ));
        let mut tampered = doc.clone();
        tampered.title.push('!');
        assert!(matches!(
            h.check_returned(tenant, "u:alice", &tampered),
            Err(Finding::Corrupt(_))
        ));
        let mut unknown = doc;
        unknown.version = 99;
        assert!(matches!(
            h.check_returned(tenant, "u:alice", &unknown),
            Err(Finding::Phantom(_))
        ));
    }
}
