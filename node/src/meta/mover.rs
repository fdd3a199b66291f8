//! The mover: drives every tenant resize in the map to its end, on the
//! meta leader (see [`super::resize`] for the protocol).
//!
//! It keeps no state of its own. Each finished step is recorded in the
//! replicated map before the next begins, and every step is idempotent
//! (fences only rise, copies never replace newer versions, drops delete
//! what is already gone), so a mover that crashes anywhere is replaced by
//! the next meta leader, which redoes at most the step that was running.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tessera_proto::pb::features_client::FeaturesClient;
use tessera_proto::pb::node_client::NodeClient;
use tessera_proto::transport::PeerIdentity;
use tessera_proto::{pb, Document, NodeId, ShardId, META_GROUP};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::resize::{Resize, ResizePhase, ResizeStep};
use super::{ClusterMap, MetaCommand, MetaOutcome, TenantEntry};
use crate::node::NodeInner;
use crate::raft::guard::owner;
use crate::raft::Response as RaftResponse;

/// How often the mover looks for work.
const TICK: Duration = Duration::from_millis(300);
/// Rows per export page; small enough that one write batch carries a page.
const PAGE: u32 = 400;
/// Bound on one call to a node.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on opening a connection to a node: a paused or blackholed voter
/// must cost the mover this long, not a whole [`CALL_TIMEOUT`], before it
/// tries the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Rounds over a shard's voters before a step gives up (and is retried on
/// the next tick).
const ROUNDS: u32 = 10;
/// Pause between rounds over a shard's voters (an election may be running).
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// Runs until `shutdown` flips.
///
/// Each tenant's resize is driven by a task of its own, so a tenant whose
/// shards are out of reach does not hold up the others' reshapes (and the
/// dual writes those keep alive).
pub async fn run(node: Arc<NodeInner>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    let mut running: JoinSet<String> = JoinSet::new();
    let mut busy: BTreeSet<String> = BTreeSet::new();
    loop {
        while let Some(done) = running.try_join_next() {
            if let Ok(tenant) = done {
                busy.remove(&tenant);
            }
        }
        if leads_meta(&node) {
            let map = Arc::new(node.meta.map());
            for tenant in map.tenants.values().filter(|t| t.resize.is_some()) {
                if !busy.insert(tenant.id.clone()) {
                    continue;
                }
                let (node, map, id) = (node.clone(), map.clone(), tenant.id.clone());
                running.spawn(async move {
                    if let Some(tenant) = map.tenants.get(&id) {
                        if let Err(e) = drive(&node, &map, tenant).await {
                            tracing::warn!(tenant = %id, "resize step failed, will retry: {e}");
                        }
                    }
                    id
                });
            }
        }
        tokio::select! {
            _ = shutdown.changed() => {
                running.shutdown().await;
                return;
            }
            _ = tick.tick() => {}
        }
    }
}

pub(super) fn leads_meta(node: &NodeInner) -> bool {
    node.registry
        .raft(META_GROUP)
        .is_some_and(|r| r.metrics().borrow().current_leader == Some(node.id))
}

/// Runs the next unfinished steps of one tenant's resize. The steps of a
/// phase are independent (each source copies its own documents, each shard
/// drops only what it no longer owns), so they run at once and a shard
/// that is out of reach delays only its own step; every step that finished
/// is recorded even when another failed.
async fn drive(node: &NodeInner, map: &ClusterMap, tenant: &TenantEntry) -> Result<(), String> {
    let Some(resize) = &tenant.resize else {
        return Ok(());
    };
    let old = &tenant.partitions;
    let steps: Vec<_> = match resize.phase(old) {
        ResizePhase::Copying => {
            let copies = Resize::sources(old)
                .into_iter()
                .filter(|source| !resize.copied.contains(source))
                .map(|source| copy_step(node.peers(), map, tenant, resize, source));
            join_all(copies).await
        }
        ResizePhase::Dropping => {
            let drops = resize
                .all_shards(old)
                .into_iter()
                .filter(|shard| !resize.dropped.contains(shard))
                .map(|shard| drop_step(node.peers(), map, tenant, resize, shard));
            join_all(drops).await
        }
    };
    let mut first_error = None;
    for step in steps {
        let recorded = match step {
            Ok(step) => record(node, tenant, resize, step).await,
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Copies one old shard's moving rows; the step that records it.
async fn copy_step(
    peers: &PeerIdentity,
    map: &ClusterMap,
    tenant: &TenantEntry,
    resize: &Resize,
    source: ShardId,
) -> Result<ResizeStep, String> {
    let (copied, floors) = copy_shard(peers, map, tenant, resize, source).await?;
    tracing::info!(tenant = %tenant.id, source, copied, "copied a shard's moving rows");
    let floors = floors.into_iter().collect();
    Ok(ResizeStep::Copied { source, floors })
}

/// Has `shard` drop the rows the new placement gives to others; the step
/// that records it.
async fn drop_step(
    peers: &PeerIdentity,
    map: &ClusterMap,
    tenant: &TenantEntry,
    resize: &Resize,
    shard: ShardId,
) -> Result<ResizeStep, String> {
    // A router whose map still says "copying" reads the old shards alone,
    // which is only right until they drop: the drop fences the shard at
    // this map's epoch (in which the copy is over), so such a router is
    // told its map is stale and rereads both placements with a fresh one.
    let req = pb::DropRequest {
        tenant: tenant.id.clone(),
        shard,
        fence: map.epoch.max(resize.fence),
        to: resize.to.clone(),
    };
    let out = on_leader(peers, map, shard, |c| {
        let req = req.clone();
        async move { NodeClient::new(c).drop(req).await }
    })
    .await?;
    tracing::info!(tenant = %tenant.id, shard, dropped = out.dropped, "dropped rows the new placement moves away");
    Ok(ResizeStep::Dropped {
        shard,
        applied: out.applied,
    })
}

async fn record(
    node: &NodeInner,
    tenant: &TenantEntry,
    resize: &Resize,
    step: ResizeStep,
) -> Result<(), String> {
    let cmd = MetaCommand::ResizeStep {
        tenant: tenant.id.clone(),
        fence: resize.fence,
        step,
    };
    match node.propose_meta(cmd).await {
        Ok(RaftResponse::Meta(MetaOutcome::Rejected(e))) => Err(e),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Fences `source`, then copies every row the new placement moves off it.
/// Returns the number of documents (and tombstones) copied and, per
/// destination shard, the log index of the last copy written there.
async fn copy_shard(
    peers: &PeerIdentity,
    map: &ClusterMap,
    tenant: &TenantEntry,
    resize: &Resize,
    source: ShardId,
) -> Result<(usize, BTreeMap<ShardId, u64>), String> {
    let fence_req = pb::FenceRequest {
        tenant: tenant.id.clone(),
        shard: source,
        fence: resize.fence,
    };
    let fenced = on_leader(peers, map, source, |c| {
        let req = fence_req.clone();
        async move { NodeClient::new(c).fence(req).await }
    })
    .await?;
    let new_shards: Vec<ShardId> = resize
        .all_shards(&[])
        .into_iter()
        .filter(|s| !tenant.partitions.contains(s))
        .collect();
    let mut after = String::new();
    let mut copied = 0usize;
    let mut floors: BTreeMap<ShardId, u64> = BTreeMap::new();
    loop {
        let req = pb::ExportRequest {
            tenant: tenant.id.clone(),
            shard: source,
            min_applied: fenced.applied,
            after: after.clone(),
            limit: PAGE,
            to: resize.to.clone(),
        };
        let page = on_leader(peers, map, source, |c| {
            let req = req.clone();
            async move { NodeClient::new(c).export(req).await }
        })
        .await?;
        copied += page.docs_json.len() + page.tombstones.len();
        let writes = route_page(tenant, resize, &new_shards, &page)?;
        for (shard, write) in writes {
            let out = on_leader(peers, map, shard, |c| {
                let req = write.clone();
                async move { NodeClient::new(c).write(req).await }
            })
            .await?;
            let applied = out.token.map_or(0, |t| t.applied);
            let floor = floors.entry(shard).or_default();
            *floor = (*floor).max(applied);
        }
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    let first_source = Resize::sources(&tenant.partitions).first() == Some(&source);
    let features = FeatureCopy {
        peers,
        map,
        tenant,
        resize,
        source,
        min_applied: fenced.applied,
    };
    for doc_rows in [true, false] {
        if doc_rows || first_source {
            copied += features.copy(doc_rows, &new_shards, &mut floors).await?;
        }
    }
    Ok((copied, floors))
}

/// Copying one old shard's feature state (definitions, stored events; tiles are rebuilt from
/// the events, exactly) to the shards that need it under the new placement:
/// - the rows kept on a document's partition go to the document's new shard;
/// - the rows every partition keeps go to each shard new to the tenant, from the first old
///   shard only (every old shard holds the same events, each under its own log order, so
///   copying them from two would count them twice).
///
/// Only events written with a map older than the resize are copied: routers that know of the
/// resize send every event to both placements themselves. Imports skip rows already present,
/// so a copy redone after a crash changes nothing.
struct FeatureCopy<'a> {
    peers: &'a PeerIdentity,
    map: &'a ClusterMap,
    tenant: &'a TenantEntry,
    resize: &'a Resize,
    source: ShardId,
    min_applied: u64,
}

impl FeatureCopy<'_> {
    /// Copies one kind of rows; returns the number of events sent.
    async fn copy(
        &self,
        doc_rows: bool,
        new_shards: &[ShardId],
        floors: &mut BTreeMap<ShardId, u64>,
    ) -> Result<usize, String> {
        let mut after = Vec::new();
        let mut sent = 0usize;
        loop {
            let req = pb::ExportEventsRequest {
                tenant: self.tenant.id.clone(),
                shard: self.source,
                min_applied: self.min_applied,
                after: after.clone(),
                limit: PAGE,
                doc_rows,
                before_epoch: self.resize.fence,
            };
            let page = on_leader(self.peers, self.map, self.source, |c| {
                let req = req.clone();
                async move { FeaturesClient::new(c).export_events(req).await }
            })
            .await?;
            let plan: BTreeMap<ShardId, Vec<pb::StoredEvent>> = if doc_rows {
                let mut by_owner: BTreeMap<ShardId, Vec<pb::StoredEvent>> = BTreeMap::new();
                for ev in page.events {
                    // Only rows of documents this shard owns now: rows it
                    // kept of a document that moved on are not its to give.
                    if owner(&self.tenant.partitions, &ev.doc) != Some(self.source) {
                        continue;
                    }
                    match owner(&self.resize.to, &ev.doc) {
                        Some(dest) if dest != self.source => {
                            by_owner.entry(dest).or_default().push(ev)
                        }
                        _ => {}
                    }
                }
                by_owner
            } else {
                new_shards
                    .iter()
                    .map(|s| (*s, page.events.clone()))
                    .collect()
            };
            for (shard, events) in plan {
                sent += events.len();
                let req = pb::ImportEventsRequest {
                    tenant: self.tenant.id.clone(),
                    shard,
                    events,
                    doc_rows,
                    registry_toml: page.registry_toml.clone(),
                    registry_version: page.registry_version,
                    timeout_ms: CALL_TIMEOUT.as_millis() as u32,
                };
                let out = on_leader(self.peers, self.map, shard, |c| {
                    let req = req.clone();
                    async move { FeaturesClient::new(c).import_events(req).await }
                })
                .await?;
                let floor = floors.entry(shard).or_default();
                *floor = (*floor).max(out.token.map_or(0, |t| t.applied));
            }
            if page.next.is_empty() {
                return Ok(sent);
            }
            after = page.next;
        }
    }
}

/// Groups one export page into writes per destination shard, each within
/// [`MAX_WRITE_OPS`] operations and [`MAX_WRITE_BYTES`] of documents.
/// Restriction sets and memberships (first page only) go to every shard
/// that is new to the tenant; the old shards already hold them.
fn route_page(
    tenant: &TenantEntry,
    resize: &Resize,
    new_shards: &[ShardId],
    page: &pb::ExportResponse,
) -> Result<Vec<(ShardId, pb::WriteRequest)>, String> {
    let destination = |id: &str| {
        owner(&resize.to, id).ok_or_else(|| format!("no owner for {id:?} in {:?}", resize.to))
    };
    let mut plan: BTreeMap<ShardId, Vec<Item>> = BTreeMap::new();
    for json in &page.docs_json {
        let doc = Document::from_json_bytes(json)
            .map_err(|e| format!("exported document does not parse: {e}"))?;
        plan.entry(destination(&doc.id)?)
            .or_default()
            .push(Item::Doc(json.clone()));
    }
    for t in &page.tombstones {
        plan.entry(destination(&t.id)?)
            .or_default()
            .push(Item::Delete(t.clone()));
    }
    for shard in new_shards {
        let items = plan.entry(*shard).or_default();
        items.extend(page.restrictions.iter().cloned().map(Item::Restriction));
        items.extend(page.memberships.iter().cloned().map(Item::Membership));
    }
    let mut out = Vec::new();
    for (shard, items) in plan {
        let fresh = || pb::WriteRequest {
            tenant: tenant.id.clone(),
            shard,
            map_epoch: resize.fence,
            keep_newer_memberships: true,
            placement: resize.to.clone(),
            ..Default::default()
        };
        let mut req = fresh();
        let (mut ops, mut bytes) = (0usize, 0usize);
        for item in items {
            let size = item.size();
            if ops > 0 && (ops + 1 > MAX_WRITE_OPS || bytes + size > MAX_WRITE_BYTES) {
                out.push((shard, std::mem::replace(&mut req, fresh())));
                (ops, bytes) = (0, 0);
            }
            ops += 1;
            bytes += size;
            match item {
                Item::Doc(json) => req.docs_json.push(json),
                Item::Delete(d) => req.deletes.push(d),
                Item::Restriction(r) => req.restrictions.push(r),
                Item::Membership(m) => req.memberships.push(m),
            }
        }
        if ops > 0 {
            out.push((shard, req));
        }
    }
    Ok(out)
}

/// Most operations in one copy write.
const MAX_WRITE_OPS: usize = 1_000;
/// Most document bytes in one copy write (gRPC's default message limit is 4 MiB).
const MAX_WRITE_BYTES: usize = 2 * 1024 * 1024;

enum Item {
    Doc(Vec<u8>),
    Delete(pb::DeleteOp),
    Restriction(pb::Restriction),
    Membership(pb::Membership),
}

impl Item {
    /// Roughly its encoded size.
    fn size(&self) -> usize {
        match self {
            Item::Doc(json) => json.len(),
            Item::Delete(d) => d.id.len() + 8,
            Item::Restriction(r) => {
                r.page.len() + r.principals.iter().map(String::len).sum::<usize>()
            }
            Item::Membership(m) => m.user.len() + m.groups.iter().map(String::len).sum::<usize>(),
        }
    }
}

/// Calls `call` on the leader of `shard`: tries its voters in turn (a
/// follower answers "not leader" at once, naming the leader when it knows
/// it, which is tried next), for a bounded number of rounds.
async fn on_leader<T, F, Fut>(
    peers: &PeerIdentity,
    map: &ClusterMap,
    shard: ShardId,
    mut call: F,
) -> Result<T, String>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let voters = map
        .shards
        .get(&shard)
        .map(|s| s.voters.clone())
        .ok_or_else(|| format!("shard {shard} is not in the map"))?;
    let mut last = format!("shard {shard} has no voters");
    for _ in 0..ROUNDS {
        let mut order: Vec<NodeId> = voters.clone();
        let mut i = 0;
        while let Some(&v) = order.get(i) {
            i += 1;
            let client = match connect(peers, map, v).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match tokio::time::timeout(CALL_TIMEOUT, call(client)).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(s)) if s.code() == Code::InvalidArgument => {
                    return Err(format!("shard {shard} on node {v}: {}", s.message()))
                }
                Ok(Err(s)) => {
                    last = format!("shard {shard} on node {v}: {}", s.message());
                    // Try the named leader next, unless it was just tried.
                    if let Some(leader) = leader_hint(&s).filter(|l| !order[..i].contains(l)) {
                        order.retain(|n| *n != leader);
                        order.insert(i, leader);
                    }
                }
                Err(_) => {
                    last = format!("shard {shard} on node {v}: no answer in {CALL_TIMEOUT:?}")
                }
            }
            tracing::debug!(shard, node = v, "mover call failed: {last}");
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
    Err(last)
}

/// A channel to node `id`, opened within [`CONNECT_TIMEOUT`].
async fn connect(peers: &PeerIdentity, map: &ClusterMap, id: NodeId) -> Result<Channel, String> {
    let addr = map
        .nodes
        .get(&id)
        .map(|n| n.grpc_addr.clone())
        .ok_or_else(|| format!("node {id} is not in the map"))?;
    let endpoint = peers
        .node_endpoint(&addr)
        .map_err(|e| format!("node {id} at {addr}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(format!("node {id} at {addr}: {e}")),
        Err(_) => Err(format!(
            "node {id} at {addr}: no connection within {CONNECT_TIMEOUT:?}"
        )),
    }
}

/// The leader a follower's "not leader" answer names, if any.
fn leader_hint(status: &Status) -> Option<NodeId> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    status
        .metadata()
        .get(tessera_proto::LEADER_ID_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|id| *id != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn not_leader(id: &'static str) -> Status {
        let mut s = Status::failed_precondition(format!("not leader: node {id} leads"));
        s.metadata_mut().insert(
            tessera_proto::LEADER_ID_HEADER,
            MetadataValue::from_static(id),
        );
        s
    }

    #[test]
    fn a_not_leader_answer_names_the_leader_to_try_next() {
        assert_eq!(leader_hint(&not_leader("4")), Some(4));
        assert_eq!(leader_hint(&not_leader("0")), None, "0 is no node");
        assert_eq!(leader_hint(&not_leader("x")), None);
        let mut other = Status::unavailable("no quorum");
        other.metadata_mut().insert(
            tessera_proto::LEADER_ID_HEADER,
            MetadataValue::from_static("4"),
        );
        assert_eq!(
            leader_hint(&other),
            None,
            "only a not-leader answer is a hint"
        );
    }
}
