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
//! - [`cluster`]: a throwaway multi-region cluster of `tessera-node` and
//!   `tessera-router` processes with a fault proxy on every link.
//! - [`nemesis`]: faults (kill, pause, partitions, one-way cuts, region
//!   outages, slow and flapping links, restarts) applied and healed at run
//!   time.
//! - [`workload`], [`history`], [`model`]: versioned writers, readers with
//!   the permission oracle, session-token checks, failover probes, and the
//!   record the checkers judge.
//! - [`events`]: event writers (retries and duplicate sends with the same
//!   ids) and the count oracle: no acknowledged event lost, none counted twice.
//! - [`check`], [`report`]: convergence and no-lost-write checkers, read
//!   availability per fault window, failover percentiles, the verdict.
//! - [`scenario`]: named, seeded fault schedules and the run that ties it
//!   all together (`tessera-chaos run --scenario NAME`).

#![warn(missing_docs)]

pub mod check;
pub mod cluster;
pub mod control;
pub mod error;
pub mod events;
pub mod history;
pub mod model;
pub mod nemesis;
pub mod process;
pub mod proxy;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod workload;

pub use control::{
    ControlClient, ControlRequest, ControlResponse, ControlServer, LinkStatus, ProxySet,
};
pub use error::{ChaosError, Result};
pub use process::{ManagedProcess, ProcessSpec};
pub use proxy::{
    Direction, DirectionCounters, LinkControl, LinkCounters, LinkFaults, LinkProxy, LinkSpec,
    Proto, TcpLinkProxy, UdpLinkProxy,
};
