//! Hedged reads of one shard: send to the best replica, hedge to the next
//! after the first one's p95, fail over on errors, and take the first
//! answer. The losing request's future is dropped, which cancels its gRPC
//! stream (tonic sends RST_STREAM), so the node stops working on it.

use crate::backend::Backend;
use crate::deadline::{as_timeout_ms, Deadline};
use crate::error::RouterError;
use crate::select::Replica;
use crate::telemetry::record_replica;
use crate::topology::Topology;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};
use tessera_proto::pb::node_client::NodeClient;
use tessera_proto::{NodeId, ShardId};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Metadata a replica sets when it has not applied the requested index.
pub const BEHIND_HEADER: &str = "x-tessera-behind";

/// The answer of one replica.
#[derive(Debug)]
pub struct ReadOutcome<T> {
    /// The node's response.
    pub value: T,
    /// Which replica answered.
    pub replica: Replica,
    /// Whether it was not the first choice (hedge or failover).
    pub hedged: bool,
}

/// How a failed replica call affects the rest of the read.
#[derive(Debug)]
pub enum ReadFailure {
    /// The replica has not applied the session token's index yet (it answered
    /// in time, so it is healthy): try another one.
    Behind(Option<u64>),
    /// The node did not answer properly: counts against its breaker; try another.
    Node(String),
    /// The node is fine but cannot serve this now (overloaded, not ready): try another.
    Transient(String),
    /// The request itself is wrong (or the map is stale): stop.
    Fatal(RouterError),
}

/// Whether a node says it has no replica of the shard (yet). Right after a
/// tenant is created, the map lists a new shard's replicas before every node
/// has opened its group, so this is a transient, per-node condition (a
/// really stale router map is fixed by the refresh that follows).
pub fn is_replica_not_open(status: &Status) -> bool {
    match status.code() {
        // Nodes that know the map assigns them the shard say so.
        Code::Unavailable => status.message().contains("is still opening on node"),
        // Older nodes only say they do not have it.
        Code::NotFound => status.message().contains("has no replica on node"),
        _ => false,
    }
}

/// Classifies a node's error status for a read.
pub fn classify_read(node: NodeId, status: &Status) -> ReadFailure {
    if let Some(v) = status.metadata().get(BEHIND_HEADER) {
        return ReadFailure::Behind(v.to_str().ok().and_then(|s| s.trim().parse().ok()));
    }
    // A replica that says so without the header is still healthy, not failing.
    if status.code() == Code::Unavailable && status.message().contains("behind") {
        return ReadFailure::Behind(None);
    }
    let ctx = format!("node {node}");
    if is_replica_not_open(status) {
        return ReadFailure::Transient(format!("{ctx}: {}", status.message()));
    }
    match status.code() {
        Code::InvalidArgument
        | Code::OutOfRange
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => ReadFailure::Fatal(RouterError::from_node_status(&ctx, status)),
        Code::ResourceExhausted | Code::FailedPrecondition | Code::Aborted => {
            ReadFailure::Transient(format!("{ctx}: {}", status.message()))
        }
        _ => ReadFailure::Node(format!("{ctx}: {:?}: {}", status.code(), status.message())),
    }
}

/// What a read of one shard needs besides the node call itself.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    /// The shard.
    pub shard: ShardId,
    /// Replicas to try, best first (see `Backend::read_candidates`).
    pub candidates: Vec<Replica>,
    /// When to give up.
    pub deadline: Deadline,
    /// The session token's index for this shard (only for error messages;
    /// the op puts it in the request).
    pub min_applied: u64,
    /// Whether to hedge after the first replica's p95 (failover after
    /// errors happens either way).
    pub hedge: bool,
}

struct Done<T> {
    replica: Replica,
    index: usize,
    result: Result<T, ReadFailure>,
}

impl Backend {
    /// Reads from one replica of `plan.shard`, trying the candidates in order.
    ///
    /// `op` performs the node call given a client and the time budget (it
    /// must put the budget on the request with `set_timeout` and in the
    /// request's `timeout_ms`).
    pub async fn hedged_read<T, F, Fut>(
        &self,
        topo: &Topology,
        plan: ReadPlan,
        op: F,
    ) -> Result<ReadOutcome<T>, RouterError>
    where
        F: Fn(NodeClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let ReadPlan {
            shard,
            candidates,
            deadline,
            min_applied,
            hedge,
        } = plan;
        let mut queue: VecDeque<Replica> = candidates.into();
        let mut inflight = FuturesUnordered::new();
        let mut launched = 0usize;
        let mut failures: Vec<String> = Vec::new();
        let mut behind: Vec<(NodeId, Option<u64>)> = Vec::new();
        let mut hedges_left = if hedge { self.cfg.select.max_hedges } else { 0 };
        let mut hedge_at: Option<tokio::time::Instant> = None;

        // Starts the next admissible candidate; returns whether one started.
        let mut launch = |queue: &mut VecDeque<Replica>,
                          inflight: &mut FuturesUnordered<_>,
                          failures: &mut Vec<String>,
                          hedge_at: &mut Option<tokio::time::Instant>| {
            while let Some(r) = queue.pop_front() {
                let now = Instant::now();
                if self.breakers.admit(r.node, now) == crate::breaker::Admit::No {
                    failures.push(format!("node {}: breaker open", r.node));
                    continue;
                }
                let Some(addr) = topo.node(r.node).map(|n| n.grpc_addr.clone()) else {
                    failures.push(format!("node {}: not in the cluster map", r.node));
                    continue;
                };
                let cfg = &self.cfg.select;
                let own = self.stats.hedge_delay(r.node, &r.region, cfg, now);
                // A replica picked because its estimate decayed back toward
                // the prior may still be slow, and its own p95 says so: never
                // wait longer than twice what the next candidate takes.
                let delay = match queue.front() {
                    Some(next) => {
                        own.min(2 * self.stats.hedge_delay(next.node, &next.region, cfg, now))
                    }
                    None => own,
                };
                *hedge_at = Some(tokio::time::Instant::now() + delay);
                inflight.push(self.attempt(r, addr, launched, deadline, &op));
                launched += 1;
                return true;
            }
            false
        };

        if !launch(&mut queue, &mut inflight, &mut failures, &mut hedge_at) {
            return Err(RouterError::Unavailable(format!(
                "shard {shard}: no healthy replica ({})",
                failures.join("; ")
            )));
        }
        loop {
            let hedge_due = hedge_at.filter(|_| hedges_left > 0 && !queue.is_empty());
            tokio::select! {
                Some(done) = inflight.next() => {
                    let Done { replica, index, result } = done;
                    match result {
                        Ok(value) => {
                            return Ok(ReadOutcome { value, replica, hedged: index > 0 });
                        }
                        Err(ReadFailure::Fatal(e)) => return Err(e),
                        Err(ReadFailure::Behind(applied)) => behind.push((replica.node, applied)),
                        Err(ReadFailure::Node(m)) | Err(ReadFailure::Transient(m)) => failures.push(m),
                    }
                    // Fail over at once; it does not count as a hedge.
                    launch(&mut queue, &mut inflight, &mut failures, &mut hedge_at);
                    if inflight.is_empty() {
                        return Err(exhausted(shard, min_applied, &behind, &failures));
                    }
                }
                _ = sleep_until_opt(hedge_due) => {
                    hedges_left -= 1;
                    metrics::counter!("tessera_router_hedges_total").increment(1);
                    launch(&mut queue, &mut inflight, &mut failures, &mut hedge_at);
                }
                _ = tokio::time::sleep_until(deadline.instant()) => {
                    let mut why = failures.clone();
                    why.push(format!("{} request(s) still outstanding", inflight.len()));
                    return Err(RouterError::DeadlineExceeded(format!(
                        "shard {shard}: no replica answered before the deadline ({})",
                        why.join("; ")
                    )));
                }
            }
        }
    }

    /// One replica call, with latency, breaker and metrics bookkeeping.
    async fn attempt<T, F, Fut>(
        &self,
        replica: Replica,
        addr: String,
        index: usize,
        deadline: Deadline,
        op: &F,
    ) -> Done<T>
    where
        F: Fn(NodeClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let node = replica.node;
        let guard = self.stats.begin(node, self.cfg.select.ewma_alpha);
        let budget = deadline.downstream(None);
        let result = match self.pool.client(&addr) {
            Err(e) => {
                guard.failed();
                Err(ReadFailure::Node(format!("node {node}: {e}")))
            }
            Ok(client) => match tokio::time::timeout(budget, op(client, budget)).await {
                Ok(Ok(resp)) => {
                    let took = guard.answered();
                    self.breakers.record(node, true, Instant::now());
                    record_replica(node, "ok", Some(took));
                    Ok(resp.into_inner())
                }
                Ok(Err(status)) => {
                    let failure = classify_read(node, &status);
                    match &failure {
                        ReadFailure::Node(_) => {
                            guard.failed();
                            self.breakers.record(node, false, Instant::now());
                            record_replica(node, "error", None);
                        }
                        ReadFailure::Behind(_) => {
                            guard.failed();
                            self.breakers.record(node, true, Instant::now());
                            record_replica(node, "behind", None);
                        }
                        ReadFailure::Transient(_) | ReadFailure::Fatal(_) => {
                            guard.failed();
                            record_replica(node, "rejected", None);
                        }
                    }
                    Err(failure)
                }
                Err(_) => {
                    // The guard's drop records the elapsed time as a lower bound.
                    drop(guard);
                    self.breakers.record(node, false, Instant::now());
                    record_replica(node, "timeout", None);
                    Err(ReadFailure::Node(format!(
                        "node {node}: no answer within {} ms",
                        as_timeout_ms(budget)
                    )))
                }
            },
        };
        Done {
            replica,
            index,
            result,
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn exhausted(
    shard: ShardId,
    min_applied: u64,
    behind: &[(NodeId, Option<u64>)],
    failures: &[String],
) -> RouterError {
    if !behind.is_empty() && min_applied > 0 {
        let best = behind.iter().filter_map(|(_, a)| *a).max();
        let best = best.map_or_else(|| "unknown".to_string(), |b| b.to_string());
        let mut msg = format!(
            "shard {shard}: no replica has applied index {min_applied} of the session token yet (highest applied: {best}); retry shortly"
        );
        if !failures.is_empty() {
            msg.push_str(&format!("; other replicas: {}", failures.join("; ")));
        }
        return RouterError::Unavailable(msg);
    }
    let mut all: Vec<String> = failures.to_vec();
    all.extend(
        behind
            .iter()
            .map(|(n, a)| format!("node {n}: behind (applied {a:?})")),
    );
    RouterError::Unavailable(format!(
        "shard {shard}: every replica failed ({})",
        all.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn classifies_node_answers() {
        let mut behind = Status::unavailable("behind");
        behind
            .metadata_mut()
            .insert(BEHIND_HEADER, MetadataValue::from_static("41"));
        assert!(matches!(
            classify_read(1, &behind),
            ReadFailure::Behind(Some(41))
        ));
        assert!(matches!(
            classify_read(
                1,
                &Status::unavailable("replica behind the session token 9")
            ),
            ReadFailure::Behind(None)
        ));
        assert!(matches!(
            classify_read(1, &Status::unavailable("no")),
            ReadFailure::Node(_)
        ));
        assert!(matches!(
            classify_read(1, &Status::not_found("shard 3 has no replica on node 1")),
            ReadFailure::Transient(_)
        ));
        assert!(matches!(
            classify_read(
                1,
                &Status::unavailable("shard 3 is still opening on node 1; retry")
            ),
            ReadFailure::Transient(_)
        ));
        assert!(matches!(
            classify_read(1, &Status::not_found("tenant")),
            ReadFailure::Fatal(RouterError::NotFound(_))
        ));
        assert!(matches!(
            classify_read(1, &Status::resource_exhausted("busy")),
            ReadFailure::Transient(_)
        ));
    }

    #[test]
    fn exhausted_names_the_session_token() {
        let e = exhausted(3, 50, &[(1, Some(40)), (2, None)], &[]);
        let msg = e.to_string();
        assert!(matches!(e, RouterError::Unavailable(_)));
        assert!(msg.contains("index 50") && msg.contains("40"), "{msg}");
    }
}
