//! Fault-injecting proxies, one per link.
//!
//! Every inter-process link of a test cluster (QUIC between nodes, gRPC from
//! router to node) is pointed at a proxy instead of at its peer, so faults can
//! be injected without touching the processes: latency and jitter, random
//! datagram loss, a blackhole, and one-way cuts. A [`LinkControl`] changes a
//! running link's faults and reads its counters.
//!
//! Use [`UdpLinkProxy`] / [`TcpLinkProxy`] directly, or [`LinkProxy::bind`]
//! with a [`LinkSpec`] (the JSON shape of the binary's config file), or a
//! [`crate::control::ProxySet`] to hold many named links.

mod faults;
mod tcp;
mod udp;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use faults::{Direction, DirectionCounters, LinkControl, LinkCounters, LinkFaults};
pub use tcp::TcpLinkProxy;
pub use udp::UdpLinkProxy;

use crate::error::{ChaosError, Result};

/// The transport a link carries, which decides how faults are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// Datagrams (QUIC between nodes): faults act per datagram.
    Udp,
    /// A byte stream (gRPC router→node): faults delay or hold bytes but
    /// never lose them.
    Tcp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        })
    }
}

/// One link as the config file and the harness describe it:
/// `{"name":"n1->n3","proto":"udp","listen":"127.0.0.1:7001","target":"127.0.0.3:7000","faults":{"latency_ms":40}}`.
///
/// `faults` become the link's baseline, which `heal` returns to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Unique name used by the control API (for example `"n1->n3"`).
    pub name: String,
    /// UDP or TCP.
    pub proto: Proto,
    /// Where the proxy listens; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where the proxy forwards to.
    pub target: SocketAddr,
    /// Baseline faults; healthy when left out.
    #[serde(default)]
    pub faults: LinkFaults,
}

impl LinkSpec {
    /// Checks what serde cannot: a usable name and valid faults.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(ChaosError::InvalidSpec(
                "link name must not be empty".into(),
            ));
        }
        if self.name.chars().any(char::is_control) {
            return Err(ChaosError::InvalidSpec(format!(
                "link name {:?} contains control characters",
                self.name
            )));
        }
        self.faults.validate()
    }
}

/// A running proxy of either protocol; dropping it stops the link.
#[derive(Debug)]
pub enum LinkProxy {
    /// A UDP link.
    Udp(UdpLinkProxy),
    /// A TCP link.
    Tcp(TcpLinkProxy),
}

impl LinkProxy {
    /// Starts the proxy a spec describes, with a fresh [`LinkControl`]
    /// whose baseline is the spec's faults.
    pub async fn bind(spec: &LinkSpec) -> Result<LinkProxy> {
        spec.validate()?;
        let control = LinkControl::new(spec.faults.clone())?;
        Ok(match spec.proto {
            Proto::Udp => {
                LinkProxy::Udp(UdpLinkProxy::bind(spec.listen, spec.target, control).await?)
            }
            Proto::Tcp => {
                LinkProxy::Tcp(TcpLinkProxy::bind(spec.listen, spec.target, control).await?)
            }
        })
    }

    /// The address actually bound (useful when the spec asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            LinkProxy::Udp(p) => p.local_addr(),
            LinkProxy::Tcp(p) => p.local_addr(),
        }
    }

    /// Where the link forwards to.
    pub fn target(&self) -> SocketAddr {
        match self {
            LinkProxy::Udp(p) => p.target(),
            LinkProxy::Tcp(p) => p.target(),
        }
    }

    /// The link's fault handle.
    pub fn control(&self) -> &LinkControl {
        match self {
            LinkProxy::Udp(p) => p.control(),
            LinkProxy::Tcp(p) => p.control(),
        }
    }

    /// The protocol of this link.
    pub fn proto(&self) -> Proto {
        match self {
            LinkProxy::Udp(_) => Proto::Udp,
            LinkProxy::Tcp(_) => Proto::Tcp,
        }
    }
}
