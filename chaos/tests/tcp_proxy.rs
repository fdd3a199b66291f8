//! TCP link proxy behaviour on loopback.

mod common;

use std::time::Duration;

use common::*;
use tessera_chaos::proxy::{LinkControl, LinkFaults, TcpLinkProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn read_exact_bounded(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    within("reading from proxy", s.read_exact(&mut buf))
        .await
        .expect("read");
    buf
}

fn assert_nothing_to_read(s: &TcpStream) {
    let mut buf = [0u8; 16];
    match s.try_read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("expected nothing to read, got {other:?}"),
    }
}

#[tokio::test]
async fn tcp_echo_through_proxy_in_order_with_jitter() {
    let echo = tcp_echo(None).await;
    let control = LinkControl::new(LinkFaults {
        latency_ms: 1,
        jitter_ms: 5,
        ..LinkFaults::default()
    })
    .expect("faults");
    let proxy = TcpLinkProxy::bind(any_port(), echo.addr, control.clone())
        .await
        .expect("proxy");
    let mut s = within("connect", TcpStream::connect(proxy.local_addr()))
        .await
        .expect("connect");
    let payload: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.split();
    let writer = async {
        for part in payload.chunks(1000) {
            w.write_all(part).await.expect("write");
        }
    };
    let reader = async {
        let mut got = vec![0u8; payload.len()];
        r.read_exact(&mut got).await.expect("read");
        got
    };
    let ((), got) = within("echo of 512 KiB", async { tokio::join!(writer, reader) }).await;
    assert!(got == payload, "echoed bytes differ (reordered or lost)");
    let c = control.counters();
    assert_eq!(c.forward.forwarded_bytes, payload.len() as u64);
    assert_eq!(c.backward.forwarded_bytes, payload.len() as u64);
    assert_eq!(c.sessions, 1);

    // Closing our side reaches the server, which closes back: clean EOF.
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    within("eof", s.read_to_end(&mut rest))
        .await
        .expect("read to end");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn tcp_latency_is_applied_each_way() {
    let echo = tcp_echo(None).await;
    let control = LinkControl::new(LinkFaults::with_latency(50)).expect("faults");
    let proxy = TcpLinkProxy::bind(any_port(), echo.addr, control)
        .await
        .expect("proxy");
    let mut s = within("connect", TcpStream::connect(proxy.local_addr()))
        .await
        .expect("connect");
    let start = Instant::now();
    s.write_all(b"ping").await.expect("write");
    assert_eq!(read_exact_bounded(&mut s, 4).await, b"ping");
    let rtt = start.elapsed();
    assert!(
        rtt >= Duration::from_millis(100),
        "round trip {rtt:?} is below 2 x 50 ms"
    );
}

#[tokio::test]
async fn tcp_blackhole_stalls_and_heal_resumes_without_loss() {
    let mut echo = tcp_echo(None).await;
    let proxy = TcpLinkProxy::bind(any_port(), echo.addr, LinkControl::healthy())
        .await
        .expect("proxy");
    let control = proxy.control().clone();
    let mut s = within("connect", TcpStream::connect(proxy.local_addr()))
        .await
        .expect("connect");
    s.write_all(b"warm").await.expect("write");
    assert_eq!(read_exact_bounded(&mut s, 4).await, b"warm");
    assert_eq!(
        within("echo saw warm", echo.received.recv())
            .await
            .as_deref(),
        Some(&b"warm"[..])
    );

    control
        .set(LinkFaults {
            blackhole: true,
            ..LinkFaults::default()
        })
        .expect("set");
    s.write_all(b"held").await.expect("write");
    // A new connection during the blackhole is accepted by the proxy but
    // not carried to the target.
    let mut late = within("connect", TcpStream::connect(proxy.local_addr()))
        .await
        .expect("connect");
    late.write_all(b"late").await.expect("write");
    counters_until(&control, "second connection accepted", |c| c.sessions >= 2).await;
    assert!(
        echo.received.try_recv().is_err(),
        "blackholed bytes reached the target"
    );
    assert!(
        echo.accepted.try_recv().is_ok(),
        "first connection was carried"
    );
    assert!(
        echo.accepted.try_recv().is_err(),
        "the late connection reached the target during the blackhole"
    );
    assert_nothing_to_read(&s);
    assert_eq!(control.counters().forward.forwarded_bytes, 4);

    control.heal();
    // Nothing was lost: both held writes arrive and are echoed.
    assert_eq!(read_exact_bounded(&mut s, 4).await, b"held");
    assert_eq!(read_exact_bounded(&mut late, 4).await, b"late");
}

#[tokio::test]
async fn tcp_one_way_cut_blocks_only_forward() {
    let mut echo = tcp_echo(Some(b"hello")).await;
    // Healthy baseline, so that heal() lifts the cut.
    let control = LinkControl::healthy();
    control
        .set(LinkFaults {
            cut_forward: true,
            ..LinkFaults::default()
        })
        .expect("faults");
    let proxy = TcpLinkProxy::bind(any_port(), echo.addr, control.clone())
        .await
        .expect("proxy");
    let mut s = within("connect", TcpStream::connect(proxy.local_addr()))
        .await
        .expect("connect");
    // target->client still flows: the server's greeting arrives.
    assert_eq!(read_exact_bounded(&mut s, 5).await, b"hello");
    s.write_all(b"ping").await.expect("write");
    assert!(
        echo.received.try_recv().is_err(),
        "forward direction must be cut"
    );
    assert_eq!(control.counters().forward.forwarded_bytes, 0);
    assert_eq!(control.counters().backward.forwarded_bytes, 5);

    control.heal();
    assert_eq!(
        within("target got ping", echo.received.recv())
            .await
            .as_deref(),
        Some(&b"ping"[..])
    );
    assert_eq!(read_exact_bounded(&mut s, 4).await, b"ping");
}

#[tokio::test]
async fn tcp_one_way_cut_blocks_only_backward() {
    let mut echo = tcp_echo(None).await;
    // Healthy baseline, so that heal() lifts the cut.
    let control = LinkControl::healthy();
    control
        .set(LinkFaults {
            cut_backward: true,
            ..LinkFaults::default()
        })
        .expect("faults");
    let proxy = TcpLinkProxy::bind(any_port(), echo.addr, control.clone())
        .await
        .expect("proxy");
    let mut s = within("connect", TcpStream::connect(proxy.local_addr()))
        .await
        .expect("connect");
    s.write_all(b"ping").await.expect("write");
    // client->target flows: the server gets the request...
    assert_eq!(
        within("target got ping", echo.received.recv())
            .await
            .as_deref(),
        Some(&b"ping"[..])
    );
    // ...but its echo is held.
    assert_nothing_to_read(&s);
    assert_eq!(control.counters().backward.forwarded_bytes, 0);

    control.heal();
    assert_eq!(read_exact_bounded(&mut s, 4).await, b"ping");
}

#[tokio::test]
async fn tcp_ignores_drop_rate() {
    let echo = tcp_echo(None).await;
    let control = LinkControl::new(LinkFaults {
        drop_rate: 1.0,
        ..LinkFaults::default()
    })
    .expect("faults");
    let proxy = TcpLinkProxy::bind(any_port(), echo.addr, control)
        .await
        .expect("proxy");
    let mut s = within("connect", TcpStream::connect(proxy.local_addr()))
        .await
        .expect("connect");
    s.write_all(b"still here").await.expect("write");
    assert_eq!(read_exact_bounded(&mut s, 10).await, b"still here");
}
