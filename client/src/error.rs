//! Client errors, classified by what the caller should do about them.

use std::time::Duration;
use tonic::{Code, Status};

/// The CLI's exit codes (DESIGN.md "Interfaces"); scripts depend on them.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// An unexpected failure that fits no other class (a bug, an internal error).
    pub const OTHER: u8 = 1;
    /// Bad input; nothing was written.
    pub const BAD_INPUT: u8 = 2;
    /// Unavailable or timed out; retryable.
    pub const UNAVAILABLE: u8 = 3;
    /// Not allowed (authentication or permission).
    pub const NOT_ALLOWED: u8 = 4;
    /// Limited (rate or load); retryable after the hint.
    pub const LIMITED: u8 = 5;
}

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Fix the request; retrying it unchanged fails the same way.
    BadInput,
    /// Transient; retrying (with backoff) is safe, writes are idempotent.
    Retryable,
    /// Authentication or permission; retrying does not help.
    NotAllowed,
    /// Over a rate or load limit; retry after the hint.
    Limited,
    /// Unexpected.
    Other,
}

impl ErrorClass {
    /// The CLI exit code for this class.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorClass::BadInput => exit::BAD_INPUT,
            ErrorClass::Retryable => exit::UNAVAILABLE,
            ErrorClass::NotAllowed => exit::NOT_ALLOWED,
            ErrorClass::Limited => exit::LIMITED,
            ErrorClass::Other => exit::OTHER,
        }
    }
}

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The request was refused as malformed; the message names the rule or limit.
    #[error("bad input: {0}")]
    InvalidInput(String),
    /// The tenant (or other named thing) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The tenant already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The cluster could not serve the request now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The deadline passed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A rate or load limit.
    #[error("limited: {message}{}", .retry_after.map(|d| format!(" (retry after {} ms)", d.as_millis())).unwrap_or_default())]
    Limited {
        /// Which limit.
        message: String,
        /// The router's hint of when to retry.
        retry_after: Option<Duration>,
    },
    /// Authentication or permission.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The router could not be reached at all.
    #[error("cannot reach router {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The transport's reason.
        reason: String,
    },
    /// An unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClientError {
    /// How the caller should react.
    pub fn class(&self) -> ErrorClass {
        match self {
            ClientError::InvalidInput(_)
            | ClientError::NotFound(_)
            | ClientError::AlreadyExists(_) => ErrorClass::BadInput,
            ClientError::Unavailable(_) | ClientError::Timeout(_) | ClientError::Connect { .. } => {
                ErrorClass::Retryable
            }
            ClientError::Limited { .. } => ErrorClass::Limited,
            ClientError::NotAllowed(_) => ErrorClass::NotAllowed,
            ClientError::Internal(_) => ErrorClass::Other,
        }
    }

    /// The CLI exit code for this error.
    pub fn exit_code(&self) -> u8 {
        self.class().exit_code()
    }

    /// Whether retrying (after a backoff or the hint) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.class(), ErrorClass::Retryable | ErrorClass::Limited)
    }

    /// The router's retry-after hint, for limited errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Limited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        // One line: statuses from the transport may carry newlines.
        let msg = s.message().replace('\n', " ");
        match s.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                ClientError::InvalidInput(msg)
            }
            Code::NotFound => ClientError::NotFound(msg),
            Code::AlreadyExists => ClientError::AlreadyExists(msg),
            Code::Unavailable | Code::Aborted | Code::Cancelled => ClientError::Unavailable(msg),
            Code::DeadlineExceeded => ClientError::Timeout(msg),
            Code::ResourceExhausted => ClientError::Limited {
                retry_after: s
                    .metadata()
                    .get("retry-after-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_millis),
                message: msg,
            },
            Code::PermissionDenied | Code::Unauthenticated => ClientError::NotAllowed(msg),
            _ => ClientError::Internal(format!("{:?}: {msg}", s.code())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_documented_exit_codes() {
        let cases = [
            (Code::InvalidArgument, exit::BAD_INPUT),
            (Code::NotFound, exit::BAD_INPUT),
            (Code::AlreadyExists, exit::BAD_INPUT),
            (Code::Unavailable, exit::UNAVAILABLE),
            (Code::DeadlineExceeded, exit::UNAVAILABLE),
            (Code::Cancelled, exit::UNAVAILABLE),
            (Code::PermissionDenied, exit::NOT_ALLOWED),
            (Code::Unauthenticated, exit::NOT_ALLOWED),
            (Code::ResourceExhausted, exit::LIMITED),
            (Code::Internal, exit::OTHER),
        ];
        for (code, want) in cases {
            let e = ClientError::from(Status::new(code, "x"));
            assert_eq!(e.exit_code(), want, "{code:?}");
        }
        let connect = ClientError::Connect {
            addr: "127.0.0.1:1".into(),
            reason: "refused".into(),
        };
        assert_eq!(connect.exit_code(), exit::UNAVAILABLE);
    }

    #[test]
    fn limited_errors_carry_the_hint() {
        let mut s = Status::resource_exhausted("tenant acme over 5 req/s");
        s.metadata_mut()
            .insert("retry-after-ms", "250".parse().expect("ascii metadata"));
        let e = ClientError::from(s);
        assert_eq!(e.retry_after(), Some(Duration::from_millis(250)));
        assert!(e.is_retryable());
        assert!(e.to_string().contains("retry after 250 ms"), "{e}");
        assert!(!ClientError::InvalidInput("x".into()).is_retryable());
    }

    #[test]
    fn messages_are_one_line() {
        let e = ClientError::from(Status::unavailable("a\nb"));
        assert!(!e.to_string().contains('\n'));
    }
}
