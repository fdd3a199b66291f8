//! Node-to-node networking for the Raft groups.
//!
//! One QUIC endpoint per node carries every shard group: [`quic`] is a
//! generic request/response layer (one bidirectional stream per RPC over one
//! cached connection per peer) and [`tls`] provides the cluster CA and the
//! mutual-TLS configuration it runs on. The openraft adapter that encodes
//! Raft RPCs for this transport lives next to them.

pub mod adapter;
pub mod quic;
pub mod tls;

pub use quic::{QuicTransport, RpcHandler, TransportError, TransportOptions, MAX_MESSAGE_SIZE};
pub use tls::{
    client_config, generate_cluster_certs, server_config, NodeTls, TlsError, ALPN, SERVER_NAME,
};
