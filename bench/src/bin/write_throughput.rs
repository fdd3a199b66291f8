//! Write throughput of a 3-node shard group (acknowledged = quorum-committed
//! through Raft over QUIC, applied to RocksDB and indexed) beside raw
//! in-process tantivy indexing of the same documents, in one run.
//!
//! Each side runs `--rounds` times; the report gives the median docs/s of
//! each and their ratio.

use anyhow::Context;
use clap::Parser;
use std::time::Instant;
use tantivy::{doc, Index};
use tessera_bench::{default_wiki, median, read_articles, to_doc_json};
use tessera_node::index::{build_schema, Fields};
use tessera_proto::pb;
use tessera_proto::Document;
use tessera_tests::cluster::{Mode, SETTLE};
use tessera_tests::{Layout, TestCluster};

#[derive(Parser)]
#[command(about = "3-node Raft write throughput vs raw tantivy indexing, same documents")]
struct Args {
    /// Documents per round.
    #[arg(long, default_value_t = 20_000)]
    docs: usize,
    /// Documents per write batch.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Rounds per side (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The Wikipedia corpus.
    #[arg(long)]
    wiki: Option<std::path::PathBuf>,
    /// Also write the Markdown report here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn raw_tantivy(docs: &[Document]) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let schema = build_schema();
    let f = Fields::from_schema(&schema)?;
    let index = Index::create_in_dir(dir.path(), schema)?;
    let mut writer = index.writer(64 * 1024 * 1024)?;
    let start = Instant::now();
    for d in docs {
        writer.add_document(doc!(
            f.tenant => "bench", f.key => format!("bench\u{1f}{}", d.id), f.id => d.id.clone(),
            f.space => d.space.clone(), f.title => d.title.clone(), f.body => d.body.clone(),
            f.acl => "bench|*", f.updated_at => 0i64,
        ))?;
    }
    writer.commit()?;
    Ok(docs.len() as f64 / start.elapsed().as_secs_f64())
}

async fn cluster_round(
    docs_json: &[Vec<u8>],
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let cluster = TestCluster::start(&Layout::one_region_three_zones(), Mode::InProc).await;
    let shard = cluster
        .create_tenant("bench", &["us-east"], 1)
        .await
        .partitions[0];
    // Warm up: elect the leader and open connections outside the timed window.
    cluster
        .write(
            pb::WriteRequest {
                tenant: "bench".into(),
                shard,
                docs_json: vec![docs_json[0].clone()],
                ..Default::default()
            },
            SETTLE,
        )
        .await
        .map_err(|e| anyhow::anyhow!("warm-up write: {e}"))?;
    let start = Instant::now();
    let chunks: Vec<Vec<Vec<u8>>> = docs_json.chunks(batch).map(|c| c.to_vec()).collect();
    let mut last = 0;
    for wave in chunks.chunks(concurrency) {
        let writes = wave.iter().map(|c| {
            cluster.write(
                pb::WriteRequest {
                    tenant: "bench".into(),
                    shard,
                    docs_json: c.clone(),
                    ..Default::default()
                },
                SETTLE,
            )
        });
        for r in futures::future::join_all(writes).await {
            let token = r.map_err(|e| anyhow::anyhow!("write: {e}"))?;
            last = last.max(token.applied);
        }
    }
    let acked = start.elapsed();
    // Indexed on every replica: searchable everywhere.
    for id in [1, 2, 3] {
        let n = cluster
            .count_all(id, "bench", shard, last)
            .await
            .map_err(|e| anyhow::anyhow!("count: {e}"))?;
        anyhow::ensure!(
            n as usize == docs_json.len(),
            "node {id} has {n} of {} docs",
            docs_json.len()
        );
    }
    let mut cluster = cluster;
    cluster.stop_all().await;
    Ok(docs_json.len() as f64 / acked.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wiki = args.wiki.clone().unwrap_or_else(default_wiki);
    let articles = read_articles(&wiki, args.docs).context("reading the corpus")?;
    let docs_json: Vec<Vec<u8>> = articles
        .iter()
        .enumerate()
        .map(|(i, a)| to_doc_json(a, i))
        .collect();
    let docs: Vec<Document> = docs_json
        .iter()
        .map(|j| Document::from_json_bytes(j))
        .collect::<Result<_, _>>()
        .context("corpus documents validate")?;
    let mut raw = Vec::new();
    let mut raft = Vec::new();
    for round in 0..args.rounds {
        raw.push(raw_tantivy(&docs)?);
        raft.push(cluster_round(&docs_json, args.batch, args.concurrency).await?);
        eprintln!(
            "round {round}: raw tantivy {:.0} docs/s, 3-node group {:.0} docs/s",
            raw[round], raft[round]
        );
    }
    let (raw_m, raft_m) = (median(&mut raw), median(&mut raft));
    let report = format!(
        "## Write throughput: 3-node Raft group vs raw tantivy\n\n\
         {} Wikipedia articles, batches of {}, {} in flight, {} rounds (medians).\n\n\
         | side | docs/s (median) |\n|---|---|\n\
         | raw in-process tantivy (one writer, one commit) | {raw_m:.0} |\n\
         | 3-node group, acknowledged (quorum-committed, fsynced, applied) | {raft_m:.0} |\n\
         | ratio (group / raw) | {:.2} |\n",
        args.docs,
        args.batch,
        args.concurrency,
        args.rounds,
        raft_m / raw_m
    );
    println!("{report}");
    if let Some(out) = args.out {
        std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
