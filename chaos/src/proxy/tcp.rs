//! The TCP link proxy (gRPC from router to node).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::faults::{Direction, LinkControl};
use crate::error::Result;

/// Chunks that may wait in one direction's delay queue of one connection.
/// A full queue stops the reader, so TCP flow control pushes back on the
/// sender instead of the proxy buffering without bound.
const QUEUE_CHUNKS: usize = 256;
/// Largest single read.
const READ_CHUNK: usize = 16 * 1024;
/// Pause after a failed `accept` (for example EMFILE), so it cannot spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

enum Chunk {
    Data { deadline: Instant, bytes: Vec<u8> },
    Eof,
}

/// A fault-injecting TCP forwarder for one link.
///
/// Every accepted connection gets its own connection to the target, and
/// each direction is piped through a delay queue stamped at read time, so
/// latency never reorders bytes. A blocked direction (blackhole or cut)
/// stops reading and holds what it has already read: a TCP stream cannot
/// lose bytes, it can only stall, which is what a partition looks like to
/// gRPC. `drop_rate` does not apply.
///
/// Dropping the proxy stops it, including all its connections.
#[derive(Debug)]
pub struct TcpLinkProxy {
    local_addr: SocketAddr,
    target: SocketAddr,
    control: LinkControl,
    _tasks: JoinSet<()>,
}

impl TcpLinkProxy {
    /// Binds `listen` and starts accepting; each connection is forwarded to
    /// `target` under `control`'s faults. Must be called inside a tokio
    /// runtime.
    pub async fn bind(
        listen: SocketAddr,
        target: SocketAddr,
        control: LinkControl,
    ) -> Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, target, control.clone()));
        tracing::debug!(%local_addr, %target, "tcp link proxy started");
        Ok(TcpLinkProxy {
            local_addr,
            target,
            control,
            _tasks: tasks,
        })
    }

    /// The address clients should connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The link's fault handle.
    pub fn control(&self) -> &LinkControl {
        &self.control
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, control: LinkControl) {
    // Connections live in this set so that stopping the proxy (aborting
    // this task) drops, and so aborts, every connection too.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    control.record_session();
                    conns.spawn(handle_connection(stream, peer, target, control.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle_connection(
    client: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    control: LinkControl,
) {
    // A blackholed network would not carry the SYN: hold the connection
    // until the link heals before reaching the target.
    let mut faults = control.subscribe();
    if faults.wait_for(|f| !f.blackhole).await.is_err() {
        return;
    }
    let upstream = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, %target, error = %e, "tcp: cannot reach target; closing client");
            return;
        }
    };
    // gRPC sends small frames; Nagle would add its own latency on top of
    // the injected one.
    for s in [&client, &upstream] {
        if let Err(e) = s.set_nodelay(true) {
            tracing::debug!(error = %e, "tcp: set_nodelay failed");
        }
    }
    let (client_r, client_w) = client.into_split();
    let (up_r, up_w) = upstream.into_split();
    let fwd = pipe(client_r, up_w, control.clone(), Direction::Forward);
    let bwd = pipe(up_r, client_w, control, Direction::Backward);
    tokio::pin!(fwd, bwd);
    // An error in either direction ends the connection; a clean EOF only
    // ends its own direction (TCP half-close), the other keeps flowing.
    let result = tokio::select! {
        r = &mut fwd => match r { Ok(()) => bwd.await, Err(e) => Err(e) },
        r = &mut bwd => match r { Ok(()) => fwd.await, Err(e) => Err(e) },
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "tcp connection ended with error");
    }
}

/// Pipes one direction: a reader that stamps each chunk with its delivery
/// deadline, and a writer that delivers chunks in order at their deadlines.
async fn pipe(
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    control: LinkControl,
    dir: Direction,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
    tokio::try_join!(
        read_side(reader, tx, control.clone(), dir),
        write_side(writer, rx, control, dir)
    )?;
    Ok(())
}

async fn read_side(
    mut reader: OwnedReadHalf,
    tx: mpsc::Sender<Chunk>,
    control: LinkControl,
    dir: Direction,
) -> io::Result<()> {
    let mut faults = control.subscribe();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        // Do not take new data while this direction is blocked; it stays
        // in the kernel buffers and flow control stalls the sender.
        if faults.wait_for(|f| !f.blocks(dir)).await.is_err() {
            return Ok(());
        }
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            // The writer may be gone already; then there is no one to tell.
            let _ = tx.send(Chunk::Eof).await;
            return Ok(());
        }
        let deadline = Instant::now() + control.with_faults(|f| f.sample_delay());
        let chunk = Chunk::Data {
            deadline,
            bytes: buf[..n].to_vec(),
        };
        if tx.send(chunk).await.is_err() {
            return Ok(());
        }
    }
}

async fn write_side(
    mut writer: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Chunk>,
    control: LinkControl,
    dir: Direction,
) -> io::Result<()> {
    let mut faults = control.subscribe();
    let mut last = Instant::now();
    while let Some(chunk) = rx.recv().await {
        match chunk {
            Chunk::Data { deadline, bytes } => {
                // Jitter may give a later chunk an earlier deadline; keep
                // the stream in order by never going below the last one.
                let at = deadline.max(last);
                last = at;
                if at > Instant::now() {
                    tokio::time::sleep_until(at).await;
                }
                // Bytes already read when a cut began wait for the heal.
                if faults.wait_for(|f| !f.blocks(dir)).await.is_err() {
                    return Ok(());
                }
                writer.write_all(&bytes).await?;
                control.record_forwarded(dir, bytes.len());
            }
            Chunk::Eof => {
                // The peer may already have closed; that is not an error of
                // this direction.
                let _ = writer.shutdown().await;
                return Ok(());
            }
        }
    }
    Ok(())
}
