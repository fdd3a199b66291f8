//! Router configuration: everything `tessera-router`'s flags set, with
//! defaults that suit a local three-region cluster.

use crate::breaker::BreakerConfig;
use crate::limits::LimitsConfig;
use crate::select::SelectConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tessera_proto::NodeId;

/// How the router picks a replica when a request does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SelectionPolicy {
    /// C3-style score: EWMA latency × outstanding-request factor, local region preferred.
    #[default]
    Adaptive,
    /// Rotate over the eligible replicas; the baseline benchmarks compare against.
    RoundRobin,
}

/// Everything a router needs to start.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Address the public gRPC API listens on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// gRPC addresses of nodes to learn the cluster map from.
    pub seeds: Vec<String>,
    /// The router's own region: replicas there are preferred.
    pub region: String,
    /// Prometheus scrape endpoint; `None` = no exporter.
    pub metrics: Option<SocketAddr>,
    /// Admission control.
    pub limits: LimitsConfig,
    /// Replica scoring and hedging.
    pub select: SelectConfig,
    /// Per-node circuit breakers.
    pub breaker: BreakerConfig,
    /// Default replica policy.
    pub selection: SelectionPolicy,
    /// Deadline of a read when the caller sets none.
    pub default_read_timeout: Duration,
    /// Deadline of a write when the caller sets none.
    pub default_write_timeout: Duration,
    /// Upper bound on any caller-supplied deadline.
    pub max_timeout: Duration,
    /// Longest a single write attempt waits on one node before trying the
    /// next voter, so a paused leader does not eat the whole deadline.
    pub write_attempt_timeout: Duration,
    /// Largest batch (in bytes of documents) sent to a node in one Write;
    /// keeps node messages under the default gRPC 4 MiB limit.
    pub max_write_bytes: usize,
    /// How often open breakers are probed with a `Status` call.
    pub probe_interval: Duration,
    /// How often the map is re-fetched even while a watch is healthy.
    pub map_poll_interval: Duration,
    /// gRPC address overrides: node id → the address to reach that node's
    /// gRPC at instead of the map's `grpc_addr` (typically a chaos proxy
    /// that injects latency on the router→node link; `--node-route ID=ADDR`).
    pub node_routes: BTreeMap<NodeId, String>,
    /// Where searches under an experiment and clicks citing them are logged (JSON lines, see
    /// `impressions`); `None` = not logged.
    pub impression_log: Option<std::path::PathBuf>,
    /// The router's cluster certificate (`router.pem`): presented to nodes,
    /// which refuse callers without one, and served on the client port.
    /// `None` only for router tests against fake, plaintext nodes.
    pub identity: Option<tessera_proto::transport::PeerIdentity>,
    /// Serve the client port in plaintext (`--insecure`): for local
    /// experiments only, and said so in the log at startup.
    pub insecure: bool,
    /// BENCHMARK BASELINE ONLY (`--unsecured`): plaintext everywhere and
    /// no API key checks, every caller acting as a cluster admin, so that
    /// `scripts/bench.sh security` measures what TLS and keys cost in the
    /// same run. The binary allows it only on a loopback listen address.
    pub unsecured: bool,
    /// Where admin and key operations are logged (JSON lines, see
    /// `auth::audit`); `None` = not logged.
    pub audit_log: Option<std::path::PathBuf>,
}

impl RouterConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(listen: SocketAddr, seeds: Vec<String>, region: impl Into<String>) -> Self {
        let region = region.into();
        RouterConfig {
            listen,
            seeds,
            select: SelectConfig::for_region(region.clone()),
            region,
            metrics: None,
            limits: LimitsConfig::default(),
            breaker: BreakerConfig::default(),
            selection: SelectionPolicy::Adaptive,
            default_read_timeout: Duration::from_secs(5),
            default_write_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(120),
            write_attempt_timeout: Duration::from_secs(3),
            max_write_bytes: 3 * 1024 * 1024,
            probe_interval: Duration::from_millis(250),
            map_poll_interval: Duration::from_secs(10),
            node_routes: BTreeMap::new(),
            impression_log: None,
            identity: None,
            insecure: false,
            unsecured: false,
            audit_log: None,
        }
    }
}

/// Parses one `--node-route` value, `ID=HOST:PORT`.
pub fn parse_node_route(text: &str) -> Result<(NodeId, String), String> {
    let (id, addr) = text.split_once('=').ok_or_else(|| {
        format!("node route {text:?} must be ID=HOST:PORT (e.g. 3=127.0.0.1:9003)")
    })?;
    let id: NodeId = id
        .trim()
        .parse()
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| {
            format!("node route {text:?}: {id:?} is not a node id (a positive integer)")
        })?;
    let addr = addr.trim();
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if !port_ok {
        return Err(format!(
            "node route {text:?}: {addr:?} is not HOST:PORT (e.g. 127.0.0.1:9003)"
        ));
    }
    Ok((id, addr.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_routes() {
        assert_eq!(
            parse_node_route("3=127.0.0.1:9003"),
            Ok((3, "127.0.0.1:9003".to_string()))
        );
        assert_eq!(
            parse_node_route(" 12 = localhost:80 "),
            Ok((12, "localhost:80".to_string()))
        );
        for bad in [
            "",
            "3",
            "=1.2.3.4:5",
            "x=1.2.3.4:5",
            "0=1.2.3.4:5",
            "3=1.2.3.4",
            "3=:80",
            "3=h:0",
            "3=h:99999",
        ] {
            let e = parse_node_route(bad).expect_err(bad);
            assert!(e.contains("node route"), "{e}");
        }
    }
}
