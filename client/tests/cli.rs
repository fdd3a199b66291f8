//! The `tessera` binary against an in-process fake router: the stable CLI
//! contract of DESIGN.md ("Interfaces") — `--json` shapes, line numbers of
//! rejected lines, one-line errors and exit codes.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use tessera_proto::pb::router_server::{Router, RouterServer};
use tessera_proto::pb::*;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

struct FakeRouter;

fn tenant_info(id: &str) -> TenantInfo {
    TenantInfo {
        id: id.into(),
        regions: vec!["us-east".into(), "eu-west".into()],
        home: "us-east".into(),
        survival: "zone".into(),
        partitions: vec![3, 4],
        resize: None,
        read_floors: Vec::new(),
    }
}

/// Tenants whose name scripts a failure.
fn scripted(tenant: &str) -> Result<(), Status> {
    match tenant {
        "limited" => {
            let mut s =
                Status::resource_exhausted("tenant limited is over its rate limit of 5 requests/s");
            s.metadata_mut()
                .insert("retry-after-ms", "200".parse().expect("ascii"));
            Err(s)
        }
        "down" => Err(Status::unavailable(
            "shard 3: write not acknowledged before the deadline",
        )),
        "secret" => Err(Status::permission_denied(
            "api key does not grant tenant secret",
        )),
        "nope" => Err(Status::not_found("tenant \"nope\" does not exist")),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl Router for FakeRouter {
    async fn create_tenant(
        &self,
        r: Request<CreateTenantRequest>,
    ) -> Result<Response<CreateTenantResponse>, Status> {
        let r = r.into_inner();
        scripted(&r.id)?;
        let mut t = tenant_info(&r.id);
        t.partitions = (0..r.partitions.max(1)).map(u64::from).collect();
        t.regions = r.regions;
        Ok(Response::new(CreateTenantResponse {
            tenant: Some(t),
            epoch: 2,
        }))
    }

    async fn get_tenant(
        &self,
        r: Request<GetTenantRequest>,
    ) -> Result<Response<GetTenantResponse>, Status> {
        let r = r.into_inner();
        scripted(&r.id)?;
        Ok(Response::new(GetTenantResponse {
            tenant: Some(tenant_info(&r.id)),
            docs: 42,
            epoch: 2,
            shards: Vec::new(),
        }))
    }

    async fn drain_node(
        &self,
        _r: Request<tessera_proto::pb::DrainNodeRequest>,
    ) -> Result<Response<tessera_proto::pb::DrainNodeResponse>, Status> {
        Ok(Response::new(tessera_proto::pb::DrainNodeResponse {
            epoch: 4,
            shards: Vec::new(),
        }))
    }

    async fn move_tenant(
        &self,
        r: Request<tessera_proto::pb::MoveTenantRequest>,
    ) -> Result<Response<CreateTenantResponse>, Status> {
        let r = r.into_inner();
        scripted(&r.id)?;
        Ok(Response::new(CreateTenantResponse {
            tenant: Some(tenant_info(&r.id)),
            epoch: 3,
        }))
    }

    async fn resize_tenant(
        &self,
        r: Request<tessera_proto::pb::ResizeTenantRequest>,
    ) -> Result<Response<CreateTenantResponse>, Status> {
        let r = r.into_inner();
        scripted(&r.id)?;
        Ok(Response::new(CreateTenantResponse {
            tenant: Some(tenant_info(&r.id)),
            epoch: 3,
        }))
    }

    async fn put_documents(
        &self,
        r: Request<PutDocumentsRequest>,
    ) -> Result<Response<PutDocumentsResponse>, Status> {
        let r = r.into_inner();
        scripted(&r.tenant)?;
        // The router refuses documents whose id starts with "veto" (as a node might).
        let mut rejected = Vec::new();
        for (i, d) in r.docs_json.iter().enumerate() {
            if String::from_utf8_lossy(d).contains("\"veto") {
                rejected.push(ItemRejection {
                    index: i as u32,
                    kind: ItemKind::Doc as i32,
                    error: "vetoed".into(),
                });
            }
        }
        let acked = (r.docs_json.len() + r.deletes.len() - rejected.len()) as u32;
        Ok(Response::new(PutDocumentsResponse {
            acked,
            rejected,
            token: format!("{}+", r.session),
        }))
    }

    async fn put_groups(
        &self,
        r: Request<PutGroupsRequest>,
    ) -> Result<Response<PutGroupsResponse>, Status> {
        let r = r.into_inner();
        scripted(&r.tenant)?;
        Ok(Response::new(PutGroupsResponse {
            acked: r.memberships.len() as u32,
            rejected: vec![],
            token: format!("{}g", r.session),
        }))
    }

    async fn search(
        &self,
        r: Request<RouterSearchRequest>,
    ) -> Result<Response<RouterSearchResponse>, Status> {
        let r = r.into_inner();
        scripted(&r.tenant)?;
        let f = r.filters.unwrap_or_default();
        let echo = format!(
            "{}|{}|{}|{}|{}",
            r.query,
            f.spaces.join(","),
            f.labels.join(","),
            f.title_only,
            r.limit
        );
        Ok(Response::new(RouterSearchResponse {
            hits: vec![
                Hit {
                    id: echo,
                    score: 2.5,
                    explanation: None,
                    ..Default::default()
                },
                Hit {
                    id: "p-2".into(),
                    score: 1.25,
                    explanation: None,
                    ..Default::default()
                },
            ],
            cursor: if r.cursor.is_empty() {
                "c1.next".into()
            } else {
                String::new()
            },
            served_by: vec![ServedBy {
                shard: 3,
                node: 1,
                region: "us-east".into(),
                applied: 17,
                behind: 0,
                hedged: false,
            }],
            took_ms: 1.5,
            total_matches: 2,
            ..RouterSearchResponse::default()
        }))
    }

    async fn get(
        &self,
        r: Request<RouterGetRequest>,
    ) -> Result<Response<RouterGetResponse>, Status> {
        let r = r.into_inner();
        scripted(&r.tenant)?;
        let found = r.id == "p-1";
        Ok(Response::new(RouterGetResponse {
            found,
            doc_json: if found {
                br#"{"id":"p-1","title":"Deploy runbook","version":7}"#.to_vec()
            } else {
                vec![]
            },
            served_by: None,
        }))
    }

    async fn create_key(
        &self,
        r: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        require_test_key(&r)?;
        let req = r.into_inner();
        Ok(Response::new(CreateKeyResponse {
            key: "tsk_00000000000000aa_secret".into(),
            info: Some(ApiKeyInfo {
                id: "00000000000000aa".into(),
                tenant: req.tenant,
                scopes: req.scopes,
                name: req.name,
                ..Default::default()
            }),
            epoch: 10,
        }))
    }

    async fn list_keys(
        &self,
        r: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        require_test_key(&r)?;
        Ok(Response::new(ListKeysResponse {
            keys: vec![ApiKeyInfo {
                id: "00000000000000aa".into(),
                tenant: "acme".into(),
                scopes: vec!["search".into()],
                ..Default::default()
            }],
        }))
    }

    async fn revoke_key(
        &self,
        r: Request<RevokeKeyRequest>,
    ) -> Result<Response<SecurityResponse>, Status> {
        require_test_key(&r)?;
        Ok(Response::new(SecurityResponse { epoch: 11 }))
    }

    async fn set_user_tokens(
        &self,
        r: Request<SetUserTokensRequest>,
    ) -> Result<Response<SecurityResponse>, Status> {
        require_test_key(&r)?;
        Ok(Response::new(SecurityResponse { epoch: 12 }))
    }

    /// A cluster with one violation: tenant `acme` (us-east only) has a
    /// replica of shard 3 on node 7 in eu-west.
    async fn check_residency(
        &self,
        r: Request<tessera_proto::pb::CheckResidencyRequest>,
    ) -> Result<Response<tessera_proto::pb::CheckResidencyResponse>, Status> {
        require_test_key(&r)?;
        Ok(Response::new(tessera_proto::pb::CheckResidencyResponse {
            epoch: 12,
            shards: 4,
            replicas: 12,
            violations: vec![tessera_proto::pb::ResidencyViolation {
                tenant: "acme".into(),
                shard: 3,
                node: 7,
                region: "eu-west".into(),
                seen_in: "node".into(),
            }],
            unreachable: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _r: Request<RouterStatusRequest>,
    ) -> Result<Response<RouterStatusResponse>, Status> {
        Ok(Response::new(RouterStatusResponse {
            epoch: 9,
            nodes: vec![RouterNodeStatus {
                id: 1,
                region: "us-east".into(),
                zone: "a".into(),
                state: "up".into(),
                grpc_addr: "127.0.0.11:7201".into(),
                breaker: "closed".into(),
            }],
            shards: vec![
                RouterShardStatus {
                    id: 3,
                    leader: Some(1),
                    voters: vec![1, 2, 3],
                    learners: vec![4],
                    regions: vec![],
                },
                RouterShardStatus {
                    id: 4,
                    leader: None,
                    voters: vec![1, 2, 3],
                    learners: vec![],
                    regions: vec![],
                },
            ],
            region: "us-east".into(),
        }))
    }
}

fn start_router() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(l.local_addr().expect("addr")).expect("send addr");
            tonic::transport::Server::builder()
                .add_service(RouterServer::new(FakeRouter))
                .serve_with_incoming(TcpListenerStream::new(l))
                .await
                .expect("serve");
        });
    });
    rx.recv().expect("router address")
}

/// The fake's key checks: key management needs `Bearer tsk_test` (what the
/// CLI sends from --api-key), so a test can see the key reach the router.
fn require_test_key<T>(r: &Request<T>) -> Result<(), Status> {
    match r
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        Some("Bearer tsk_test") => Ok(()),
        Some(_) => Err(Status::permission_denied(
            "fake: that key may not manage keys",
        )),
        None => Err(Status::unauthenticated("fake: no API key")),
    }
}

#[test]
fn keys_commands_send_the_key_and_refusals_exit_4() {
    let addr = start_router();
    let none = tessera(Some(addr), &["keys", "list"], None);
    assert_eq!(none.status.code(), Some(4), "{none:?}");
    assert_eq!(
        String::from_utf8_lossy(&none.stderr).trim().lines().count(),
        1
    );
    let wrong = tessera(
        Some(addr),
        &["--api-key", "tsk_other", "keys", "list"],
        None,
    );
    assert_eq!(wrong.status.code(), Some(4), "{wrong:?}");
    let listed = tessera(
        Some(addr),
        &["--api-key", "tsk_test", "keys", "list", "--json"],
        None,
    );
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    assert_eq!(json_out(&listed)[0]["tenant"], json!("acme"));
    let created = tessera(
        Some(addr),
        &[
            "--api-key",
            "tsk_test",
            "keys",
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "search,write",
            "--json",
        ],
        None,
    );
    assert_eq!(created.status.code(), Some(0), "{created:?}");
    let v = json_out(&created);
    assert_eq!(v["key"], json!("tsk_00000000000000aa_secret"));
    assert_eq!(v["info"]["scopes"], json!(["search", "write"]));
}

#[test]
fn check_residency_prints_each_violation_and_exits_1() {
    let addr = start_router();
    let out = tessera(
        Some(addr),
        &["--api-key", "tsk_test", "admin", "check-residency"],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("12 replicas checked, 1 outside")
            && stdout.contains("tenant acme shard 3 on node 7 in eu-west (seen in the node)"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("residency violated"));
    let json = tessera(
        Some(addr),
        &[
            "--api-key",
            "tsk_test",
            "admin",
            "check-residency",
            "--json",
        ],
        None,
    );
    assert_eq!(json.status.code(), Some(1));
    assert_eq!(json_out(&json)["violations"][0]["node"], json!(7));
    let keyless = tessera(Some(addr), &["admin", "check-residency"], None);
    assert_eq!(keyless.status.code(), Some(4), "{keyless:?}");
}

fn tessera(addr: Option<SocketAddr>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    if let Some(a) = addr {
        cmd.arg("--router").arg(a.to_string());
    }
    cmd.args(args)
        .env_remove("TESSERA_ROUTER")
        .env_remove("TESSERA_API_KEY")
        .env_remove("TESSERA_CA")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn tessera");
    if let Some(mut pipe) = child.stdin.take() {
        if let Some(text) = stdin {
            // The command may exit before reading its input (usage errors).
            let _ = pipe.write_all(text.as_bytes());
        }
    }
    child.wait_with_output().expect("tessera runs")
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

fn stderr_line(o: &Output) -> String {
    let s = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        s.trim_end().lines().count(),
        1,
        "exactly one stderr line: {s:?}"
    );
    s
}

#[test]
fn put_reports_rejected_lines_and_the_token() {
    let addr = start_router();
    let input = concat!(
        "{\"id\":\"p-1\",\"version\":1}\n",
        "\n",
        "{\"id\":\"p-2\",\"version\":1,\"permisions\":{}}\n",
        "{\"id\":\"veto-3\",\"version\":1}\n",
        "{\"id\":\"p-4\",\"version\":2}\n",
    );
    let o = tessera(
        Some(addr),
        &["put", "acme", "-", "--json", "--batch", "2"],
        Some(input),
    );
    assert_eq!(o.status.code(), Some(2), "rejected lines make it bad input");
    let v = json_out(&o);
    assert_eq!(v["acked"], json!(2));
    assert_eq!(v["rejected"][0]["line"], json!(3));
    assert!(v["rejected"][0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("unknown field")));
    assert_eq!(v["rejected"][1], json!({"line":4,"error":"vetoed"}));
    // The fake appends "+" per batch: the session token is threaded through batches.
    assert_eq!(v["token"], json!("++"));
    assert!(stderr_line(&o).contains("2 line(s) rejected"));

    let ok = tessera(
        Some(addr),
        &["put", "acme", "-", "--json"],
        Some("{\"id\":\"a\",\"version\":1}\n"),
    );
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(json_out(&ok), json!({"acked":1,"rejected":[],"token":"+"}));
}

#[test]
fn search_json_shape_and_flags() {
    let addr = start_router();
    let o = tessera(
        Some(addr),
        &[
            "search",
            "acme",
            "--user",
            "u:alice",
            "deploy",
            "runbook",
            "--space",
            "ENG",
            "--label",
            "ops",
            "--title-only",
            "--limit",
            "5",
            "--json",
        ],
        None,
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        json_out(&o),
        json!({"hits":[{"id":"deploy runbook|ENG|ops|true|5","score":2.5},{"id":"p-2","score":1.25}],
               "cursor":"c1.next",
               "served_by":[{"shard":3,"node":1,"region":"us-east","applied":17,"behind":0}],
               "took_ms":1.5})
    );
    let last = tessera(
        Some(addr),
        &[
            "search", "acme", "--user", "u:alice", "x", "--cursor", "c1.next", "--json",
        ],
        None,
    );
    assert_eq!(json_out(&last)["cursor"], Value::Null);
}

#[test]
fn get_status_tenant_and_groups_json_shapes() {
    let addr = start_router();
    let o = tessera(
        Some(addr),
        &["get", "acme", "p-1", "--user", "u:alice", "--json"],
        None,
    );
    assert_eq!(
        json_out(&o),
        json!({"found":true,"doc":{"id":"p-1","title":"Deploy runbook","version":7}})
    );
    let o = tessera(
        Some(addr),
        &["get", "acme", "p-9", "--user", "u:alice", "--json"],
        None,
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(json_out(&o), json!({"found":false,"doc":null}));

    let o = tessera(Some(addr), &["status", "--json"], None);
    assert_eq!(
        json_out(&o),
        json!({"epoch":9,"nodes":[{"id":1,"region":"us-east","zone":"a","state":"up"}],
               "shards":[{"id":3,"leader":1,"voters":[1,2,3],"learners":[4]},
                         {"id":4,"leader":null,"voters":[1,2,3],"learners":[]}]})
    );

    let o = tessera(Some(addr), &["tenant", "show", "acme", "--json"], None);
    assert_eq!(
        json_out(&o),
        json!({"id":"acme","regions":["us-east","eu-west"],"home":"us-east","survival":"zone",
               "partitions":[{"index":0,"shard":3},{"index":1,"shard":4}],"docs":42,
               "shards":[]})
    );
    let o = tessera(
        Some(addr),
        &[
            "tenant",
            "create",
            "new",
            "--regions",
            "us-east,eu-west",
            "--partitions",
            "4",
            "--json",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(json_out(&o)["partitions"].as_array().map(Vec::len), Some(4));

    let groups = "{\"user\":\"u:a\",\"groups\":[\"g:eng\"]}\n{\"user\":\"g:x\",\"groups\":[]}\n";
    let o = tessera(Some(addr), &["groups", "acme", "-", "--json"], Some(groups));
    assert_eq!(o.status.code(), Some(2));
    let v = json_out(&o);
    assert_eq!(v["acked"], json!(1));
    assert_eq!(v["rejected"][0]["line"], json!(2));

    let o = tessera(
        Some(addr),
        &["delete", "acme", "p-1", "--version", "8", "--json"],
        None,
    );
    assert_eq!(json_out(&o), json!({"acked":1,"rejected":[],"token":"+"}));
}

#[test]
fn exit_codes_follow_the_contract() {
    let addr = start_router();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["tenant", "show", "nope"], 2, "does not exist"),
        (
            vec!["search", "limited", "--user", "u:a", "x"],
            5,
            "retry after 200 ms",
        ),
        (
            vec!["search", "down", "--user", "u:a", "x"],
            3,
            "unavailable",
        ),
        (
            vec!["put", "down", "-", "--retry-secs", "0"],
            3,
            "acknowledged before the failure",
        ),
        (
            vec!["search", "secret", "--user", "u:a", "x"],
            4,
            "not allowed",
        ),
        (vec!["search", "acme", "x"], 2, "--user"),
    ];
    for (args, code, needle) in cases {
        let o = tessera(Some(addr), &args, Some("{\"id\":\"a\",\"version\":1}\n"));
        assert_eq!(
            o.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should mention {needle:?}"
        );
        stderr_line(&o);
    }
}

#[test]
fn router_discovery_and_connection_failures() {
    // Nothing listens on port 1: unavailable, retryable.
    let o = tessera(None, &["--router", "127.0.0.1:1", "status"], None);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr_line(&o).contains("cannot reach router"));

    // No --router and no cluster file: bad input with a hint.
    let o = tessera(
        None,
        &["--cluster", "/nonexistent/cluster.json", "status"],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("--router"));

    // The cluster file picks the router of --region.
    let addr = start_router();
    let dir = std::env::temp_dir().join(format!("tessera-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("cluster.json");
    std::fs::write(
        &file,
        format!(r#"{{"routers":[{{"region":"us-east","addr":"127.0.0.1:1","pid":1}},{{"region":"eu-west","addr":"{addr}","pid":2}}],"nodes":[]}}"#),
    )
    .expect("write cluster file");
    let path = file.to_string_lossy().to_string();
    let o = tessera(
        None,
        &[
            "--cluster",
            &path,
            "--region",
            "eu-west",
            "status",
            "--json",
        ],
        None,
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(json_out(&o)["epoch"], json!(9));
    let o = tessera(None, &["--cluster", &path, "status"], None);
    assert_eq!(o.status.code(), Some(3), "first router (us-east) is down");
    let _ = std::fs::remove_dir_all(&dir);
}
