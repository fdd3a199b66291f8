//! Renders docs/bench/RESULTS.md and its SVG plots from the JSON files the
//! `bench_suite` subcommands write. Kept apart from the measurements so a
//! report can be re-rendered (or restyled) without re-running anything.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use tessera_bench::{LatencySummary, Machine};

use super::{CoreResult, ScaleResult};

fn load<T: serde::de::DeserializeOwned>(data: &Path, name: &str) -> Option<T> {
    let p = data.join(name);
    let text = std::fs::read(&p).ok()?;
    match serde_json::from_slice(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("ignoring {}: {e}", p.display());
            None
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    tessera_bench::median(&mut v)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// One line of a plot.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

fn series(name: &str, color: RGBColor, points: Vec<(f64, f64)>) -> Series {
    Series {
        name: name.to_string(),
        points: points
            .into_iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && *y > 0.0)
            .collect(),
        color,
    }
}

/// A line chart (log y; log x when `log_x`) as SVG.
fn plot(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    log_x: bool,
    lines: &[Series],
) -> anyhow::Result<()> {
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|s| s.points.clone()).collect();
    if all.is_empty() {
        return Ok(());
    }
    let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| {
        (a.min(*x), b.max(*x))
    });
    let (y0, y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| {
        (a.min(*y), b.max(*y))
    });
    if x1 <= x0 {
        x0 *= 0.5;
        x1 = x1 * 2.0 + 1.0;
    }
    let (y0, y1) = (y0 / 1.5, y1 * 1.5);
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64);
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .draw()?;
            for s in lines {
                let c = s.color;
                chart
                    .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2)))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
                chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }};
    }
    if log_x {
        finish!(builder.build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())?);
    } else {
        finish!(builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale())?);
    }
    root.present()?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

const ROUTER: RGBColor = RGBColor(31, 119, 180);
const ROUTER_TAIL: RGBColor = RGBColor(174, 199, 232);
const RAW: RGBColor = RGBColor(255, 127, 14);
const RAW_TAIL: RGBColor = RGBColor(255, 187, 120);

/// RSS growth per million documents per replica between two points of the
/// documents curve (the slope, so the empty process's fixed cost drops out).
fn per_million(a: &super::ScalePoint, b: &super::ScalePoint) -> f64 {
    let d_docs = b.x.saturating_sub(a.x) as f64;
    if d_docs <= 0.0 {
        return f64::NAN;
    }
    (mib(b.node_rss_bytes) - mib(a.node_rss_bytes)) / 3.0 / (d_docs / 1e6)
}

fn lat_row(s: &mut String, label: &str, l: &LatencySummary) {
    let _ = writeln!(
        s,
        "| {label} | {} | {:.3} | {:.3} | {:.3} |",
        l.n, l.p50, l.p99, l.mean
    );
}

/// Writes the report and plots.
pub fn write(
    data: &Path,
    out: &Path,
    plots: &Path,
    include: &[PathBuf],
    label: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(plots)?;
    let rel = |name: &str| -> String {
        let base = out.parent().unwrap_or(Path::new("."));
        let p = plots.join(name);
        p.strip_prefix(base)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    let machine = Machine::describe();
    let commit = std::env::var("BENCH_COMMIT").unwrap_or_else(|_| "unknown".into());
    let date = std::env::var("BENCH_DATE").unwrap_or_else(|_| "unknown".into());
    let core: Option<CoreResult> = load(data, "core.json");
    let docs: Option<ScaleResult> = load(data, "docs.json");
    let tenants: Option<ScaleResult> = load(data, "tenants.json");
    let parts: Option<ScaleResult> = load(data, "partitions.json");

    let mut s = String::new();
    let _ = writeln!(s, "# Tessera benchmark results\n");
    let _ = writeln!(
        s,
        "Generated by `scripts/bench.sh{}` on {date}, commit `{commit}`.\n\n\
         Machine: {} logical CPUs (`nproc`), {}, {:.1} GiB RAM, Linux {}. Clients, router, \
         three node processes and the raw tantivy baseline all share this machine.\n\n\
         Every Tessera figure is measured at the client (all hops: client → router → \
         node(s) → router → client), on a cluster of three `tessera-node` processes (one \
         region, three zones, every shard with three voters) behind one `tessera-router` \
         process. Every baseline is raw in-process tantivy over the same documents, in the \
         same run. Each measured query is a distinct Wikipedia article title, used once per \
         side. See [README.md](README.md) for how to read and reproduce each figure.\n",
        if label == "quick" { " --quick" } else { "" },
        machine.nproc,
        machine.cpu,
        machine.ram_gib,
        machine.kernel
    );

    // Headline.
    let _ = writeln!(s, "## Headline\n");
    let _ = writeln!(
        s,
        "| figure | Tessera | raw tantivy | ratio (Tessera / raw) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|");
    if let Some(c) = &core {
        let (r, w) = (median(&c.router_docs_per_s), median(&c.raw_docs_per_s));
        let _ = writeln!(
            s,
            "| indexing, docs/s (median of {} rounds; 3 replicas, acknowledged) | {r:.0} | {w:.0} | {:.3} |",
            c.rounds,
            r / w
        );
        let _ = writeln!(
            s,
            "| search p50, ms (top 10, one client) | {:.3} | {:.3} | {:.1} |",
            c.router_search.p50,
            c.raw_search.p50,
            c.router_search.p50 / c.raw_search.p50
        );
        let _ = writeln!(
            s,
            "| search p99, ms | {:.3} | {:.3} | {:.1} |",
            c.router_search.p99,
            c.raw_search.p99,
            c.router_search.p99 / c.raw_search.p99
        );
        if let Some(t) = c.throughput.iter().max_by_key(|t| t.clients) {
            let _ = writeln!(
                s,
                "| queries/s at {} concurrent clients | {:.0} | {:.0} | {:.3} |",
                t.clients,
                t.router_qps,
                t.raw_qps,
                t.router_qps / t.raw_qps
            );
        }
    }
    if let Some(d) = &docs {
        if let (Some(first), Some(last)) = (d.points.first(), d.points.last()) {
            let _ = writeln!(
                s,
                "| node memory: marginal RSS per million documents per replica, MiB ({} → {} docs) | {:.0} | – | – |",
                first.x,
                last.x,
                per_million(first, last)
            );
        }
    }
    if let Some(t) = &tenants {
        if let (Some(a), Some(b)) = (t.points.first(), t.points.last()) {
            let _ = writeln!(
                s,
                "| probe-tenant p50 at {} vs {} tenants on one shard, ms | {:.3} → {:.3} | – | {:.2} |",
                a.x,
                b.x,
                a.router.p50,
                b.router.p50,
                b.router.p50 / a.router.p50
            );
        }
    }
    if let Some(p) = &parts {
        if let (Some(a), Some(b)) = (p.points.first(), p.points.last()) {
            let _ = writeln!(
                s,
                "| search p50 at {} vs {} partitions, ms | {:.3} → {:.3} | – | {:.2} |",
                a.x,
                b.x,
                a.router.p50,
                b.router.p50,
                b.router.p50 / a.router.p50
            );
        }
    }
    let _ = writeln!(s);

    if let Some(c) = &core {
        let _ = writeln!(s, "## Indexing\n");
        let _ = writeln!(
            s,
            "{} Wikipedia articles per round, {} rounds per side, medians. Tessera: documents \
             acknowledged through the router (quorum-committed by a 3-voter shard group, \
             fsynced), batches of {}, {} in flight, a fresh cluster per round. Raw: one \
             in-process tantivy writer (128 MiB budget), same documents, one commit.\n",
            c.docs, c.rounds, c.batch, c.in_flight
        );
        let _ = writeln!(s, "| side | rounds (docs/s) | median docs/s |");
        let _ = writeln!(s, "|---|---|---:|");
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "| Tessera via router, 3 replicas | {} | {:.0} |",
            fmt(&c.router_docs_per_s),
            median(&c.router_docs_per_s)
        );
        let _ = writeln!(
            s,
            "| raw tantivy | {} | {:.0} |",
            fmt(&c.raw_docs_per_s),
            median(&c.raw_docs_per_s)
        );
        let _ = writeln!(
            s,
            "| ratio | | {:.3} |\n",
            median(&c.router_docs_per_s) / median(&c.raw_docs_per_s)
        );
        let _ = writeln!(s, "## Search latency\n");
        let _ = writeln!(
            s,
            "One client, sequential, top 10, {} distinct title queries per side after 50 warm-up \
             queries (different titles). Raw tantivy parses the same text over title and body \
             and reads each hit's stored id.\n",
            c.router_search.n
        );
        let _ = writeln!(s, "| side | queries | p50 ms | p99 ms | mean ms |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        lat_row(&mut s, "Tessera via router", &c.router_search);
        lat_row(&mut s, "raw tantivy", &c.raw_search);
        let _ = writeln!(
            s,
            "| overhead ratio (Tessera / raw) | | {:.1} | {:.1} | {:.1} |\n",
            c.router_search.p50 / c.raw_search.p50,
            c.router_search.p99 / c.raw_search.p99,
            c.router_search.mean / c.raw_search.mean
        );
        if let (Some(lr), Some(lw)) = (&c.long_router_search, &c.long_raw_search) {
            let _ = writeln!(
                s,
                "Queries at the term limit: {} queries of {} terms each (an article's body \
                 words, cycled to the limit), the same on both sides, after 5 warm-up \
                 queries.\n",
                lr.n, c.long_terms
            );
            let _ = writeln!(s, "| side | queries | p50 ms | p99 ms | mean ms |");
            let _ = writeln!(s, "|---|---:|---:|---:|---:|");
            lat_row(&mut s, "Tessera via router, long queries", lr);
            lat_row(&mut s, "raw tantivy, long queries", lw);
            let _ = writeln!(
                s,
                "| overhead ratio (Tessera / raw) | | {:.1} | {:.1} | {:.1} |",
                lr.p50 / lw.p50,
                lr.p99 / lw.p99,
                lr.mean / lw.mean
            );
            let _ = writeln!(
                s,
                "| long / title query, Tessera p50 | | {:.1} | | |\n",
                lr.p50 / c.router_search.p50
            );
        }
        let _ = writeln!(s, "## Throughput under concurrency\n");
        let _ = writeln!(
            s,
            "N concurrent clients (async tasks sharing one HTTP/2 connection to the router; \
             threads sharing one searcher for raw tantivy), each query once.\n"
        );
        let _ = writeln!(
            s,
            "| clients | Tessera q/s | p50 ms | p99 ms | errors | raw q/s | raw p50 ms | raw p99 ms | q/s ratio |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for t in &c.throughput {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.3} | {:.3} | {:.3} |",
                t.clients,
                t.router_qps,
                t.router.p50,
                t.router.p99,
                t.errors,
                t.raw_qps,
                t.raw.p50,
                t.raw.p99,
                t.router_qps / t.raw_qps
            );
        }
        plot(
            &plots.join("throughput.svg"),
            "Queries/s vs concurrent clients",
            "concurrent clients",
            "queries/s",
            true,
            &[
                series(
                    "Tessera via router",
                    ROUTER,
                    c.throughput
                        .iter()
                        .map(|t| (t.clients as f64, t.router_qps))
                        .collect(),
                ),
                series(
                    "raw tantivy",
                    RAW,
                    c.throughput
                        .iter()
                        .map(|t| (t.clients as f64, t.raw_qps))
                        .collect(),
                ),
            ],
        )?;
        let _ = writeln!(s, "\n![throughput]({})\n", rel("throughput.svg"));
    }

    if let Some(d) = &docs {
        let _ = writeln!(s, "## Scaling: documents in one tenant\n");
        let _ = writeln!(
            s,
            "One tenant (1 partition) grows through the sizes; at each size every replica has \
             indexed everything before the measurement. Node memory is the summed RSS of the three \
             node processes (each holds a full replica; the empty cluster's was {:.0} MiB); the last \
             column is the RSS growth since the previous size, per replica, scaled to a million documents.\n",
            mib(d.baseline_rss_bytes)
        );
        let _ = writeln!(
            s,
            "| documents | Tessera p50 ms | p99 ms | raw p50 ms | raw p99 ms | p50 ratio | node RSS MiB (3 nodes) | marginal MiB per million docs per replica (since previous size) |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut prev: Option<&super::ScalePoint> = None;
        for p in &d.points {
            let raw = p.raw.unwrap_or_default();
            let per = prev.map_or_else(|| "–".to_string(), |a| format!("{:.0}", per_million(a, p)));
            prev = Some(p);
            let _ = writeln!(
                s,
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | {:.0} | {per} |",
                p.x,
                p.router.p50,
                p.router.p99,
                raw.p50,
                raw.p99,
                p.router.p50 / raw.p50,
                mib(p.node_rss_bytes)
            );
        }
        plot(
            &plots.join("latency_vs_docs.svg"),
            "Search latency vs documents (one tenant)",
            "documents",
            "latency, ms (log)",
            true,
            &[
                series(
                    "Tessera p50",
                    ROUTER,
                    d.points
                        .iter()
                        .map(|p| (p.x as f64, p.router.p50))
                        .collect(),
                ),
                series(
                    "Tessera p99",
                    ROUTER_TAIL,
                    d.points
                        .iter()
                        .map(|p| (p.x as f64, p.router.p99))
                        .collect(),
                ),
                series(
                    "raw p50",
                    RAW,
                    d.points
                        .iter()
                        .map(|p| (p.x as f64, p.raw.unwrap_or_default().p50))
                        .collect(),
                ),
                series(
                    "raw p99",
                    RAW_TAIL,
                    d.points
                        .iter()
                        .map(|p| (p.x as f64, p.raw.unwrap_or_default().p99))
                        .collect(),
                ),
            ],
        )?;
        plot(
            &plots.join("memory_vs_docs.svg"),
            "Node memory vs documents",
            "documents",
            "RSS per node, MiB (log)",
            true,
            &[series(
                "RSS per node (mean of 3)",
                ROUTER,
                d.points
                    .iter()
                    .map(|p| (p.x as f64, mib(p.node_rss_bytes) / 3.0))
                    .collect(),
            )],
        )?;
        let _ = writeln!(
            s,
            "\n![latency vs documents]({})\n\n![memory vs documents]({})\n",
            rel("latency_vs_docs.svg"),
            rel("memory_vs_docs.svg")
        );
    }

    if let Some(t) = &tenants {
        let _ = writeln!(s, "## Scaling: tenants on one shard\n");
        let _ = writeln!(
            s,
            "A probe tenant ({} documents) shares its shard with more and more small tenants \
             ({} documents each; every tenant has 1 partition, so all land on the one shard). \
             The probe's latency should not grow with the other tenants: the tenant term \
             filters them out inside the index.\n",
            t.params["probe_docs"], t.params["filler_docs"]
        );
        let _ = writeln!(
            s,
            "| tenants | shards | documents in the shard | probe p50 ms | p99 ms | mean ms | node RSS MiB (3 nodes) |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
        for p in &t.points {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.0} |",
                p.x,
                p.shards,
                p.cluster_docs,
                p.router.p50,
                p.router.p99,
                p.router.mean,
                mib(p.node_rss_bytes)
            );
        }
        plot(
            &plots.join("latency_vs_tenants.svg"),
            "Probe-tenant latency vs tenants sharing its shard",
            "tenants on the shard",
            "latency, ms (log)",
            true,
            &[
                series(
                    "p50",
                    ROUTER,
                    t.points
                        .iter()
                        .map(|p| (p.x as f64, p.router.p50))
                        .collect(),
                ),
                series(
                    "p99",
                    ROUTER_TAIL,
                    t.points
                        .iter()
                        .map(|p| (p.x as f64, p.router.p99))
                        .collect(),
                ),
            ],
        )?;
        let _ = writeln!(
            s,
            "\n![latency vs tenants]({})\n",
            rel("latency_vs_tenants.svg")
        );
    }

    if let Some(p) = &parts {
        let _ = writeln!(s, "## Scaling: partitions of one tenant\n");
        let _ = writeln!(
            s,
            "The same {} documents in tenants of 1, 2, … partitions (each partition its own \
             shard of three replicas). More partitions mean a scatter-gather over more shards \
             plus the DFS round that makes BM25 scores comparable; the raw column is one \
             in-process index of the same documents.\n",
            p.params["docs"]
        );
        let _ = writeln!(
            s,
            "| partitions | shards | p50 ms | p99 ms | mean ms | raw p50 ms | p50 ratio vs 1 partition |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
        let base = p.points.first().map_or(f64::NAN, |b| b.router.p50);
        for q in &p.points {
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |",
                q.x,
                q.shards,
                q.router.p50,
                q.router.p99,
                q.router.mean,
                q.raw.unwrap_or_default().p50,
                q.router.p50 / base
            );
        }
        plot(
            &plots.join("latency_vs_partitions.svg"),
            "Search latency vs partitions (same documents)",
            "partitions",
            "latency, ms (log)",
            true,
            &[
                series(
                    "Tessera p50",
                    ROUTER,
                    p.points
                        .iter()
                        .map(|q| (q.x as f64, q.router.p50))
                        .collect(),
                ),
                series(
                    "Tessera p99",
                    ROUTER_TAIL,
                    p.points
                        .iter()
                        .map(|q| (q.x as f64, q.router.p99))
                        .collect(),
                ),
                series(
                    "raw p50",
                    RAW,
                    p.points
                        .iter()
                        .map(|q| (q.x as f64, q.raw.unwrap_or_default().p50))
                        .collect(),
                ),
            ],
        )?;
        let _ = writeln!(
            s,
            "\n![latency vs partitions]({})\n",
            rel("latency_vs_partitions.svg")
        );
    }

    for inc in include {
        match std::fs::read_to_string(inc) {
            Ok(text) => {
                // Demote the included report's headings one level.
                let _ = writeln!(s, "\n---\n");
                for line in text.lines() {
                    if line.starts_with('#') {
                        let _ = writeln!(s, "#{line}");
                    } else {
                        let _ = writeln!(s, "{line}");
                    }
                }
            }
            Err(_) => {
                let name = inc
                    .file_stem()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "\n---\n\n## {name}\n\nNot run yet: `scripts/bench.sh {name}` writes `{}` and \
                     the next report includes it.\n",
                    inc.display()
                );
            }
        }
    }

    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, s).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
