//! Event writers and the count oracle: the feature store's promise under
//! faults. Every event the cluster acknowledged must be counted exactly
//! once by every replica that keeps it, and no event may count twice, even
//! when a writer retries a failed batch or sends an acknowledged one again.
//!
//! Each event has a client-generated id, recorded *before* it is sent; its
//! status only moves forward (pending → indeterminate → acknowledged, when
//! a retry of the same ids is acknowledged). After heal, each replica's
//! all-time view count of a document (and of a user) must lie between the
//! acknowledged events of that key and those plus the indeterminate ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::Serialize;
use tessera_client::TesseraClient;
use tessera_proto::pb;
use tessera_proto::{NodeId, ShardId};

use crate::cluster::{Cluster, OBSERVER_RPC};
use crate::history::{OpStatus, Tally};
use crate::model;
use crate::rng::SeededRng;
use crate::workload::{Shared, TenantState};

/// All-time view count of a document (entity `doc`).
pub const DOC_VIEWS: &str = "chaos_doc_views";
/// All-time view count of a user (entity `user`), kept by every partition.
pub const USER_VIEWS: &str = "chaos_user_views";

/// The definitions the run registers on every tenant before the workload.
pub const FEATURES_TOML: &str = r#"
[[feature]]
name = "chaos_doc_views"
entity = "doc"
source = "view"
aggregation = "count"
description = "chaos count oracle: views of a document, all time"

[[feature]]
name = "chaos_user_views"
entity = "user"
source = "view"
aggregation = "count"
description = "chaos count oracle: views by a user, all time"
"#;

/// Retries of a batch that failed, with the same ids (as the loader does).
const RETRIES: usize = 2;
/// Fraction of acknowledged batches sent a second time on purpose.
const RESEND_RATE: f64 = 0.1;
/// Feature reads in flight at once during the check.
const CHECK_CONCURRENCY: usize = 16;

/// What the oracle knows of one event.
#[derive(Clone, Debug)]
struct EventRecord {
    tenant: String,
    doc: u32,
    user: usize,
    status: OpStatus,
}

/// The keys an event counts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CountKey {
    /// A document number of the tenant.
    Doc(u32),
    /// An index into [`model::USERS`].
    User(usize),
}

/// Acknowledged and indeterminate events of one key: a replica's count
/// must be in `acked ..= acked + maybe`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bounds {
    /// Events that must be counted.
    pub acked: u64,
    /// Events that may or may not be counted.
    pub maybe: u64,
}

/// How events were sent.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct EventStats {
    /// Distinct events.
    pub events: u64,
    /// Acknowledged (possibly by a retry).
    pub acked: u64,
    /// Never acknowledged: may or may not be counted.
    pub indeterminate: u64,
    /// Batches sent again after a failure, with the same ids.
    pub retried_batches: u64,
    /// Acknowledged batches sent again on purpose (duplicate delivery).
    pub resent_batches: u64,
}

#[derive(Default)]
struct LogInner {
    events: HashMap<String, EventRecord>,
    retried: u64,
    resent: u64,
}

/// The shared record of every event the writers sent.
#[derive(Default)]
pub struct EventLog {
    inner: parking_lot::Mutex<LogInner>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("events", &self.inner.lock().events.len())
            .finish()
    }
}

impl EventLog {
    /// An empty log.
    pub fn new() -> Self {
        EventLog::default()
    }

    /// Records events about to be sent for the first time.
    pub fn attempt(&self, tenant: &str, events: &[(String, u32, usize)]) {
        let mut g = self.inner.lock();
        for (id, doc, user) in events {
            g.events.insert(
                id.clone(),
                EventRecord {
                    tenant: tenant.to_string(),
                    doc: *doc,
                    user: *user,
                    status: OpStatus::Pending,
                },
            );
        }
    }

    /// Records what the client learned of a send of `ids`. An
    /// acknowledgement is final; a failure after one changes nothing.
    pub fn finish<'a>(&self, ids: impl IntoIterator<Item = &'a String>, acked: bool) {
        let mut g = self.inner.lock();
        for id in ids {
            if let Some(e) = g.events.get_mut(id) {
                if acked {
                    e.status = OpStatus::Acked;
                } else if e.status == OpStatus::Pending {
                    e.status = OpStatus::Indeterminate;
                }
            }
        }
    }

    fn count_retry(&self) {
        self.inner.lock().retried += 1;
    }

    fn count_resend(&self) {
        self.inner.lock().resent += 1;
    }

    /// Totals, for the report.
    pub fn stats(&self) -> EventStats {
        let g = self.inner.lock();
        let acked = g
            .events
            .values()
            .filter(|e| e.status == OpStatus::Acked)
            .count() as u64;
        EventStats {
            events: g.events.len() as u64,
            acked,
            indeterminate: g.events.len() as u64 - acked,
            retried_batches: g.retried,
            resent_batches: g.resent,
        }
    }

    /// Per tenant and key, the bounds a replica's count must respect.
    pub fn bounds(&self) -> BTreeMap<String, BTreeMap<CountKey, Bounds>> {
        let g = self.inner.lock();
        let mut out: BTreeMap<String, BTreeMap<CountKey, Bounds>> = BTreeMap::new();
        for e in g.events.values() {
            let keys = out.entry(e.tenant.clone()).or_default();
            for key in [CountKey::Doc(e.doc), CountKey::User(e.user)] {
                let b = keys.entry(key).or_default();
                if e.status == OpStatus::Acked {
                    b.acked += 1;
                } else {
                    b.maybe += 1;
                }
            }
        }
        out
    }
}

/// Wall-clock milliseconds: event times are epoch times.
fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One event writer of one tenant: batches of one to four view events with
/// ids of its own, a failed batch retried with the same ids, and some
/// acknowledged batches sent again, all of which must count once.
pub async fn event_writer(
    shared: Shared,
    log: Arc<EventLog>,
    client: TesseraClient,
    tenant: usize,
    slot: usize,
) {
    let Some(t) = shared.tenants.get(tenant).cloned() else {
        return;
    };
    let name = t.plan.name.clone();
    let mut rng = SeededRng::derive(shared.config.seed, &format!("events/{name}/{slot}"));
    let mut seq = 0u64;
    while !shared.stopped() {
        shared.ops.fetch_add(1, Ordering::Relaxed);
        let n = rng.range(1, 4);
        let mut batch = Vec::new();
        let mut lines = Vec::new();
        for _ in 0..n {
            seq += 1;
            let id = format!("ev-{name}-{slot}-{seq}");
            let doc = rng.below(t.plan.docs.max(1) as usize) as u32;
            let user = rng.below(model::USERS.len());
            let event = tessera_proto::Event {
                kind: tessera_proto::EventKind::View,
                user: model::USERS[user].0.to_string(),
                doc: model::doc_id(&name, doc),
                space: "ENG".into(),
                ts: tessera_proto::event::format_ts_millis(epoch_ms()),
                value: None,
                impression: None,
                id: Some(id.clone()),
            };
            match serde_json::to_vec(&event) {
                Ok(line) => lines.push(line),
                Err(e) => {
                    tracing::error!(error = %e, "event does not serialise");
                    return;
                }
            }
            batch.push((id, doc, user));
        }
        log.attempt(&name, &batch);
        let ids: Vec<String> = batch.into_iter().map(|(id, _, _)| id).collect();
        let mut acked = send(&client, &name, &lines, &log, &ids).await;
        for _ in 0..RETRIES {
            if acked || shared.stopped() {
                break;
            }
            log.count_retry();
            acked = send(&client, &name, &lines, &log, &ids).await;
        }
        if acked && rng.chance(RESEND_RATE) {
            log.count_resend();
            send(&client, &name, &lines, &log, &ids).await;
        }
        shared.pace(shared.config.write_pause).await;
    }
}

/// Sends one batch and records the outcome; true when acknowledged.
async fn send(
    client: &TesseraClient,
    tenant: &str,
    lines: &[Vec<u8>],
    log: &EventLog,
    ids: &[String],
) -> bool {
    let acked = match client.put_events(tenant, lines.to_vec(), "").await {
        Ok((n, _)) => n as usize == lines.len(),
        Err(e) => {
            tracing::debug!(tenant, error = %e, "event batch indeterminate");
            false
        }
    };
    log.finish(ids, acked);
    acked
}

/// Registers [`FEATURES_TOML`] on every tenant (before the workload, on a
/// healthy cluster).
pub async fn register(client: &TesseraClient, tenants: &[TenantState]) -> Result<(), String> {
    for t in tenants {
        client
            .apply_features(&t.plan.name, FEATURES_TOML)
            .await
            .map_err(|e| format!("registering the chaos features of {}: {e}", t.plan.name))?;
    }
    Ok(())
}

/// The count oracle's verdict after heal.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EventCheck {
    /// How the events were sent.
    pub sent: EventStats,
    /// Replica values compared with the oracle.
    pub values_checked: u64,
    /// A replica counts fewer events of a key than were acknowledged.
    pub lost: Tally,
    /// A replica counts more events of a key than were ever sent.
    pub double_counted: Tally,
    /// Replica reads that failed (the checker could not look).
    pub unreadable: Tally,
}

/// One replica value to read: tenant, key, shard, node.
struct Probe {
    tenant: String,
    key: CountKey,
    shard: ShardId,
    node: NodeId,
}

/// Reads every key's count on every replica that keeps it (a document's on
/// its partition's shard, a user's on every shard of the tenant) and holds
/// it to the oracle's bounds.
pub async fn check(
    cluster: &Cluster,
    tenants: &[TenantState],
    shards: &BTreeMap<ShardId, (String, Vec<NodeId>)>,
    log: &EventLog,
) -> EventCheck {
    let mut out = EventCheck {
        sent: log.stats(),
        ..EventCheck::default()
    };
    let bounds = log.bounds();
    let mut probes = Vec::new();
    for t in tenants {
        let Some(keys) = bounds.get(&t.plan.name) else {
            continue;
        };
        for key in keys.keys() {
            let homes: Vec<ShardId> = match key {
                CountKey::Doc(k) => t
                    .shard_of(&model::doc_id(&t.plan.name, *k))
                    .into_iter()
                    .collect(),
                CountKey::User(_) => t.distinct_shards(),
            };
            for shard in homes {
                for node in shards.get(&shard).map(|s| s.1.clone()).unwrap_or_default() {
                    probes.push(Probe {
                        tenant: t.plan.name.clone(),
                        key: *key,
                        shard,
                        node,
                    });
                }
            }
        }
    }
    let results: Vec<(Probe, std::result::Result<u64, String>)> = stream::iter(probes)
        .map(|p| async move {
            let v = replica_count(cluster, &p).await;
            (p, v)
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect()
        .await;
    for (p, value) in results {
        let b = bounds
            .get(&p.tenant)
            .and_then(|k| k.get(&p.key))
            .copied()
            .unwrap_or_default();
        judge(&mut out, &p, b, value);
    }
    out
}

/// Holds one replica value to its bounds.
fn judge(out: &mut EventCheck, p: &Probe, b: Bounds, value: std::result::Result<u64, String>) {
    let what = || match p.key {
        CountKey::Doc(k) => model::doc_id(&p.tenant, k),
        CountKey::User(u) => format!("{} in {}", model::USERS[u].0, p.tenant),
    };
    match value {
        Err(e) => out.unreadable.add(|| e),
        Ok(v) => {
            out.values_checked += 1;
            if v < b.acked {
                out.lost.add(|| {
                    format!(
                        "{} on shard {} node {}: {v} views counted, {} acknowledged",
                        what(),
                        p.shard,
                        p.node,
                        b.acked
                    )
                });
            } else if v > b.acked + b.maybe {
                out.double_counted.add(|| {
                    format!(
                        "{} on shard {} node {}: {v} views counted, only {} sent ({} acknowledged)",
                        what(),
                        p.shard,
                        p.node,
                        b.acked + b.maybe,
                        b.acked
                    )
                });
            }
        }
    }
}

/// The count of one key on one replica (absent = 0).
async fn replica_count(cluster: &Cluster, p: &Probe) -> std::result::Result<u64, String> {
    let (entity, feature) = match p.key {
        CountKey::Doc(k) => (
            pb::EntityKey {
                doc: model::doc_id(&p.tenant, k),
                ..Default::default()
            },
            DOC_VIEWS,
        ),
        CountKey::User(u) => (
            pb::EntityKey {
                user: model::USERS[u].0.to_string(),
                ..Default::default()
            },
            USER_VIEWS,
        ),
    };
    let mut c = cluster.features_client(p.node).map_err(|e| e.to_string())?;
    let timeout = OBSERVER_RPC * 3;
    let mut req = tonic::Request::new(pb::OnlineFeaturesRequest {
        tenant: p.tenant.clone(),
        shard: p.shard,
        entity: Some(entity),
        features: vec![feature.to_string()],
        timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        ..Default::default()
    });
    req.set_timeout(timeout + Duration::from_secs(1));
    let r = tokio::time::timeout(timeout + Duration::from_secs(1), c.online_features(req))
        .await
        .map_err(|_| format!("node {}: no answer", p.node))?
        .map_err(|s| format!("node {} shard {}: {}", p.node, p.shard, s.message()))?
        .into_inner();
    let v = r.values.first().and_then(|v| v.value).unwrap_or(0.0);
    Ok(v.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_move_forward_and_bounds_follow() {
        let log = EventLog::new();
        let batch = vec![("a".to_string(), 1, 0), ("b".to_string(), 1, 2)];
        log.attempt("zt", &batch);
        let ids: Vec<String> = batch.iter().map(|b| b.0.clone()).collect();
        log.finish(&ids, false);
        let b = log.bounds();
        assert_eq!(b["zt"][&CountKey::Doc(1)], Bounds { acked: 0, maybe: 2 });
        // The retry is acknowledged, then a duplicate send fails: still acked.
        log.finish(&ids, true);
        log.finish(&ids, false);
        let b = log.bounds();
        assert_eq!(b["zt"][&CountKey::Doc(1)], Bounds { acked: 2, maybe: 0 });
        assert_eq!(b["zt"][&CountKey::User(2)], Bounds { acked: 1, maybe: 0 });
        assert_eq!(log.stats().acked, 2);
    }

    #[test]
    fn judge_flags_lost_and_double_counted() {
        let p = Probe {
            tenant: "zt".into(),
            key: CountKey::Doc(3),
            shard: 7,
            node: 1,
        };
        let b = Bounds { acked: 2, maybe: 1 };
        let mut out = EventCheck::default();
        for v in [2, 3] {
            judge(&mut out, &p, b, Ok(v));
        }
        assert_eq!((out.lost.count, out.double_counted.count), (0, 0));
        judge(&mut out, &p, b, Ok(1));
        judge(&mut out, &p, b, Ok(4));
        judge(&mut out, &p, b, Err("down".into()));
        assert_eq!(out.lost.count, 1);
        assert_eq!(out.double_counted.count, 1);
        assert_eq!(out.unreadable.count, 1);
        assert_eq!(out.values_checked, 4);
    }
}
