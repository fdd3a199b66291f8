//! Which nodes serve: an operator's drain and undrain, and a node joining a running cluster.
//! Each is one meta command, proposed on the meta leader (forwarded there from any node).

use std::net::SocketAddr;

use tessera_proto::pb;
use tonic::{Response, Status};

use super::{internal, NodeService};
use crate::meta::{MetaCommand, MetaOutcome, NodeEntry};

impl NodeService {
    pub(super) async fn drain_node_inner(
        &self,
        req: pb::DrainNodeRequest,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        let node = req.node;
        let answer = move |outcome| match outcome {
            MetaOutcome::Ok { epoch } => {
                let shards = self.node.meta.map().shards_on(node);
                Ok(pb::DrainNodeResponse { epoch, shards })
            }
            other => Err(internal(format!("unexpected meta response {other:?}"))),
        };
        let cmd = if req.undrain {
            MetaCommand::UndrainNode(node)
        } else {
            MetaCommand::DrainNode(node)
        };
        self.on_meta_leader(
            cmd,
            req,
            answer,
            |mut c, r| async move { c.drain_node(r).await },
        )
        .await
    }

    pub(super) async fn join_cluster_inner(
        &self,
        req: pb::JoinClusterRequest,
    ) -> Result<Response<pb::AddLearnerResponse>, Status> {
        let entry = joining_entry(&req)?;
        if let Some(known) = self.node.meta.map().nodes.get(&entry.id) {
            if known.region != entry.region {
                return Err(Status::failed_precondition(format!(
                    "node {} is registered in region {:?}, not {:?}: a node keeps its region \
                     (its replicas' residency depends on it); give the new node a new id",
                    entry.id, known.region, entry.region
                )));
            }
        }
        let answer = |outcome| match outcome {
            MetaOutcome::Ok { epoch } => Ok(pb::AddLearnerResponse { epoch }),
            other => Err(internal(format!("unexpected meta response {other:?}"))),
        };
        let cmd = MetaCommand::RegisterNodes(vec![entry]);
        self.on_meta_leader(cmd, req, answer, |mut c, r| async move {
            c.join_cluster(r).await
        })
        .await
    }
}

/// The map entry a join asks for, or why it is malformed.
fn joining_entry(req: &pb::JoinClusterRequest) -> Result<NodeEntry, Status> {
    if req.id == 0 {
        return Err(Status::invalid_argument("node id 0 is reserved"));
    }
    if req.region.is_empty() || req.zone.is_empty() {
        return Err(Status::invalid_argument(
            "a joining node needs a region and a zone",
        ));
    }
    for (what, addr) in [("raft", &req.raft_addr), ("grpc", &req.grpc_addr)] {
        addr.parse::<SocketAddr>().map_err(|e| {
            Status::invalid_argument(format!("{what} address {addr:?} is not host:port: {e}"))
        })?;
    }
    Ok(NodeEntry {
        id: req.id,
        region: req.region.clone(),
        zone: req.zone.clone(),
        raft_addr: req.raft_addr.clone(),
        grpc_addr: req.grpc_addr.clone(),
    })
}
