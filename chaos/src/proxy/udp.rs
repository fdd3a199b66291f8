//! The UDP link proxy (QUIC between nodes).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::faults::{Direction, LinkControl, LinkFaults};
use crate::error::Result;

/// Datagrams that may wait in one direction's delay queue. When it is full
/// the newest datagram is dropped, like a router's tail drop, so a huge
/// latency cannot grow memory without bound.
const QUEUE_DATAGRAMS: usize = 8192;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// A client session with no traffic either way for this long is dropped,
/// so long runs with churning client ports do not leak sockets.
const SESSION_IDLE: Duration = Duration::from_secs(300);
/// How often idle sessions are looked for.
const SESSION_SWEEP: Duration = Duration::from_secs(30);
/// Pause after an unexpected socket error, so a persistent error cannot
/// turn a receive loop into a busy loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// A datagram waiting for its delivery time.
struct Pending {
    deadline: Instant,
    data: Vec<u8>,
    socket: Arc<UdpSocket>,
    /// `None`: `socket` is connected to the destination.
    to: Option<SocketAddr>,
}

/// A fault-injecting UDP forwarder for one link.
///
/// Each distinct client source address gets its own upstream socket,
/// connected to the target, so the target sees one peer per client and its
/// replies can be routed back to the right client. Faults are applied per
/// datagram and per direction; latency goes through a per-direction delay
/// queue that never reorders.
///
/// Dropping the proxy stops it (all its tasks are aborted).
#[derive(Debug)]
pub struct UdpLinkProxy {
    local_addr: SocketAddr,
    target: SocketAddr,
    control: LinkControl,
    _tasks: JoinSet<()>,
}

impl UdpLinkProxy {
    /// Binds `listen` and starts forwarding to `target` under `control`'s
    /// faults. Must be called inside a tokio runtime.
    pub async fn bind(
        listen: SocketAddr,
        target: SocketAddr,
        control: LinkControl,
    ) -> Result<Self> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let local_addr = socket.local_addr()?;
        let (fwd_tx, fwd_rx) = mpsc::channel(QUEUE_DATAGRAMS);
        let (bwd_tx, bwd_rx) = mpsc::channel(QUEUE_DATAGRAMS);
        let mut tasks = JoinSet::new();
        tasks.spawn(deliver(fwd_rx, control.clone(), Direction::Forward));
        tasks.spawn(deliver(bwd_rx, control.clone(), Direction::Backward));
        tasks.spawn(
            ClientLoop {
                socket,
                target,
                control: control.clone(),
                fwd_tx,
                bwd_tx,
                epoch: Instant::now(),
            }
            .run(),
        );
        tracing::debug!(%local_addr, %target, "udp link proxy started");
        Ok(UdpLinkProxy {
            local_addr,
            target,
            control,
            _tasks: tasks,
        })
    }

    /// The address clients should send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where datagrams are forwarded.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The link's fault handle.
    pub fn control(&self) -> &LinkControl {
        &self.control
    }
}

/// Delivers one direction's datagrams in FIFO order, each no earlier than
/// its deadline; a deadline earlier than the previous one (jitter) is
/// pushed back so the direction never reorders.
async fn deliver(mut rx: mpsc::Receiver<Pending>, control: LinkControl, dir: Direction) {
    let mut last = Instant::now();
    while let Some(p) = rx.recv().await {
        let at = p.deadline.max(last);
        last = at;
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        // A fault set while the datagram was in flight still catches it:
        // a blackhole drops what is on the wire too.
        if control.with_faults(|f| f.blocks(dir)) {
            control.record_dropped(dir, p.data.len());
            continue;
        }
        let sent = match p.to {
            Some(to) => p.socket.send_to(&p.data, to).await,
            None => p.socket.send(&p.data).await,
        };
        match sent {
            Ok(_) => control.record_forwarded(dir, p.data.len()),
            Err(e) => {
                // Typically ECONNREFUSED left by an ICMP error while the
                // target is down: the datagram is lost, as on a network.
                tracing::debug!(?dir, error = %e, "udp send failed; datagram dropped");
                control.record_dropped(dir, p.data.len());
            }
        }
    }
}

/// Aborts the session's reply task when the session is dropped.
struct Session {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since `ClientLoop::epoch` of the last datagram either way.
    last_active: Arc<AtomicU64>,
    reply_task: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reply_task.abort();
    }
}

struct ClientLoop {
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    control: LinkControl,
    fwd_tx: mpsc::Sender<Pending>,
    bwd_tx: mpsc::Sender<Pending>,
    epoch: Instant,
}

impl ClientLoop {
    fn now_ms(epoch: Instant) -> u64 {
        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(self) {
        let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut sweep = tokio::time::interval(SESSION_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, from)) => self.on_client_datagram(&mut sessions, &buf[..n], from).await,
                    Err(e) if is_transient(&e) => {
                        tracing::debug!(error = %e, "udp recv: transient error");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "udp recv failed");
                        tokio::time::sleep(ERROR_BACKOFF).await;
                    }
                },
                _ = sweep.tick() => {
                    let now = Self::now_ms(self.epoch);
                    let idle = u64::try_from(SESSION_IDLE.as_millis()).unwrap_or(u64::MAX);
                    sessions.retain(|_, s| now.saturating_sub(s.last_active.load(Ordering::Relaxed)) < idle);
                }
            }
        }
    }

    async fn on_client_datagram(
        &self,
        sessions: &mut HashMap<SocketAddr, Session>,
        data: &[u8],
        from: SocketAddr,
    ) {
        let dir = Direction::Forward;
        let Some(delay) = self.control.with_faults(|f| admit(f, dir)) else {
            self.control.record_dropped(dir, data.len());
            return;
        };
        let upstream = match sessions.get(&from) {
            Some(s) => {
                s.last_active
                    .store(Self::now_ms(self.epoch), Ordering::Relaxed);
                s.upstream.clone()
            }
            None => match self.open_session(from).await {
                Ok(s) => {
                    let up = s.upstream.clone();
                    sessions.insert(from, s);
                    up
                }
                Err(e) => {
                    tracing::warn!(client = %from, target = %self.target, error = %e, "udp: cannot open upstream socket");
                    self.control.record_dropped(dir, data.len());
                    return;
                }
            },
        };
        let pending = Pending {
            deadline: Instant::now() + delay,
            data: data.to_vec(),
            socket: upstream,
            to: None,
        };
        if self.fwd_tx.try_send(pending).is_err() {
            self.control.record_dropped(dir, data.len());
        }
    }

    async fn open_session(&self, client: SocketAddr) -> Result<Session> {
        let bind: SocketAddr = match self.target.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let upstream = Arc::new(UdpSocket::bind(bind).await?);
        upstream.connect(self.target).await?;
        let last_active = Arc::new(AtomicU64::new(Self::now_ms(self.epoch)));
        let reply_task = tokio::spawn(relay_replies(
            upstream.clone(),
            self.socket.clone(),
            client,
            self.control.clone(),
            self.bwd_tx.clone(),
            last_active.clone(),
            self.epoch,
        ));
        self.control.record_session();
        tracing::debug!(%client, upstream = ?upstream.local_addr().ok(), "udp session opened");
        Ok(Session {
            upstream,
            last_active,
            reply_task,
        })
    }
}

/// Reads the target's replies on one session's upstream socket and queues
/// them back to that session's client.
async fn relay_replies(
    upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    control: LinkControl,
    bwd_tx: mpsc::Sender<Pending>,
    last_active: Arc<AtomicU64>,
    epoch: Instant,
) {
    let dir = Direction::Backward;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = match upstream.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) if is_transient(&e) => {
                // ICMP "port unreachable" from an earlier send while the
                // target was down; each one is caused by a send, so no spin.
                tracing::trace!(error = %e, "udp upstream: transient error");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "udp upstream recv failed");
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        last_active.store(ClientLoop::now_ms(epoch), Ordering::Relaxed);
        let data = &buf[..n];
        let Some(delay) = control.with_faults(|f| admit(f, dir)) else {
            control.record_dropped(dir, n);
            continue;
        };
        let pending = Pending {
            deadline: Instant::now() + delay,
            data: data.to_vec(),
            socket: listen.clone(),
            to: Some(client),
        };
        if bwd_tx.try_send(pending).is_err() {
            control.record_dropped(dir, n);
        }
    }
}

/// Decides a datagram's fate as it enters the link: `None` to drop it,
/// otherwise the one-way delay it should get.
fn admit(f: &LinkFaults, dir: Direction) -> Option<Duration> {
    if f.blocks(dir) || f.sample_drop() {
        None
    } else {
        Some(f.sample_delay())
    }
}

/// Errors a UDP socket reports because of a peer's ICMP message rather
/// than a fault of our own socket.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}
