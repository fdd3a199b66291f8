//! Router errors, and the one place that decides which gRPC status each
//! becomes, so clients can rely on the code to know whether to retry.

use std::time::Duration;
use tonic::{Code, Status};

/// Metadata key carrying how long a limited caller should wait, in ms.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Why a router request failed.
///
/// The variants mirror the retry classes clients act on, rather than the
/// internal cause, so every call site has to decide what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Bad input; nothing was written. The message names the rule or limit.
    #[error("{0}")]
    InvalidArgument(String),
    /// The tenant (or document owner) does not exist in the cluster map.
    #[error("{0}")]
    NotFound(String),
    /// The tenant already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// No replica or leader could serve in time; safe to retry.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's deadline passed before an answer was assembled.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A rate or load limit; retry after the hint.
    #[error("{message}")]
    ResourceExhausted {
        /// Which limit was hit.
        message: String,
        /// When a retry has a chance to be admitted.
        retry_after: Duration,
    },
    /// Authentication or authorisation failed.
    #[error("{0}")]
    PermissionDenied(String),
    /// A bug or an unexpected answer; not retryable as such.
    #[error("{0}")]
    Internal(String),
    /// The router could not start (bind, metrics endpoint).
    #[error("router startup failed: {0}")]
    Startup(String),
}

impl RouterError {
    /// Converts a status a storage node returned, keeping its class so that a
    /// node's `InvalidArgument` stays bad input and its `Unavailable` stays
    /// retryable. `context` says which call failed (e.g. "shard 3").
    pub fn from_node_status(context: &str, status: &Status) -> Self {
        let msg = format!("{context}: {}", status.message());
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => RouterError::InvalidArgument(msg),
            Code::NotFound => RouterError::NotFound(msg),
            Code::AlreadyExists => RouterError::AlreadyExists(msg),
            Code::PermissionDenied | Code::Unauthenticated => RouterError::PermissionDenied(msg),
            Code::ResourceExhausted => RouterError::ResourceExhausted {
                retry_after: retry_after_of(status).unwrap_or(Duration::from_millis(100)),
                message: msg,
            },
            // FailedPrecondition is the node's "not leader / not ready": transient.
            Code::Unavailable | Code::Aborted | Code::Cancelled | Code::FailedPrecondition => {
                RouterError::Unavailable(msg)
            }
            Code::DeadlineExceeded => RouterError::DeadlineExceeded(msg),
            _ => RouterError::Internal(msg),
        }
    }

    /// Whether a stale cluster map could explain the error, so that one
    /// refresh-and-retry is worth it.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RouterError::NotFound(_))
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            RouterError::InvalidArgument(_) => Code::InvalidArgument,
            RouterError::NotFound(_) => Code::NotFound,
            RouterError::AlreadyExists(_) => Code::AlreadyExists,
            RouterError::Unavailable(_) => Code::Unavailable,
            RouterError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            RouterError::ResourceExhausted { .. } => Code::ResourceExhausted,
            RouterError::PermissionDenied(_) => Code::PermissionDenied,
            RouterError::Internal(_) | RouterError::Startup(_) => Code::Internal,
        }
    }
}

impl From<RouterError> for Status {
    fn from(e: RouterError) -> Self {
        let retry_after = match &e {
            RouterError::ResourceExhausted { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let mut status = Status::new(e.code(), e.to_string());
        if let Some(after) = retry_after {
            let ms = after.as_millis().max(1).to_string();
            if let Ok(v) = ms.parse() {
                status.metadata_mut().insert(RETRY_AFTER_MS, v);
            }
        }
        status
    }
}

/// Reads the `retry-after-ms` hint of a status, if present.
pub fn retry_after_of(status: &Status) -> Option<Duration> {
    status
        .metadata()
        .get(RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_exhausted_carries_retry_after() {
        let status: Status = RouterError::ResourceExhausted {
            message: "tenant acme over 5 req/s".into(),
            retry_after: Duration::from_millis(250),
        }
        .into();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(retry_after_of(&status), Some(Duration::from_millis(250)));
    }

    #[test]
    fn node_statuses_keep_their_class() {
        let cases = [
            (Code::InvalidArgument, Code::InvalidArgument),
            (Code::NotFound, Code::NotFound),
            (Code::Unavailable, Code::Unavailable),
            (Code::PermissionDenied, Code::PermissionDenied),
            (Code::Internal, Code::Internal),
        ];
        for (from, to) in cases {
            let e = RouterError::from_node_status("shard 1", &Status::new(from, "x"));
            assert_eq!(e.code(), to);
            assert!(e.to_string().starts_with("shard 1: "));
        }
    }
}
