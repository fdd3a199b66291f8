//! Tessera's security as a Python gRPC user meets it: `tests/python/grpc_security.py`
//! generates stubs from `proto/` with grpc_tools and runs every check against a
//! real cluster (in-process nodes with RocksDB, tantivy, QUIC) and a real router
//! over TLS. `scripts/test.sh` installs grpcio and grpcio-tools; without them this
//! test fails and says how to install them.

use std::path::Path;

use tessera_tests::cluster::Mode;
use tessera_tests::routers::start_inproc_router;
use tessera_tests::{Layout, TestCluster};

fn python_has_grpc() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_grpc_client_meets_tls_keys_scopes_isolation_and_revocation() {
    assert!(
        python_has_grpc(),
        "python3 with grpcio and grpcio-tools is needed: python3 -m pip install grpcio grpcio-tools \
         (scripts/test.sh installs them)"
    );
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    let router = start_inproc_router(&cluster, "us-east", |_| {}).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tokio::process::Command::new("python3")
        .arg(root.join("tests/python/grpc_security.py"))
        .arg("--router")
        .arg(router.local_addr().to_string())
        .arg("--ca")
        .arg(cluster.certs_dir().join("ca.pem"))
        .arg("--admin-key-file")
        .arg(
            cluster
                .certs_dir()
                .join(tessera_node::meta::keys::BOOTSTRAP_KEY_FILE),
        )
        .arg("--proto")
        .arg(root.join("proto/proto"))
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client's checks failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let seen: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("the script prints one JSON line");
    assert_eq!(seen["hits"], serde_json::json!(["py-1"]), "{seen}");
    for refusal in [
        "keyless",
        "malformed",
        "other_tenant",
        "wrong_scope",
        "revoked",
    ] {
        assert!(
            seen[refusal].as_str().is_some_and(|m| !m.is_empty()),
            "{refusal}: a refusal carries a reason: {seen}"
        );
    }
    router.shutdown().await.expect("router stops");
}
