//! A generic request/response RPC layer over QUIC with mutual TLS.
//!
//! Every node binds one [`QuicTransport`]: one UDP socket that both accepts
//! RPCs from peers and dials them. All shard groups share one connection per
//! peer and every call gets its own bidirectional stream, so a slow
//! snapshot never blocks a heartbeat (no head-of-line blocking between
//! streams) and no group pays for a handshake.
//!
//! Framing is QUIC's own stream end: the caller writes the request and
//! finishes its send side, the server reads to the end (bounded by
//! [`MAX_MESSAGE_SIZE`]), runs the [`RpcHandler`], writes the response and
//! finishes. A stream that ends any other way (timeout, handler panic,
//! oversized message) is *reset* with an error code, never finished, so a
//! truncated message can never be mistaken for a complete one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use quinn::{
    Connection, ConnectionError, Endpoint, EndpointConfig, ReadError, ReadToEndError, RecvStream,
    SendStream, VarInt, WriteError,
};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

use super::tls::{self, NodeTls, TlsError, SERVER_NAME};

/// Largest request or response accepted, in bytes. Bounds the memory one
/// stream can make a node allocate; messages bigger than this (snapshots)
/// must be chunked by the caller.
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// Application error codes on the wire. Connection close codes and stream
/// reset codes live in separate namespaces in QUIC.
mod code {
    use quinn::VarInt;
    /// Connection close: the endpoint is shutting down.
    pub(super) const SHUTDOWN: VarInt = VarInt::from_u32(1);
    /// Stream reset: the caller gave up (timeout / dropped future).
    pub(super) const CANCELLED: VarInt = VarInt::from_u32(0x10);
    /// Stream reset/stop: the message exceeds [`super::MAX_MESSAGE_SIZE`].
    pub(super) const TOO_LARGE: VarInt = VarInt::from_u32(0x11);
    /// Stream reset: the handler panicked or the request could not be read.
    pub(super) const HANDLER_FAILED: VarInt = VarInt::from_u32(0x12);
}

/// Handles one inbound RPC: request bytes in, response bytes out.
///
/// The transport is payload-agnostic so that one endpoint can serve every
/// Raft group (the adapter above it multiplexes by group id). Each call runs
/// in its own task; a panic fails that call only (the caller sees
/// [`TransportError::Remote`]) and never the accept loop.
pub trait RpcHandler: Send + Sync + 'static {
    /// Produces the response for one request.
    fn handle(&self, request: Vec<u8>) -> BoxFuture<'static, Vec<u8>>;
}

/// Why a call or a bind failed.
///
/// [`TransportError::is_unreachable`] separates "the peer cannot be reached
/// right now" (Raft should back off and treat the peer as down) from other
/// failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The call did not complete within its timeout (connect, send or
    /// receive). The request may or may not have been processed.
    #[error("call timed out")]
    Timeout,
    /// No connection to the peer: the handshake failed, the connection
    /// timed out, or a recent connect failed and the peer is in reconnect
    /// backoff (calls fail fast instead of hammering it).
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable {
        /// The address that was dialled.
        peer: SocketAddr,
        /// Why, including the last connect error while in backoff.
        reason: String,
    },
    /// The connection broke during the call, or the local endpoint is shut
    /// down. The next call reconnects.
    #[error("connection error: {0}")]
    Connection(String),
    /// The peer received the request but failed to answer it (its handler
    /// panicked, or it aborted the stream).
    #[error("peer failed the call: {0}")]
    Remote(String),
    /// The request or response exceeds [`MAX_MESSAGE_SIZE`].
    #[error("message exceeds the {} byte limit", MAX_MESSAGE_SIZE)]
    TooLarge,
    /// The node's TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

impl TransportError {
    /// True when the peer is down or unresponsive (timeout or unreachable),
    /// as opposed to a local, protocol or handler failure. Raft maps this to
    /// "unreachable" and backs off.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Timeout | Self::Unreachable { .. })
    }

    /// Metric label for this outcome.
    fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unreachable { .. } => "unreachable",
            Self::Connection(_) => "connection",
            Self::Remote(_) => "remote",
            Self::TooLarge => "too_large",
            Self::Tls(_) | Self::Bind(..) => "error",
        }
    }
}

/// Tunables of a [`QuicTransport`]. [`Default`] is what nodes use; tests
/// override the backoff to make it deterministic.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Backoff after the first failed connect to a peer; doubles on every
    /// further failure. While it runs, calls to that peer fail fast with
    /// [`TransportError::Unreachable`].
    pub reconnect_backoff_initial: Duration,
    /// Upper bound of the doubling backoff.
    pub reconnect_backoff_max: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            reconnect_backoff_initial: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
        }
    }
}

/// A node's QUIC endpoint: serves inbound RPCs with an [`RpcHandler`] and
/// makes outbound calls over a pool of one connection per peer.
///
/// Cheap to clone (an `Arc` inside), so every Raft group's network client
/// can hold one. Dropping the last clone closes the endpoint.
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    options: TransportOptions,
    /// One entry per peer address ever called; bounded by cluster size.
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    accepted: Arc<AtomicU64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The accept loop holds its own endpoint handle; closing makes its
        // accept() return None so the task (and the socket) go away.
        self.endpoint.close(code::SHUTDOWN, b"transport dropped");
        if let Some(task) = self.accept_task.get_mut().take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Binds `addr` (port 0 picks one) and starts serving RPCs with
    /// `handler`, using `tls` both to authenticate this node and to verify
    /// peers. Uses [`TransportOptions::default`].
    ///
    /// The same socket dials peers, so bind the address family they use
    /// (`[::]` is dual-stack on Linux; `127.0.0.1` cannot reach an IPv6
    /// peer).
    pub async fn bind(
        addr: SocketAddr,
        tls: &NodeTls,
        handler: Arc<dyn RpcHandler>,
    ) -> Result<Self, TransportError> {
        Self::bind_with_options(addr, tls, handler, TransportOptions::default()).await
    }

    /// [`QuicTransport::bind`] with explicit [`TransportOptions`].
    pub async fn bind_with_options(
        addr: SocketAddr,
        tls: &NodeTls,
        handler: Arc<dyn RpcHandler>,
        options: TransportOptions,
    ) -> Result<Self, TransportError> {
        let server_config = tls::server_config(tls)?;
        let client_config = tls::client_config(tls)?;
        let socket = std::net::UdpSocket::bind(addr).map_err(|e| TransportError::Bind(addr, e))?;
        // A reset key that survives restarts: after a crash, the restarted
        // node answers packets of the old connections with a stateless
        // reset, so peers reconnect at once instead of waiting out the idle
        // timeout.
        let endpoint_config = EndpointConfig::new(Arc::new(ResetKey::for_node(tls)));
        let mut endpoint = Endpoint::new(
            endpoint_config,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| TransportError::Bind(addr, e))?;
        endpoint.set_default_client_config(client_config);
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| TransportError::Bind(addr, e))?;

        let accepted = Arc::new(AtomicU64::new(0));
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), handler, accepted.clone()));
        tracing::info!(%local_addr, "QUIC transport listening");
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint,
                local_addr,
                options,
                peers: Mutex::new(HashMap::new()),
                accept_task: Mutex::new(Some(accept_task)),
                accepted,
            }),
        })
    }

    /// The bound address, with the real port when bound to port 0; this is
    /// what peers must be told to dial.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// How many inbound connections completed the (mutual TLS) handshake
    /// since bind; a diagnostic for connection churn.
    pub fn accepted_connections(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Sends `request` to `peer` and returns its handler's response.
    ///
    /// One bidirectional stream per call over one cached connection per
    /// peer; `timeout` bounds connect+send+receive. A broken connection is
    /// dropped from the pool and the next call reconnects; after a failed
    /// connect, calls fail fast with [`TransportError::Unreachable`] during
    /// a backoff window (50 ms doubling to 2 s by default, reset on
    /// success). Concurrent callers share one connect attempt, bounded by
    /// the timeout of the caller that started it, so give calls timeouts
    /// well above a handshake (a few ms on a LAN) or a healthy peer can
    /// land in backoff.
    pub async fn call(
        &self,
        peer: SocketAddr,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let result = self.call_inner(peer, request, timeout).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        metrics::counter!("tessera_transport_calls_total", "outcome" => outcome).increment(1);
        if let Err(e) = &result {
            tracing::debug!(%peer, error = %e, "RPC failed");
        }
        result
    }

    /// Closes the endpoint (peers see the connections close at once), stops
    /// the accept loop and waits until the connections have drained. Calls
    /// made afterwards fail with [`TransportError::Connection`].
    pub async fn shutdown(&self) {
        self.inner.endpoint.close(code::SHUTDOWN, b"shutdown");
        let accept_task = self.inner.accept_task.lock().take();
        if let Some(task) = accept_task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "QUIC accept loop failed");
            }
        }
        let peers: Vec<Arc<Peer>> = self.inner.peers.lock().values().cloned().collect();
        for peer in peers {
            peer.cached.lock().take();
        }
        self.inner.endpoint.wait_idle().await;
        tracing::info!(local_addr = %self.inner.local_addr, "QUIC transport shut down");
    }

    async fn call_inner(
        &self,
        addr: SocketAddr,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        if request.len() > MAX_MESSAGE_SIZE {
            return Err(TransportError::TooLarge);
        }
        let deadline = deadline_after(timeout);
        let peer = self.inner.peer(addr);
        // At most one retry, and only when the pooled connection turned out
        // to be dead before a stream could be opened: nothing was sent, so
        // retrying cannot duplicate the request.
        let mut retried = false;
        loop {
            let (conn, pooled) = self.connection(&peer, addr, deadline).await?;
            match timeout_at(deadline, exchange(&conn, &request)).await {
                Err(_elapsed) => return Err(TransportError::Timeout),
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(CallError::Failed(e))) => return Err(e),
                Ok(Err(CallError::NotSent(e))) if pooled && !retried => {
                    tracing::debug!(peer = %addr, error = %e, "pooled connection was dead; redialling");
                    peer.evict(&conn);
                    retried = true;
                }
                Ok(Err(CallError::NotSent(e) | CallError::Lost(e))) => {
                    peer.evict(&conn);
                    if is_handshake_rejection(&e) {
                        // With TLS 1.3 the client finishes its side of the
                        // handshake before the server checks the client
                        // certificate, so a rejection surfaces here. It is
                        // a failed connect: back off instead of redialling
                        // a peer that will not have us on every call.
                        let reason = e.to_string();
                        if let Ok(mut backoff) = timeout_at(deadline, peer.dial.lock()).await {
                            backoff.failed(Instant::now(), reason.clone());
                        }
                        return Err(TransportError::Unreachable { peer: addr, reason });
                    }
                    return Err(connection_lost(addr, e));
                }
            }
        }
    }

    /// Returns a live connection to `addr` and whether it came from the
    /// pool, dialling (once, for all concurrent callers) if needed.
    async fn connection(
        &self,
        peer: &Peer,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<(Connection, bool), TransportError> {
        if let Some(conn) = peer.live() {
            return Ok((conn, true));
        }
        let mut backoff = timeout_at(deadline, peer.dial.lock())
            .await
            .map_err(|_| TransportError::Timeout)?;
        // Whoever held the lock before us may have connected.
        if let Some(conn) = peer.live() {
            return Ok((conn, true));
        }
        let now = Instant::now();
        if let Some(last_error) = backoff.blocked(now) {
            return Err(TransportError::Unreachable {
                peer: addr,
                reason: format!("in reconnect backoff after: {last_error}"),
            });
        }
        if now >= deadline {
            // Out of time already; don't count that against the peer.
            return Err(TransportError::Timeout);
        }
        let connecting = self
            .inner
            .endpoint
            .connect(addr, SERVER_NAME)
            .map_err(|e| TransportError::Connection(format!("cannot dial {addr}: {e}")))?;
        match timeout_at(deadline, connecting).await {
            Ok(Ok(conn)) => {
                backoff.succeeded();
                *peer.cached.lock() = Some(conn.clone());
                tracing::debug!(peer = %addr, "connected");
                Ok((conn, false))
            }
            Ok(Err(e)) => {
                let reason = e.to_string();
                backoff.failed(Instant::now(), reason.clone());
                Err(TransportError::Unreachable { peer: addr, reason })
            }
            Err(_elapsed) => {
                backoff.failed(Instant::now(), "connect timed out".to_string());
                Err(TransportError::Timeout)
            }
        }
    }

    /// The pooled connection to `addr`, if any (live or not).
    #[cfg(test)]
    fn cached_connection(&self, addr: SocketAddr) -> Option<Connection> {
        self.inner.peer(addr).cached.lock().clone()
    }
}

impl Inner {
    fn peer(&self, addr: SocketAddr) -> Arc<Peer> {
        let options = &self.options;
        self.peers
            .lock()
            .entry(addr)
            .or_insert_with(|| Arc::new(Peer::new(options)))
            .clone()
    }
}

/// Pool entry for one peer address.
struct Peer {
    /// The shared connection; checked without awaiting on the hot path.
    cached: Mutex<Option<Connection>>,
    /// Serialises connect attempts (so concurrent callers don't each dial)
    /// and holds the reconnect backoff.
    dial: tokio::sync::Mutex<Backoff>,
}

impl Peer {
    fn new(options: &TransportOptions) -> Self {
        Self {
            cached: Mutex::new(None),
            dial: tokio::sync::Mutex::new(Backoff::new(options)),
        }
    }

    /// The pooled connection if it is still open.
    fn live(&self) -> Option<Connection> {
        self.cached
            .lock()
            .as_ref()
            .filter(|conn| conn.close_reason().is_none())
            .cloned()
    }

    /// Drops `conn` from the pool unless it was already replaced.
    fn evict(&self, conn: &Connection) {
        let mut cached = self.cached.lock();
        if cached
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            *cached = None;
        }
    }
}

/// Reconnect backoff for one peer: exponential, reset on success.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    retry_at: Option<Instant>,
    last_error: String,
}

impl Backoff {
    fn new(options: &TransportOptions) -> Self {
        Self {
            initial: options.reconnect_backoff_initial,
            max: options.reconnect_backoff_max,
            next: options.reconnect_backoff_initial,
            retry_at: None,
            last_error: String::new(),
        }
    }

    /// The last connect error if `now` is still inside the backoff window.
    fn blocked(&self, now: Instant) -> Option<&str> {
        match self.retry_at {
            Some(retry_at) if now < retry_at => Some(&self.last_error),
            _ => None,
        }
    }

    fn failed(&mut self, now: Instant, error: String) {
        self.retry_at = now.checked_add(self.next);
        self.next = self.next.saturating_mul(2).min(self.max);
        self.last_error = error;
    }

    fn succeeded(&mut self) {
        self.next = self.initial;
        self.retry_at = None;
        self.last_error.clear();
    }
}

/// How one exchange on an established connection failed.
enum CallError {
    /// The connection was dead before a stream could be opened.
    NotSent(ConnectionError),
    /// The connection died mid-call.
    Lost(ConnectionError),
    /// Any other failure, final.
    Failed(TransportError),
}

/// One RPC on `conn`: open a stream, send the request, finish, read the
/// response to its end.
async fn exchange(conn: &Connection, request: &[u8]) -> Result<Vec<u8>, CallError> {
    let (send, mut recv) = conn.open_bi().await.map_err(CallError::NotSent)?;
    let mut send = SendGuard::new(send, code::CANCELLED);
    send.write_all_and_finish(request)
        .await
        .map_err(|e| match e {
            WriteError::Stopped(c) if c == code::TOO_LARGE => {
                CallError::Failed(TransportError::TooLarge)
            }
            WriteError::Stopped(c) => CallError::Failed(TransportError::Remote(format!(
                "peer stopped reading the request (code {c})"
            ))),
            WriteError::ConnectionLost(e) => CallError::Lost(e),
            other => CallError::Failed(TransportError::Connection(other.to_string())),
        })?;
    match recv.read_to_end(MAX_MESSAGE_SIZE).await {
        Ok(response) => Ok(response),
        Err(ReadToEndError::TooLong) => {
            // Ignoring ClosedStream: we are abandoning the stream anyway.
            let _ = recv.stop(code::TOO_LARGE);
            Err(CallError::Failed(TransportError::TooLarge))
        }
        Err(ReadToEndError::Read(ReadError::Reset(c))) if c == code::TOO_LARGE => {
            Err(CallError::Failed(TransportError::TooLarge))
        }
        Err(ReadToEndError::Read(ReadError::Reset(c))) if c == code::HANDLER_FAILED => {
            Err(CallError::Failed(TransportError::Remote(
                "the peer's handler failed".to_string(),
            )))
        }
        Err(ReadToEndError::Read(ReadError::Reset(c))) => Err(CallError::Failed(
            TransportError::Remote(format!("peer reset the response (code {c})")),
        )),
        Err(ReadToEndError::Read(ReadError::ConnectionLost(e))) => Err(CallError::Lost(e)),
        Err(other) => Err(CallError::Failed(TransportError::Connection(
            other.to_string(),
        ))),
    }
}

/// True when the peer aborted the connection with a TLS alert (QUIC crypto
/// error codes 0x100-0x1ff): it rejected our certificate.
fn is_handshake_rejection(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::ConnectionClosed(close) => {
            (0x100..=0x1ff).contains(&u64::from(close.error_code))
        }
        _ => false,
    }
}

/// Maps a lost connection to the error callers act on: an idle timeout
/// means the peer is gone, everything else is a broken connection.
fn connection_lost(peer: SocketAddr, e: ConnectionError) -> TransportError {
    match e {
        ConnectionError::TimedOut => TransportError::Unreachable {
            peer,
            reason: "connection timed out".to_string(),
        },
        ConnectionError::LocallyClosed => {
            TransportError::Connection("local transport is shut down".to_string())
        }
        other => TransportError::Connection(format!("connection to {peer} lost: {other}")),
    }
}

/// A send stream that is reset (not finished) unless explicitly finished.
/// quinn *finishes* a dropped stream, which would hand the peer a truncated
/// message as if it were complete, for example when a call times out
/// half-way through the request or a handler panics before responding.
struct SendGuard {
    stream: Option<SendStream>,
    drop_code: VarInt,
}

impl SendGuard {
    fn new(stream: SendStream, drop_code: VarInt) -> Self {
        Self {
            stream: Some(stream),
            drop_code,
        }
    }

    async fn write_all_and_finish(&mut self, data: &[u8]) -> Result<(), WriteError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(WriteError::ClosedStream);
        };
        stream.write_all(data).await?;
        stream.finish().map_err(|_| WriteError::ClosedStream)?;
        // Finished: dropping it now is harmless, quinn keeps delivering.
        self.stream = None;
        Ok(())
    }

    fn reset(&mut self, code: VarInt) {
        if let Some(mut stream) = self.stream.take() {
            // ClosedStream: the peer already stopped it; nothing to do.
            let _ = stream.reset(code);
        }
    }
}

impl Drop for SendGuard {
    fn drop(&mut self) {
        let code = self.drop_code;
        self.reset(code);
    }
}

/// Stateless-reset key derived from the node's private key: secret, and
/// the same across restarts of the same node, which is what lets a
/// restarted node reset its peers' stale connections.
struct ResetKey([u8; blake3::OUT_LEN]);

impl ResetKey {
    fn for_node(tls: &NodeTls) -> Self {
        Self(blake3::derive_key(
            "tessera 2026-11 raft transport QUIC stateless reset key",
            tls.key_pem.as_bytes(),
        ))
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        let n = signature_out.len().min(blake3::OUT_LEN);
        signature_out[..n].copy_from_slice(&mac.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        blake3::OUT_LEN
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let signature: [u8; blake3::OUT_LEN] = signature
            .try_into()
            .map_err(|_| quinn::crypto::CryptoError)?;
        // blake3::Hash equality is constant-time.
        if blake3::keyed_hash(&self.0, data) == blake3::Hash::from_bytes(signature) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

/// `now + timeout`, saturating to a year for absurdly large timeouts.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// Accepts connections until the endpoint is closed; each connection is
/// served by its own task so a slow handshake never blocks the others.
async fn accept_loop(endpoint: Endpoint, handler: Arc<dyn RpcHandler>, accepted: Arc<AtomicU64>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(
            incoming,
            handler.clone(),
            accepted.clone(),
        ));
    }
    tracing::debug!("QUIC accept loop stopped");
}

/// Completes the handshake (mutual TLS is enforced here) and serves every
/// stream of the connection in its own task.
async fn serve_connection(
    incoming: quinn::Incoming,
    handler: Arc<dyn RpcHandler>,
    accepted: Arc<AtomicU64>,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "inbound QUIC handshake failed");
            metrics::counter!("tessera_transport_handshake_failures_total").increment(1);
            return;
        }
    };
    accepted.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%remote, "accepted QUIC connection");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(send, recv, handler.clone()));
            }
            Err(e) => {
                tracing::debug!(%remote, reason = %e, "inbound QUIC connection closed");
                return;
            }
        }
    }
}

/// Serves one RPC stream. Any early return leaves the guard to reset the
/// response stream, so the caller gets an error rather than a truncated or
/// empty "success".
async fn serve_stream(send: SendStream, mut recv: RecvStream, handler: Arc<dyn RpcHandler>) {
    let mut send = SendGuard::new(send, code::HANDLER_FAILED);
    let request = match recv.read_to_end(MAX_MESSAGE_SIZE).await {
        Ok(request) => request,
        Err(ReadToEndError::TooLong) => {
            let _ = recv.stop(code::TOO_LARGE);
            send.reset(code::TOO_LARGE);
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading RPC request failed");
            send.reset(code::CANCELLED);
            return;
        }
    };
    drop(recv);

    // Both the synchronous part of `handle` and the future may panic.
    let response = match std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(request))) {
        Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
        Err(panic) => Err(panic),
    };
    let response = match response {
        Ok(response) => response,
        Err(panic) => {
            tracing::error!(panic = panic_message(&*panic), "RPC handler panicked");
            return;
        }
    };
    if response.len() > MAX_MESSAGE_SIZE {
        tracing::error!(
            len = response.len(),
            "RPC response exceeds MAX_MESSAGE_SIZE"
        );
        send.reset(code::TOO_LARGE);
        return;
    }
    if let Err(e) = send.write_all_and_finish(&response).await {
        // Usually the caller timed out and went away.
        tracing::debug!(error = %e, "writing RPC response failed");
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::atomic::AtomicUsize;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Echoes the request; panics on `b"panic"`; counts calls.
    #[derive(Default)]
    struct Echo {
        calls: AtomicUsize,
    }

    impl Echo {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl RpcHandler for Echo {
        fn handle(&self, request: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(request != b"panic", "handler asked to panic");
                request
            }
            .boxed()
        }
    }

    fn loopback() -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
    }

    async fn bind(tls: &NodeTls, handler: Arc<Echo>) -> QuicTransport {
        QuicTransport::bind(loopback(), tls, handler)
            .await
            .expect("bind")
    }

    /// Binds `addr` again after a transport on it was shut down. quinn
    /// releases the UDP socket from its driver task after the last handle
    /// is dropped, with nothing to await; yield to let it run. No sleeping.
    async fn rebind(addr: SocketAddr, tls: &NodeTls, handler: Arc<Echo>) -> QuicTransport {
        for _ in 0..100_000 {
            match QuicTransport::bind(addr, tls, handler.clone()).await {
                Ok(transport) => return transport,
                Err(TransportError::Bind(_, e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("rebind {addr}: {e}"),
            }
        }
        panic!("{addr} still in use");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn echo_round_trip_and_concurrent_calls_share_one_connection() {
        let tls = NodeTls::generate_in_memory(&[1, 2]).expect("certs");
        let server_handler = Arc::new(Echo::default());
        let server = bind(&tls[0], server_handler.clone()).await;
        let client = bind(&tls[1], Arc::new(Echo::default())).await;
        let addr = server.local_addr();

        // 100 concurrent calls from a client with no connection yet: they
        // must share one dial and one connection.
        let calls = (0..100).map(|i| {
            let client = client.clone();
            async move {
                client
                    .call(addr, format!("request {i}").into_bytes(), TIMEOUT)
                    .await
            }
        });
        let responses = futures::future::join_all(calls).await;
        for (i, response) in responses.into_iter().enumerate() {
            assert_eq!(response.expect("call"), format!("request {i}").into_bytes());
        }
        assert_eq!(server.accepted_connections(), 1);
        assert_eq!(server_handler.calls(), 100);

        // Empty and multi-megabyte messages round-trip too.
        assert!(client
            .call(addr, Vec::new(), TIMEOUT)
            .await
            .expect("empty")
            .is_empty());
        let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            client.call(addr, big.clone(), TIMEOUT).await.expect("big"),
            big
        );
        assert_eq!(server.accepted_connections(), 1);

        // Every transport is also a server: call the other way.
        assert_eq!(
            server
                .call(client.local_addr(), b"back".to_vec(), TIMEOUT)
                .await
                .expect("reverse call"),
            b"back"
        );

        client.shutdown().await;
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handler_panic_fails_only_that_call() {
        let tls = NodeTls::generate_in_memory(&[1, 2]).expect("certs");
        let server = bind(&tls[0], Arc::new(Echo::default())).await;
        let client = bind(&tls[1], Arc::new(Echo::default())).await;
        let addr = server.local_addr();

        let err = client
            .call(addr, b"panic".to_vec(), TIMEOUT)
            .await
            .expect_err("panicking handler");
        assert!(matches!(err, TransportError::Remote(_)), "{err}");
        assert!(!err.is_unreachable());
        // Same connection, accept loop alive.
        assert_eq!(
            client
                .call(addr, b"ok".to_vec(), TIMEOUT)
                .await
                .expect("next"),
            b"ok"
        );
        assert_eq!(server.accepted_connections(), 1);
        client.shutdown().await;
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_request_is_refused_locally() {
        let tls = NodeTls::generate_in_memory(&[1, 2]).expect("certs");
        let server = bind(&tls[0], Arc::new(Echo::default())).await;
        let client = bind(&tls[1], Arc::new(Echo::default())).await;
        // vec! of zeroes is calloc'd: no 256 MiB actually touched.
        let err = client
            .call(server.local_addr(), vec![0; MAX_MESSAGE_SIZE + 1], TIMEOUT)
            .await
            .expect_err("too large");
        assert!(matches!(err, TransportError::TooLarge), "{err}");
        client.shutdown().await;
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_cert_from_another_ca_is_rejected() {
        let cluster = NodeTls::generate_in_memory(&[1, 2]).expect("certs");
        let foreign = NodeTls::generate_in_memory(&[2]).expect("foreign certs");
        let server_handler = Arc::new(Echo::default());
        let server = bind(&cluster[0], server_handler.clone()).await;
        let addr = server.local_addr();

        // Trusts the cluster CA, so it accepts the server; only the
        // server's client-certificate check can stop it.
        let impostor_tls = NodeTls {
            ca_pem: cluster[0].ca_pem.clone(),
            cert_pem: foreign[0].cert_pem.clone(),
            key_pem: foreign[0].key_pem.clone(),
        };
        let impostor = bind(&impostor_tls, Arc::new(Echo::default())).await;
        let err = impostor
            .call(addr, b"let me in".to_vec(), TIMEOUT)
            .await
            .expect_err("impostor must be rejected");
        assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
        assert_eq!(server_handler.calls(), 0);
        assert_eq!(server.accepted_connections(), 0);

        // A cluster member still gets through.
        let member = bind(&cluster[1], Arc::new(Echo::default())).await;
        assert_eq!(
            member
                .call(addr, b"hi".to_vec(), TIMEOUT)
                .await
                .expect("member"),
            b"hi"
        );
        assert_eq!(server_handler.calls(), 1);

        impostor.shutdown().await;
        member.shutdown().await;
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_without_certificate_is_rejected() {
        let cluster = NodeTls::generate_in_memory(&[1]).expect("certs");
        let server_handler = Arc::new(Echo::default());
        let server = bind(&cluster[0], server_handler.clone()).await;

        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(cluster[0].ca_pem.as_bytes())
        {
            roots.add(cert.expect("ca pem")).expect("add root");
        }
        let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
        crypto.alpn_protocols = vec![tls::ALPN.to_vec()];
        let quic =
            quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("quic client config");
        let mut endpoint = Endpoint::client(loopback()).expect("client endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));

        let attempt = async {
            let conn = endpoint
                .connect(server.local_addr(), SERVER_NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(b"anonymous")
                .await
                .map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            recv.read_to_end(1024).await.map_err(|e| e.to_string())
        };
        let result = tokio::time::timeout(TIMEOUT, attempt)
            .await
            .expect("rejection must not take the whole timeout");
        assert!(result.is_err(), "anonymous client got {result:?}");
        assert_eq!(server_handler.calls(), 0);
        endpoint.close(VarInt::from_u32(0), b"done");
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_cert_from_another_ca_is_rejected() {
        let cluster = NodeTls::generate_in_memory(&[1, 2]).expect("certs");
        let foreign = NodeTls::generate_in_memory(&[1]).expect("foreign certs");
        // Accepts cluster clients, but presents a foreign certificate.
        let impostor_tls = NodeTls {
            ca_pem: cluster[0].ca_pem.clone(),
            cert_pem: foreign[0].cert_pem.clone(),
            key_pem: foreign[0].key_pem.clone(),
        };
        let impostor_handler = Arc::new(Echo::default());
        let impostor = bind(&impostor_tls, impostor_handler.clone()).await;
        let client = bind(&cluster[1], Arc::new(Echo::default())).await;
        let err = client
            .call(impostor.local_addr(), b"secret".to_vec(), TIMEOUT)
            .await
            .expect_err("client must reject the server");
        assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
        assert_eq!(impostor_handler.calls(), 0);
        client.shutdown().await;
        impostor.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_peer_is_unreachable_then_fails_fast_in_backoff() {
        let tls = NodeTls::generate_in_memory(&[1]).expect("certs");
        // A backoff far longer than the test makes "fails fast" a matter of
        // the error variant, not of timing.
        let options = TransportOptions {
            reconnect_backoff_initial: Duration::from_secs(3600),
            reconnect_backoff_max: Duration::from_secs(3600),
        };
        let client = QuicTransport::bind_with_options(
            loopback(),
            &tls[0],
            Arc::new(Echo::default()),
            options,
        )
        .await
        .expect("bind");
        let dead = {
            let socket = std::net::UdpSocket::bind(loopback()).expect("probe socket");
            socket.local_addr().expect("probe addr")
        }; // socket dropped: nothing listens there now

        let first = client
            .call(dead, b"anyone?".to_vec(), Duration::from_millis(300))
            .await
            .expect_err("nobody listens");
        assert!(first.is_unreachable(), "{first}");

        // Without backoff this would dial again and end in Timeout.
        let second = client
            .call(dead, b"anyone?".to_vec(), Duration::from_millis(300))
            .await
            .expect_err("still nobody");
        assert!(
            matches!(&second, TransportError::Unreachable { peer, .. } if *peer == dead),
            "{second}"
        );
        assert!(second.is_unreachable());
        client.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconnects_after_peer_restarts_on_the_same_port() {
        let tls = NodeTls::generate_in_memory(&[1, 2]).expect("certs");
        let handler = Arc::new(Echo::default());
        let server = bind(&tls[0], handler.clone()).await;
        let addr = server.local_addr();
        let client = bind(&tls[1], Arc::new(Echo::default())).await;
        assert_eq!(
            client
                .call(addr, b"one".to_vec(), TIMEOUT)
                .await
                .expect("before"),
            b"one"
        );
        let old = client.cached_connection(addr).expect("pooled connection");

        server.shutdown().await;
        drop(server);
        // The server's CONNECTION_CLOSE reaches the client asynchronously;
        // await it instead of racing it.
        let reason = old.closed().await;
        assert!(
            matches!(reason, ConnectionError::ApplicationClosed(ref c) if c.error_code == code::SHUTDOWN),
            "{reason}"
        );

        let server = rebind(addr, &tls[0], handler.clone()).await;
        assert_eq!(
            client
                .call(addr, b"two".to_vec(), TIMEOUT)
                .await
                .expect("after restart"),
            b"two"
        );
        let new = client
            .cached_connection(addr)
            .expect("new pooled connection");
        assert_ne!(new.stable_id(), old.stable_id());
        assert_eq!(handler.calls(), 2);

        client.shutdown().await;
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_after_shutdown_fail_without_hanging() {
        let tls = NodeTls::generate_in_memory(&[1, 2]).expect("certs");
        let server = bind(&tls[0], Arc::new(Echo::default())).await;
        let client = bind(&tls[1], Arc::new(Echo::default())).await;
        client
            .call(server.local_addr(), b"x".to_vec(), TIMEOUT)
            .await
            .expect("call");
        client.shutdown().await;
        let err = client
            .call(server.local_addr(), b"x".to_vec(), TIMEOUT)
            .await
            .expect_err("shut down");
        assert!(matches!(err, TransportError::Connection(_)), "{err}");
        server.shutdown().await;
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_on_success() {
        let options = TransportOptions::default();
        let mut backoff = Backoff::new(&options);
        let t0 = Instant::now();
        assert!(backoff.blocked(t0).is_none());

        let mut expected = Duration::from_millis(50);
        for _ in 0..10 {
            backoff.failed(t0, "refused".to_string());
            assert_eq!(backoff.blocked(t0), Some("refused"));
            assert!(backoff
                .blocked(t0 + expected - Duration::from_millis(1))
                .is_some());
            assert!(backoff.blocked(t0 + expected).is_none());
            expected = (expected * 2).min(Duration::from_secs(2));
        }
        assert_eq!(backoff.next, Duration::from_secs(2));

        backoff.succeeded();
        assert!(backoff.blocked(t0).is_none());
        backoff.failed(t0, "refused".to_string());
        assert!(backoff.blocked(t0 + Duration::from_millis(50)).is_none());
    }

    #[test]
    fn reset_key_is_stable_per_node_and_verifies() {
        use quinn::crypto::HmacKey;
        let tls = NodeTls::generate_in_memory(&[1, 2]).expect("certs");
        let (a, a_again, b) = (
            ResetKey::for_node(&tls[0]),
            ResetKey::for_node(&tls[0]),
            ResetKey::for_node(&tls[1]),
        );
        let mut sig_a = [0u8; blake3::OUT_LEN];
        let mut sig_a_again = [0u8; blake3::OUT_LEN];
        let mut sig_b = [0u8; blake3::OUT_LEN];
        a.sign(b"cid", &mut sig_a);
        a_again.sign(b"cid", &mut sig_a_again);
        b.sign(b"cid", &mut sig_b);
        assert_eq!(sig_a, sig_a_again);
        assert_ne!(sig_a, sig_b);
        assert!(a.verify(b"cid", &sig_a).is_ok());
        assert!(b.verify(b"cid", &sig_a).is_err());
        assert!(a.verify(b"cid", &sig_a[..16]).is_err());
    }
}
