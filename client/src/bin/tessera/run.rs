//! Runs one parsed command against a router and prints its result.

use crate::cli::{Cli, Command, LoadArgs, SearchArgs, TenantCommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;
use tessera_client::bulk::{BulkError, BulkOptions, BulkProgress, BulkReport, LineKind};
use tessera_client::cluster_file::ClusterFile;
use tessera_client::{
    exit, ClientError, SearchPage, SearchQuery, TenantSpec, TenantView, TesseraClient,
};
use tokio::io::{AsyncBufRead, BufReader};

/// How a command failed: the exit code and the one stderr line.
#[derive(Debug)]
pub struct Failure {
    /// Exit code (see `tessera_client::exit`).
    pub code: u8,
    /// What to print after `tessera: `.
    pub message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

/// A bad-input failure (exit code 2).
pub fn bad_input(message: String) -> Failure {
    Failure {
        code: exit::BAD_INPUT,
        message,
    }
}

/// Prints `v` as one line of JSON.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let text = serde_json::to_string(v).map_err(|e| Failure {
        code: exit::OTHER,
        message: format!("cannot print JSON: {e}"),
    })?;
    println!("{text}");
    Ok(())
}

/// `--router`, else the cluster file's router (of `--region`).
fn router_addr(cli: &Cli) -> Result<String, Failure> {
    if let Some(r) = &cli.router {
        return Ok(r.clone());
    }
    let file = ClusterFile::load(&cli.cluster)?;
    Ok(file.router_for(cli.region.as_deref())?.to_string())
}

/// Runs the command.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let addr = router_addr(&cli)?;
    let client = TesseraClient::connect(&addr)
        .await?
        .with_timeout(Duration::from_millis(cli.timeout_ms));
    match cli.command {
        Command::Tenant { command } => tenant(&client, command).await,
        Command::Put(args) => load(&client, args, LineKind::Documents).await,
        Command::Groups(args) => load(&client, args, LineKind::Groups).await,
        Command::Delete {
            tenant,
            doc_id,
            version,
            token,
            json,
        } => {
            let out = client
                .delete(
                    &tenant,
                    &doc_id,
                    version,
                    token.as_deref().unwrap_or_default(),
                )
                .await?;
            let report = BulkReport {
                acked: out.acked,
                rejected: out
                    .rejected
                    .iter()
                    .map(|r| tessera_client::bulk::LineRejection {
                        line: 1,
                        error: r.error.clone(),
                    })
                    .collect(),
                token: out.token,
            };
            if json {
                print_json(&report)?;
            } else if report.rejected.is_empty() {
                println!(
                    "deleted {doc_id} at version {version}\ntoken: {}",
                    report.token
                );
            }
            match report.rejected.first() {
                Some(r) => Err(bad_input(format!("delete rejected: {}", r.error))),
                None => Ok(()),
            }
        }
        Command::Get {
            tenant,
            doc_id,
            user,
            token,
            json,
        } => {
            let got = client
                .get(&tenant, &doc_id, &user, token.as_deref())
                .await?;
            if json {
                print_json(&got)?;
            } else {
                match &got.doc {
                    Some(doc) => println!(
                        "{}",
                        serde_json::to_string_pretty(doc).unwrap_or_else(|_| doc.to_string())
                    ),
                    None => eprintln!("tessera: {doc_id} not found (or not visible to {user})"),
                }
            }
            Ok(())
        }
        Command::Search(args) => search(&client, args).await,
        Command::Eval(args) => crate::eval_cmd::eval(&client, args).await,
        Command::Status { json } => {
            let st = client.status().await?;
            if json {
                return print_json(&st);
            }
            println!("cluster map epoch {}", st.epoch);
            println!("nodes:");
            for n in &st.nodes {
                println!("  {:>4}  {}/{}  {}", n.id, n.region, n.zone, n.state);
            }
            println!("shards:");
            for s in &st.shards {
                let leader = s.leader.map_or_else(|| "?".to_string(), |l| l.to_string());
                println!(
                    "  {:>4}  leader {leader}  voters {:?}  learners {:?}",
                    s.id, s.voters, s.learners
                );
            }
            Ok(())
        }
    }
}

fn print_tenant(t: &TenantView) {
    println!("tenant {}", t.id);
    println!(
        "  regions: {} (home {}, survival {})",
        t.regions.join(", "),
        t.home,
        if t.survival.is_empty() {
            "zone"
        } else {
            &t.survival
        }
    );
    let parts: Vec<String> = t
        .partitions
        .iter()
        .map(|p| format!("{}→shard {}", p.index, p.shard))
        .collect();
    println!("  partitions: {}", parts.join(", "));
    println!("  docs: {}", t.docs);
}

async fn tenant(client: &TesseraClient, command: TenantCommand) -> Result<(), Failure> {
    match command {
        TenantCommand::Create {
            id,
            regions,
            home,
            survival,
            partitions,
            json,
        } => {
            let mut spec = TenantSpec::new(id, regions);
            if let Some(h) = home {
                spec = spec.home(h);
            }
            if let Some(s) = survival {
                spec = spec.survival(s.as_str());
            }
            if let Some(p) = partitions {
                spec = spec.partitions(p);
            }
            let t = client.create_tenant(&spec).await?;
            if json {
                print_json(&t)
            } else {
                print_tenant(&t);
                Ok(())
            }
        }
        TenantCommand::Show { id, json } => {
            let t = client.tenant(&id).await?;
            if json {
                print_json(&t)
            } else {
                print_tenant(&t);
                Ok(())
            }
        }
    }
}

async fn search(client: &TesseraClient, a: SearchArgs) -> Result<(), Failure> {
    let mut q = SearchQuery::new(&a.tenant, &a.user, a.query.join(" "))
        .title_only(a.title_only)
        .limit(a.limit);
    q.spaces = a.spaces;
    q.ancestors = a.ancestors;
    q.labels = a.labels;
    if let Some(c) = a.cursor {
        q = q.cursor(c);
    }
    if let Some(t) = a.token {
        q = q.token(t);
    }
    if let Some(p) = a.profile {
        q = q.profile(p);
    }
    let page: SearchPage = client.search(&q).await?;
    if a.json {
        return print_json(&page);
    }
    for h in &page.hits {
        println!("{:>10.4}  {}", h.score, h.id);
    }
    let served: Vec<String> = page
        .served_by
        .iter()
        .map(|s| {
            format!(
                "shard {} by node {} ({}, applied {})",
                s.shard, s.node, s.region, s.applied
            )
        })
        .collect();
    println!(
        "-- {} hits in {:.1} ms; {}",
        page.hits.len(),
        page.took_ms,
        served.join("; ")
    );
    if let Some(c) = &page.cursor {
        println!("-- next page: --cursor {c}");
    }
    Ok(())
}

fn progress_bar(total: Option<u64>) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(n) => {
            let b = ProgressBar::new(n);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40.cyan/blue} {bytes}/{total_bytes} ({eta}) {msg}",
            ) {
                b.set_style(style);
            }
            b
        }
        None => ProgressBar::new_spinner(),
    };
    Some(bar)
}

async fn load(client: &TesseraClient, args: LoadArgs, kind: LineKind) -> Result<(), Failure> {
    let (input, total): (Box<dyn AsyncBufRead + Unpin + Send>, Option<u64>) = if args.file == "-" {
        (Box::new(BufReader::new(tokio::io::stdin())), None)
    } else {
        let f = tokio::fs::File::open(&args.file)
            .await
            .map_err(|e| bad_input(format!("cannot open {}: {e}", args.file)))?;
        let len = f.metadata().await.ok().map(|m| m.len());
        (Box::new(BufReader::new(f)), len)
    };
    let opts = BulkOptions {
        batch_items: args.batch.max(1),
        retry_for: Duration::from_secs(args.retry_secs),
        ..Default::default()
    };
    let bar = progress_bar(total);
    let mut on_progress = |p: BulkProgress| {
        if let Some(b) = &bar {
            b.set_position(p.bytes);
            b.set_message(format!("{} acked, {} rejected", p.acked, p.rejected));
        }
    };
    let result = client
        .load_lines(
            &args.tenant,
            kind,
            input,
            args.token.as_deref().unwrap_or_default(),
            &opts,
            &mut on_progress,
        )
        .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    match result {
        Ok(report) => {
            print_report(&report, args.json)?;
            match report.rejected.first() {
                None => Ok(()),
                Some(first) => Err(bad_input(format!(
                    "{} line(s) rejected, {} acknowledged (first: line {}: {})",
                    report.rejected.len(),
                    report.acked,
                    first.line,
                    first.error
                ))),
            }
        }
        Err(BulkError { report, error }) => {
            print_report(&report, args.json)?;
            Err(Failure {
                code: error.exit_code(),
                message: format!(
                    "{error}; {} line(s) acknowledged before the failure",
                    report.acked
                ),
            })
        }
    }
}

fn print_report(report: &BulkReport, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(report);
    }
    for r in &report.rejected {
        println!("line {}: rejected: {}", r.line, r.error);
    }
    println!("acked {}, rejected {}", report.acked, report.rejected.len());
    if !report.token.is_empty() {
        println!("token: {}", report.token);
    }
    Ok(())
}
