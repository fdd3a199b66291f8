//! openraft's network traits on top of the QUIC transport.
//!
//! Every Raft RPC of every group travels as one bincode envelope on its own
//! QUIC stream; the envelope names the group so one connection per peer
//! serves all of them.

use futures::future::BoxFuture;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::{NodeId, ShardId};

use super::quic::{QuicTransport, RpcHandler, TransportError};
use crate::raft::registry::Registry;
use crate::raft::TypeConfig;

/// A Raft RPC addressed to one group.
#[derive(Serialize, Deserialize)]
pub enum RaftRpc {
    Append(ShardId, AppendEntriesRequest<TypeConfig>),
    Vote(ShardId, VoteRequest<NodeId>),
    Snapshot(ShardId, InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a `RaftRpc`.
#[derive(Serialize, Deserialize)]
pub enum RaftRpcReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The receiver does not (yet) host the group; the sender retries.
    NoGroup(ShardId),
    /// The request could not be decoded.
    Malformed(String),
}

/// Serves inbound Raft RPCs by dispatching them to the local groups.
pub struct RaftRpcServer {
    registry: Arc<Registry>,
}

impl RaftRpcServer {
    /// A server over the node's group registry.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    async fn dispatch(registry: Arc<Registry>, rpc: RaftRpc) -> RaftRpcReply {
        let group = match &rpc {
            RaftRpc::Append(g, _) | RaftRpc::Vote(g, _) | RaftRpc::Snapshot(g, _) => *g,
        };
        let Some(raft) = registry.raft(group) else {
            return RaftRpcReply::NoGroup(group);
        };
        match rpc {
            RaftRpc::Append(_, req) => RaftRpcReply::Append(raft.append_entries(req).await),
            RaftRpc::Vote(_, req) => RaftRpcReply::Vote(raft.vote(req).await),
            RaftRpc::Snapshot(_, req) => RaftRpcReply::Snapshot(raft.install_snapshot(req).await),
        }
    }
}

impl RpcHandler for RaftRpcServer {
    fn handle(&self, request: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
        let registry = self.registry.clone();
        Box::pin(async move {
            let reply = match bincode::deserialize::<RaftRpc>(&request) {
                Ok(rpc) => Self::dispatch(registry, rpc).await,
                Err(e) => RaftRpcReply::Malformed(e.to_string()),
            };
            bincode::serialize(&reply).unwrap_or_default()
        })
    }
}

/// Peer address overrides: `(from, to) -> addr`, used to send a link's
/// traffic through a fault-injecting proxy.
pub type Routes = Arc<HashMap<(NodeId, NodeId), SocketAddr>>;

/// Creates per-peer clients for one group.
#[derive(Clone)]
pub struct NetworkFactory {
    pub(crate) me: NodeId,
    pub(crate) group: ShardId,
    pub(crate) transport: QuicTransport,
    pub(crate) routes: Routes,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        let addr = self
            .routes
            .get(&(self.me, target))
            .copied()
            .ok_or_else(|| format!("no route to node {target}"))
            .or_else(|_| node.addr.parse::<SocketAddr>().map_err(|e| e.to_string()));
        PeerClient {
            group: self.group,
            target,
            addr,
            transport: self.transport.clone(),
        }
    }
}

/// Sends one group's RPCs to one peer.
pub struct PeerClient {
    group: ShardId,
    target: NodeId,
    addr: Result<SocketAddr, String>,
    transport: QuicTransport,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerError(String);

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> Result<RaftRpcReply, RPCError<NodeId, BasicNode, E>> {
        let addr = self
            .addr
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&PeerError(e))))?;
        let bytes = bincode::serialize(&rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&PeerError(e.to_string()))))?;
        let reply = self
            .transport
            .call(addr, bytes, timeout)
            .await
            .map_err(|e| match e {
                TransportError::Unreachable { .. } | TransportError::Timeout => {
                    RPCError::Unreachable(Unreachable::new(&PeerError(e.to_string())))
                }
                other => RPCError::Network(NetworkError::new(&PeerError(other.to_string()))),
            })?;
        let reply: RaftRpcReply = bincode::deserialize(&reply)
            .map_err(|e| RPCError::Network(NetworkError::new(&PeerError(e.to_string()))))?;
        match reply {
            RaftRpcReply::NoGroup(g) => Err(RPCError::Network(NetworkError::new(&PeerError(
                format!("node {} does not host group {g} yet", self.target),
            )))),
            RaftRpcReply::Malformed(e) => Err(RPCError::Network(NetworkError::new(&PeerError(
                format!("node {} could not decode the request: {e}", self.target),
            )))),
            other => Ok(other),
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&PeerError(format!(
            "node {} answered a different RPC",
            self.target
        ))))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .call(RaftRpc::Append(self.group, rpc), option.hard_ttl())
            .await?
        {
            RaftRpcReply::Append(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(RaftRpc::Snapshot(self.group, rpc), option.hard_ttl())
            .await?
        {
            RaftRpcReply::Snapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .call(RaftRpc::Vote(self.group, rpc), option.hard_ttl())
            .await?
        {
            RaftRpcReply::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }
}
