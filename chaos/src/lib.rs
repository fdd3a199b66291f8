//! Tessera's chaos toolkit: the pieces a test harness or `scripts/cluster.sh`
//! needs to make a local cluster misbehave on purpose.
//!
//! - [`proxy`]: fault-injecting UDP and TCP proxies, one per link, with a
//!   shared [`proxy::LinkControl`] handle to change faults at run time.
//! - [`control`]: named sets of links ([`control::ProxySet`]) and a tiny
//!   JSON-lines control server and client, so a nemesis in another process
//!   can partition the cluster.
//! - [`process`]: process nemeses (kill -9, pause, resume, restart) that only
//!   ever touch processes we started.
//!
//! Workloads, checkers and scenarios come later; the binary leaves room for
//! a `run --scenario` subcommand.

#![warn(missing_docs)]

pub mod control;
pub mod error;
pub mod process;
pub mod proxy;

pub use control::{
    ControlClient, ControlRequest, ControlResponse, ControlServer, LinkStatus, ProxySet,
};
pub use error::{ChaosError, Result};
pub use process::{ManagedProcess, ProcessSpec};
pub use proxy::{
    Direction, DirectionCounters, LinkControl, LinkCounters, LinkFaults, LinkProxy, LinkSpec,
    Proto, TcpLinkProxy, UdpLinkProxy,
};
