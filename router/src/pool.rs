//! gRPC channels to storage nodes, one per address, created lazily and
//! reused by every request (a tonic `Channel` multiplexes HTTP/2 streams).

use crate::error::RouterError;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::time::Duration;
use tessera_proto::pb::node_client::NodeClient;
use tessera_proto::transport::{self, PeerIdentity};
use tonic::transport::Channel;

/// Largest message accepted from or sent to a node (a document is at most
/// 1 MiB of body; batches are split below this).
pub const MAX_NODE_MESSAGE: usize = 16 * 1024 * 1024;

/// Channels to nodes, keyed by gRPC address.
#[derive(Debug)]
pub struct NodePool {
    channels: RwLock<HashMap<String, Channel>>,
    connect_timeout: Duration,
    /// The router's cluster certificate, presented to nodes (mutual TLS).
    /// `None` dials plaintext, which only the fake nodes of router tests
    /// accept: real nodes refuse it.
    identity: Option<PeerIdentity>,
}

impl NodePool {
    /// An empty pool. `connect_timeout` bounds TCP connection setup, which
    /// matters for black-holed nodes that never refuse.
    pub fn new(connect_timeout: Duration, identity: Option<PeerIdentity>) -> Self {
        NodePool {
            channels: RwLock::new(HashMap::new()),
            connect_timeout,
            identity,
        }
    }

    /// A client for the node at `addr` (`host:port`, or a full `http://` URI).
    ///
    /// The channel connects on first use and reconnects by itself; HTTP/2
    /// keep-alives detect a dead peer so a watch stream does not hang forever.
    pub fn client(&self, addr: &str) -> Result<NodeClient<Channel>, RouterError> {
        self.channel(addr).map(wrap)
    }

    /// The shared channel to the node at `addr`, for services other than
    /// `Node` (the feature store) that the same connection carries.
    pub fn channel(&self, addr: &str) -> Result<Channel, RouterError> {
        if let Some(ch) = self.channels.read().get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = match &self.identity {
            Some(identity) => identity.node_endpoint(addr),
            None => transport::plaintext_endpoint(addr),
        }
        .map_err(|e| RouterError::Internal(format!("node address {addr:?}: {e}")))?
        .connect_timeout(self.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true);
        let ch = self
            .channels
            .write()
            .entry(addr.to_string())
            .or_insert_with(|| endpoint.connect_lazy())
            .clone();
        Ok(ch)
    }
}

fn wrap(ch: Channel) -> NodeClient<Channel> {
    NodeClient::new(ch)
        .max_decoding_message_size(MAX_NODE_MESSAGE)
        .max_encoding_message_size(MAX_NODE_MESSAGE)
}
