//! `tessera-demo`: generates the synthetic Confluence-like demo data set
//! that `scripts/cluster.sh up` loads (see `tessera_client::demo`).

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tessera_client::demo::text::{SyntheticText, TextSource, WikiText};
use tessera_client::demo::{generate, DemoConfig, Manifest, DEFAULT_REGIONS};

/// Demo data for Tessera.
#[derive(Debug, Parser)]
#[command(name = "tessera-demo", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate tenants (Zipf sizes), spaces, page trees, users, groups,
    /// permissions, events and search sessions. Writes OUT/tenants.json and,
    /// per tenant, OUT/<tenant>/{docs,groups,events,clicks}.jsonl.
    /// Deterministic for a seed.
    ///
    /// clicks.jsonl holds simulated searches with a click
    /// ({"user","query","doc","ts"}), held out of the events and later than
    /// all of them: the judgments `tessera eval --clicks` ranks with. A user
    /// looks for a page of their own space, a popular page, or a page they
    /// edited or contributed to, with one or two distinctive words of its
    /// title that other pages share too.
    Generate {
        /// Wikipedia JSON Lines (.jsonl.zst is streamed, never unpacked to disk).
        #[arg(long, default_value = "../shared/data/enwiki2014_chunk_262k.jsonl.zst")]
        wiki: PathBuf,
        /// Use made-up text instead of --wiki (no data file needed).
        #[arg(long)]
        synthetic_text: bool,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Number of tenants.
        #[arg(long, default_value_t = 20)]
        tenants: usize,
        /// Total documents over all tenants.
        #[arg(long, default_value_t = 10_000)]
        docs: usize,
        /// Random seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The cluster's regions (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_REGIONS.iter().map(|r| r.to_string()))]
        regions: Vec<String>,
        /// Zipf exponent of tenant sizes.
        #[arg(long, default_value_t = 1.0)]
        zipf: f64,
        /// Events per document, on average.
        #[arg(long, default_value_t = 2.0)]
        events_per_doc: f64,
        /// Cut page bodies to this many bytes.
        #[arg(long, default_value_t = 4096)]
        max_body_bytes: usize,
        /// Search sessions with a click (clicks.jsonl) per document, on average.
        #[arg(long, default_value_t = 0.2)]
        sessions_per_doc: f64,
        /// Print the manifest as JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Print a generated set's tenants as tab-separated lines, for scripts:
    /// id, regions (comma-separated), home, survival, partitions, docs,
    /// directory, example user, example query, its matching docs, a more
    /// restricted user, their matching docs.
    Tenants {
        /// The directory `generate` wrote (holding tenants.json).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tessera_client::quiet_on_closed_pipe();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera-demo: {e}");
            ExitCode::from(tessera_client::exit::BAD_INPUT)
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Tenants { dir } => tenants(&dir),
        generate_cmd => generate_set(generate_cmd),
    }
}

fn tenants(dir: &Path) -> Result<(), String> {
    let path = dir.join("tenants.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for t in &manifest.tenants {
        let ex = &t.example;
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            t.id,
            t.regions.join(","),
            t.home,
            t.survival,
            t.partitions,
            t.docs,
            dir.join(&t.dir).display(),
            ex.user,
            ex.query,
            ex.matching_docs,
            ex.other_user,
            ex.other_matching_docs
        );
    }
    Ok(())
}

fn generate_set(command: Command) -> Result<(), String> {
    let Command::Generate {
        wiki,
        synthetic_text,
        out,
        tenants,
        docs,
        seed,
        regions,
        zipf,
        events_per_doc,
        max_body_bytes,
        sessions_per_doc,
        json,
    } = command
    else {
        return Err("not a generate command".into());
    };
    let config = DemoConfig {
        tenants,
        docs,
        seed,
        regions,
        tenant_zipf: zipf,
        events_per_doc,
        max_body_bytes,
        sessions_per_doc,
    };
    config.validate().map_err(|e| e.to_string())?;
    let mut text: Box<dyn TextSource> = if synthetic_text {
        Box::new(SyntheticText::new(seed))
    } else {
        Box::new(WikiText::open(&wiki, max_body_bytes).map_err(|e| {
            format!("{e} (pass --wiki PATH, or --synthetic-text to do without the dump)")
        })?)
    };
    let started = std::time::Instant::now();
    let manifest = generate(&config, text.as_mut(), &out).map_err(|e| e.to_string())?;
    if json {
        let text = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    let events: usize = manifest.tenants.iter().map(|t| t.events).sum();
    let sessions: usize = manifest.tenants.iter().map(|t| t.sessions).sum();
    println!(
        "wrote {} tenants, {} docs, {} events, {} search sessions to {} in {:.1}s",
        manifest.tenants.len(),
        manifest.docs,
        events,
        sessions,
        out.display(),
        started.elapsed().as_secs_f64()
    );
    for t in &manifest.tenants {
        println!(
            "  {:<10} {:>6} docs  p={}  {} ({}, home {})",
            t.id,
            t.docs,
            t.partitions,
            t.regions.join(","),
            t.survival,
            t.home
        );
    }
    Ok(())
}
