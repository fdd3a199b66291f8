//! UDP link proxy behaviour on loopback.

mod common;

use std::time::Duration;

use common::*;
use tessera_chaos::proxy::{LinkControl, LinkFaults, UdpLinkProxy};
use tokio::net::UdpSocket;
use tokio::time::Instant;

async fn client_for(proxy: &UdpLinkProxy) -> UdpSocket {
    let sock = UdpSocket::bind(any_port()).await.expect("bind client");
    sock.connect(proxy.local_addr())
        .await
        .expect("connect client");
    sock
}

#[tokio::test]
async fn udp_echo_through_proxy_keeps_clients_apart() {
    let echo = udp_echo().await;
    let proxy = UdpLinkProxy::bind(any_port(), echo.addr, LinkControl::healthy())
        .await
        .expect("proxy");
    let a = client_for(&proxy).await;
    let b = client_for(&proxy).await;
    for round in 0..3 {
        let ma = format!("a-{round}");
        let mb = format!("b-{round}");
        a.send(ma.as_bytes()).await.expect("send a");
        b.send(mb.as_bytes()).await.expect("send b");
        assert_eq!(recv_datagram(&a).await, ma.as_bytes());
        assert_eq!(recv_datagram(&b).await, mb.as_bytes());
    }
    let c = proxy.control().counters();
    assert_eq!(c.sessions, 2, "one upstream session per client address");
    assert_eq!(c.forward.forwarded_packets, 6);
    assert_eq!(c.backward.forwarded_packets, 6);
    assert_eq!(c.forward.dropped_packets + c.backward.dropped_packets, 0);
}

#[tokio::test]
async fn udp_latency_is_applied_each_way() {
    let echo = udp_echo().await;
    let control = LinkControl::new(LinkFaults {
        latency_ms: 50,
        jitter_ms: 10,
        ..LinkFaults::default()
    })
    .expect("faults");
    let proxy = UdpLinkProxy::bind(any_port(), echo.addr, control)
        .await
        .expect("proxy");
    let client = client_for(&proxy).await;
    let start = Instant::now();
    client.send(b"ping").await.expect("send");
    assert_eq!(recv_datagram(&client).await, b"ping");
    let rtt = start.elapsed();
    assert!(
        rtt >= Duration::from_millis(100),
        "round trip {rtt:?} is below 2 x 50 ms"
    );
}

#[tokio::test]
async fn udp_jitter_does_not_reorder() {
    let echo = udp_echo().await;
    let control = LinkControl::new(LinkFaults {
        latency_ms: 1,
        jitter_ms: 20,
        ..LinkFaults::default()
    })
    .expect("faults");
    let proxy = UdpLinkProxy::bind(any_port(), echo.addr, control)
        .await
        .expect("proxy");
    let client = client_for(&proxy).await;
    for i in 0u32..50 {
        client.send(&i.to_be_bytes()).await.expect("send");
    }
    for i in 0u32..50 {
        assert_eq!(
            recv_datagram(&client).await,
            i.to_be_bytes(),
            "datagram {i} out of order"
        );
    }
}

#[tokio::test]
async fn udp_blackhole_drops_everything_and_heal_restores() {
    let mut echo = udp_echo().await;
    let proxy = UdpLinkProxy::bind(any_port(), echo.addr, LinkControl::healthy())
        .await
        .expect("proxy");
    let control = proxy.control().clone();
    let client = client_for(&proxy).await;

    // Warm up so there is a session whose replies could leak through.
    client.send(b"warm").await.expect("send");
    assert_eq!(recv_datagram(&client).await, b"warm");
    assert_eq!(
        within("echo saw warm-up", echo.received.recv())
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
    for _ in 0..5 {
        client.send(b"lost").await.expect("send");
    }
    let c = counters_until(&control, "5 forward drops", |c| {
        c.forward.dropped_packets >= 5
    })
    .await;
    assert_eq!(c.forward.forwarded_packets, 1, "only the warm-up passed");
    assert!(
        echo.received.try_recv().is_err(),
        "target must not see blackholed datagrams"
    );
    assert_no_datagram(&client);

    control.heal();
    assert_eq!(control.get(), LinkFaults::default());
    client.send(b"back").await.expect("send");
    assert_eq!(recv_datagram(&client).await, b"back");
}

#[tokio::test]
async fn udp_one_way_cuts_block_only_their_direction() {
    let mut echo = udp_echo().await;
    let proxy = UdpLinkProxy::bind(any_port(), echo.addr, LinkControl::healthy())
        .await
        .expect("proxy");
    let control = proxy.control().clone();
    let client = client_for(&proxy).await;

    // Cut target->client: the request arrives, the reply is dropped.
    control
        .set(LinkFaults {
            cut_backward: true,
            ..LinkFaults::default()
        })
        .expect("set");
    client.send(b"one").await.expect("send");
    assert_eq!(
        within("target got request", echo.received.recv())
            .await
            .as_deref(),
        Some(&b"one"[..])
    );
    let c = counters_until(&control, "reply dropped", |c| {
        c.backward.dropped_packets >= 1
    })
    .await;
    assert_eq!(c.forward.forwarded_packets, 1);
    assert_eq!(c.backward.forwarded_packets, 0);
    assert_no_datagram(&client);

    // Cut client->target: the request itself is dropped.
    control
        .set(LinkFaults {
            cut_forward: true,
            ..LinkFaults::default()
        })
        .expect("set");
    client.send(b"two").await.expect("send");
    let c = counters_until(&control, "request dropped", |c| {
        c.forward.dropped_packets >= 1
    })
    .await;
    assert_eq!(c.forward.forwarded_packets, 1);
    assert!(echo.received.try_recv().is_err());

    control.heal();
    client.send(b"three").await.expect("send");
    assert_eq!(recv_datagram(&client).await, b"three");
}

#[tokio::test]
async fn udp_drop_rate_one_drops_all() {
    let mut echo = udp_echo().await;
    let control = LinkControl::new(LinkFaults {
        drop_rate: 1.0,
        ..LinkFaults::default()
    })
    .expect("faults");
    let proxy = UdpLinkProxy::bind(any_port(), echo.addr, control.clone())
        .await
        .expect("proxy");
    let client = client_for(&proxy).await;
    for _ in 0..20 {
        client.send(b"x").await.expect("send");
    }
    let c = counters_until(&control, "20 drops", |c| c.forward.dropped_packets >= 20).await;
    assert_eq!(c.forward.dropped_packets, 20);
    assert_eq!(c.forward.dropped_bytes, 20);
    assert_eq!(c.forward.forwarded_packets, 0);
    assert!(echo.received.try_recv().is_err());
    assert_no_datagram(&client);
}

#[tokio::test]
async fn udp_partial_drop_rate_loses_some_not_all() {
    let echo = udp_echo().await;
    let control = LinkControl::new(LinkFaults {
        drop_rate: 0.5,
        ..LinkFaults::default()
    })
    .expect("faults");
    let proxy = UdpLinkProxy::bind(any_port(), echo.addr, control.clone())
        .await
        .expect("proxy");
    let client = client_for(&proxy).await;
    // Lock-step, so no kernel socket buffer can overflow and blur the count:
    // each datagram is sent only once the proxy has decided the previous one.
    for i in 1..=400u64 {
        client.send(b"x").await.expect("send");
        counters_until(&control, "datagram decided", |c| {
            c.forward.dropped_packets + c.forward.forwarded_packets >= i
        })
        .await;
    }
    let c = control.counters();
    // P(fewer than 100 of 400 either way) is below 1e-25.
    assert!(
        c.forward.dropped_packets > 100 && c.forward.forwarded_packets > 100,
        "{c:?}"
    );
}
