//! Trains the weights of a linear rank profile from click logs (`tessera train`).
//!
//! The input is the CSV that `tessera features historical` writes (DESIGN.md
//! "features.toml"): the caller's rows, in order, plus one column per feature
//! with an empty cell for null. Three of the caller's columns carry the
//! training signal: a **label** (1 = clicked, 0 = shown but not clicked; any
//! numbers work, a higher label is preferred), a **group** (the query or
//! session the candidates were shown for) and **bm25** (the first-phase score
//! of the candidate, as the node computed it).
//!
//! # One definition, no skew
//!
//! The model is exactly the one the node serves (`node/src/rank/profile.rs`,
//! `RankProfile::score`):
//!
//! ```text
//! score = bm25_weight * bm25 + Σ weight_i * transform_i(value_i, or default_i when null)
//! transform = identity | log1p(max(x, 0))
//! ```
//!
//! The client crate does not depend on the node crate (it would pull RocksDB
//! and tantivy into every client build), so [`RankProfile`], [`Term`] and
//! [`Transform`] here mirror the node's types field for field and
//! [`RankProfile::score`] repeats its arithmetic in the same order. The tests
//! read `profile.rs` itself and fail if its format or formula drifts from
//! this mirror. Training builds its inputs with [`term_input`], the same
//! function scoring uses, and reports accuracies by scoring the *output*
//! profile, so the figures describe what will be served.
//!
//! # Model
//!
//! Pairwise logistic loss (RankNet) over every (higher label, lower label)
//! pair of rows within a group: `mean log(1 + exp(-(s_a - s_b))) + l2/2·|w|²`,
//! linear in `[bm25, transform(f1), ...]`. Columns are standardised (divided
//! by their standard deviation over the training rows; the mean cancels in a
//! pairwise difference) so one `l2` suits features of any scale, then the
//! weights are divided back so they apply to raw transformed values. The
//! optimiser is full-batch Newton with a backtracking line search starting
//! from zero weights: no randomness, the same input gives the same bits.
//!
//! A ranking does not change when every weight is multiplied by the same
//! positive number, so the output is normalised to `bm25 = 1.0` whenever the
//! learned bm25 weight is positive (the profile then reads as "BM25 plus
//! these boosts"). Otherwise the weights are left at their trained scale and
//! a warning says so.
//!
//! A deterministic share of the groups (by a stable hash of the group id,
//! 20% by default) is held out: the weights are trained on the rest and the
//! pairwise accuracy on the held-out groups estimates how the profile ranks
//! unseen queries.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::str::FromStr;

/// Most candidates a profile may rerank (the node's `MAX_CANDIDATES`).
pub const MAX_CANDIDATES: u32 = 1000;
/// Candidates reranked when a profile does not say (the node's `DEFAULT_CANDIDATES`).
pub const DEFAULT_CANDIDATES: u32 = 100;
/// Default L2 strength, relative to the mean pair loss on standardised columns:
/// small enough not to bias well-supported weights, large enough to keep the
/// optimum finite when the training pairs are separable.
pub const DEFAULT_L2: f64 = 1e-3;
/// Default cap on Newton iterations; well-conditioned problems converge in 5–15.
pub const DEFAULT_EPOCHS: usize = 100;
/// Default share of groups held out for the held-out accuracy, in percent.
pub const DEFAULT_HOLDOUT_PERCENT: u8 = 20;

/// Gradient (max norm) below which training has converged.
const GRADIENT_TOLERANCE: f64 = 1e-9;

/// How a feature value enters the score (mirror of the node's `Transform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// The value itself.
    #[default]
    Identity,
    /// `ln(1 + max(x, 0))`: compresses counts, ignores negative values.
    Log1p,
}

impl Transform {
    /// Applies the transform exactly as the node does in `RankProfile::score`.
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Transform::Identity => x,
            Transform::Log1p => x.max(0.0).ln_1p(),
        }
    }
}

impl FromStr for Transform {
    type Err = TrainError;

    /// Parses the `features.toml` spelling (`identity`, `log1p`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "identity" => Ok(Transform::Identity),
            "log1p" => Ok(Transform::Log1p),
            other => Err(TrainError::BadOption(format!(
                "unknown transform {other:?}: use identity or log1p"
            ))),
        }
    }
}

/// The input of one term for one row: the value, or the term's default when
/// the value is null, then the transform. Training and [`RankProfile::score`]
/// both go through here so they cannot disagree.
pub fn term_input(value: Option<f64>, default: f64, transform: Transform) -> f64 {
    transform.apply(value.unwrap_or(default))
}

/// One weighted feature of a linear profile (mirror of the node's `Term`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Term {
    /// A registered feature.
    pub feature: String,
    /// Its weight, applied to the transformed value.
    pub weight: f64,
    /// How the value enters the score.
    #[serde(default)]
    pub transform: Transform,
    /// The value used when the feature is null.
    #[serde(default)]
    pub default: f64,
}

/// A named, versioned linear profile (mirror of the node's `RankProfile`,
/// serialised as one `[[profile]]` table of `features.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankProfile {
    /// Profile name (`--profile NAME` picks its newest version).
    pub name: String,
    /// Version (`--profile NAME@V` pins it).
    pub version: u64,
    /// BM25 candidates the node reranks per shard.
    #[serde(default = "default_candidates")]
    pub candidates: u32,
    /// Weight of the BM25 score.
    #[serde(default = "one")]
    pub bm25: f64,
    /// The feature terms, in order.
    #[serde(default, rename = "term")]
    pub terms: Vec<Term>,
}

fn default_candidates() -> u32 {
    DEFAULT_CANDIDATES
}

fn one() -> f64 {
    1.0
}

impl RankProfile {
    /// The score the node gives a hit (`RankProfile::score` in
    /// `node/src/rank/profile.rs`, same operations in the same order, so the
    /// same bits): `bm25 * bm25_weight + Σ weight * transform(value or default)`.
    /// `values` are in term order; a missing entry is null.
    pub fn score(&self, bm25: f64, values: &[Option<f64>]) -> f64 {
        let mut score = self.bm25 * bm25;
        for (i, t) in self.terms.iter().enumerate() {
            let value = values.get(i).copied().flatten();
            score += t.weight * term_input(value, t.default, t.transform);
        }
        score
    }
}

/// A `features.toml` seen only for its `[[profile]]` tables (other tables,
/// such as `[[feature]]`, are ignored here, as the node's profile parser does).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfilesFile {
    /// The profiles, in file order.
    #[serde(default)]
    pub profile: Vec<RankProfile>,
}

/// Renders `profile` as a `[[profile]]` block ready to append to
/// `features.toml`, preceded by `comments` as `#` lines (provenance for the
/// reviewer of the change; the parser ignores them).
pub fn profile_toml(profile: &RankProfile, comments: &[String]) -> Result<String, TrainError> {
    let body = toml::to_string(&ProfilesFile {
        profile: vec![profile.clone()],
    })
    .map_err(|e| TrainError::InvalidProfile(format!("cannot render as TOML: {e}")))?;
    let mut out = String::new();
    for c in comments {
        for line in c.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&body);
    Ok(out)
}

/// Why training refused its input. Every variant is bad input (the CLI exits 2).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    /// The rows file has no header line.
    #[error("the rows file is empty: it needs a header")]
    Empty,
    /// Columns the options name are not in the header.
    #[error("missing column(s) {}: the header has {}", .missing.join(", "), .header.join(", "))]
    MissingColumns {
        /// The missing names, in option order.
        missing: Vec<String>,
        /// The header's columns.
        header: Vec<String>,
    },
    /// A column the options name appears more than once in the header.
    #[error("column {0:?} appears more than once in the header")]
    DuplicateColumn(String),
    /// A line does not have as many cells as the header.
    #[error("line {line}: {got} cells, the header has {want}")]
    CellCount {
        /// 1-based line of the file.
        line: usize,
        /// Cells on the line.
        got: usize,
        /// Cells in the header.
        want: usize,
    },
    /// A cell that must be a finite number is not.
    #[error("line {line}: column {column}: {cell:?} {reason}")]
    BadCell {
        /// 1-based line of the file.
        line: usize,
        /// The column's name.
        column: String,
        /// The cell as written.
        cell: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `--transform` or `--default` names a feature that `--features` does not list.
    #[error("{option} names feature {feature:?}, which is not in --features")]
    UnknownFeature {
        /// The option (`--transform`, `--default`).
        option: &'static str,
        /// The feature it names.
        feature: String,
    },
    /// A malformed option value.
    #[error("{0}")]
    BadOption(String),
    /// The profile could not be valid (name, candidates, non-finite weights).
    #[error("invalid profile: {0}")]
    InvalidProfile(String),
    /// No (higher label, lower label) pair to learn from.
    #[error(
        "no usable pairs: {groups} group(s), {skipped} without both a clicked and an unclicked row{}",
        if *.holdout_pairs > 0 {
            format!(", and every group with pairs ({holdout_pairs} pairs) fell into the held-out share (lower --holdout)")
        } else {
            String::new()
        }
    )]
    NoPairs {
        /// Distinct groups in the input.
        groups: usize,
        /// Groups whose rows all have the same label.
        skipped: usize,
        /// Pairs in held-out groups (unusable for training).
        holdout_pairs: usize,
    },
}

/// One feature to learn a weight for: its column and how it enters the score.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    /// Feature name, which is also its column in the rows file.
    pub name: String,
    /// How the value enters the score.
    pub transform: Transform,
    /// The value used when the cell is empty (null), before the transform.
    pub default: f64,
}

impl FeatureSpec {
    /// Builds the specs from the CLI's `--features a,b`, `--transform a=log1p`
    /// and `--default a=0` (identity and 0.0 unless given, as in `features.toml`).
    pub fn from_options(
        features: &[String],
        transforms: &[String],
        defaults: &[String],
    ) -> Result<Vec<FeatureSpec>, TrainError> {
        let mut specs: Vec<FeatureSpec> = Vec::with_capacity(features.len());
        for f in features {
            let name = f.trim();
            if name.is_empty() {
                return Err(TrainError::BadOption(
                    "--features has an empty name".to_string(),
                ));
            }
            if specs.iter().any(|s| s.name == name) {
                return Err(TrainError::BadOption(format!(
                    "--features lists {name:?} twice"
                )));
            }
            specs.push(FeatureSpec {
                name: name.to_string(),
                transform: Transform::Identity,
                default: 0.0,
            });
        }
        for (feature, value) in assignments("--transform", transforms)? {
            let transform = value.parse::<Transform>()?;
            spec_mut(&mut specs, "--transform", feature)?.transform = transform;
        }
        for (feature, value) in assignments("--default", defaults)? {
            let default = value
                .parse::<f64>()
                .ok()
                .filter(|d| d.is_finite())
                .ok_or_else(|| {
                    TrainError::BadOption(format!(
                        "--default {feature}={value}: the default must be a finite number"
                    ))
                })?;
            spec_mut(&mut specs, "--default", feature)?.default = default;
        }
        Ok(specs)
    }
}

/// Splits `name=value` items of a repeatable option.
fn assignments<'a>(
    option: &'static str,
    items: &'a [String],
) -> Result<Vec<(&'a str, &'a str)>, TrainError> {
    items
        .iter()
        .filter(|i| !i.trim().is_empty())
        .map(|i| {
            i.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| {
                    TrainError::BadOption(format!(
                        "{option} {i:?} is not FEATURE=VALUE (e.g. {option} views=log1p)"
                    ))
                })
        })
        .collect()
}

fn spec_mut<'a>(
    specs: &'a mut [FeatureSpec],
    option: &'static str,
    feature: &str,
) -> Result<&'a mut FeatureSpec, TrainError> {
    specs
        .iter_mut()
        .find(|s| s.name == feature)
        .ok_or_else(|| TrainError::UnknownFeature {
            option,
            feature: feature.to_string(),
        })
}

/// The columns that carry the training signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// Label column: higher is better (1 = clicked, 0 = shown, not clicked).
    pub label: String,
    /// Group column: rows are only compared within a group (query or session).
    pub group: String,
    /// First-phase BM25 score of the row's candidate.
    pub bm25: String,
}

/// One training row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line in the rows file, for messages.
    pub line: usize,
    /// Query or session id.
    pub group: String,
    /// Higher is preferred.
    pub label: f64,
    /// First-phase score.
    pub bm25: f64,
    /// Feature values in [`Dataset::features`] order; `None` is null.
    pub values: Vec<Option<f64>>,
}

/// Parsed training rows and the features they carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The features, in profile term order.
    pub features: Vec<FeatureSpec>,
    /// The rows, in file order.
    pub rows: Vec<Row>,
}

impl Dataset {
    /// Parses the CSV `tessera features historical` writes: a header, then
    /// comma-separated cells without quoting (the same dialect as its input);
    /// blank lines are skipped. Columns not named by `columns` or `features`
    /// are ignored. The label and bm25 cells must be finite numbers, the group
    /// cell non-empty; a feature cell is a finite number or empty (null).
    pub fn parse_csv(
        text: &str,
        columns: &Columns,
        features: &[FeatureSpec],
    ) -> Result<Dataset, TrainError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines.next().ok_or(TrainError::Empty)?;
        let header: Vec<String> = header
            .trim_start_matches('\u{feff}')
            .split(',')
            .map(|c| c.trim().to_string())
            .collect();

        let mut roles: Vec<(&str, &str)> = vec![
            ("--label", columns.label.as_str()),
            ("--group", columns.group.as_str()),
            ("--bm25", columns.bm25.as_str()),
        ];
        roles.extend(features.iter().map(|f| ("--features", f.name.as_str())));
        for (i, (role, name)) in roles.iter().enumerate() {
            if let Some((other, _)) = roles[..i].iter().find(|(_, n)| n == name) {
                return Err(TrainError::BadOption(format!(
                    "column {name:?} is given both as {other} and as {role}"
                )));
            }
        }
        let mut missing = Vec::new();
        let mut index = Vec::with_capacity(roles.len());
        for (_, name) in &roles {
            let mut found = header.iter().enumerate().filter(|(_, c)| c == name);
            match (found.next(), found.next()) {
                (Some((i, _)), None) => index.push(i),
                (Some(_), Some(_)) => return Err(TrainError::DuplicateColumn(name.to_string())),
                (None, _) => missing.push(name.to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(TrainError::MissingColumns { missing, header });
        }

        let mut rows = Vec::new();
        for (line, text) in lines {
            let cells: Vec<&str> = text.split(',').map(str::trim).collect();
            if cells.len() != header.len() {
                return Err(TrainError::CellCount {
                    line,
                    got: cells.len(),
                    want: header.len(),
                });
            }
            let number = |k: usize| -> Result<Option<f64>, TrainError> {
                let cell = cells[index[k]];
                if cell.is_empty() {
                    return Ok(None);
                }
                match cell.parse::<f64>() {
                    Ok(v) if v.is_finite() => Ok(Some(v)),
                    _ => Err(TrainError::BadCell {
                        line,
                        column: roles[k].1.to_string(),
                        cell: cell.to_string(),
                        reason: "is not a finite number",
                    }),
                }
            };
            let required = |k: usize| -> Result<f64, TrainError> {
                number(k)?.ok_or_else(|| TrainError::BadCell {
                    line,
                    column: roles[k].1.to_string(),
                    cell: String::new(),
                    reason: "is empty; it must be a number",
                })
            };
            let label = required(0)?;
            let group = cells[index[1]];
            if group.is_empty() {
                return Err(TrainError::BadCell {
                    line,
                    column: columns.group.clone(),
                    cell: String::new(),
                    reason: "is empty; every row needs a group",
                });
            }
            let bm25 = required(2)?;
            let values = (3..roles.len())
                .map(number)
                .collect::<Result<Vec<_>, _>>()?;
            rows.push(Row {
                line,
                group: group.to_string(),
                label,
                bm25,
                values,
            });
        }
        Ok(Dataset {
            features: features.to_vec(),
            rows,
        })
    }
}

/// What the trained profile is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileMeta {
    /// Profile name.
    pub name: String,
    /// Profile version (bump it for every retrain so experiments can pin one).
    pub version: u64,
    /// BM25 candidates reranked per shard.
    pub candidates: u32,
}

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Most Newton iterations (each one a full pass over the pairs).
    pub epochs: usize,
    /// L2 strength on the standardised weights (see [`DEFAULT_L2`]).
    pub l2: f64,
    /// Share of groups held out, in percent (0 trains on every group).
    pub holdout_percent: u8,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: DEFAULT_EPOCHS,
            l2: DEFAULT_L2,
            holdout_percent: DEFAULT_HOLDOUT_PERCENT,
        }
    }
}

/// The trained profile and how well it ranks (`tessera train --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainReport {
    /// The profile, ready for `features.toml`.
    pub profile: RankProfile,
    /// Input rows.
    pub rows: usize,
    /// Distinct groups in the input.
    pub groups: usize,
    /// Groups with nothing to compare (all rows share one label: no click, or only clicks).
    pub groups_skipped: usize,
    /// Groups with pairs that trained the weights.
    pub train_groups: usize,
    /// Groups with pairs held out from training.
    pub holdout_groups: usize,
    /// Training pairs (higher label, lower label, same group).
    pub pairs: usize,
    /// Held-out pairs.
    pub holdout_pairs: usize,
    /// Mean pairwise logistic loss on the training pairs at the end (without the L2 term).
    pub loss: f64,
    /// Share of training pairs the output profile orders correctly (a tie counts half).
    pub train_accuracy: f64,
    /// The same on held-out pairs; `None` when no group was held out.
    pub holdout_accuracy: Option<f64>,
    /// Newton iterations run.
    pub iterations: usize,
    /// Whether the gradient reached the tolerance within `epochs`.
    pub converged: bool,
    /// Things a reviewer should know (constant features, negative bm25 weight, ...).
    pub warnings: Vec<String>,
}

/// Whether a group is held out: a stable 64-bit FNV-1a hash of its id, modulo
/// 100, below `percent`. Stable across runs, platforms and Rust versions (unlike
/// `std`'s hasher), so a retrain holds out the same queries.
pub fn is_holdout(group: &str, percent: u8) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % 100 < u64::from(percent)
}

/// Trains a profile on `data` (see the module documentation for the model).
pub fn train(
    data: &Dataset,
    meta: &ProfileMeta,
    opts: &TrainOptions,
) -> Result<TrainReport, TrainError> {
    if meta.name.trim().is_empty() {
        return Err(TrainError::InvalidProfile(
            "the name must not be empty".into(),
        ));
    }
    if meta.candidates == 0 || meta.candidates > MAX_CANDIDATES {
        return Err(TrainError::InvalidProfile(format!(
            "candidates {} is not within 1..={MAX_CANDIDATES}",
            meta.candidates
        )));
    }
    if !opts.l2.is_finite() || opts.l2 < 0.0 {
        return Err(TrainError::BadOption(format!(
            "--l2 {} must be a finite number >= 0",
            opts.l2
        )));
    }
    if opts.epochs == 0 {
        return Err(TrainError::BadOption("--epochs must be at least 1".into()));
    }
    if opts.holdout_percent > 90 {
        return Err(TrainError::BadOption(format!(
            "--holdout {} must be within 0..=90 (percent of groups)",
            opts.holdout_percent
        )));
    }
    if let Some(f) = data.features.iter().find(|f| !f.default.is_finite()) {
        return Err(TrainError::BadOption(format!(
            "the default of {:?} must be finite",
            f.name
        )));
    }

    // Groups in order of first appearance, so everything below is deterministic.
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, r) in data.rows.iter().enumerate() {
        let g = *by_id.entry(r.group.as_str()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let pairs_of = |rows: &[usize]| -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for &a in rows {
            for &b in rows {
                if data.rows[a].label > data.rows[b].label {
                    out.push((a, b));
                }
            }
        }
        out
    };
    let mut train_pairs = Vec::new();
    let mut holdout_pairs = Vec::new();
    let mut train_rows = Vec::new();
    let (mut skipped, mut train_groups, mut holdout_groups) = (0, 0, 0);
    for rows in &groups {
        let pairs = pairs_of(rows);
        if pairs.is_empty() {
            skipped += 1;
        } else if is_holdout(&data.rows[rows[0]].group, opts.holdout_percent) {
            holdout_groups += 1;
            holdout_pairs.extend(pairs);
        } else {
            train_groups += 1;
            train_pairs.extend(pairs);
            train_rows.extend_from_slice(rows);
        }
    }
    if train_pairs.is_empty() {
        return Err(TrainError::NoPairs {
            groups: groups.len(),
            skipped,
            holdout_pairs: holdout_pairs.len(),
        });
    }

    // Design matrix: the inputs the node's score multiplies by the weights.
    let dim = 1 + data.features.len();
    let inputs = |r: &Row| -> Vec<f64> {
        let mut x = Vec::with_capacity(dim);
        x.push(r.bm25);
        for (f, v) in data.features.iter().zip(&r.values) {
            x.push(term_input(*v, f.default, f.transform));
        }
        x
    };
    let x: Vec<Vec<f64>> = data.rows.iter().map(inputs).collect();

    // Standard deviation of each column over the training rows.
    let mut warnings = Vec::new();
    let n = train_rows.len() as f64;
    let mut scale = vec![1.0; dim];
    for (j, s) in scale.iter_mut().enumerate() {
        let mean = train_rows.iter().map(|&r| x[r][j]).sum::<f64>() / n;
        let var = train_rows
            .iter()
            .map(|&r| (x[r][j] - mean).powi(2))
            .sum::<f64>()
            / n;
        let sd = var.sqrt();
        if sd > 1e-12 * (1.0 + mean.abs()) {
            *s = sd;
        } else {
            let name = if j == 0 {
                "bm25"
            } else {
                data.features[j - 1].name.as_str()
            };
            warnings.push(format!(
                "{name} is constant over the training rows; its weight stays 0"
            ));
            *s = f64::INFINITY; // standardised column of zeros; weight / inf = 0
        }
    }

    // Pair differences in standardised space (constant columns are 0).
    let diffs: Vec<f64> = train_pairs
        .iter()
        .flat_map(|&(a, b)| {
            let (xa, xb, scale) = (&x[a], &x[b], &scale);
            (0..dim).map(move |j| {
                if scale[j].is_finite() {
                    (xa[j] - xb[j]) / scale[j]
                } else {
                    0.0
                }
            })
        })
        .collect();
    let fit = newton(&diffs, dim, opts.l2, opts.epochs);
    if !fit.converged {
        warnings.push(format!(
            "not converged after {} iteration(s) (gradient {:.3e}); raise --epochs or --l2",
            fit.iterations, fit.gradient
        ));
    }

    // Back to raw transformed values, then bm25 = 1.0 when it is positive.
    let raw: Vec<f64> = fit.w.iter().zip(&scale).map(|(w, s)| w / s).collect();
    let norm = if raw[0] > 0.0 {
        raw[0]
    } else {
        warnings.push(format!(
            "the learned bm25 weight is {:.6} (not positive): weights are left at their \
             trained scale; check the --bm25 column",
            raw[0]
        ));
        1.0
    };
    let tidy = |w: f64| if w == 0.0 { 0.0 } else { w / norm };
    let profile = RankProfile {
        name: meta.name.trim().to_string(),
        version: meta.version,
        candidates: meta.candidates,
        bm25: if raw[0] > 0.0 { 1.0 } else { tidy(raw[0]) },
        terms: data
            .features
            .iter()
            .zip(&raw[1..])
            .map(|(f, w)| Term {
                feature: f.name.clone(),
                weight: tidy(*w),
                transform: f.transform,
                default: f.default,
            })
            .collect(),
    };
    if !profile.bm25.is_finite() || profile.terms.iter().any(|t| !t.weight.is_finite()) {
        return Err(TrainError::InvalidProfile(
            "training produced a non-finite weight; raise --l2".into(),
        ));
    }

    let train_accuracy = pairwise_accuracy(&profile, data, &train_pairs);
    let holdout_accuracy =
        (!holdout_pairs.is_empty()).then(|| pairwise_accuracy(&profile, data, &holdout_pairs));
    Ok(TrainReport {
        profile,
        rows: data.rows.len(),
        groups: groups.len(),
        groups_skipped: skipped,
        train_groups,
        holdout_groups,
        pairs: train_pairs.len(),
        holdout_pairs: holdout_pairs.len(),
        loss: fit.loss,
        train_accuracy,
        holdout_accuracy,
        iterations: fit.iterations,
        converged: fit.converged,
        warnings,
    })
}

/// Share of `(preferred, other)` row pairs that `profile` scores in the right
/// order, scoring the rows as the node would; a tie counts half.
pub fn pairwise_accuracy(profile: &RankProfile, data: &Dataset, pairs: &[(usize, usize)]) -> f64 {
    if pairs.is_empty() {
        return 0.0;
    }
    let score = |i: usize| profile.score(data.rows[i].bm25, &data.rows[i].values);
    let right: f64 = pairs
        .iter()
        .map(|&(a, b)| {
            let (sa, sb) = (score(a), score(b));
            if sa > sb {
                1.0
            } else if sa == sb {
                0.5
            } else {
                0.0
            }
        })
        .sum();
    right / pairs.len() as f64
}

/// The optimiser's result, in standardised space.
struct Fit {
    w: Vec<f64>,
    loss: f64,
    gradient: f64,
    iterations: usize,
    converged: bool,
}

/// `ln(1 + e^x)` without overflow.
fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// `1 / (1 + e^-x)` without overflow.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Mean pair loss (data term only) of weights `w`.
fn data_loss(diffs: &[f64], dim: usize, w: &[f64]) -> f64 {
    let pairs = diffs.len() / dim;
    diffs
        .chunks_exact(dim)
        .map(|d| softplus(-dot(w, d)))
        .sum::<f64>()
        / pairs as f64
}

fn objective(diffs: &[f64], dim: usize, w: &[f64], l2: f64) -> f64 {
    data_loss(diffs, dim, w) + 0.5 * l2 * dot(w, w)
}

/// Minimises `mean softplus(-w·d) + l2/2 |w|²` over the pair differences
/// `diffs` (row-major, `dim` per pair) by Newton's method with backtracking,
/// from `w = 0`. The objective is convex, so this finds its minimum; with
/// `l2 = 0` on separable pairs the weights grow until `epochs` runs out.
fn newton(diffs: &[f64], dim: usize, l2: f64, epochs: usize) -> Fit {
    let pairs = diffs.len() / dim;
    let mut w = vec![0.0; dim];
    let mut f = objective(diffs, dim, &w, l2);
    let mut iterations = 0;
    let mut gradient = f64::INFINITY;
    while iterations < epochs {
        let mut g = vec![0.0; dim];
        let mut h = vec![0.0; dim * dim];
        for d in diffs.chunks_exact(dim) {
            let m = dot(&w, d);
            let gs = -sigmoid(-m);
            let hs = sigmoid(m) * sigmoid(-m);
            for j in 0..dim {
                g[j] += gs * d[j];
                for k in 0..dim {
                    h[j * dim + k] += hs * d[j] * d[k];
                }
            }
        }
        for j in 0..dim {
            g[j] = g[j] / pairs as f64 + l2 * w[j];
            for k in 0..dim {
                h[j * dim + k] /= pairs as f64;
            }
            h[j * dim + j] += l2;
        }
        gradient = g.iter().fold(0.0, |m: f64, v| m.max(v.abs()));
        if gradient <= GRADIENT_TOLERANCE {
            break;
        }
        let neg_g: Vec<f64> = g.iter().map(|v| -v).collect();
        // Newton direction; steepest descent if the Hessian is singular (l2 = 0
        // with a constant column, or saturated pairs).
        let step = solve_spd(&h, &neg_g, dim)
            .filter(|s| dot(s, &g) < 0.0)
            .unwrap_or_else(|| neg_g.clone());
        let slope = dot(&g, &step);
        let mut t = 1.0;
        let mut moved = false;
        for _ in 0..60 {
            let cand: Vec<f64> = w.iter().zip(&step).map(|(a, s)| a + t * s).collect();
            let fc = objective(diffs, dim, &cand, l2);
            if fc <= f + 1e-4 * t * slope {
                w = cand;
                f = fc;
                moved = true;
                break;
            }
            t *= 0.5;
        }
        iterations += 1;
        if !moved {
            break; // no decrease left at floating-point precision
        }
    }
    Fit {
        loss: data_loss(diffs, dim, &w),
        converged: gradient <= GRADIENT_TOLERANCE,
        gradient,
        iterations,
        w,
    }
}

/// Solves `a x = b` for a symmetric positive definite `a` (Cholesky with a
/// tiny ridge); `None` when `a` is not numerically positive definite.
fn solve_spd(a: &[f64], b: &[f64], dim: usize) -> Option<Vec<f64>> {
    let max_diag = (0..dim).fold(0.0, |m: f64, j| m.max(a[j * dim + j]));
    let ridge = 1e-12 * max_diag.max(f64::MIN_POSITIVE);
    let mut l = vec![0.0; dim * dim];
    for i in 0..dim {
        for j in 0..=i {
            let mut s = a[i * dim + j];
            if i == j {
                s += ridge;
            }
            for k in 0..j {
                s -= l[i * dim + k] * l[j * dim + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * dim + i] = s.sqrt();
            } else {
                l[i * dim + j] = s / l[j * dim + j];
            }
        }
    }
    let mut y = vec![0.0; dim];
    for i in 0..dim {
        let s = b[i] - (0..i).map(|k| l[i * dim + k] * y[k]).sum::<f64>();
        y[i] = s / l[i * dim + i];
    }
    let mut x = vec![0.0; dim];
    for i in (0..dim).rev() {
        let s = y[i] - (i + 1..dim).map(|k| l[k * dim + i] * x[k]).sum::<f64>();
        x[i] = s / l[i * dim + i];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic generator for synthetic click logs (splitmix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn spec(name: &str, transform: Transform, default: f64) -> FeatureSpec {
        FeatureSpec {
            name: name.into(),
            transform,
            default,
        }
    }

    fn meta() -> ProfileMeta {
        ProfileMeta {
            name: "learned".into(),
            version: 7,
            candidates: 50,
        }
    }

    fn columns() -> Columns {
        Columns {
            label: "clicked".into(),
            group: "qid".into(),
            bm25: "bm25".into(),
        }
    }

    fn no_holdout() -> TrainOptions {
        TrainOptions {
            holdout_percent: 0,
            ..TrainOptions::default()
        }
    }

    /// Pairs of candidates per query; the click follows the RankNet model of a
    /// known linear score: `P(a clicked) = sigmoid(s_a - s_b)`, with
    /// `s = 1.0·bm25 + 2.0·views - 0.5·log1p(age)`.
    fn synthetic(groups: usize, seed: u64) -> Dataset {
        let mut rng = Rng(seed);
        let mut rows = Vec::new();
        let truth = |bm25: f64, views: f64, age: f64| bm25 + 2.0 * views - 0.5 * age.ln_1p();
        for g in 0..groups {
            let cands: Vec<(f64, f64, f64)> = (0..2)
                .map(|_| {
                    (
                        rng.unit() * 4.0,
                        rng.unit() * 2.0 - 1.0,
                        (rng.unit() * 6.0).exp_m1(),
                    )
                })
                .collect();
            let (a, b) = (cands[0], cands[1]);
            let p = sigmoid(truth(a.0, a.1, a.2) - truth(b.0, b.1, b.2));
            let first = rng.unit() < p;
            for (i, c) in cands.iter().enumerate() {
                rows.push(Row {
                    line: rows.len() + 2,
                    group: format!("q{g}"),
                    label: if (i == 0) == first { 1.0 } else { 0.0 },
                    bm25: c.0,
                    values: vec![Some(c.1), Some(c.2)],
                });
            }
        }
        Dataset {
            features: vec![
                spec("views", Transform::Identity, 0.0),
                spec("age", Transform::Log1p, 0.0),
            ],
            rows,
        }
    }

    #[test]
    fn recovers_signs_and_ratios_of_a_known_linear_model() {
        let data = synthetic(6000, 11);
        let opts = TrainOptions::default();
        let r = train(&data, &meta(), &opts).expect("trains");
        assert!(r.converged, "{r:?}");
        assert_eq!(r.profile.bm25, 1.0, "normalised to bm25 = 1");
        let views = r.profile.terms[0].weight;
        let age = r.profile.terms[1].weight;
        assert!(views > 0.0 && age < 0.0, "signs: {views} {age}");
        assert!((views / 2.0 - 1.0).abs() < 0.1, "views/bm25 ≈ 2: {views}");
        assert!((age / -0.5 - 1.0).abs() < 0.2, "age/bm25 ≈ -0.5: {age}");
        let holdout = r.holdout_accuracy.expect("20% of 6000 groups held out");
        assert!(r.holdout_groups > 900 && r.holdout_groups < 1500, "{r:?}");
        assert!(holdout > 0.75, "ranks unseen groups well: {holdout}");
        assert_eq!(r.groups, 6000);
        assert_eq!(r.rows, 12000);
        assert_eq!(r.pairs + r.holdout_pairs, 6000);
        // Deterministic: the same input gives the same bits.
        assert_eq!(train(&data, &meta(), &opts).expect("trains"), r);
    }

    #[test]
    fn ignores_groups_without_a_positive_or_a_negative() {
        let data = synthetic(300, 5);
        let base = train(&data, &meta(), &no_holdout()).expect("trains");
        let mut noisy = data.clone();
        for (g, label) in [("none", 0.0), ("all", 1.0)] {
            for i in 0..3 {
                noisy.rows.push(Row {
                    line: 0,
                    group: g.into(),
                    label,
                    bm25: 100.0 * i as f64,
                    values: vec![Some(-50.0 * i as f64), None],
                });
            }
        }
        let r = train(&noisy, &meta(), &no_holdout()).expect("trains");
        assert_eq!(r.groups_skipped, 2);
        assert_eq!(r.groups, base.groups + 2);
        assert_eq!(r.pairs, base.pairs);
        assert_eq!(r.profile, base.profile, "skipped groups change nothing");
    }

    #[test]
    fn null_cells_take_the_default_before_the_transform() {
        let features = vec![spec("views", Transform::Log1p, 3.0)];
        let text = "qid,clicked,bm25,views\n\
                    a,1,1.0,\n\
                    a,0,2.0,0\n\
                    b,1,1.5,5\n\
                    b,0,1.0,\n";
        let data = Dataset::parse_csv(text, &columns(), &features).expect("parses");
        assert_eq!(data.rows[0].values, vec![None]);
        assert_eq!(data.rows[0].line, 2);
        let r = train(&data, &meta(), &no_holdout()).expect("trains");
        let w = r.profile.terms[0].weight;
        let s = r.profile.score(1.0, &[None]);
        assert_eq!(
            s,
            r.profile.bm25 * 1.0 + w * 3f64.ln_1p(),
            "null → default 3 → log1p(3)"
        );
        // The same rows with the default written out train the same weights.
        let explicit = text.replace(",\n", ",3\n");
        let data2 = Dataset::parse_csv(&explicit, &columns(), &features).expect("parses");
        let r2 = train(&data2, &meta(), &no_holdout()).expect("trains");
        assert_eq!(r2.profile, r.profile);
        assert_eq!(r.train_accuracy, 1.0);
        assert_eq!(
            term_input(Some(-2.0), 0.0, Transform::Log1p),
            0.0,
            "log1p clamps negatives at 0 as the node does"
        );
    }

    #[test]
    fn toml_round_trips_and_appends_to_features_toml() {
        let r = train(&synthetic(200, 3), &meta(), &no_holdout()).expect("trains");
        let text = profile_toml(&r.profile, &["trained by a test".into()]).expect("renders");
        assert!(
            text.starts_with("# trained by a test\n[[profile]]\n"),
            "{text}"
        );
        assert!(text.contains("[[profile.term]]"), "{text}");
        let back: ProfilesFile = toml::from_str(&text).expect("parses");
        assert_eq!(back.profile, vec![r.profile.clone()], "exact round trip");
        // Appended to a features.toml with features and another profile.
        let file = format!(
            "[[feature]]\nname = \"views\"\nentity = \"user\"\nsource = \"view\"\n\
             aggregation = \"count\"\n\n[[profile]]\nname = \"old\"\nversion = 1\n\n{text}"
        );
        let all: toml::Table = toml::from_str(&file).expect("valid TOML");
        let profiles = all
            .get("profile")
            .and_then(|p| p.as_array())
            .expect("profiles");
        assert_eq!(profiles.len(), 2);
        let mirror: ProfilesFile = toml::from_str(&file).expect("parses");
        assert_eq!(mirror.profile[1], r.profile);
    }

    /// The node's file, read at compile time: the format and formula checks
    /// below fail when `profile.rs` changes without this mirror.
    const NODE_PROFILE_RS: &str = include_str!("../../node/src/rank/profile.rs");

    #[test]
    fn mirror_matches_the_node_profile_format() {
        // The example in the node's module documentation parses here, with
        // unknown fields denied on both sides.
        let example: String = NODE_PROFILE_RS
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .skip_while(|l| !l.starts_with("```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(example.contains("[[profile]]"), "{example}");
        let parsed: ProfilesFile = toml::from_str(&example).expect("node example parses");
        assert_eq!(parsed.profile[0].terms[0].transform, Transform::Log1p);

        // Every key this mirror writes is a field (or rename) of the node's
        // structs, with the same serde defaults and spellings.
        for needle in [
            "pub name: String,",
            "pub version: u64,",
            "#[serde(default = \"default_candidates\")]\n    pub candidates: u32,",
            "#[serde(default = \"one\")]\n    pub bm25: f64,",
            "#[serde(default, rename = \"term\")]\n    pub terms: Vec<Term>,",
            "pub feature: String,",
            "pub weight: f64,",
            "#[serde(default)]\n    pub transform: Transform,",
            "#[serde(default)]\n    pub default: f64,",
            "#[serde(rename_all = \"lowercase\")]\npub enum Transform {\n    #[default]\n    Identity,\n    Log1p,\n}",
            &format!("pub const MAX_CANDIDATES: u32 = {MAX_CANDIDATES};"),
            &format!("pub const DEFAULT_CANDIDATES: u32 = {DEFAULT_CANDIDATES};"),
        ] {
            assert!(
                NODE_PROFILE_RS.contains(needle),
                "node/src/rank/profile.rs no longer has `{needle}`: update client/src/train.rs"
            );
        }
    }

    #[test]
    fn mirror_matches_the_node_score_formula() {
        // The node's arithmetic, statement by statement; `RankProfile::score`
        // and `term_input` above repeat it in the same order.
        for needle in [
            "let mut score = self.bm25 * bm25;",
            "let value = values.get(i).copied().flatten();",
            "let x = value.unwrap_or(t.default);",
            "Transform::Identity => x,",
            "Transform::Log1p => x.max(0.0).ln_1p(),",
            "let c = t.weight * x;",
            "score += c;",
        ] {
            assert!(
                NODE_PROFILE_RS.contains(needle),
                "node/src/rank/profile.rs changed its score (`{needle}`): update client/src/train.rs"
            );
        }
        let p = RankProfile {
            name: "x".into(),
            version: 1,
            candidates: 2,
            bm25: 1.0,
            terms: vec![
                Term {
                    feature: "user_space_views_30d".into(),
                    weight: 0.5,
                    transform: Transform::Log1p,
                    default: 0.0,
                },
                Term {
                    feature: "doc_popularity".into(),
                    weight: 0.1,
                    transform: Transform::Identity,
                    default: 1.0,
                },
            ],
        };
        // The node's own test case (profile.rs `parses_and_scores_with_explanations`).
        let s = p.score(2.0, &[Some(std::f64::consts::E - 1.0), None]);
        assert!((s - (2.0 + 0.5 + 0.1)).abs() < 1e-12, "{s}");
    }

    #[test]
    fn errors_name_the_problem() {
        let features = vec![spec("views", Transform::Identity, 0.0)];
        let err = Dataset::parse_csv("qid,views\na,1\n", &columns(), &features).unwrap_err();
        assert_eq!(
            err,
            TrainError::MissingColumns {
                missing: vec!["clicked".into(), "bm25".into()],
                header: vec!["qid".into(), "views".into()],
            }
        );
        assert!(err
            .to_string()
            .starts_with("missing column(s) clicked, bm25"));

        let text = "qid,clicked,bm25,views\na,1,1.0,2\n\na,0,x1,3\n";
        let err = Dataset::parse_csv(text, &columns(), &features).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 4: column bm25: \"x1\" is not a finite number"
        );
        let err = Dataset::parse_csv("qid,clicked,bm25,views\na,1,1,NaN\n", &columns(), &features)
            .unwrap_err();
        assert!(matches!(err, TrainError::BadCell { line: 2, .. }), "{err}");
        let err = Dataset::parse_csv("qid,clicked,bm25,views\na,,1,2\n", &columns(), &features)
            .unwrap_err();
        assert!(err.to_string().contains("column clicked"), "{err}");
        let err = Dataset::parse_csv("qid,clicked,bm25,views\na,1,1\n", &columns(), &features)
            .unwrap_err();
        assert_eq!(
            err,
            TrainError::CellCount {
                line: 2,
                got: 3,
                want: 4
            }
        );
        let err = Dataset::parse_csv("qid,clicked,bm25,views,views\n", &columns(), &features)
            .unwrap_err();
        assert_eq!(err, TrainError::DuplicateColumn("views".into()));
        assert_eq!(
            Dataset::parse_csv("\n\n", &columns(), &features).unwrap_err(),
            TrainError::Empty
        );

        let text = "qid,clicked,bm25,views\na,1,1,2\na,1,2,3\nb,0,1,1\n";
        let data = Dataset::parse_csv(text, &columns(), &features).expect("parses");
        let err = train(&data, &meta(), &no_holdout()).unwrap_err();
        assert_eq!(
            err,
            TrainError::NoPairs {
                groups: 2,
                skipped: 2,
                holdout_pairs: 0
            }
        );
        assert!(err.to_string().starts_with("no usable pairs"), "{err}");

        let names = vec!["views".to_string(), "age".to_string()];
        let err = FeatureSpec::from_options(&names, &["clicks=log1p".into()], &[]).unwrap_err();
        assert_eq!(
            err,
            TrainError::UnknownFeature {
                option: "--transform",
                feature: "clicks".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "--transform names feature \"clicks\", which is not in --features"
        );
        assert!(FeatureSpec::from_options(&names, &["views=sqrt".into()], &[]).is_err());
        assert!(FeatureSpec::from_options(&names, &["views".into()], &[]).is_err());
        assert!(FeatureSpec::from_options(&names, &[], &["age=inf".into()]).is_err());
        assert!(FeatureSpec::from_options(&names, &[], &["clicks=1".into()]).is_err());
        let specs =
            FeatureSpec::from_options(&names, &["age=log1p".into()], &["views=-1.5".into()])
                .expect("valid");
        assert_eq!(
            specs,
            vec![
                spec("views", Transform::Identity, -1.5),
                spec("age", Transform::Log1p, 0.0)
            ]
        );
        let bad_meta = ProfileMeta {
            candidates: MAX_CANDIDATES + 1,
            ..meta()
        };
        assert!(matches!(
            train(&synthetic(10, 1), &bad_meta, &no_holdout()),
            Err(TrainError::InvalidProfile(_))
        ));
    }

    #[test]
    fn holdout_is_a_stable_fifth_of_the_groups() {
        // FNV-1a 64 of "q0" is fixed forever; a changed hash reshuffles holdouts.
        let held: Vec<bool> = (0..10).map(|i| is_holdout(&format!("q{i}"), 20)).collect();
        assert_eq!(
            held,
            (0..10)
                .map(|i| is_holdout(&format!("q{i}"), 20))
                .collect::<Vec<_>>()
        );
        let share = (0..10_000)
            .filter(|i| is_holdout(&format!("query-{i}"), 20))
            .count();
        assert!((1800..2200).contains(&share), "{share}");
        assert!(!(0..1000).any(|i| is_holdout(&format!("q{i}"), 0)));
    }

    #[test]
    fn constant_features_and_negative_bm25_are_reported() {
        let text = "qid,clicked,bm25,views,flag\n\
                    a,1,1,5,1\na,0,2,1,1\nb,1,0.5,4,1\nb,0,3,0,1\n";
        let features = vec![
            spec("views", Transform::Identity, 0.0),
            spec("flag", Transform::Identity, 0.0),
        ];
        let data = Dataset::parse_csv(text, &columns(), &features).expect("parses");
        let r = train(&data, &meta(), &no_holdout()).expect("trains");
        assert_eq!(r.profile.terms[1].weight, 0.0);
        assert!(
            r.warnings.iter().any(|w| w.contains("flag is constant")),
            "{r:?}"
        );
        assert!(r.profile.bm25 < 0.0, "clicks went to lower bm25: {r:?}");
        assert!(
            r.warnings.iter().any(|w| w.contains("bm25 weight")),
            "{r:?}"
        );
        assert_eq!(r.train_accuracy, 1.0);
    }

    /// Groups of 2–6 candidates; the click goes to the best candidate under
    /// a fixed linear score, kept only when it beats the runner-up by a margin.
    fn separable() -> impl Strategy<Value = Dataset> {
        let candidate = (0.0..20.0f64, -5.0..5.0f64, 0.0..100.0f64);
        prop::collection::vec(prop::collection::vec(candidate, 2..6), 1..40).prop_map(|groups| {
            let truth = |c: &(f64, f64, f64)| c.0 + 0.7 * c.1 - 1.5 * c.2.ln_1p();
            let mut rows = Vec::new();
            for (g, cands) in groups.iter().enumerate() {
                let mut order: Vec<usize> = (0..cands.len()).collect();
                order.sort_by(|&a, &b| truth(&cands[b]).total_cmp(&truth(&cands[a])));
                if truth(&cands[order[0]]) - truth(&cands[order[1]]) < 0.5 {
                    continue;
                }
                for (i, c) in cands.iter().enumerate() {
                    rows.push(Row {
                        line: rows.len() + 2,
                        group: format!("g{g}"),
                        label: if i == order[0] { 1.0 } else { 0.0 },
                        bm25: c.0,
                        values: vec![Some(c.1), Some(c.2)],
                    });
                }
            }
            Dataset {
                features: vec![
                    spec("f", Transform::Identity, 0.0),
                    spec("count", Transform::Log1p, 0.0),
                ],
                rows,
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn separable_clicks_are_ranked_perfectly(data in separable()) {
            prop_assume!(!data.rows.is_empty());
            // Unregularised: any l2 > 0 can trade one pair for smaller weights.
            let opts = TrainOptions { l2: 0.0, ..no_holdout() };
            let r = train(&data, &meta(), &opts).expect("trains");
            prop_assert_eq!(r.train_accuracy, 1.0, "{:?}", r);
            // With the default l2 the objective is strictly convex: Newton converges.
            let r = train(&data, &meta(), &no_holdout()).expect("trains");
            prop_assert!(r.converged, "{:?}", r);
        }
    }
}
