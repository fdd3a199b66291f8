//! Writes to a shard's Raft leader.
//!
//! The router sends a shard's batch to its cached leader, or to its voters
//! (own region first) when it knows none, and follows `not leader` hints.
//! On a timeout, a transport error or "no quorum" it tries again (another
//! voter, then with backoff) until the deadline: writes carry per-document
//! versions, so a retry of a write that did commit changes nothing.

use crate::backend::Backend;
use crate::deadline::{as_timeout_ms, Deadline};
use crate::error::RouterError;
use std::collections::HashSet;
use std::error::Error as _;
use std::time::{Duration, Instant};
use tessera_proto::pb::{WriteRequest, WriteResponse};
use tessera_proto::{NodeId, ShardId};
use tonic::{Code, Status};

pub use tessera_proto::{LEADER_ADDR_HEADER, LEADER_ID_HEADER};

/// A `not leader` answer and what it says about the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's node id, when the node knows it.
    pub id: Option<NodeId>,
    /// The leader's gRPC address, when the node knows it.
    pub addr: Option<String>,
}

/// Recognises a `not leader` answer (`FailedPrecondition`, message
/// starting with "not leader") and reads its hint metadata.
pub fn not_leader_hint(status: &Status) -> Option<LeaderHint> {
    if status.code() != Code::FailedPrecondition || !status.message().starts_with("not leader") {
        return None;
    }
    let md = status.metadata();
    let text = |k: &str| {
        md.get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Some(LeaderHint {
        id: text(LEADER_ID_HEADER)
            .and_then(|s| s.parse().ok())
            .filter(|id| *id != 0),
        addr: text(LEADER_ADDR_HEADER),
    })
}

/// Whether a status was produced by the client side (connect failure, reset,
/// local timeout) rather than sent by the node: only those count against
/// the node's breaker on the write path, since a node that answers
/// "no quorum" is alive and may serve reads.
pub fn is_transport_failure(status: &Status) -> bool {
    status.source().is_some()
}

/// Exponential backoff with jitter, bounded.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: Duration::from_millis(20),
            max: Duration::from_millis(500),
        }
    }

    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        base.mul_f64(jitter)
    }
}

impl Backend {
    /// Sends `req` (for `shard`) to the shard's leader and returns its
    /// quorum-committed answer, retrying until `deadline`.
    pub async fn write_shard(
        &self,
        shard: ShardId,
        mut req: WriteRequest,
        deadline: Deadline,
    ) -> Result<WriteResponse, RouterError> {
        req.shard = shard;
        let mut backoff = Backoff::new();
        let mut tried: HashSet<NodeId> = HashSet::new();
        let mut hint: Option<(NodeId, Option<String>)> = self.leader(shard).map(|n| (n, None));
        let mut hint_follows = 0u32;
        let mut last_err = String::from("no voter reachable");
        loop {
            if deadline.expired() {
                return Err(RouterError::Unavailable(format!(
                    "shard {shard}: write not acknowledged before the deadline; it may or may not have been applied, and retrying is safe (last error: {last_err})"
                )));
            }
            let topo = self.map.current();
            let now = Instant::now();
            let target = hint.take().or_else(|| {
                let voters = topo.voters_local_first(shard, &self.cfg.region);
                voters
                    .iter()
                    .find(|n| !tried.contains(n) && self.breakers.available(**n, now))
                    .or_else(|| voters.iter().find(|n| !tried.contains(n)))
                    .map(|n| (*n, None))
            });
            let Some((node, hinted_addr)) = target else {
                // Every voter was tried: an election may be running. Wait, then start over.
                if topo.shard(shard).is_none() {
                    return Err(RouterError::NotFound(format!(
                        "shard {shard} is not in cluster map epoch {}",
                        topo.epoch()
                    )));
                }
                tried.clear();
                hint_follows = 0;
                tokio::time::sleep(backoff.step().min(deadline.remaining())).await;
                continue;
            };
            tried.insert(node);
            // A configured route wins over the hint's address, which names
            // the node's own gRPC address and would bypass the route.
            let routed = self.cfg.node_routes.get(&node).cloned();
            let Some(addr) = routed
                .or(hinted_addr)
                .or_else(|| topo.node(node).map(|n| n.grpc_addr.clone()))
            else {
                last_err =
                    format!("leader hint names node {node}, which is not in the cluster map");
                self.map.refresh(deadline).await;
                continue;
            };
            let mut client = match self.pool.client(&addr) {
                Ok(c) => c,
                Err(e) => {
                    last_err = e.to_string();
                    continue;
                }
            };
            let budget = deadline.downstream(Some(self.cfg.write_attempt_timeout));
            req.timeout_ms = as_timeout_ms(budget);
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(budget);
            let outcome = tokio::time::timeout(budget, client.write(request)).await;
            match outcome {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    self.set_leader(shard, node);
                    self.breakers.record(node, true, Instant::now());
                    if let Some(t) = &resp.token {
                        self.observe_applied(shard, t.applied);
                    }
                    return Ok(resp);
                }
                Err(_) => {
                    self.forget_leader(shard, node);
                    self.breakers.record(node, false, Instant::now());
                    retry_metric("timeout");
                    last_err = format!("node {node}: no answer within {} ms", budget.as_millis());
                }
                Ok(Err(status)) => {
                    if let Some(h) = not_leader_hint(&status) {
                        self.forget_leader(shard, node);
                        self.breakers.record(node, true, Instant::now());
                        retry_metric("not_leader");
                        last_err = format!("node {node}: {}", status.message());
                        match h.id {
                            Some(leader)
                                if leader != node
                                    && hint_follows < 2 * topo_voters(&topo, shard) =>
                            {
                                hint_follows += 1;
                                if topo.node(leader).is_none() && h.addr.is_none() {
                                    self.map.refresh(deadline).await;
                                }
                                hint = Some((leader, h.addr));
                            }
                            _ => {}
                        }
                        continue;
                    }
                    match status.code() {
                        Code::InvalidArgument | Code::OutOfRange => {
                            return Err(RouterError::InvalidArgument(format!(
                                "shard {shard}: {}",
                                status.message()
                            )))
                        }
                        // A new shard's group not yet open on this node is
                        // retried below like "no quorum"; other NotFounds
                        // (unknown tenant, stale map) go back to the caller.
                        Code::NotFound if !crate::read::is_replica_not_open(&status) => {
                            return Err(RouterError::from_node_status(
                                &format!("shard {shard}"),
                                &status,
                            ))
                        }
                        Code::PermissionDenied
                        | Code::Unauthenticated
                        | Code::AlreadyExists
                        | Code::ResourceExhausted
                        | Code::Unimplemented => {
                            return Err(RouterError::from_node_status(
                                &format!("shard {shard}"),
                                &status,
                            ))
                        }
                        _ => {
                            let transport = is_transport_failure(&status);
                            self.forget_leader(shard, node);
                            self.breakers.record(node, !transport, Instant::now());
                            last_err =
                                format!("node {node}: {:?}: {}", status.code(), status.message());
                            if transport {
                                retry_metric("transport");
                            } else {
                                // The node answered but cannot commit (no quorum,
                                // election): give the group time before the next try.
                                retry_metric("unavailable");
                                tokio::time::sleep(backoff.step().min(deadline.remaining())).await;
                            }
                        }
                    }
                }
            }
        }
    }
}

fn topo_voters(topo: &crate::topology::Topology, shard: ShardId) -> u32 {
    topo.shard(shard)
        .map_or(3, |s| u32::try_from(s.voters.len()).unwrap_or(3))
        .max(1)
}

fn retry_metric(reason: &'static str) {
    metrics::counter!("tessera_router_write_retries_total", "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn reads_leader_hints() {
        let mut s = Status::failed_precondition("not leader of shard 3");
        s.metadata_mut()
            .insert(LEADER_ID_HEADER, MetadataValue::from_static("4"));
        s.metadata_mut().insert(
            LEADER_ADDR_HEADER,
            MetadataValue::from_static("127.0.0.14:7201"),
        );
        assert_eq!(
            not_leader_hint(&s),
            Some(LeaderHint {
                id: Some(4),
                addr: Some("127.0.0.14:7201".into())
            })
        );
        let bare = Status::failed_precondition("not leader");
        assert_eq!(
            not_leader_hint(&bare),
            Some(LeaderHint {
                id: None,
                addr: None
            })
        );
        assert_eq!(not_leader_hint(&Status::failed_precondition("other")), None);
        assert_eq!(not_leader_hint(&Status::unavailable("not leader")), None);
    }

    #[test]
    fn node_sent_statuses_are_not_transport_failures() {
        assert!(!is_transport_failure(&Status::unavailable("no quorum")));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let s = Status::from_error(Box::new(io));
        assert!(is_transport_failure(&s));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new();
        let steps: Vec<Duration> = (0..10).map(|_| b.step()).collect();
        assert!(steps[0] <= Duration::from_millis(25));
        assert!(steps.iter().all(|d| *d <= Duration::from_millis(625)));
        assert!(steps[9] >= Duration::from_millis(375));
    }
}
