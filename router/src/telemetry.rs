//! Metrics: names in one place, and the Prometheus endpoint.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `tessera_router_requests_total` | counter | rpc, code |
//! | `tessera_router_request_seconds` | histogram | rpc |
//! | `tessera_router_replica_requests_total` | counter | node, outcome |
//! | `tessera_router_replica_seconds` | histogram | node |
//! | `tessera_router_hedges_total` | counter | |
//! | `tessera_router_breaker_state` | gauge (0 closed, 1 half-open, 2 open) | node |
//! | `tessera_router_rejected_total` | counter | reason (tenant_rate, inflight) |
//! | `tessera_router_map_epoch` | gauge | |
//! | `tessera_router_write_retries_total` | counter | reason |

use crate::error::RouterError;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::net::SocketAddr;
use std::time::Duration;

/// Installs the process-wide Prometheus recorder with an HTTP listener.
///
/// A process has one global recorder; a second router started in the same
/// process (tests) gets an error here, which the caller may log and ignore.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), RouterError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .and_then(|b| b.install())
        .map_err(|e| RouterError::Startup(format!("metrics endpoint {addr}: {e}")))
}

/// Records one finished public RPC.
pub fn record_request(rpc: &'static str, code: tonic::Code, took: Duration) {
    metrics::counter!("tessera_router_requests_total", "rpc" => rpc, "code" => code_name(code))
        .increment(1);
    metrics::histogram!("tessera_router_request_seconds", "rpc" => rpc).record(took.as_secs_f64());
}

/// Records one node call of a read.
pub fn record_replica(node: u64, outcome: &'static str, took: Option<Duration>) {
    let node = node.to_string();
    metrics::counter!("tessera_router_replica_requests_total", "node" => node.clone(), "outcome" => outcome)
        .increment(1);
    if let Some(t) = took {
        metrics::histogram!("tessera_router_replica_seconds", "node" => node)
            .record(t.as_secs_f64());
    }
}

/// Stable snake_case name of a gRPC code, for labels.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}
