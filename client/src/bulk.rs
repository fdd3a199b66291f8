//! Bulk loading of JSON Lines (`tessera put` / `tessera groups`).
//!
//! Each line is validated locally with the same validator the router and
//! node use, so bad lines are reported with their line numbers and never
//! sent. Good lines go out in batches; retryable failures (unavailable,
//! limited) are retried with backoff, which is safe because writes are
//! idempotent. Batches are sent one after another so one session token can
//! be threaded through all of them; the next batch is read and validated
//! while the current one is in flight.

use crate::client::TesseraClient;
use crate::error::ClientError;
use crate::types::{GroupMembership, PutOutcome};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tessera_proto::document::validate_principal;
use tessera_proto::limits::MAX_GROUPS_PER_USER;
use tessera_proto::Document;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// What the lines are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Documents (DESIGN.md data model).
    Documents,
    /// Group memberships: `{"user":"u:x","groups":["g:y"]}`.
    Groups,
}

/// Batching and retry settings.
#[derive(Debug, Clone)]
pub struct BulkOptions {
    /// Most lines per batch.
    pub batch_items: usize,
    /// Most bytes per batch (keeps requests well under message limits).
    pub batch_bytes: usize,
    /// How long to keep retrying one batch on retryable errors.
    pub retry_for: Duration,
}

impl Default for BulkOptions {
    fn default() -> Self {
        BulkOptions {
            batch_items: 500,
            batch_bytes: 2 * 1024 * 1024,
            retry_for: Duration::from_secs(60),
        }
    }
}

/// A line that was not written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRejection {
    /// 1-based line number in the input.
    pub line: u64,
    /// Why (names the rule or limit).
    pub error: String,
}

/// The result of a load, as `put --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BulkReport {
    /// Lines durably committed.
    pub acked: u64,
    /// Lines refused.
    pub rejected: Vec<LineRejection>,
    /// Session token covering every acknowledged line.
    pub token: String,
}

/// Progress after each batch, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BulkProgress {
    /// Input bytes consumed.
    pub bytes: u64,
    /// Input lines consumed.
    pub lines: u64,
    /// Lines acknowledged so far.
    pub acked: u64,
    /// Lines rejected so far.
    pub rejected: u64,
}

/// A load that stopped early: what was done, and why it stopped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error} ({} lines acknowledged before it)", report.acked)]
pub struct BulkError {
    /// Everything acknowledged or rejected before the failure.
    pub report: BulkReport,
    /// The failure.
    pub error: ClientError,
}

/// Checks one groups line.
pub fn parse_membership(line: &[u8]) -> Result<GroupMembership, String> {
    let m: GroupMembership =
        serde_json::from_slice(line).map_err(|e| format!("invalid JSON: {e}"))?;
    validate_principal(&m.user).map_err(|e| e.to_string())?;
    if !m.user.starts_with("u:") {
        return Err(format!("user {:?} must be a `u:` principal", m.user));
    }
    if m.groups.len() > MAX_GROUPS_PER_USER {
        return Err(format!(
            "groups has {} entries, over the limit of {MAX_GROUPS_PER_USER} (MAX_GROUPS_PER_USER)",
            m.groups.len()
        ));
    }
    for g in &m.groups {
        validate_principal(g).map_err(|e| e.to_string())?;
        if !g.starts_with("g:") {
            return Err(format!("group {g:?} must be a `g:` principal"));
        }
    }
    Ok(m)
}

/// Checks one documents line.
pub fn check_document(line: &[u8]) -> Result<(), String> {
    Document::from_json_bytes(line)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Good lines of one batch and their line numbers.
#[derive(Debug, Default)]
struct Batch {
    lines: Vec<u64>,
    docs: Vec<Vec<u8>>,
    groups: Vec<GroupMembership>,
    bytes: usize,
}

impl Batch {
    fn len(&self) -> usize {
        self.lines.len()
    }
}

/// Splits input into validated batches.
struct Reader<R> {
    input: R,
    kind: LineKind,
    line_no: u64,
    bytes: u64,
    done: bool,
}

impl<R: AsyncBufRead + Unpin> Reader<R> {
    /// The next batch (possibly empty at the end) plus the rejections met on the way.
    async fn next_batch(
        &mut self,
        opts: &BulkOptions,
    ) -> Result<(Batch, Vec<LineRejection>), ClientError> {
        let mut batch = Batch::default();
        let mut rejected = Vec::new();
        let mut buf = Vec::new();
        while !self.done && batch.len() < opts.batch_items.max(1) && batch.bytes < opts.batch_bytes
        {
            buf.clear();
            let n = self
                .input
                .read_until(b'\n', &mut buf)
                .await
                .map_err(|e| ClientError::InvalidInput(format!("cannot read input: {e}")))?;
            if n == 0 {
                self.done = true;
                break;
            }
            self.line_no += 1;
            self.bytes += n as u64;
            let mut line: &[u8] = &buf;
            while let [rest @ .., b'\n' | b'\r'] = line {
                line = rest;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match self.kind {
                LineKind::Documents => match check_document(line) {
                    Ok(()) => {
                        batch.bytes += line.len();
                        batch.docs.push(line.to_vec());
                        batch.lines.push(self.line_no);
                    }
                    Err(error) => rejected.push(LineRejection {
                        line: self.line_no,
                        error,
                    }),
                },
                LineKind::Groups => match parse_membership(line) {
                    Ok(m) => {
                        batch.bytes += line.len();
                        batch.groups.push(m);
                        batch.lines.push(self.line_no);
                    }
                    Err(error) => rejected.push(LineRejection {
                        line: self.line_no,
                        error,
                    }),
                },
            }
        }
        Ok((batch, rejected))
    }
}

impl TesseraClient {
    /// Loads JSON Lines from `input` into `tenant`; see the module docs.
    ///
    /// `session` is an earlier session token to extend ("" for none).
    /// `progress` is called after every batch.
    pub async fn load_lines<R: AsyncBufRead + Unpin>(
        &self,
        tenant: &str,
        kind: LineKind,
        input: R,
        session: &str,
        opts: &BulkOptions,
        progress: &mut (dyn FnMut(BulkProgress) + Send),
    ) -> Result<BulkReport, BulkError> {
        let mut reader = Reader {
            input,
            kind,
            line_no: 0,
            bytes: 0,
            done: false,
        };
        let mut report = BulkReport {
            token: session.to_string(),
            ..Default::default()
        };
        let fail = |report: &BulkReport, error: ClientError| BulkError {
            report: report.clone(),
            error,
        };
        let (mut batch, rej) = reader
            .next_batch(opts)
            .await
            .map_err(|e| fail(&report, e))?;
        report.rejected.extend(rej);
        loop {
            if batch.len() == 0 && reader.done {
                break;
            }
            let token = report.token.clone();
            let (sent, next) = tokio::join!(
                self.send_batch(tenant, kind, &batch, &token, opts),
                reader.next_batch(opts)
            );
            match sent {
                Ok(outcome) => {
                    report.acked += outcome.acked;
                    report
                        .rejected
                        .extend(outcome.rejected.iter().filter_map(|r| {
                            batch.lines.get(r.index as usize).map(|line| LineRejection {
                                line: *line,
                                error: r.error.clone(),
                            })
                        }));
                    if !outcome.token.is_empty() {
                        report.token = outcome.token;
                    }
                }
                Err(ClientError::InvalidInput(msg)) => {
                    // The router refused the batch as a whole: nothing of it was written.
                    report
                        .rejected
                        .extend(batch.lines.iter().map(|line| LineRejection {
                            line: *line,
                            error: msg.clone(),
                        }));
                }
                Err(e) => return Err(fail(&report, e)),
            }
            let (b, rej) = next.map_err(|e| fail(&report, e))?;
            report.rejected.extend(rej);
            batch = b;
            progress(BulkProgress {
                bytes: reader.bytes,
                lines: reader.line_no,
                acked: report.acked,
                rejected: report.rejected.len() as u64,
            });
        }
        report.rejected.sort_by_key(|r| r.line);
        progress(BulkProgress {
            bytes: reader.bytes,
            lines: reader.line_no,
            acked: report.acked,
            rejected: report.rejected.len() as u64,
        });
        Ok(report)
    }

    async fn send_batch(
        &self,
        tenant: &str,
        kind: LineKind,
        batch: &Batch,
        session: &str,
        opts: &BulkOptions,
    ) -> Result<PutOutcome, ClientError> {
        if batch.len() == 0 {
            return Ok(PutOutcome {
                token: session.to_string(),
                ..Default::default()
            });
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = match kind {
                LineKind::Documents => {
                    self.put_documents(tenant, batch.docs.clone(), Vec::new(), session)
                        .await
                }
                LineKind::Groups => self.put_groups(tenant, batch.groups.clone(), session).await,
            };
            match result {
                Err(e) if e.is_retryable() && started.elapsed() < opts.retry_for => {
                    let wait = e.retry_after().unwrap_or(backoff);
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_skip_blank_lines_and_report_line_numbers() {
        let input: &[u8] = b"{\"id\":\"a\",\"version\":1}\n\n{\"id\":\"b\"}\r\n{\"id\":\"c\",\"version\":2}\nnot json\n{\"id\":\"d\",\"version\":1}";
        let mut r = Reader {
            input,
            kind: LineKind::Documents,
            line_no: 0,
            bytes: 0,
            done: false,
        };
        let opts = BulkOptions {
            batch_items: 2,
            ..Default::default()
        };
        let (b1, rej1) = r.next_batch(&opts).await.expect("read");
        assert_eq!(b1.lines, vec![1, 4]);
        assert_eq!(rej1.iter().map(|x| x.line).collect::<Vec<_>>(), vec![3]);
        assert!(rej1[0].error.contains("version"), "{}", rej1[0].error);
        let (b2, rej2) = r.next_batch(&opts).await.expect("read");
        assert_eq!(b2.lines, vec![6]);
        assert_eq!(rej2.iter().map(|x| x.line).collect::<Vec<_>>(), vec![5]);
        assert!(r.done);
        assert_eq!(b2.docs[0], b"{\"id\":\"d\",\"version\":1}".to_vec());
    }

    #[test]
    fn membership_lines_are_checked() {
        assert!(parse_membership(br#"{"user":"u:x","groups":["g:y"]}"#).is_ok());
        assert!(parse_membership(br#"{"user":"g:x","groups":[]}"#).is_err());
        assert!(parse_membership(br#"{"user":"u:x","groups":["u:y"]}"#).is_err());
        assert!(parse_membership(br#"{"user":"u:x","group":["g:y"]}"#)
            .expect_err("unknown field")
            .contains("unknown field"));
    }

    #[test]
    fn report_json_shape() {
        let r = BulkReport {
            acked: 2,
            rejected: vec![LineRejection {
                line: 3,
                error: "bad".into(),
            }],
            token: "s1.AQI".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"acked":2,"rejected":[{"line":3,"error":"bad"}],"token":"s1.AQI"}"#
        );
    }
}
