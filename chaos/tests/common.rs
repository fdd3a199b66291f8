//! Loopback fixtures shared by the integration tests: echo servers and a
//! failure bound for awaits. Synchronisation is by events (counters,
//! channels, replies), never by sleeping.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tessera_chaos::proxy::{LinkControl, LinkCounters};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Upper bound on any single wait; only reached when a test is failing.
pub const BOUND: Duration = Duration::from_secs(20);

pub const LOOPBACK: &str = "127.0.0.1:0";

pub fn any_port() -> SocketAddr {
    LOOPBACK.parse().expect("loopback addr")
}

/// Awaits `fut`, panicking with `what` if it does not finish within BOUND.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for: {what}"),
    }
}

/// Waits for the link counters to satisfy `pred`.
pub async fn counters_until(
    c: &LinkControl,
    what: &str,
    pred: impl FnMut(&LinkCounters) -> bool,
) -> LinkCounters {
    within(what, c.wait_for_counters(pred)).await
}

/// A UDP echo server. Every datagram it receives is reported on the channel.
pub struct UdpEcho {
    pub addr: SocketAddr,
    pub received: mpsc::UnboundedReceiver<Vec<u8>>,
    _task: JoinHandle<()>,
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self._task.abort();
    }
}

pub async fn udp_echo() -> UdpEcho {
    let sock = Arc::new(UdpSocket::bind(any_port()).await.expect("bind echo"));
    let addr = sock.local_addr().expect("echo addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            let _ = tx.send(buf[..n].to_vec());
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    UdpEcho {
        addr,
        received: rx,
        _task: task,
    }
}

/// A TCP echo server. Bytes it receives are reported on `received`; it
/// writes `greeting` (if any) first on every connection.
pub struct TcpEcho {
    pub addr: SocketAddr,
    pub received: mpsc::UnboundedReceiver<Vec<u8>>,
    pub accepted: mpsc::UnboundedReceiver<SocketAddr>,
    _task: JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self._task.abort();
    }
}

pub async fn tcp_echo(greeting: Option<&'static [u8]>) -> TcpEcho {
    let listener = TcpListener::bind(any_port()).await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let (atx, arx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((mut stream, peer)) = listener.accept().await else {
                continue;
            };
            let _ = atx.send(peer);
            let tx = tx.clone();
            conns.spawn(async move {
                if let Some(g) = greeting {
                    if stream.write_all(g).await.is_err() {
                        return;
                    }
                }
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let _ = tx.send(buf[..n].to_vec());
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    TcpEcho {
        addr,
        received: rx,
        accepted: arx,
        _task: task,
    }
}

/// Receives one datagram on `sock`, failing the test after BOUND.
pub async fn recv_datagram(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_535];
    let n = within("a datagram", sock.recv(&mut buf))
        .await
        .expect("recv");
    buf.truncate(n);
    buf
}

/// Asserts nothing is waiting on `sock` right now.
pub fn assert_no_datagram(sock: &UdpSocket) {
    let mut buf = [0u8; 16];
    match sock.try_recv(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("expected no datagram, got {other:?}"),
    }
}
