//! Async, typed Rust client for a Tessera cluster, through a router.
//!
//! ```no_run
//! use tessera_client::{Credentials, SearchQuery, TenantSpec, TesseraClient};
//!
//! # async fn demo() -> Result<(), tessera_client::ClientError> {
//! let creds = Credentials {
//!     ca_pem: Some(std::fs::read_to_string(".cluster/certs/ca.pem").unwrap_or_default()),
//!     api_key: Some(std::fs::read_to_string(".cluster/certs/admin.key").unwrap_or_default()),
//!     user_token: None,
//! };
//! let client = TesseraClient::connect_with("127.0.0.1:7300", &creds).await?;
//! client.create_tenant(&TenantSpec::new("acme", ["us-east", "eu-west"])).await?;
//! let put = client
//!     .put_documents("acme", vec![br#"{"id":"p-1","title":"Deploy runbook","version":1}"#.to_vec()], vec![], "")
//!     .await?;
//! let page = client
//!     .search(&SearchQuery::new("acme", "u:alice", "deploy").token(&put.token))
//!     .await?;
//! for hit in &page.hits {
//!     println!("{} {}", hit.score, hit.id);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Every error says how to react through [`ClientError::class`]: retry
//! (unavailable, timed out), retry after a hint (limited), fix the input, or
//! stop (not allowed). The `tessera` CLI maps the same classes to its exit
//! codes (see [`exit`]).

#![warn(missing_docs)]

pub mod bulk;
pub mod click_eval;
pub mod client;
pub mod cluster_file;
pub mod demo;
pub mod error;
pub mod eval;
pub mod experiments;
pub mod features;
pub mod keys;
pub mod parquet_rows;
pub mod residency;
pub mod train;
pub mod types;

pub use client::{Credentials, TesseraClient};
pub use error::{exit, ClientError, ErrorClass};
pub use types::*;

/// Restores the default SIGPIPE action so a CLI piped into `head` ends
/// quietly like other Unix tools instead of panicking on a closed stdout.
/// Call it first thing in `main`, before any thread exists.
pub fn quiet_on_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: runs before any other thread exists; SIG_DFL installs no Rust
    // code as a handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
