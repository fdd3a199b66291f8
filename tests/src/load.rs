//! Readers and writers for tests that change placement under load
//! (resizes, drains, repairs): a writer that records every acknowledged
//! write, readers that check each answer is complete and free of
//! duplicates as of the writes acknowledged before it, and the final check
//! that every acknowledged write is present.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tessera_client::{SearchQuery, TesseraClient};

pub const USER: &str = "u:reader";
/// Every document's body has this word, so one search lists them all.
pub const COMMON: &str = "everywhere";
/// Documents loaded before the resize.
pub const INITIAL: usize = 600;
/// Writes the writer makes (new documents and updates), at most.
pub const WRITES: usize = 300;
/// Searches each reader makes, at most.
pub const SEARCHES: usize = 400;

/// A document every `COMMON` search finds.
pub fn doc(id: &str, version: u64) -> Vec<u8> {
    let v = json!({
        "id": id, "space": "ENG", "title": format!("page {id}"),
        "body": format!("{COMMON} text of {id} at version {version}"),
        "version": version, "updated_at": "2026-03-01T09:00:00Z",
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// What the writer has had acknowledged: id → version, and the session
/// token covering every acknowledged write.
#[derive(Default, Clone)]
pub struct Acked {
    pub versions: BTreeMap<String, u64>,
    pub token: String,
}

/// What the readers saw.
#[derive(Default, Debug)]
pub struct ReadReport {
    pub searches: usize,
    pub failed: Vec<String>,
    pub duplicates: Vec<String>,
    pub missing: Vec<String>,
}

/// Adds and updates documents (at most `WRITES`), recording each acknowledged one.
pub async fn writer(
    client: TesseraClient,
    tenant: String,
    acked: Arc<std::sync::Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for i in 0..WRITES {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Alternate new documents and updates of loaded ones.
        let (id, version) = if i % 2 == 0 {
            (format!("w-{i}"), 1)
        } else {
            let id = format!("d-{}", (i * 7) % INITIAL);
            let v = acked
                .lock()
                .expect("acked")
                .versions
                .get(&id)
                .copied()
                .unwrap_or(1)
                + 1;
            (id, v)
        };
        let token = acked.lock().expect("acked").token.clone();
        let mut done = false;
        for _ in 0..20 {
            match client
                .put_documents(&tenant, vec![doc(&id, version)], Vec::new(), &token)
                .await
            {
                Ok(out) if out.rejected.is_empty() => {
                    let mut a = acked.lock().expect("acked");
                    a.versions.insert(id.clone(), version);
                    a.token = out.token;
                    done = true;
                    break;
                }
                Ok(out) => {
                    failures.push(format!("{id}: rejected {:?}", out.rejected));
                    done = true;
                    break;
                }
                // Not acknowledged: retrying is safe (writes are idempotent).
                Err(e) if e.is_retryable() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    failures.push(format!("{id}: {e}"));
                    done = true;
                    break;
                }
            }
        }
        if !done {
            failures.push(format!("{id}: not acknowledged after 20 tries"));
        }
    }
    failures
}

/// Searches for every document, as of the writes acknowledged before the
/// search began (their session token), and checks the answer is complete
/// and free of duplicates.
pub async fn reader(
    client: TesseraClient,
    tenant: String,
    acked: Arc<std::sync::Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) -> ReadReport {
    let mut report = ReadReport::default();
    while report.searches < SEARCHES && !stop.load(Ordering::Relaxed) {
        let (expected, token) = {
            let a = acked.lock().expect("acked");
            (
                a.versions.keys().cloned().collect::<BTreeSet<_>>(),
                a.token.clone(),
            )
        };
        let q = SearchQuery::new(&tenant, USER, COMMON)
            .limit(1000)
            .token(token);
        report.searches += 1;
        match client.search(&q).await {
            Err(e) => report.failed.push(e.to_string()),
            Ok(page) => {
                let mut seen = BTreeSet::new();
                for h in &page.hits {
                    if !seen.insert(h.id.clone()) {
                        report.duplicates.push(h.id.clone());
                    }
                }
                report
                    .missing
                    .extend(expected.difference(&seen).take(5).cloned());
            }
        }
    }
    report
}

/// Every acknowledged write is there at its acknowledged version, exactly once.
pub async fn check_final(client: &TesseraClient, tenant: &str, acked: &Acked) {
    let q = SearchQuery::new(tenant, USER, COMMON)
        .limit(1000)
        .token(acked.token.clone());
    let page = client.search(&q).await.expect("final search");
    let ids: Vec<&str> = page.hits.iter().map(|h| h.id.as_str()).collect();
    let distinct: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), distinct.len(), "duplicate hits after the resize");
    let expected: BTreeSet<&str> = acked.versions.keys().map(String::as_str).collect();
    let missing: Vec<_> = expected.difference(&distinct).collect();
    let extra: Vec<_> = distinct.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "hits differ from the acknowledged documents: missing {missing:?}, extra {extra:?}, served by {:?}",
        page.served_by
    );
    for (id, version) in &acked.versions {
        let got = client
            .get(tenant, id, USER, Some(&acked.token))
            .await
            .expect("get");
        let doc = got.doc.unwrap_or_else(|| panic!("{id} is missing"));
        assert_eq!(
            doc["version"].as_u64(),
            Some(*version),
            "{id} is at an older version"
        );
    }
    let t = client.tenant(tenant).await.expect("tenant");
    assert_eq!(t.docs as usize, acked.versions.len(), "document count");
}

/// Runs one writer and two readers until `during` ends; returns the write failures and the readers' reports.
pub async fn run_with_load(
    client: &TesseraClient,
    acked: &Arc<std::sync::Mutex<Acked>>,
    tenant: &str,
    during: impl std::future::Future<Output = ()>,
) -> (Vec<String>, Vec<ReadReport>) {
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(
        client.clone(),
        tenant.to_string(),
        acked.clone(),
        stop.clone(),
    ));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(reader(
                client.clone(),
                tenant.to_string(),
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    during.await;
    stop.store(true, Ordering::Relaxed);
    let write_failures = w.await.expect("writer");
    let mut reports = Vec::new();
    for r in readers {
        reports.push(r.await.expect("reader"));
    }
    (write_failures, reports)
}

/// No failed write or search, no duplicate and no missing document.
pub fn assert_clean(write_failures: &[String], reports: &[ReadReport]) {
    assert!(
        write_failures.is_empty(),
        "writes failed: {write_failures:?}"
    );
    for r in reports {
        assert!(r.searches > 0, "a reader made no search");
        assert!(r.failed.is_empty(), "failed searches: {:?}", r.failed);
        assert!(
            r.duplicates.is_empty(),
            "duplicate hits: {:?}",
            r.duplicates
        );
        assert!(r.missing.is_empty(), "missing documents: {:?}", r.missing);
    }
}

/// Creates `tenant` (one partition, us-east) and loads `INITIAL` documents.
pub async fn load_initial(client: &TesseraClient, tenant: &str) -> Acked {
    crate::routers::create_tenant(
        client,
        &tessera_client::TenantSpec::new(tenant, ["us-east"]),
    )
    .await;
    let docs: Vec<Vec<u8>> = (0..INITIAL).map(|i| doc(&format!("d-{i}"), 1)).collect();
    let token = crate::routers::put_all(client, tenant, docs, 200).await;
    Acked {
        versions: (0..INITIAL).map(|i| (format!("d-{i}"), 1)).collect(),
        token,
    }
}
