//! The checkers that run after the cluster healed: replicas converge (equal
//! per-shard digests), no acknowledged write is lost on any replica, every
//! stored document is a version that was written with exactly its content,
//! and each replica's search index agrees with its store.
//!
//! They talk to every replica directly (not through a router), because a
//! router would hide a diverged replica behind a healthy one.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::Serialize;
use tessera_proto::pb;
use tessera_proto::{Document, NodeId, ShardId};
use tokio::time::Instant;

use crate::cluster::{Cluster, OBSERVER_RPC};
use crate::error::{ChaosError, Result};
use crate::history::{Snapshot, Tally, Verdict};
use crate::model;
use crate::workload::TenantState;

/// Observer calls in flight at once during the store check.
const CHECK_CONCURRENCY: usize = 16;
/// How often digests are compared while waiting for convergence.
const CONVERGE_POLL: Duration = Duration::from_millis(250);

/// One shard's convergence result.
#[derive(Clone, Debug, Serialize)]
pub struct ShardConvergence {
    /// Shard id.
    pub shard: ShardId,
    /// Tenant owning it.
    pub tenant: String,
    /// Voters and learners from the cluster map.
    pub replicas: Vec<NodeId>,
    /// Whether every replica reported the same applied index and digest.
    pub converged: bool,
    /// Last (node, applied, docs, digest) seen per replica.
    pub last: Vec<(NodeId, u64, u64, String)>,
    /// The last error, when a replica did not answer.
    pub error: Option<String>,
}

/// Replicas of every shard of the tenants, from the newest map.
pub async fn replicas(
    cluster: &Cluster,
    tenants: &[TenantState],
) -> Result<BTreeMap<ShardId, (String, Vec<NodeId>)>> {
    let map = cluster.any_map().await?;
    let mut out = BTreeMap::new();
    for t in tenants {
        for s in &t.shards {
            let entry = map
                .shards
                .iter()
                .find(|x| x.id == *s)
                .ok_or_else(|| ChaosError::Rpc(format!("shard {s} is not in the map")))?;
            let mut reps: Vec<NodeId> = entry
                .voters
                .iter()
                .chain(entry.learners.iter())
                .copied()
                .collect();
            reps.sort_unstable();
            reps.dedup();
            out.insert(*s, (t.plan.name.clone(), reps));
        }
    }
    Ok(out)
}

/// Polls every shard's replicas until their digests and applied indexes
/// are equal, or `deadline` passes.
pub async fn convergence(
    cluster: &Cluster,
    shards: &BTreeMap<ShardId, (String, Vec<NodeId>)>,
    deadline: Instant,
) -> Vec<ShardConvergence> {
    let mut out = Vec::new();
    for (shard, (tenant, reps)) in shards {
        let mut tick = tokio::time::interval(CONVERGE_POLL);
        let result = loop {
            tick.tick().await;
            let answers =
                futures::future::join_all(reps.iter().map(|n| cluster.digest(*n, *shard))).await;
            let mut last = Vec::new();
            let mut error = None;
            for (n, a) in reps.iter().zip(answers) {
                match a {
                    Ok(d) => last.push((*n, d.applied, d.docs, d.digest)),
                    Err(e) => error = Some(e.to_string()),
                }
            }
            let converged = error.is_none()
                && last.len() == reps.len()
                && last
                    .windows(2)
                    .all(|w| w[0].1 == w[1].1 && w[0].3 == w[1].3);
            if converged || Instant::now() > deadline {
                break ShardConvergence {
                    shard: *shard,
                    tenant: tenant.clone(),
                    replicas: reps.clone(),
                    converged,
                    last,
                    error,
                };
            }
        };
        out.push(result);
    }
    out
}

/// Waits until every replica's search index covers what its store has
/// applied (Status: `index_watermark >= applied` for each shard), or
/// `deadline` passes. Returns the replicas whose index is still behind,
/// with a description: a stalled index serves stale searches forever.
pub async fn index_lag(
    cluster: &Cluster,
    shards: &BTreeMap<ShardId, (String, Vec<NodeId>)>,
    deadline: Instant,
) -> BTreeMap<(ShardId, NodeId), String> {
    let mut tick = tokio::time::interval(CONVERGE_POLL);
    loop {
        tick.tick().await;
        let mut behind = BTreeMap::new();
        for (shard, (_, reps)) in shards {
            for n in reps {
                match cluster.status(*n).await {
                    Ok(st) => match st.groups.iter().find(|g| g.group == *shard) {
                        Some(g) if g.index_watermark >= g.applied => {}
                        Some(g) => {
                            behind.insert(
                                (*shard, *n),
                                format!(
                                    "shard {shard} on node {n}: index watermark {} behind applied {}",
                                    g.index_watermark, g.applied
                                ),
                            );
                        }
                        None => {
                            behind.insert(
                                (*shard, *n),
                                format!("shard {shard} is not open on node {n}"),
                            );
                        }
                    },
                    Err(e) => {
                        behind.insert((*shard, *n), e.to_string());
                    }
                }
            }
        }
        if behind.is_empty() || Instant::now() > deadline {
            return behind;
        }
    }
}

/// The store checker's findings.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreCheck {
    /// Documents checked (each on every replica of every shard of its tenant).
    pub docs_checked: u64,
    /// Replica reads made.
    pub replica_reads: u64,
    /// Documents whose newest acknowledged write is missing on some replica.
    pub lost_acked: Tally,
    /// A replica holds a version that nobody may have applied.
    pub unexplained: Tally,
    /// A replica holds content that differs from what was written.
    pub corrupt: Tally,
    /// A document found on a shard its partition does not map to.
    pub misplaced: Tally,
    /// A replica's search index disagrees with its store.
    pub index_mismatch: Tally,
    /// Replica reads that failed (the checker could not look).
    pub unreadable: Tally,
    /// At rest, a replica's search as some user returned a document whose
    /// stored version does not admit that user (a permission leak).
    pub acl_leaks: Tally,
    /// At rest, a replica's search as some user missed a document its
    /// stored version admits (over-filtering: not a leak, still a bug).
    pub acl_missing: Tally,
    /// (user, replica) searches compared against the oracle at rest.
    pub acl_searches: u64,
    /// Replicas whose search index never caught up with their store after
    /// heal (searches there are stale); their index checks are skipped.
    pub index_stalled: Tally,
}

/// What one replica holds for one document.
async fn replica_get(
    cluster: &Cluster,
    node: NodeId,
    tenant: &str,
    shard: ShardId,
    id: &str,
    map_epoch: u64,
) -> std::result::Result<Option<Document>, String> {
    let mut c = cluster.node_client(node).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(pb::GetRequest {
        tenant: tenant.to_string(),
        shard,
        id: id.to_string(),
        user: model::ROOT_USER.to_string(),
        min_applied: 0,
        // The newest map's epoch: a shard a resize or move touched fences
        // reads made with an older map.
        map_epoch,
    });
    req.set_timeout(OBSERVER_RPC);
    let r = tokio::time::timeout(OBSERVER_RPC, c.get(req))
        .await
        .map_err(|_| format!("node {node}: no answer"))?
        .map_err(|s| format!("node {node}: {}", s.message()))?
        .into_inner();
    if !r.found {
        return Ok(None);
    }
    Document::from_json_bytes(&r.doc_json)
        .map(Some)
        .map_err(|e| format!("node {node} returned an invalid document for {id}: {e}"))
}

/// Documents of `tenant` the replica's index matches for root at `applied`.
async fn replica_count(
    cluster: &Cluster,
    node: NodeId,
    tenant: &str,
    shard: ShardId,
    applied: u64,
    map_epoch: u64,
) -> std::result::Result<u64, String> {
    let mut c = cluster.node_client(node).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(pb::SearchRequest {
        tenant: tenant.to_string(),
        shard,
        user: model::ROOT_USER.to_string(),
        query: String::new(),
        limit: 1,
        min_applied: applied,
        timeout_ms: 10_000,
        map_epoch,
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(12));
    let r = tokio::time::timeout(Duration::from_secs(12), c.search(req))
        .await
        .map_err(|_| format!("node {node}: no answer"))?
        .map_err(|s| format!("node {node}: {}", s.message()))?
        .into_inner();
    Ok(r.total_matches)
}

/// Every document id of `tenant` a replica's match-all search returns for
/// `user`, page by page, once its index covers `applied`.
async fn replica_ids(
    cluster: &Cluster,
    node: NodeId,
    tenant: &str,
    shard: ShardId,
    user: &str,
    applied: u64,
    map_epoch: u64,
) -> std::result::Result<std::collections::BTreeSet<String>, String> {
    let mut out = std::collections::BTreeSet::new();
    let mut after: Option<pb::SearchAfter> = None;
    // Bounded: each page adds new ids and ids are finite; the cap only
    // guards against a server that repeats pages forever.
    for _ in 0..1000 {
        let mut c = cluster.node_client(node).map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(pb::SearchRequest {
            tenant: tenant.to_string(),
            shard,
            user: user.to_string(),
            query: String::new(),
            limit: 500,
            min_applied: applied,
            after: after.clone(),
            timeout_ms: 10_000,
            map_epoch,
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(12));
        let r = tokio::time::timeout(Duration::from_secs(12), c.search(req))
            .await
            .map_err(|_| format!("node {node}: no answer"))?
            .map_err(|s| format!("node {node}: {}", s.message()))?
            .into_inner();
        let Some(last) = r.hits.last() else {
            return Ok(out);
        };
        after = Some(pb::SearchAfter {
            score: last.score,
            id: last.id.clone(),
        });
        let before = out.len();
        out.extend(r.hits.iter().map(|h| h.id.clone()));
        if out.len() == before {
            return Err(format!(
                "node {node}: search as {user} repeated a page after {}",
                last.id
            ));
        }
    }
    Err(format!("node {node}: search as {user} never ended"))
}

/// Checks every written document on every replica of every shard of its
/// tenant against the history, then each replica's index against its store.
pub async fn check_store(
    cluster: &Cluster,
    tenants: &[TenantState],
    shards: &BTreeMap<ShardId, (String, Vec<NodeId>)>,
    convergence: &[ShardConvergence],
    lagging: &BTreeMap<(ShardId, NodeId), String>,
    snap: &Snapshot,
    map_epoch: u64,
) -> StoreCheck {
    let mut out = StoreCheck::default();
    for why in lagging.values() {
        out.index_stalled.add(|| why.clone());
    }
    // (tenant, k, home shard, shard read, node) for every read to make.
    let mut jobs = Vec::new();
    for t in tenants {
        let Some(docs) = snap.docs.get(&t.plan.name) else {
            continue;
        };
        for k in docs.keys() {
            let id = model::doc_id(&t.plan.name, *k);
            let home = t.shard_of(&id);
            out.docs_checked += 1;
            for s in t.distinct_shards() {
                if let Some((_, reps)) = shards.get(&s) {
                    for n in reps {
                        jobs.push((t.plan.name.clone(), *k, id.clone(), home, s, *n));
                    }
                }
            }
        }
    }
    let results: Vec<_> = stream::iter(jobs)
        .map(|(tenant, k, id, home, shard, node)| async move {
            let r = replica_get(cluster, node, &tenant, shard, &id, map_epoch).await;
            (tenant, k, id, home, shard, node, r)
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect()
        .await;
    out.replica_reads = results.len() as u64;
    // Documents found per (shard, node, tenant), for the index check.
    let mut found_count: BTreeMap<(ShardId, NodeId, String), u64> = BTreeMap::new();
    let mut stored: BTreeMap<(ShardId, NodeId, String), Vec<Document>> = BTreeMap::new();
    let mut lost_docs: BTreeMap<(String, u32), Vec<String>> = BTreeMap::new();
    for (tenant, k, id, home, shard, node, r) in results {
        let doc = match r {
            Ok(d) => d,
            Err(e) => {
                out.unreadable.add(|| e);
                continue;
            }
        };
        if let Some(d) = &doc {
            stored
                .entry((shard, node, tenant.clone()))
                .or_default()
                .push(d.clone());
            *found_count
                .entry((shard, node, tenant.clone()))
                .or_default() += 1;
        }
        if Some(shard) != home {
            if let Some(d) = doc {
                out.misplaced.add(|| {
                    format!(
                        "{id} v{} on shard {shard} (node {node}) but it belongs to shard {home:?}",
                        d.version
                    )
                });
            }
            continue;
        }
        let Some(hist) = snap.docs.get(&tenant).and_then(|d| d.get(&k)) else {
            continue;
        };
        match hist.judge(doc.as_ref().map(|d| d.version)) {
            Verdict::Ok => {}
            Verdict::Lost { found, acked } => {
                lost_docs.entry((tenant.clone(), k)).or_default().push(format!(
                    "node {node} has {}",
                    found.map_or("nothing".to_string(), |v| format!("v{v}"))
                ));
                let _ = acked;
            }
            Verdict::Unexplained { found } => out.unexplained.add(|| {
                format!("{id} on node {node} (shard {shard}) holds {found:?}, never applied by anyone: {:?}", hist.ops)
            }),
        }
        if let Some(d) = doc {
            if let Some(kk) = model::parse_doc_id(&tenant, &d.id) {
                if model::document(&tenant, kk, d.version) != d {
                    out.corrupt
                        .add(|| format!("{id} v{} on node {node}: {d:?}", d.version));
                }
            }
        }
    }
    for ((tenant, k), where_) in lost_docs {
        let hist = snap.docs.get(&tenant).and_then(|d| d.get(&k));
        let acked = hist
            .and_then(|h| h.newest_acked())
            .map(|o| (o.version, o.delete, o.done_ms));
        out.lost_acked.add(|| {
            format!(
                "{} newest acked {:?} (version, delete, acked at ms) but {}; ops {:?}",
                model::doc_id(&tenant, k),
                acked,
                where_.join(", "),
                hist.map(|h| h
                    .ops
                    .iter()
                    .map(|o| (o.version, o.delete, o.status.clone()))
                    .collect::<Vec<_>>())
            )
        });
    }
    // The permission filter at rest: every user's match-all search on
    // every replica must return exactly the documents whose stored version
    // admits the user.
    for conv in convergence {
        for (node, applied, _, _) in &conv.last {
            if lagging.contains_key(&(conv.shard, *node)) {
                continue;
            }
            let held: Vec<&Document> = stored
                .get(&(conv.shard, *node, conv.tenant.clone()))
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            for user in model::reader_users() {
                let principals = model::principals_of(user);
                let want: std::collections::BTreeSet<&str> = held
                    .iter()
                    .filter(|d| model::admits(&d.permissions, &principals))
                    .map(|d| d.id.as_str())
                    .collect();
                let got = match replica_ids(
                    cluster,
                    *node,
                    &conv.tenant,
                    conv.shard,
                    user,
                    *applied,
                    map_epoch,
                )
                .await
                {
                    Ok(ids) => ids,
                    Err(e) => {
                        out.unreadable.add(|| e);
                        continue;
                    }
                };
                out.acl_searches += 1;
                for id in got.iter().filter(|id| !want.contains(id.as_str())) {
                    out.acl_leaks.add(|| {
                        format!("shard {} node {node}: match-all search as {user} returned {id}, whose stored version does not admit {user}", conv.shard)
                    });
                }
                for id in want.iter().filter(|id| !got.contains(**id)) {
                    out.acl_missing.add(|| {
                        format!("shard {} node {node}: match-all search as {user} missed {id}, which its stored version admits", conv.shard)
                    });
                }
            }
        }
    }
    // Index versus store, per replica, once the index covers what the
    // store has applied.
    for conv in convergence {
        for (node, applied, _, _) in &conv.last {
            if lagging.contains_key(&(conv.shard, *node)) {
                continue;
            }
            let want = found_count
                .get(&(conv.shard, *node, conv.tenant.clone()))
                .copied()
                .unwrap_or(0);
            match replica_count(
                cluster,
                *node,
                &conv.tenant,
                conv.shard,
                *applied,
                map_epoch,
            )
            .await {
                Ok(n) if n == want => {}
                Ok(n) => out.index_mismatch.add(|| {
                    format!(
                        "shard {} node {node}: index matches {n} documents of {}, store holds {want}",
                        conv.shard, conv.tenant
                    )
                }),
                Err(e) => out.unreadable.add(|| e),
            }
        }
    }
    out
}

/// The residency check (`tessera admin check-residency`) after heal.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResidencyCheck {
    /// Replicas checked (placed in the map and hosted by nodes).
    pub replicas: u32,
    /// Every replica outside its tenant's regions, one line each.
    pub violations: Vec<String>,
    /// Why the check could not be completed, if it could not.
    pub error: Option<String>,
}

/// Runs the router's residency check until every node answers it (nodes
/// just restarted by the heal may need a moment), for at most `within`.
pub async fn residency(cluster: &Cluster, within: Duration) -> ResidencyCheck {
    let deadline = Instant::now() + within;
    let client = match cluster.router_client(0, Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            return ResidencyCheck {
                error: Some(format!("no router to ask: {e}")),
                ..ResidencyCheck::default()
            }
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let outcome = client.check_residency().await;
        let retry = Instant::now() < deadline;
        match outcome {
            Ok(r) if r.unreachable.is_empty() || !retry => {
                return ResidencyCheck {
                    replicas: r.replicas,
                    violations: r
                        .violations
                        .iter()
                        .map(|v| {
                            format!(
                                "tenant {} shard {} on node {} in {} ({})",
                                v.tenant, v.shard, v.node, v.region, v.seen_in
                            )
                        })
                        .collect(),
                    error: (!r.unreachable.is_empty())
                        .then(|| format!("nodes {:?} never answered", r.unreachable)),
                }
            }
            Err(e) if !retry => {
                return ResidencyCheck {
                    error: Some(e.to_string()),
                    ..ResidencyCheck::default()
                }
            }
            _ => {}
        }
    }
}
