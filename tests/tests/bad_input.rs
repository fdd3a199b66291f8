//! Issue 2 acceptance: every bad-input case of DESIGN.md gets
//! `InvalidArgument` naming the rule or limit, and leaves the shard unchanged.

use tessera_proto::limits::*;
use tessera_proto::pb;
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::{docs, Layout, TestCluster};

fn write(shard: u64, docs_json: Vec<Vec<u8>>) -> pb::WriteRequest {
    pb::WriteRequest {
        tenant: "acme".into(),
        shard,
        docs_json,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_rejected_and_changes_nothing() {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    let shard = cluster
        .create_tenant("acme", &["us-east"], 1)
        .await
        .partitions[0];
    let token = cluster
        .write(write(shard, vec![docs::doc("good", 1, 1)]), SETTLE)
        .await
        .expect("good write");
    let before = cluster.converged(shard, &[1, 2, 3], token.applied).await;

    let principals = (0..=MAX_PRINCIPALS)
        .map(|i| format!("\"u:{i}\""))
        .collect::<Vec<_>>()
        .join(",");
    let good = docs::doc("ok2", 1, 2);
    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        (
            "invalid UTF-8",
            vec![good.clone(), b"{\"id\":\"x\xff\",\"version\":1}".to_vec()],
            "UTF-8",
        ),
        (
            "unknown field",
            vec![br#"{"id":"x","version":1,"permisions":{}}"#.to_vec()],
            "unknown field",
        ),
        (
            "missing id",
            vec![br#"{"title":"t","version":1}"#.to_vec()],
            "id",
        ),
        (
            "oversized body",
            vec![format!(
                r#"{{"id":"x","version":1,"body":"{}"}}"#,
                "b".repeat(MAX_BODY_BYTES + 1)
            )
            .into_bytes()],
            "MAX_BODY_BYTES",
        ),
        (
            "too many principals",
            vec![
                format!(r#"{{"id":"x","version":1,"permissions":{{"page":[{principals}]}}}}"#)
                    .into_bytes(),
            ],
            "MAX_PRINCIPALS",
        ),
        (
            "malformed timestamp",
            vec![br#"{"id":"x","version":1,"updated_at":"last tuesday"}"#.to_vec()],
            "RFC 3339",
        ),
    ];
    let mut leader = cluster.client(1).await.expect("client");
    for (name, docs_json, needle) in cases {
        // Send to every node: whichever leads must refuse before proposing.
        for id in [1, 2, 3] {
            let mut c = cluster.client(id).await.expect("client");
            let err = c
                .write(write(shard, docs_json.clone()))
                .await
                .expect_err(name);
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{name} on node {id}: {err:?}"
            );
            assert!(
                err.message().contains(needle),
                "{name}: {:?} should mention {needle}",
                err.message()
            );
        }
    }
    let long_query = vec!["term"; MAX_QUERY_TERMS + 1].join(" ");
    let err = leader
        .search(pb::SearchRequest {
            tenant: "acme".into(),
            shard,
            user: "u:a".into(),
            query: long_query,
            ..Default::default()
        })
        .await
        .expect_err("query over the term limit");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("MAX_QUERY_TERMS"),
        "{}",
        err.message()
    );

    // Nothing above reached the log: a fresh no-op write lands right after the good one.
    let probe = cluster
        .write(write(shard, vec![docs::doc("good", 1, 1)]), SETTLE)
        .await
        .expect("probe write");
    assert_eq!(
        probe.applied,
        token.applied + 1,
        "no rejected batch was proposed"
    );
    let after = cluster.converged(shard, &[1, 2, 3], probe.applied).await;
    assert_eq!(after.digest, before.digest, "the shard is unchanged");
    assert_eq!(after.docs, 1);
}
