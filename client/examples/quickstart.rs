//! Five-minute tour of the client library against a running cluster.
//!
//! ```text
//! scripts/cluster.sh up
//! cargo run --release -p tessera-client --example quickstart -- 127.0.0.1:7300
//! ```
//!
//! Creates a tenant, writes two pages and a group membership, then searches
//! with the write's session token (read-your-writes) and pages with the cursor.

use tessera_client::{
    ClientError, ErrorClass, GroupMembership, SearchQuery, TenantSpec, TesseraClient,
};

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7300".to_string());
    if let Err(e) = tour(&addr).await {
        eprintln!("quickstart: {e}");
        std::process::exit(i32::from(e.exit_code()));
    }
}

async fn tour(addr: &str) -> Result<(), ClientError> {
    // The cluster script's CA and admin key (see docs/security.md).
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|t| t.trim().to_string())
    };
    let creds = tessera_client::Credentials {
        ca_pem: read(".cluster/certs/ca.pem"),
        api_key: std::env::var("TESSERA_API_KEY")
            .ok()
            .or_else(|| read(".cluster/certs/admin.key")),
        user_token: None,
    };
    let client = TesseraClient::connect_with(addr, &creds).await?;

    let tenant = format!("quickstart-{}", std::process::id());
    let spec = TenantSpec::new(&tenant, ["us-east", "eu-west"]).home("us-east");
    match client.create_tenant(&spec).await {
        Ok(t) => println!("created {} on shards {:?}", t.id, t.partitions),
        Err(e) if e.class() == ErrorClass::BadInput => println!("tenant exists already: {e}"),
        Err(e) => return Err(e),
    }

    let docs = vec![
        br#"{"id":"p-1","space":"ENG","title":"Deploy runbook","body":"How to deploy the search cluster","version":1,
            "permissions":{"space":["g:eng"]}}"#
            .to_vec(),
        br#"{"id":"p-2","space":"ENG","title":"Incident review","body":"The deploy went wrong because ...","version":1}"#
            .to_vec(),
    ];
    let put = client.put_documents(&tenant, docs, Vec::new(), "").await?;
    println!("acked {} documents, token {}", put.acked, put.token);

    let groups = vec![GroupMembership {
        user: "u:alice".into(),
        groups: vec!["g:eng".into()],
    }];
    let put = client.put_groups(&tenant, groups, &put.token).await?;

    // The token makes the search wait for replicas that have applied both writes.
    let mut query = SearchQuery::new(&tenant, "u:alice", "deploy")
        .limit(1)
        .token(&put.token);
    loop {
        let page = client.search(&query).await?;
        for hit in &page.hits {
            println!("{:.3} {}", hit.score, hit.id);
        }
        for s in &page.served_by {
            println!(
                "  served by node {} in {} (applied {})",
                s.node, s.region, s.applied
            );
        }
        match page.cursor {
            Some(c) => query = query.cursor(c),
            None => break,
        }
    }

    let got = client.get(&tenant, "p-1", "u:bob", None).await?;
    println!("u:bob sees p-1: {}", got.found);
    Ok(())
}
