//! The named link set and its control server, in-process and end to end.

mod common;

use std::sync::Arc;

use common::*;
use tessera_chaos::control::{ControlClient, ControlRequest, ControlServer, ProxySet};
use tessera_chaos::proxy::{LinkFaults, LinkSpec, Proto};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

fn spec(name: &str, proto: Proto, target: std::net::SocketAddr, faults: LinkFaults) -> LinkSpec {
    LinkSpec {
        name: name.into(),
        proto,
        listen: any_port(),
        target,
        faults,
    }
}

#[tokio::test]
async fn control_server_set_update_heal_round_trip() {
    let mut echo = udp_echo().await;
    let tcp = tcp_echo(None).await;
    let set = Arc::new(ProxySet::new());
    let udp_link = set
        .start(spec(
            "n1->n3",
            Proto::Udp,
            echo.addr,
            LinkFaults::with_latency(1),
        ))
        .await
        .expect("start udp");
    set.start(spec("r1->n1", Proto::Tcp, tcp.addr, LinkFaults::default()))
        .await
        .expect("start tcp");
    let server = ControlServer::bind(any_port(), set.clone())
        .await
        .expect("control");
    let mut client = within("connect", ControlClient::connect(server.local_addr()))
        .await
        .expect("connect");

    let links = within("list", client.call(&ControlRequest::List))
        .await
        .expect("list");
    let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["n1->n3", "r1->n1"]);
    assert_eq!(links[0].listen, udp_link.listen);
    assert_eq!(links[0].baseline, LinkFaults::with_latency(1));

    // set replaces all faults.
    let blackhole = LinkFaults {
        blackhole: true,
        ..LinkFaults::default()
    };
    let links = within(
        "set",
        client.call(&ControlRequest::Set {
            link: "n1->n3".into(),
            faults: blackhole.clone(),
        }),
    )
    .await
    .expect("set");
    assert_eq!(links[0].faults, blackhole);
    let control = set.control("n1->n3").expect("control");
    assert_eq!(control.get(), blackhole, "the change is visible in-process");

    // ...and takes effect on traffic.
    let sock = UdpSocket::bind(any_port()).await.expect("bind");
    sock.send_to(b"x", udp_link.listen).await.expect("send");
    counters_until(&control, "drop", |c| c.forward.dropped_packets == 1).await;
    assert!(echo.received.try_recv().is_err());

    // update merges.
    let links = within(
        "update",
        client.call(&ControlRequest::Update {
            link: "n1->n3".into(),
            faults: serde_json::json!({"latency_ms": 7}),
        }),
    )
    .await
    .expect("update");
    assert!(links[0].faults.blackhole);
    assert_eq!(links[0].faults.latency_ms, 7);

    // heal returns to the baseline, not to zero.
    let links = within(
        "heal",
        client.call(&ControlRequest::Heal {
            link: "n1->n3".into(),
        }),
    )
    .await
    .expect("heal");
    assert_eq!(links[0].faults, LinkFaults::with_latency(1));
    sock.send_to(b"y", udp_link.listen).await.expect("send");
    let mut buf = [0u8; 8];
    let (n, _) = within("echo after heal", sock.recv_from(&mut buf))
        .await
        .expect("recv");
    assert_eq!(&buf[..n], b"y");

    // heal-all touches every link.
    set.set("r1->n1", LinkFaults::with_latency(9))
        .expect("set tcp");
    let links = within("heal-all", client.call(&ControlRequest::HealAll))
        .await
        .expect("heal-all");
    assert_eq!(links.len(), 2);
    assert!(links.iter().all(|l| l.faults == l.baseline));

    // Errors come back as ok:false, and the connection stays usable.
    let resp = within(
        "unknown",
        client.request(&ControlRequest::Heal {
            link: "nope".into(),
        }),
    )
    .await
    .expect("request");
    assert!(!resp.ok);
    assert!(resp.error.as_deref().unwrap_or("").contains("nope"));
    let resp = within(
        "invalid",
        client.request(&ControlRequest::Update {
            link: "n1->n3".into(),
            faults: serde_json::json!({"drop_rate": 3.0}),
        }),
    )
    .await
    .expect("request");
    assert!(!resp.ok, "out-of-range drop_rate must be rejected");
    assert_eq!(control.get(), LinkFaults::with_latency(1));
    assert!(within("list again", client.call(&ControlRequest::List))
        .await
        .is_ok());
}

#[tokio::test]
async fn control_server_answers_raw_json_lines() {
    let echo = udp_echo().await;
    let set = Arc::new(ProxySet::new());
    set.start(spec("a", Proto::Udp, echo.addr, LinkFaults::default()))
        .await
        .expect("start");
    let server = ControlServer::bind(any_port(), set.clone())
        .await
        .expect("control");
    let stream = within("connect", TcpStream::connect(server.local_addr()))
        .await
        .expect("connect");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(
        b"this is not json\n{\"op\":\"set\",\"link\":\"a\",\"faults\":{\"cut_forward\":true}}\n",
    )
    .await
    .expect("write");
    let first: serde_json::Value = serde_json::from_str(
        &within("line 1", lines.next_line())
            .await
            .expect("io")
            .expect("line"),
    )
    .expect("json");
    assert_eq!(first["ok"], false);
    let second: serde_json::Value = serde_json::from_str(
        &within("line 2", lines.next_line())
            .await
            .expect("io")
            .expect("line"),
    )
    .expect("json");
    assert_eq!(second["ok"], true);
    assert_eq!(second["links"][0]["faults"]["cut_forward"], true);
    assert!(set.control("a").expect("link").get().cut_forward);
}

#[tokio::test]
async fn proxy_set_rejects_duplicates_and_bad_specs() {
    let echo = udp_echo().await;
    let set = ProxySet::new();
    set.start(spec("x", Proto::Udp, echo.addr, LinkFaults::default()))
        .await
        .expect("start");
    assert!(set
        .start(spec("x", Proto::Tcp, echo.addr, LinkFaults::default()))
        .await
        .is_err());
    assert!(set
        .start(spec(" ", Proto::Udp, echo.addr, LinkFaults::default()))
        .await
        .is_err());
    let bad = LinkFaults {
        drop_rate: -1.0,
        ..LinkFaults::default()
    };
    assert!(set
        .start(spec("y", Proto::Udp, echo.addr, bad))
        .await
        .is_err());
    assert_eq!(set.names(), ["x"]);
    set.stop("x").expect("stop");
    assert!(set.list().is_empty());
    assert!(set.stop("x").is_err());
}

#[test]
fn link_spec_json_shape() {
    let specs: Vec<LinkSpec> = serde_json::from_str(
        r#"[{"name":"n1->n3","proto":"udp","listen":"127.0.0.1:7101","target":"127.0.0.3:7000","faults":{"latency_ms":40}},
            {"name":"r1->n1","proto":"tcp","listen":"127.0.0.1:7201","target":"127.0.0.1:7000"}]"#,
    )
    .expect("parse");
    assert_eq!(specs[0].proto, Proto::Udp);
    assert_eq!(specs[0].faults, LinkFaults::with_latency(40));
    assert_eq!(specs[1].faults, LinkFaults::default());
}
