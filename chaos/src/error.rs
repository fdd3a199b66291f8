//! The one error type of the library, so callers (the binary, the harness,
//! the cluster tests) can match on causes without pulling in `anyhow`.

use std::io;

/// Everything that can go wrong inside `tessera-chaos`.
///
/// Variants name the cause rather than the call site, because a nemesis
/// schedule mostly wants to know "was that my mistake (bad input, unknown
/// link) or the machine's (I/O)?".
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A socket or process operation failed at the OS level.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A fault description was out of range (for example `drop_rate` 1.5).
    #[error("invalid faults: {0}")]
    InvalidFaults(String),
    /// A link spec was malformed (empty or duplicate name, bad config file).
    #[error("invalid link spec: {0}")]
    InvalidSpec(String),
    /// A command named a link that this proxy set does not hold.
    #[error("unknown link {0:?}")]
    UnknownLink(String),
    /// JSON could not be parsed or produced.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The control peer broke the line protocol or answered with an error.
    #[error("control protocol error: {0}")]
    Control(String),
    /// A pid that must never be signalled (0, 1, ourselves, out of range).
    #[error("refusing to signal pid {0}")]
    ForbiddenPid(u32),
    /// A managed process has already exited and been reaped, so its pid
    /// may belong to someone else now.
    #[error("process {0} has already exited; not signalling a possibly reused pid")]
    Exited(u32),
    /// `kill(2)` failed for a reason other than "no such process".
    #[error("signal {signal} to pid {pid} failed: {errno}")]
    Signal {
        /// The pid we tried to signal.
        pid: u32,
        /// The signal's name, for the message.
        signal: &'static str,
        /// The errno the kernel returned.
        errno: nix::errno::Errno,
    },
    /// The process was not there when we tried to signal it.
    #[error("no such process {0}")]
    NoSuchProcess(u32),
    /// A test cluster could not be built or driven (a binary is missing, a
    /// process exited while starting, a name is unknown).
    #[error("cluster: {0}")]
    Cluster(String),
    /// An observer or setup call to a node or router failed.
    #[error("rpc: {0}")]
    Rpc(String),
    /// A condition the harness waits for did not hold before its deadline.
    #[error("timed out waiting for {0}")]
    Deadline(String),
    /// A scenario or option the harness does not know.
    #[error("invalid scenario: {0}")]
    Scenario(String),
}

/// Short alias used throughout the crate.
pub type Result<T> = std::result::Result<T, ChaosError>;
