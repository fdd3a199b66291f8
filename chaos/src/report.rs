//! The result of a chaos run: what was injected, what the workload saw,
//! what the checkers found, and the verdict. Serialises to the `--json`
//! object and prints as a human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::check::{ResidencyCheck, ShardConvergence, StoreCheck};
use crate::events::EventCheck;
use crate::history::{OnlineFindings, OpStatus, ReadSample, Snapshot};
use crate::nemesis::AppliedFault;

/// Reads that succeeded out of those attempted.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Availability {
    /// Reads attempted.
    pub reads: u64,
    /// Reads that succeeded.
    pub ok: u64,
    /// `ok / reads` (1.0 when there were none).
    pub availability: f64,
}

impl Availability {
    fn add(&mut self, ok: bool) {
        self.reads += 1;
        if ok {
            self.ok += 1;
        }
        self.availability = self.ok as f64 / self.reads as f64;
    }
}

impl Default for Availability {
    /// No reads yet: nothing failed, so fully available.
    fn default() -> Self {
        Availability {
            reads: 0,
            ok: 0,
            availability: 1.0,
        }
    }
}

/// Read availability split by when the read happened.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReadAvailability {
    /// Every counted read.
    pub overall: Availability,
    /// Reads that started while no fault was active.
    pub steady: Availability,
    /// Reads that started while some fault was active.
    pub during_faults: Availability,
    /// By fault kind (a read during two overlapping faults counts for both).
    pub by_kind: BTreeMap<String, Availability>,
    /// Reads through a router whose own region was out at the time: not
    /// counted, since its clients are in the failed region too.
    pub excluded: u64,
    /// Per fault window (each injected fault, in schedule order).
    pub windows: Vec<WindowAvailability>,
}

/// Read availability inside one fault's window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WindowAvailability {
    /// Schedule step.
    pub step: usize,
    /// Fault kind.
    pub kind: String,
    /// Window start (ms).
    pub at_ms: u64,
    /// Window end (ms).
    pub healed_ms: u64,
    /// Reads in flight during the window, and how many succeeded.
    pub reads: Availability,
}

/// Splits reads into fault windows. A read belongs to a window when it
/// was in flight at some point of it (a read sent just before a fault and
/// caught by it is a read during the fault); a fault not yet healed at the
/// end extends to `end_ms`.
pub fn read_availability(
    reads: &[ReadSample],
    faults: &[AppliedFault],
    router_region: &dyn Fn(usize) -> usize,
    end_ms: u64,
) -> ReadAvailability {
    let mut out = ReadAvailability::default();
    let windows: Vec<(&AppliedFault, u64, u64)> = faults
        .iter()
        .filter(|f| f.injected)
        .map(|f| (f, f.at_ms, f.healed_ms.unwrap_or(end_ms)))
        .collect();
    out.windows = windows
        .iter()
        .map(|(f, a, b)| WindowAvailability {
            step: f.step,
            kind: f.kind.clone(),
            at_ms: *a,
            healed_ms: *b,
            reads: Availability::default(),
        })
        .collect();
    for r in reads {
        let active: Vec<&AppliedFault> = windows
            .iter()
            .filter(|(_, a, b)| r.end_ms >= *a && r.start_ms <= *b)
            .map(|(f, _, _)| *f)
            .collect();
        let excluded = active
            .iter()
            .any(|f| f.region.is_some_and(|reg| reg == router_region(r.router)));
        if !excluded {
            for (w, (_, a, b)) in out.windows.iter_mut().zip(&windows) {
                if r.end_ms >= *a && r.start_ms <= *b {
                    w.reads.add(r.ok);
                }
            }
        }
        if excluded {
            out.excluded += 1;
            continue;
        }
        out.overall.add(r.ok);
        if active.is_empty() {
            out.steady.add(r.ok);
        } else {
            out.during_faults.add(r.ok);
            let mut kinds: Vec<&str> = active.iter().map(|f| f.kind.as_str()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            for k in kinds {
                out.by_kind.entry(k.to_string()).or_default().add(r.ok);
            }
        }
    }
    out
}

/// One failover measurement.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverSample {
    /// What was measured: `write-after-leader-loss`, `read-after-region-loss`
    /// or `write-after-region-loss`.
    pub what: String,
    /// The fault's kind.
    pub fault: String,
    /// The schedule step.
    pub step: usize,
    /// Tenant probed.
    pub tenant: String,
    /// Router probed through.
    pub router: usize,
    /// Milliseconds to the first success; `None`: no success before the
    /// probe's deadline.
    pub ms: Option<u64>,
}

/// Percentiles of one kind of failover.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FailoverStats {
    /// Measurements that succeeded.
    pub samples: usize,
    /// Probes that never succeeded before their deadline.
    pub timeouts: usize,
    /// Median, ms.
    pub p50_ms: Option<u64>,
    /// 99th percentile (nearest rank), ms.
    pub p99_ms: Option<u64>,
    /// Largest, ms.
    pub max_ms: Option<u64>,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Stats per measured thing.
pub fn failover_stats(samples: &[FailoverSample]) -> BTreeMap<String, FailoverStats> {
    let mut groups: BTreeMap<String, Vec<Option<u64>>> = BTreeMap::new();
    for s in samples {
        groups.entry(s.what.clone()).or_default().push(s.ms);
    }
    groups
        .into_iter()
        .map(|(what, v)| {
            let mut ok: Vec<u64> = v.iter().flatten().copied().collect();
            ok.sort_unstable();
            let stats = FailoverStats {
                samples: ok.len(),
                timeouts: v.len() - ok.len(),
                p50_ms: percentile(&ok, 50.0),
                p99_ms: percentile(&ok, 99.0),
                max_ms: ok.last().copied(),
            };
            (what, stats)
        })
        .collect()
}

/// Counts of the workload's writes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WriteStats {
    /// Write requests (batches) sent by writers.
    pub batches: u64,
    /// Batches fully acknowledged.
    pub batches_ok: u64,
    /// Document operations acknowledged.
    pub acked: u64,
    /// Document operations indeterminate (failed or timed out).
    pub indeterminate: u64,
    /// Document operations rejected.
    pub rejected: u64,
    /// Documents written at least once.
    pub documents: u64,
}

/// Summarises the write history.
pub fn write_stats(snap: &Snapshot) -> WriteStats {
    let mut out = WriteStats {
        batches: snap.writes.len() as u64,
        batches_ok: snap.writes.iter().filter(|w| w.ok).count() as u64,
        ..WriteStats::default()
    };
    for docs in snap.docs.values() {
        for d in docs.values() {
            out.documents += 1;
            for o in &d.ops {
                match o.status {
                    OpStatus::Acked => out.acked += 1,
                    OpStatus::Rejected => out.rejected += 1,
                    OpStatus::Indeterminate | OpStatus::Pending => out.indeterminate += 1,
                }
            }
        }
    }
    out
}

/// One shard of a tenant as placed when the workload started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShardPlacement {
    /// Tenant.
    pub tenant: String,
    /// Partition index.
    pub partition: usize,
    /// Shard id.
    pub shard: u64,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Leader at the start.
    pub leader: Option<u64>,
}

/// Everything a run produced. The first fields are the contract of
/// `--json` (scripts read them); the rest is detail.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed of the schedule and workload.
    pub seed: u64,
    /// Acknowledged writes missing after heal (documents).
    pub lost_acked: u64,
    /// Permission leaks (hits or gets the user may not see, or of another tenant).
    pub leaks: u64,
    /// Every shard's replicas reported equal digests after heal.
    pub converged: bool,
    /// Fraction of counted reads that succeeded (see `reads`).
    pub read_availability: f64,
    /// Faults injected.
    pub faults_injected: u64,
    /// Read-your-writes violations.
    pub rw_violations: u64,
    /// p99 of the time from losing a shard leader (kill, pause, isolation,
    /// one-way cut) to the first acknowledged write on that shard, ms.
    pub failover_ms_p99: Option<u64>,
    /// p99 of the time from a region outage to the first successful read
    /// through a router of a surviving region, ms.
    pub region_read_failover_ms_p99: Option<u64>,
    /// Duplicate hits in one page.
    pub duplicates: u64,
    /// Hits or gets of documents never written.
    pub phantoms: u64,
    /// Documents whose content differs from what was written (online or at rest).
    pub corrupt: u64,
    /// Acknowledged events some replica does not count (summed over keys).
    pub lost_events: u64,
    /// Keys some replica counts more events of than were ever sent.
    pub double_counted_events: u64,
    /// The share of counted reads that must succeed in this scenario.
    pub availability_floor: f64,
    /// The share of reads started while no fault was active that must
    /// succeed.
    pub steady_availability_floor: f64,
    /// Fewer faults injected than this fails the run.
    pub min_faults: u64,
    /// Every violation, one line each; empty means the run passed.
    pub violations: Vec<String>,
    /// True when `violations` is empty.
    pub ok: bool,
    /// Requested duration of the workload, s.
    pub duration_s: u64,
    /// Wall time of the whole run (setup and checks included), s.
    pub elapsed_s: f64,
    /// Faults that could not be injected (target unresolvable).
    pub faults_skipped: u64,
    /// Every fault as it happened.
    pub faults: Vec<AppliedFault>,
    /// Heals that failed (a node that did not come back).
    pub heal_errors: Vec<String>,
    /// Writes.
    pub writes: WriteStats,
    /// Read availability detail.
    pub reads: ReadAvailability,
    /// Failover measurements.
    pub failover: Vec<FailoverSample>,
    /// Failover percentiles by measurement.
    pub failover_stats: BTreeMap<String, FailoverStats>,
    /// Convergence per shard.
    pub shards: Vec<ShardConvergence>,
    /// The at-rest checks.
    pub store: StoreCheck,
    /// The online checks.
    pub online: OnlineFindings,
    /// Read-your-writes checks that passed.
    pub rw_checks_ok: u64,
    /// Where the cluster's files were kept (failed runs, or `--keep`).
    pub cluster_dir: Option<String>,
    /// Tenants' shards, replicas and leaders at the start.
    pub placement: Vec<ShardPlacement>,
    /// The residency check after heal.
    pub residency: ResidencyCheck,
    /// The event count oracle after heal.
    pub events: EventCheck,
}

impl Report {
    /// Fills the headline numbers and the violation list from the detail.
    pub fn finalize(&mut self) {
        let o = &self.online;
        self.leaks = o.leaks.count + self.store.acl_leaks.count;
        self.phantoms = o.phantoms.count;
        self.duplicates = o.duplicates.count;
        self.corrupt = o.corrupt.count + self.store.corrupt.count;
        self.rw_violations = o.rw_violations.count;
        self.rw_checks_ok = o.rw_ok;
        self.lost_acked = self.store.lost_acked.count;
        self.lost_events = self.events.lost.count;
        self.double_counted_events = self.events.double_counted.count;
        self.converged = !self.shards.is_empty() && self.shards.iter().all(|s| s.converged);
        self.read_availability = self.reads.overall.availability;
        self.faults_injected = self.faults.iter().filter(|f| f.injected).count() as u64;
        self.faults_skipped = self.faults.iter().filter(|f| !f.injected).count() as u64;
        self.failover_stats = failover_stats(&self.failover);
        self.failover_ms_p99 = self
            .failover_stats
            .get("write-after-leader-loss")
            .and_then(|s| s.p99_ms);
        self.region_read_failover_ms_p99 = self
            .failover_stats
            .get("read-after-region-loss")
            .and_then(|s| s.p99_ms);
        let mut v = Vec::new();
        let mut count = |n: u64, what: &str, examples: &[String]| {
            if n > 0 {
                let first = examples.first().cloned().unwrap_or_default();
                v.push(format!("{n} {what} (first: {first})"));
            }
        };
        count(
            self.lost_acked,
            "lost acknowledged writes",
            &self.store.lost_acked.examples,
        );
        count(
            self.lost_events,
            "replica counts missing acknowledged events",
            &self.events.lost.examples,
        );
        count(
            self.double_counted_events,
            "replica counts with events counted twice",
            &self.events.double_counted.examples,
        );
        count(
            self.events.unreadable.count,
            "replica feature reads failed after heal",
            &self.events.unreadable.examples,
        );
        count(o.leaks.count, "permission leaks", &o.leaks.examples);
        count(
            self.store.acl_leaks.count,
            "permission leaks at rest",
            &self.store.acl_leaks.examples,
        );
        count(
            self.store.acl_missing.count,
            "documents hidden from users who may see them",
            &self.store.acl_missing.examples,
        );
        count(o.phantoms.count, "phantom hits", &o.phantoms.examples);
        count(o.duplicates.count, "duplicate hits", &o.duplicates.examples);
        count(
            o.corrupt.count,
            "corrupt documents read",
            &o.corrupt.examples,
        );
        count(
            self.store.corrupt.count,
            "corrupt documents at rest",
            &self.store.corrupt.examples,
        );
        count(
            self.store.unexplained.count,
            "unexplained versions at rest",
            &self.store.unexplained.examples,
        );
        count(
            self.store.misplaced.count,
            "misplaced documents",
            &self.store.misplaced.examples,
        );
        count(
            self.store.index_mismatch.count,
            "index/store mismatches",
            &self.store.index_mismatch.examples,
        );
        count(
            self.store.index_stalled.count,
            "replicas whose search index stalled behind their store",
            &self.store.index_stalled.examples,
        );
        count(
            o.rw_violations.count,
            "read-your-writes violations",
            &o.rw_violations.examples,
        );
        count(
            o.rejected_writes.count,
            "valid writes rejected",
            &o.rejected_writes.examples,
        );
        count(
            self.store.unreadable.count,
            "replica reads failed after heal",
            &self.store.unreadable.examples,
        );
        if !self.converged {
            let bad: Vec<String> = self
                .shards
                .iter()
                .filter(|s| !s.converged)
                .map(|s| {
                    format!(
                        "shard {} ({}): {:?} {}",
                        s.shard,
                        s.tenant,
                        s.last
                            .iter()
                            .map(|(n, a, d, _)| (n, a, d))
                            .collect::<Vec<_>>(),
                        s.error.clone().unwrap_or_default()
                    )
                })
                .collect();
            v.push(format!("replicas did not converge: {}", bad.join("; ")));
        }
        if let Some(first) = self.residency.violations.first() {
            v.push(format!(
                "{} replicas outside their tenant's regions (first: {first})",
                self.residency.violations.len()
            ));
        }
        if let Some(e) = &self.residency.error {
            v.push(format!("residency check incomplete: {e}"));
        }
        for e in &self.heal_errors {
            v.push(format!("heal failed: {e}"));
        }
        for f in self.faults.iter().filter(|f| f.injected) {
            if let Some(e) = &f.error {
                v.push(format!("fault {} ({}): {e}", f.step, f.detail));
            }
        }
        for (what, s) in &self.failover_stats {
            if s.timeouts > 0 {
                v.push(format!("{what}: {} probes never succeeded", s.timeouts));
            }
        }
        if self.reads.overall.availability < self.availability_floor {
            v.push(format!(
                "read availability {:.4} below the floor of {} ({} of {} reads failed; by fault kind: {}; first failure: {})",
                self.reads.overall.availability,
                self.availability_floor,
                self.reads.overall.reads - self.reads.overall.ok,
                self.reads.overall.reads,
                self.reads
                    .by_kind
                    .iter()
                    .map(|(k, a)| format!("{k} {}/{}", a.ok, a.reads))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.online
                    .failed_reads
                    .examples
                    .first()
                    .cloned()
                    .unwrap_or_default()
            ));
        }
        if self.faults_injected < self.min_faults {
            v.push(format!(
                "only {} faults injected, the run asked for at least {}",
                self.faults_injected, self.min_faults
            ));
        }
        if self.reads.steady.availability < self.steady_availability_floor {
            v.push(format!(
                "read availability with no fault active {:.4} below the floor of {} ({} of {} reads failed)",
                self.reads.steady.availability,
                self.steady_availability_floor,
                self.reads.steady.reads - self.reads.steady.ok,
                self.reads.steady.reads
            ));
        }
        self.ok = v.is_empty();
        self.violations = v;
    }

    /// Whether the data invariants held (no lost, leaked, corrupt or
    /// duplicated data, replicas converged, read-your-writes), ignoring
    /// availability, failover timing and process-level findings (a hang on
    /// SIGTERM), which depend on timing or are reported separately.
    pub fn safety_ok(&self) -> bool {
        self.lost_acked == 0
            && self.lost_events == 0
            && self.double_counted_events == 0
            && self.leaks == 0
            && self.phantoms == 0
            && self.duplicates == 0
            && self.corrupt == 0
            && self.rw_violations == 0
            && self.converged
            && self.store.unexplained.count == 0
            && self.store.misplaced.count == 0
            && self.store.index_mismatch.count == 0
            && self.store.acl_missing.count == 0
            && self.store.index_stalled.count == 0
            && self.online.rejected_writes.count == 0
            && self.residency.violations.is_empty()
            && self.events.unreadable.count == 0
    }

    /// A few lines for a human.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let pct =
            |a: &Availability| format!("{:.2}% ({}/{})", a.availability * 100.0, a.ok, a.reads);
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        let _ = writeln!(
            s,
            "scenario {} seed {}: {} ({:.0} s, {} faults injected, {} skipped)",
            self.scenario,
            self.seed,
            if self.ok { "PASS" } else { "FAIL" },
            self.elapsed_s,
            self.faults_injected,
            self.faults_skipped
        );
        let _ = writeln!(
            s,
            "  writes: {} batches ({} ok), {} acked, {} indeterminate, {} rejected, {} documents",
            self.writes.batches,
            self.writes.batches_ok,
            self.writes.acked,
            self.writes.indeterminate,
            self.writes.rejected,
            self.writes.documents
        );
        let _ = writeln!(
            s,
            "  reads: availability {} overall, {} steady, {} during faults, {} excluded (router in a failed region)",
            pct(&self.reads.overall),
            pct(&self.reads.steady),
            pct(&self.reads.during_faults),
            self.reads.excluded
        );
        for (k, a) in &self.reads.by_kind {
            let _ = writeln!(s, "    during {k}: {}", pct(a));
        }
        for w in self
            .reads
            .windows
            .iter()
            .filter(|w| w.reads.ok < w.reads.reads)
        {
            let _ = writeln!(
                s,
                "    window of fault {} ({}, {}..{} ms): {}",
                w.step,
                w.kind,
                w.at_ms,
                w.healed_ms,
                pct(&w.reads)
            );
        }
        let _ = writeln!(
            s,
            "  lost acked {}, leaks {}, phantoms {}, duplicates {}, corrupt {}, read-your-writes violations {} ({} checks ok, {} unavailable)",
            self.lost_acked,
            self.leaks,
            self.phantoms,
            self.duplicates,
            self.corrupt,
            self.rw_violations,
            self.rw_checks_ok,
            self.online.rw_unavailable
        );
        let _ = writeln!(
            s,
            "  converged: {} ({} shards); store check: {} documents, {} replica reads, {} index mismatches; permission filter at rest: {} searches, {} leaks, {} missing",
            self.converged,
            self.shards.len(),
            self.store.docs_checked,
            self.store.replica_reads,
            self.store.index_mismatch.count,
            self.store.acl_searches,
            self.store.acl_leaks.count,
            self.store.acl_missing.count
        );
        let _ = writeln!(
            s,
            "  events: {} sent ({} acked, {} indeterminate; {} batches retried, {} resent on purpose); {} replica counts checked: {} lost, {} double-counted, {} unreadable",
            self.events.sent.events,
            self.events.sent.acked,
            self.events.sent.indeterminate,
            self.events.sent.retried_batches,
            self.events.sent.resent_batches,
            self.events.values_checked,
            self.lost_events,
            self.double_counted_events,
            self.events.unreadable.count
        );
        let _ = writeln!(
            s,
            "  residency: {} replicas checked, {} outside their tenant's regions{}",
            self.residency.replicas,
            self.residency.violations.len(),
            self.residency
                .error
                .as_ref()
                .map_or(String::new(), |e| format!(" (incomplete: {e})"))
        );
        let _ = writeln!(
            s,
            "  oracle: {} hits and {} found documents checked online ({} for users other than root)",
            self.online.hits_checked,
            self.online.gets_checked,
            self.online.non_root_checked
        );
        for (what, st) in &self.failover_stats {
            let _ = writeln!(
                s,
                "  failover {what}: n={} p50 {} p99 {} max {} timeouts {}",
                st.samples,
                ms(st.p50_ms),
                ms(st.p99_ms),
                ms(st.max_ms),
                st.timeouts
            );
        }
        for v in &self.violations {
            let _ = writeln!(s, "  VIOLATION: {v}");
        }
        let placed: Vec<String> = self
            .placement
            .iter()
            .map(|p| {
                format!(
                    "{}/{} shard {} voters {:?} learners {:?} leader {}",
                    p.tenant,
                    p.partition,
                    p.shard,
                    p.voters,
                    p.learners,
                    p.leader.map_or("-".into(), |l| l.to_string())
                )
            })
            .collect();
        if !placed.is_empty() {
            let _ = writeln!(s, "  placement: {}", placed.join("; "));
        }
        if let Some(d) = &self.cluster_dir {
            let _ = writeln!(s, "  cluster files: {d}");
        }
        s
    }
}

/// A markdown table of several runs, one row per scenario: what
/// `scripts/chaos.sh` prints and `docs/reliability.md` records.
pub fn table(reports: &[Report]) -> String {
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut s = String::from(
        "| scenario | seed | s | faults | lost acked | events acked | events lost / twice | leaks | converged | read avail. | rw viol. | dup. | write failover p99 ms | region read failover p99 ms | result |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {:.2}% ({}/{}) | {} | {} | {} | {} | {} |",
            r.scenario,
            r.seed,
            r.duration_s,
            r.faults_injected,
            r.lost_acked,
            r.events.sent.acked,
            r.lost_events,
            r.double_counted_events,
            r.leaks,
            if r.converged { "yes" } else { "NO" },
            r.read_availability * 100.0,
            r.reads.overall.ok,
            r.reads.overall.reads,
            r.rw_violations,
            r.duplicates,
            ms(r.failover_ms_p99),
            ms(r.region_read_failover_ms_p99),
            if r.ok { "pass" } else { "FAIL" }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 99.0), None);
        assert_eq!(percentile(&[1, 2, 3], 99.0), Some(3));
    }

    fn read(start: u64, router: usize, ok: bool) -> ReadSample {
        ReadSample {
            start_ms: start,
            end_ms: start + 1,
            router,
            tenant: "zt".into(),
            ok,
        }
    }

    #[test]
    fn availability_by_window_and_region_exclusion() {
        let faults = vec![
            AppliedFault {
                kind: "kill".into(),
                at_ms: 100,
                healed_ms: Some(200),
                injected: true,
                ..AppliedFault::default()
            },
            AppliedFault {
                kind: "region-outage".into(),
                region: Some(0),
                at_ms: 300,
                healed_ms: None,
                injected: true,
                ..AppliedFault::default()
            },
        ];
        let reads = vec![
            read(50, 0, true),
            read(150, 1, false),
            read(160, 1, true),
            read(350, 0, false), // router 0 is in region 0: excluded
            read(360, 1, true),
        ];
        let a = read_availability(&reads, &faults, &|r| r, 1000);
        assert_eq!(a.excluded, 1);
        assert_eq!((a.overall.reads, a.overall.ok), (4, 3));
        assert_eq!((a.steady.reads, a.steady.ok), (1, 1));
        assert_eq!(a.by_kind["kill"].reads, 2);
        assert_eq!(a.by_kind["kill"].ok, 1);
        assert_eq!(a.by_kind["region-outage"].ok, 1);
        assert_eq!(a.windows.len(), 2);
        assert_eq!((a.windows[0].reads.reads, a.windows[0].reads.ok), (2, 1));
        assert_eq!((a.windows[1].reads.reads, a.windows[1].reads.ok), (1, 1));
    }

    #[test]
    fn availability_floors_judge_overall_and_steady_reads() {
        let avail = |reads, ok| Availability {
            reads,
            ok,
            availability: ok as f64 / reads as f64,
        };
        let verdict = |overall: Availability, steady: Availability| {
            let mut r = Report {
                availability_floor: 0.99,
                steady_availability_floor: 0.99,
                ..Report::default()
            };
            r.reads.overall = overall;
            r.reads.steady = steady;
            r.finalize();
            r.violations
                .iter()
                .filter(|v| v.contains("availability"))
                .count()
        };
        assert_eq!(verdict(avail(1000, 995), avail(500, 500)), 0);
        assert_eq!(verdict(avail(1000, 985), avail(500, 500)), 1);
        assert_eq!(verdict(avail(1000, 995), avail(500, 490)), 1);
    }

    #[test]
    fn finalize_flags_violations() {
        let mut r = Report {
            availability_floor: 1.0,
            ..Report::default()
        };
        r.reads.overall = Availability {
            reads: 10,
            ok: 9,
            availability: 0.9,
        };
        r.finalize();
        assert!(!r.ok);
        assert!(!r.converged, "no shard checked is not converged");
        assert!(r.violations.iter().any(|v| v.contains("availability")));
        r.failover = vec![FailoverSample {
            what: "write-after-leader-loss".into(),
            fault: "kill".into(),
            step: 0,
            tenant: "zt".into(),
            router: 0,
            ms: Some(1500),
        }];
        r.finalize();
        assert_eq!(r.failover_ms_p99, Some(1500));
        let t = table(&[r]);
        assert_eq!(t.lines().count(), 3);
        assert!(t.contains("| 1500 |") && t.contains("FAIL"), "{t}");
    }

    #[test]
    fn residency_violations_and_an_incomplete_check_fail_the_run() {
        let mut r = Report::default();
        r.residency.violations = vec!["tenant a shard 3 on node 7 in eu (node)".into()];
        r.finalize();
        assert!(!r.safety_ok());
        assert!(r
            .violations
            .iter()
            .any(|v| v.starts_with("1 replicas outside") && v.contains("node 7")));
        let mut r = Report::default();
        r.residency.error = Some("nodes [2] never answered".into());
        r.finalize();
        assert!(r
            .violations
            .iter()
            .any(|v| v.contains("residency check incomplete")));
    }
}
