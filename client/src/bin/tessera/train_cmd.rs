//! `tessera train`: click logs in, a `[[profile]]` block out (the model and
//! its guarantees are documented in `tessera_client::train`).

use crate::cli::TrainArgs;
use crate::run::{bad_input, print_json, Failure};
use std::io::Read;
use tessera_client::exit;
use tessera_client::train::{
    profile_toml, train as fit, Columns, Dataset, FeatureSpec, ProfileMeta, TrainOptions,
    TrainReport,
};

/// Runs `tessera train`. Every input problem is bad input (exit 2) and
/// nothing is written; a failed write of `--out` is exit 1.
pub fn train(args: &TrainArgs) -> Result<(), Failure> {
    let bad = |e: tessera_client::train::TrainError| bad_input(e.to_string());
    let features =
        FeatureSpec::from_options(&args.features, &args.transforms, &args.defaults).map_err(bad)?;
    let text = read_rows(&args.rows)?;
    let columns = Columns {
        label: args.label.clone(),
        group: args.group.clone(),
        bm25: args.bm25.clone(),
    };
    let data = Dataset::parse_csv(&text, &columns, &features).map_err(bad)?;
    let meta = ProfileMeta {
        name: args.name.clone(),
        version: args.version,
        candidates: args.candidates,
    };
    let opts = TrainOptions {
        epochs: args.epochs,
        l2: args.l2,
        holdout_percent: args.holdout,
    };
    let report = fit(&data, &meta, &opts).map_err(bad)?;
    for line in summary(&report) {
        eprintln!("train: {line}");
    }
    for w in &report.warnings {
        eprintln!("train: warning: {w}");
    }

    let mut comments = vec![format!(
        "trained by `tessera train` from {}",
        args.rows.display()
    )];
    comments.extend(summary(&report));
    comments.extend(report.warnings.iter().map(|w| format!("warning: {w}")));
    let toml = profile_toml(&report.profile, &comments).map_err(bad)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &toml).map_err(|e| Failure {
            code: exit::OTHER,
            message: format!("cannot write {}: {e}", out.display()),
        })?;
    }
    if args.json {
        print_json(&report)
    } else {
        if args.out.is_none() {
            print!("{toml}");
        }
        Ok(())
    }
}

/// The training figures, one human-readable line each.
fn summary(r: &TrainReport) -> Vec<String> {
    let holdout = r.holdout_accuracy.map_or_else(
        || "none held out".to_string(),
        |a| format!("{a:.4} held out"),
    );
    vec![
        format!(
            "{} rows, {} groups ({} skipped: no clicked or no unclicked row)",
            r.rows, r.groups, r.groups_skipped
        ),
        format!(
            "{} pairs in {} training groups; {} pairs in {} held-out groups",
            r.pairs, r.train_groups, r.holdout_pairs, r.holdout_groups
        ),
        format!(
            "loss {:.6} (mean pairwise logistic) after {} Newton iteration(s){}",
            r.loss,
            r.iterations,
            if r.converged {
                ", converged"
            } else {
                ", not converged"
            }
        ),
        format!(
            "pairwise accuracy {:.4} on training pairs, {holdout}",
            r.train_accuracy
        ),
    ]
}

/// The rows file as text (`-` is stdin).
fn read_rows(path: &std::path::Path) -> Result<String, Failure> {
    let mut buf = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut buf).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buf).map(|_| ()))
    };
    read.map_err(|e| bad_input(format!("cannot read {}: {e}", path.display())))?;
    String::from_utf8(buf).map_err(|e| bad_input(format!("{} is not UTF-8: {e}", path.display())))
}
