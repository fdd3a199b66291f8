//! Runs one parsed command against a router and prints its result.

use crate::cli::{
    AdminCommand, Cli, Command, FeaturesCommand, LoadArgs, SearchArgs, TenantCommand,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;
use tessera_client::bulk::{BulkError, BulkOptions, BulkProgress, BulkReport, LineKind};
use tessera_client::cluster_file::ClusterFile;
use tessera_client::{
    exit, ClientError, Credentials, SearchPage, SearchQuery, TenantSpec, TenantView, TesseraClient,
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
fn router_addr(cli: &Cli, file: Option<&ClusterFile>) -> Result<String, Failure> {
    if let Some(r) = &cli.router {
        return Ok(r.clone());
    }
    let file = match file {
        Some(f) => f,
        None => &ClusterFile::load(&cli.cluster)?,
    };
    Ok(file.router_for(cli.region.as_deref())?.to_string())
}

/// Reads a file of secrets or certificates, naming it on failure.
fn read_text(path: &std::path::Path, what: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|e| bad_input(format!("cannot read the {what} {}: {e}", path.display())))
}

/// The CA, key and user token to connect with: flags and environment first,
/// then the cluster file (its CA; the key of the command's tenant, or the
/// admin key).
fn credentials(cli: &Cli, file: Option<&ClusterFile>) -> Result<Credentials, Failure> {
    let ca_path = cli.ca.clone().or_else(|| {
        file.and_then(|f| f.ca.clone())
            .map(std::path::PathBuf::from)
    });
    let ca_pem = ca_path
        .map(|p| read_text(&p, "CA certificate"))
        .transpose()?;
    let api_key = match (&cli.api_key, &cli.api_key_file) {
        (Some(k), _) => Some(k.trim().to_string()),
        (None, Some(path)) => Some(read_text(path, "API key file")?),
        (None, None) => file
            .and_then(|f| f.key_file_for(cli.command.tenant()))
            .map(|p| read_text(std::path::Path::new(p), "API key file"))
            .transpose()?,
    };
    Ok(Credentials {
        ca_pem,
        api_key,
        user_token: cli.user_token.clone(),
    })
}

/// Runs the command.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Train(args) = &cli.command {
        // Offline: no router to connect to.
        return crate::train_cmd::train(args);
    }
    if let Command::Eval(args) = &cli.command {
        if !args.impressions.is_empty() {
            // Offline too: the logs are files.
            return crate::eval_cmd::impressions(args);
        }
    }
    // The cluster file, when there is one to read: --router alone needs none.
    let file = match (&cli.router, cli.cluster.exists()) {
        (Some(_), false) => None,
        _ => Some(ClusterFile::load(&cli.cluster)?),
    };
    let addr = router_addr(&cli, file.as_ref())?;
    let creds = credentials(&cli, file.as_ref())?;
    let client = TesseraClient::connect_with(&addr, &creds)
        .await?
        .with_timeout(Duration::from_millis(cli.timeout_ms));
    match cli.command {
        Command::Tenant { command } => tenant(&client, command).await,
        Command::Admin {
            command:
                AdminCommand::Drain {
                    node,
                    no_wait,
                    wait_secs,
                },
        } => {
            let wait = (!no_wait).then(|| Duration::from_secs(wait_secs));
            drain(&client, node, wait).await
        }
        Command::Admin {
            command: AdminCommand::Undrain { node },
        } => {
            let held = client.undrain_node(node).await?;
            println!(
                "node {node} is in service: it holds {} replicas now and receives its share as \
                 the cluster rebalances",
                held.len()
            );
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::CheckResidency { json },
        } => check_residency(&client, json).await,
        Command::Keys { command } => crate::keys_cmd::keys(&client, command).await,
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
        Command::Events { tenant, file, json } => events(&client, &tenant, &file, json).await,
        Command::Features { command } => features(&client, command).await,
        // Returned above, before connecting.
        Command::Train(args) => crate::train_cmd::train(&args),
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
    for s in &t.shards {
        let joining = if s.joining.is_empty() {
            String::new()
        } else {
            format!(", catching up to replace a replica: {:?}", s.joining)
        };
        println!(
            "  shard {}: voters {:?}, learners {:?}{joining}",
            s.id, s.voters, s.learners
        );
    }
    println!("  docs: {}", t.docs);
    if let Some(r) = &t.resize {
        let change = if r.to.len() == t.partitions.len() {
            format!("moving to shards {:?}", r.to)
        } else {
            format!("resizing to {} partitions", r.to.len())
        };
        println!(
            "  {change} ({}; copied {:?}, dropped {:?})",
            r.phase, r.copied, r.dropped
        );
    }
}

/// Starts draining `node` and, unless told not to, follows it until the
/// node holds no replica.
/// `tessera admin check-residency`: prints what was checked and every
/// violation; fails with exit 1 on violations, 3 when a node went unchecked.
async fn check_residency(client: &TesseraClient, json: bool) -> Result<(), Failure> {
    let report = client.check_residency().await?;
    if json {
        print_json(&report)?;
    } else {
        println!(
            "map epoch {}: {} tenant shards, {} replicas checked, {} outside their tenant's regions",
            report.epoch,
            report.shards,
            report.replicas,
            report.violations.len()
        );
        for v in &report.violations {
            println!(
                "  tenant {} shard {} on node {} in {} (seen in the {})",
                v.tenant, v.shard, v.node, v.region, v.seen_in
            );
        }
    }
    if !report.violations.is_empty() {
        return Err(Failure {
            code: exit::OTHER,
            message: format!(
                "residency violated: {} replicas outside their tenant's regions",
                report.violations.len()
            ),
        });
    }
    if !report.unreachable.is_empty() {
        return Err(Failure {
            code: exit::UNAVAILABLE,
            message: format!(
                "nodes {:?} did not answer: the replicas they host were not checked; retry",
                report.unreachable
            ),
        });
    }
    Ok(())
}

async fn drain(
    client: &TesseraClient,
    node: u64,
    wait: Option<std::time::Duration>,
) -> Result<(), Failure> {
    let mut left = client.drain_node(node).await?;
    let Some(limit) = wait else {
        println!("draining node {node}: {} shards to move", left.len());
        return Ok(());
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let begun = std::time::Instant::now();
    while !left.is_empty() {
        bar.set_message(format!(
            "draining node {node}: {} shards still have a replica there ({:?})",
            left.len(),
            left
        ));
        if begun.elapsed() > limit {
            bar.finish_and_clear();
            return Err(Failure {
                code: tessera_client::exit::UNAVAILABLE,
                message: format!(
                    "node {node} still holds replicas of {left:?} after {}s; the drain goes on",
                    limit.as_secs()
                ),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        left = client.drain_node(node).await?;
    }
    bar.finish_and_clear();
    println!("node {node} is drained: it holds no replica");
    Ok(())
}

/// Starts a resize and, unless told not to, follows it to the end with a
/// spinner showing the phase.
async fn resize(
    client: &TesseraClient,
    id: &str,
    partitions: u32,
    wait: Option<std::time::Duration>,
) -> Result<TenantView, Failure> {
    let started = client.resize_tenant(id, partitions).await?;
    let what = format!("resizing {id} to {partitions} partitions");
    let done = |t: &TenantView| t.resize.is_none() && t.partitions.len() == partitions as usize;
    follow(client, id, started, &what, done, wait).await
}

/// Starts a move and, unless told not to, follows it to the end.
async fn move_partitions(
    client: &TesseraClient,
    id: &str,
    partitions: &[u32],
    to_shard: Option<u64>,
    wait: Option<std::time::Duration>,
) -> Result<TenantView, Failure> {
    let started = client.move_tenant(id, partitions, to_shard).await?;
    let target = started
        .resize
        .as_ref()
        .map(|r| format!("{:?}", r.to))
        .unwrap_or_else(|| "where it already is".into());
    let what = format!("moving {id} to {target}");
    follow(client, id, started, &what, |t| t.resize.is_none(), wait).await
}

/// Follows a resize or move of `id` until `done`, with a spinner showing
/// its phase; `wait: None` returns at once with `started`.
async fn follow(
    client: &TesseraClient,
    id: &str,
    started: TenantView,
    what: &str,
    done: impl Fn(&TenantView) -> bool,
    wait: Option<std::time::Duration>,
) -> Result<TenantView, Failure> {
    let Some(limit) = wait else {
        return Ok(started);
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let begun = std::time::Instant::now();
    loop {
        let t = client.tenant(id).await?;
        if done(&t) {
            bar.finish_and_clear();
            return Ok(t);
        }
        match &t.resize {
            None => bar.set_message(format!("{what}: starting")),
            Some(r) => bar.set_message(format!(
                "{what}: {} (copied {}, dropped {})",
                r.phase,
                r.copied.len(),
                r.dropped.len()
            )),
        }
        if begun.elapsed() > limit {
            bar.finish_and_clear();
            return Err(Failure {
                code: tessera_client::exit::UNAVAILABLE,
                message: format!(
                    "{what}: still running after {}s; it goes on in the background \
                     (`tessera tenant show {id}` follows it)",
                    limit.as_secs()
                ),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
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
        TenantCommand::Resize {
            id,
            partitions,
            no_wait,
            wait_secs,
            json,
        } => {
            let wait = (!no_wait).then(|| std::time::Duration::from_secs(wait_secs));
            let t = resize(client, &id, partitions, wait).await?;
            if json {
                print_json(&t)
            } else {
                print_tenant(&t);
                Ok(())
            }
        }
        TenantCommand::Move {
            id,
            partitions,
            to_shard,
            no_wait,
            wait_secs,
            json,
        } => {
            let wait = (!no_wait).then(|| std::time::Duration::from_secs(wait_secs));
            let t = move_partitions(client, &id, &partitions, to_shard, wait).await?;
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

/// One hit for a human: score, id and title, then space, date and the
/// snippet (matches in bold on a terminal, `*like this*` otherwise).
fn print_hit(h: &tessera_client::SearchHit, bold: bool) {
    if h.title.is_empty() {
        println!("{:>10.4}  {}", h.score, h.id);
    } else {
        println!("{:>10.4}  {}  {}", h.score, h.id, h.title);
    }
    let mut about: Vec<&str> = Vec::new();
    if !h.space.is_empty() {
        about.push(&h.space);
    }
    if !h.updated_at.is_empty() {
        about.push(&h.updated_at);
    }
    if !about.is_empty() {
        println!("            {}", about.join(" · "));
    }
    if !h.snippet.is_empty() {
        println!("            {}", snippet_text(&h.snippet, bold));
    }
}

/// A snippet's HTML as terminal text: `<b>` marks become bold (or `*`), the
/// escaped characters their own selves.
fn snippet_text(html: &str, bold: bool) -> String {
    let (on, off) = if bold {
        ("\x1b[1m", "\x1b[0m")
    } else {
        ("*", "*")
    };
    html.replace("<b>", on)
        .replace("</b>", off)
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
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
    if let Some(e) = a.experiment {
        q = q.experiment(e);
    }
    q = q.explain(a.explain).ids_only(a.ids_only);
    let page: SearchPage = client.search(&q).await?;
    if a.json {
        return print_json(&page);
    }
    let bold = std::io::IsTerminal::is_terminal(&std::io::stdout());
    for h in &page.hits {
        print_hit(h, bold);
        if let Some(e) = &h.explanation {
            println!(
                "            {}@{}: bm25 {:.4} -> {:.4}",
                e.profile, e.version, e.bm25, e.score
            );
            for (name, value, contribution) in &e.features {
                let value = value.map_or("null".to_string(), |v| format!("{v}"));
                println!("            {name} = {value} ({contribution:+.4})");
            }
        }
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
    if let Some(v) = &page.variant {
        match &page.impression {
            Some(i) => println!("-- variant {v}, impression {i}"),
            None => println!("-- variant {v}"),
        }
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

fn read_input(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    let read = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
    } else {
        std::fs::read(path)
    };
    read.map_err(|e| bad_input(format!("cannot read {}: {e}", path.display())))
}

async fn events(
    client: &TesseraClient,
    tenant: &str,
    file: &std::path::Path,
    json: bool,
) -> Result<(), Failure> {
    let data = read_input(file)?;
    let lines: Vec<Vec<u8>> = data
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(<[u8]>::to_vec)
        .collect();
    // Line numbers in errors are 1-based input lines of non-empty lines.
    for (i, line) in lines.iter().enumerate() {
        if let Err(e) = tessera_proto::Event::from_json_bytes(line) {
            return Err(bad_input(format!("line {}: {e}; nothing written", i + 1)));
        }
    }
    let mut token = String::new();
    let mut acked = 0u32;
    for chunk in lines.chunks(tessera_proto::limits::MAX_BATCH_OPS) {
        let (n, t) = client.put_events(tenant, chunk.to_vec(), &token).await?;
        acked += n;
        token = t;
    }
    if json {
        print_json(&serde_json::json!({"acked": acked, "token": token}))
    } else {
        println!("{acked} events acknowledged; token {token}");
        Ok(())
    }
}

fn fmt_value(v: Option<f64>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

async fn features(client: &TesseraClient, command: FeaturesCommand) -> Result<(), Failure> {
    match command {
        FeaturesCommand::Apply { tenant, file } => {
            let text = String::from_utf8(read_input(&file)?)
                .map_err(|e| bad_input(format!("{} is not UTF-8: {e}", file.display())))?;
            let (version, changed, _) = client.apply_features(&tenant, &text).await?;
            if changed {
                println!("registered version {version}");
            } else {
                println!("unchanged: version {version} is already this text");
            }
            Ok(())
        }
        FeaturesCommand::List { tenant, json } => {
            let (version, defs) = client.list_features(&tenant).await?;
            if json {
                let list: Vec<_> = defs.iter().map(def_json).collect();
                return print_json(&serde_json::json!({"version": version, "features": list}));
            }
            println!("version {version}");
            for d in defs {
                println!(
                    "{}\t{}\t{} {}\t{}",
                    d.name,
                    d.entity,
                    d.aggregation,
                    d.source,
                    if d.window.is_empty() {
                        "all time"
                    } else {
                        &d.window
                    }
                );
            }
            Ok(())
        }
        FeaturesCommand::Describe { tenant, name, json } => {
            let (_, defs) = client.list_features(&tenant).await?;
            let d = defs.iter().find(|d| d.name == name).ok_or_else(|| {
                bad_input(format!("unknown feature {name:?} in tenant {tenant:?}"))
            })?;
            if json {
                return print_json(&def_json(d));
            }
            println!(
                "name: {}\nentity: {}\nsource: {}\naggregation: {}",
                d.name, d.entity, d.source, d.aggregation
            );
            for (k, v) in [
                ("field", &d.field),
                ("window", &d.window),
                ("half_life", &d.half_life),
                ("ttl", &d.ttl),
                ("description", &d.description),
            ] {
                if !v.is_empty() {
                    println!("{k}: {v}");
                }
            }
            Ok(())
        }
        FeaturesCommand::Online {
            tenant,
            entity,
            features,
            token,
            json,
        } => {
            let entity = tessera_client::features::EntityKey::parse(&entity)?;
            let out = client
                .online_features(&tenant, &entity, &features, token.as_deref().unwrap_or(""))
                .await?;
            if json {
                let map: serde_json::Map<String, serde_json::Value> = features
                    .iter()
                    .zip(&out.values)
                    .map(|(f, v)| (f.clone(), serde_json::json!(v)))
                    .collect();
                return print_json(&serde_json::json!({
                    "features": map,
                    "as_of": tessera_proto::event::format_ts_millis(out.as_of_ms),
                    "registry_version": out.registry_version,
                }));
            }
            for (f, v) in features.iter().zip(out.values) {
                println!("{f}\t{}", fmt_value(v));
            }
            Ok(())
        }
        FeaturesCommand::Historical {
            tenant,
            rows,
            features,
            out,
            as_of_known,
            token,
        } => {
            use tessera_client::parquet_rows::{RowsFormat, RowsInput};
            // Both formats first: a typo in either name fails with exit 2
            // before anything is read, asked or written.
            let in_format = RowsFormat::of_path(&rows)?;
            let out_format = RowsFormat::of_path(&out)?;
            let (input, parsed) =
                RowsInput::parse(in_format, read_input(&rows)?, &rows.display().to_string())?;
            input.check_output(out_format, &features)?;
            let values = client
                .historical_features(
                    &tenant,
                    &parsed,
                    &features,
                    as_of_known,
                    token.as_deref().unwrap_or(""),
                )
                .await?;
            let bytes = input.format(out_format, &features, &values)?;
            if out.as_os_str() == "-" {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(&bytes)
                    .and_then(|()| stdout.flush())
                    .map_err(|e| Failure {
                        code: exit::OTHER,
                        message: format!("cannot write to stdout: {e}"),
                    })
            } else {
                std::fs::write(&out, bytes).map_err(|e| Failure {
                    code: exit::OTHER,
                    message: format!("cannot write {}: {e}", out.display()),
                })
            }
        }
    }
}

fn def_json(d: &tessera_client::features::FeatureInfo) -> serde_json::Value {
    serde_json::json!({
        "name": d.name, "entity": d.entity, "source": d.source,
        "aggregation": d.aggregation, "field": d.field, "window": d.window,
        "half_life": d.half_life, "ttl": d.ttl, "description": d.description,
    })
}
