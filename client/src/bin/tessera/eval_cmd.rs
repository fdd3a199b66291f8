//! `tessera eval`: relevance of a test collection through the router, of rankings on search
//! sessions with a click (`--clicks`), or of an experiment from its impression logs
//! (`--impressions`).

use crate::cli::{EvalArgs, GainArg};
use crate::run::{bad_input, print_json, Failure};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;
use tessera_client::click_eval::{self, ClickOptions};
use tessera_client::eval::{
    self, BootstrapSpec, Collection, Difference, Estimate, Gain, Progress, RunOptions, Variant,
    VariantFigures,
};
use tessera_client::experiments::{self, ExperimentLog};
use tessera_client::{ClientError, TesseraClient};

/// A bar on stderr when it is a terminal (never in pipes and logs).
fn bar(len: u64, what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} {bar:40.cyan/blue} {pos}/{len} ({eta})")
    {
        b.set_style(style);
    }
    b.set_message(what.to_string());
    Some(b)
}

/// The first region the router knows a node in: a sensible home for a
/// throwaway evaluation tenant.
async fn default_regions(client: &TesseraClient) -> Result<Vec<String>, Failure> {
    let st = client.status().await?;
    st.nodes
        .first()
        .map(|n| vec![n.region.clone()])
        .ok_or_else(|| bad_input("the router lists no node; pass --regions".into()))
}

/// `tessera eval --impressions`: per-variant figures from experiment logs.
pub fn impressions(a: &EvalArgs) -> Result<(), Failure> {
    let log = ExperimentLog::load(&a.impressions).map_err(|e| bad_input(e.to_string()))?;
    let reports = experiments::report(&log, a.resamples, a.seed);
    if a.json {
        return print_json(&reports);
    }
    if reports.is_empty() {
        println!("no impressions in {} file(s)", a.impressions.len());
    }
    for r in &reports {
        println!(
            "experiment {} ({} bootstrap resamples, seed {})",
            r.experiment, a.resamples, a.seed
        );
        println!(
            "{:<28} {:>6} {:>7} {:>6}  {:<24} {:<24} MRR vs control",
            "variant", "pages", "clicked", "CTR", "MRR@10 [95% CI]", "nDCG@10 [95% CI]"
        );
        for v in &r.variants {
            println!(
                "{:<28} {:>6} {:>7} {:>6.3}  {:<24} {:<24} {}",
                v.variant,
                v.impressions,
                v.clicked,
                v.click_rate,
                interval(&v.mrr_at_10),
                interval(&v.ndcg_at_10),
                v.mrr_vs_control
                    .as_ref()
                    .map_or(String::new(), signed_interval)
            );
        }
    }
    Ok(())
}

fn interval(e: &Estimate) -> String {
    format!("{:.4} [{:.4}, {:.4}]", e.mean, e.ci_low, e.ci_high)
}

/// `+0.0123 [+0.0045, +0.0201]` and the verdict of an independent-samples difference.
fn signed_interval(e: &Estimate) -> String {
    signed(&Difference {
        mean: e.mean,
        ci_low: e.ci_low,
        ci_high: e.ci_high,
        excludes_zero: e.ci_low > 0.0 || e.ci_high < 0.0,
    })
}

/// `+0.0123 [+0.0045, +0.0201] better`: a paired difference and its verdict.
fn signed(d: &Difference) -> String {
    format!(
        "{:+.4} [{:+.4}, {:+.4}] {}",
        d.mean,
        d.ci_low,
        d.ci_high,
        d.verdict()
    )
}

/// The per-variant table: MRR@10 and nDCG@10 with intervals, then each later variant's paired
/// differences to the first.
fn print_variants(variants: &[VariantFigures]) {
    let width = variants
        .iter()
        .map(|v| v.variant.name.len())
        .max()
        .unwrap_or(0)
        .max("variant".len());
    println!(
        "{:<width$}  {:<24} {:<24} nDCG@10 [95% CI]",
        "variant", "profile", "MRR@10 [95% CI]"
    );
    for v in variants {
        println!(
            "{:<width$}  {:<24} {:<24} {}",
            v.variant.name,
            v.variant.profile.as_deref().unwrap_or("(bm25)"),
            interval(&v.mrr_at_10),
            interval(&v.ndcg_at_10),
        );
    }
    let Some(first) = variants.first() else {
        return;
    };
    for v in &variants[1..] {
        if let (Some(m), Some(n)) = (&v.mrr_vs_first, &v.ndcg_vs_first) {
            println!(
                "{} vs {} (paired): MRR@10 {}; nDCG@10 {}",
                v.variant.name,
                first.variant.name,
                signed(m),
                signed(n)
            );
        }
    }
}

/// `tessera eval --clicks`: variants compared on search sessions with a click, on a tenant
/// that already holds the documents, groups and events.
async fn clicks(
    client: &TesseraClient,
    a: &EvalArgs,
    file: &std::path::Path,
) -> Result<(), Failure> {
    let tenant = a
        .tenant
        .clone()
        .ok_or_else(|| bad_input("--clicks needs --tenant".into()))?;
    let mut sessions = click_eval::load_sessions(file).map_err(|e| bad_input(e.to_string()))?;
    if a.limit_sessions > 0 {
        sessions.truncate(a.limit_sessions);
    }
    if sessions.is_empty() {
        return Err(bad_input(format!("{} holds no session", file.display())));
    }
    let variants = Variant::resolve(&a.variants, a.profile.as_deref()).map_err(bad_input)?;
    // A missing tenant is a mistake in the command, not a failure of the cluster: say so
    // before searching.
    match client.tenant(&tenant).await {
        Ok(_) => {}
        Err(ClientError::NotFound(_)) => {
            return Err(bad_input(format!(
                "tenant {tenant} does not exist: --clicks evaluates a tenant that already \
                 holds the documents, groups and events (scripts/cluster.sh up loads the demo \
                 tenants)"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    let opts = ClickOptions {
        resamples: a.resamples,
        seed: a.seed,
        concurrency: a.concurrency.max(1),
        token: a.token.clone().unwrap_or_default(),
        retry_for: Duration::from_secs(60),
    };
    let progress = bar((sessions.len() * variants.len()) as u64, "searching");
    let report = click_eval::evaluate(client, &tenant, &sessions, &variants, &opts, |done, _| {
        if let Some(b) = &progress {
            b.set_position(done as u64);
        }
    })
    .await;
    if let Some(b) = progress {
        b.finish_and_clear();
    }
    let report = report?;
    if a.json {
        return print_json(&report);
    }
    println!(
        "{}: {} sessions with a click; {} bootstrap resamples, seed {}",
        report.tenant, report.sessions, report.resamples, report.seed
    );
    print_variants(&report.variants);
    Ok(())
}

/// Runs `tessera eval`.
pub async fn eval(client: &TesseraClient, a: EvalArgs) -> Result<(), Failure> {
    if let Some(file) = &a.clicks {
        return clicks(client, &a, file).await;
    }
    let Some(path) = a.collection.clone() else {
        return Err(bad_input(
            "give a collection directory, --clicks FILE or --impressions FILE".into(),
        ));
    };
    let collection = Collection::load(&path).map_err(|e| bad_input(e.to_string()))?;
    let variants = Variant::resolve(&a.variants, a.profile.as_deref()).map_err(bad_input)?;
    let name = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "collection".into());
    if a.depth == 0 || a.depth > tessera_proto::limits::MAX_PAGE_SIZE {
        return Err(bad_input(format!(
            "--depth must be 1..={} (MAX_PAGE_SIZE)",
            tessera_proto::limits::MAX_PAGE_SIZE
        )));
    }
    let regions = if a.regions.is_empty() {
        default_regions(client).await?
    } else {
        a.regions.clone()
    };
    let opts = RunOptions {
        tenant: a
            .tenant
            .clone()
            .unwrap_or_else(|| format!("eval-{name}-p{}", a.partitions)),
        partitions: a.partitions,
        regions,
        user: a.user.clone(),
        profile: a.profile.clone(),
        variants,
        depth: a.depth,
        gain: match a.gain {
            GainArg::Linear => Gain::Linear,
            GainArg::Exponential => Gain::Exponential,
        },
        bootstrap: BootstrapSpec {
            resamples: a.resamples,
            seed: a.seed,
        },
        batch: a.batch.max(1),
        concurrency: a.concurrency.max(1),
        load: !a.skip_load,
        retry_for: Duration::from_secs(60),
        per_query: a.per_query,
    };
    let mut load_bar: Option<ProgressBar> = None;
    let mut search_bar: Option<ProgressBar> = None;
    let result = {
        let mut on_progress = |p: Progress| match p {
            Progress::Loading { done, total } => {
                let b = load_bar.get_or_insert_with(|| {
                    bar(total, "loading").unwrap_or_else(ProgressBar::hidden)
                });
                b.set_position(done);
            }
            Progress::Searching { done, total } => {
                if let Some(b) = load_bar.take() {
                    b.finish_and_clear();
                }
                let b = search_bar.get_or_insert_with(|| {
                    bar(total, "searching").unwrap_or_else(ProgressBar::hidden)
                });
                b.set_position(done);
            }
        };
        eval::run(client, &collection, &name, &opts, &mut on_progress).await
    };
    for b in [load_bar, search_bar].into_iter().flatten() {
        b.finish_and_clear();
    }
    let report = result.map_err(|e| Failure {
        code: e.exit_code(),
        message: e.to_string(),
    })?;
    if a.json {
        return print_json(&report);
    }
    println!(
        "{}: {} docs, {} judged queries; tenant {} ({} partition{}), depth {}{}",
        report.collection,
        report.docs,
        report.queries,
        report.tenant,
        report.partitions,
        if report.partitions == 1 { "" } else { "s" },
        report.depth,
        report
            .profile
            .as_deref()
            .map(|p| format!(", profile {p}"))
            .unwrap_or_default()
    );
    println!(
        "{:<8} {:>7}  95% CI ({} bootstrap resamples, seed {})",
        "metric", "mean", report.bootstrap.resamples, report.bootstrap.seed
    );
    let row = |m: &str, e: &Estimate| {
        println!(
            "{m:<8} {:>7.4}  [{:.4}, {:.4}]",
            e.mean, e.ci_low, e.ci_high
        );
    };
    row("nDCG@10", &report.ndcg_at_10);
    row("MAP", &report.map);
    row("MRR", &report.mrr);
    row("P@10", &report.p_at_10);
    row("R@100", &report.r_at_100);
    if let Some(first) = report.variants.first() {
        row("MRR@10", &first.mrr_at_10);
    }
    if report.variants.len() > 1 {
        println!(
            "(the figures above are of variant {}; every variant:)",
            report.variants[0].variant.name
        );
        print_variants(&report.variants);
    }
    if !report.cut_queries.is_empty() {
        println!(
            "queries cut to {} terms (MAX_QUERY_TERMS): {}",
            tessera_proto::limits::MAX_QUERY_TERMS,
            report.cut_queries.join(", ")
        );
    }
    if let Some(per) = &report.per_query {
        println!(
            "{:<8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
            "qid", "nDCG@10", "AP", "RR", "RR@10", "P@10", "R@100"
        );
        for q in per {
            println!(
                "{:<8} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4}",
                q.qid, q.ndcg10, q.ap, q.rr, q.rr10, q.p10, q.r100
            );
        }
    }
    Ok(())
}
