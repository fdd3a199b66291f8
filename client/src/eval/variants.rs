//! Comparing rankings: variants (plain BM25 or a rank profile), their MRR@10 and nDCG@10 with
//! 95% bootstrap intervals, and each variant's paired difference to the first one.
//!
//! Every variant ranks the same queries (judged queries of a collection, or search sessions
//! with a click), so the comparison is paired: the difference is the bootstrap of the
//! per-query differences, resampling the queries with the same seed (hence the same resample
//! indices) as the variants' own intervals. Pairing removes the spread between easy and hard
//! queries that both variants share, so a real improvement shows with far fewer queries than
//! comparing two independent intervals would need. A variant identical to the first gets
//! exactly `[0, 0]`.

use super::{bootstrap, Estimate};

/// Depth of the compared metrics: MRR@10 and nDCG@10.
pub const DEPTH: usize = 10;

/// One ranking to evaluate: a name and a profile (`None` = plain BM25).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Variant {
    /// Label in the report.
    pub name: String,
    /// `name` or `name@version` of a registered profile; `None` ranks by BM25.
    pub profile: Option<String>,
}

impl Variant {
    /// Plain BM25, named `bm25`: the default baseline.
    pub fn bm25() -> Self {
        Self {
            name: "bm25".into(),
            profile: None,
        }
    }

    /// Parses `NAME=PROFILE`, `NAME=bm25` or `NAME=` (plain BM25), or a bare `PROFILE` (named
    /// after itself; `bm25` is plain BM25). PROFILE may pin a version: `NAME@V`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (name, profile) = spec.split_once('=').unwrap_or((spec, spec));
        let (name, profile) = (name.trim(), profile.trim());
        if name.is_empty() {
            return Err(format!("variant {spec:?}: expected NAME=PROFILE"));
        }
        Ok(Self {
            name: name.to_string(),
            profile: match profile {
                "" | "bm25" => None,
                p => Some(p.to_string()),
            },
        })
    }

    /// The variants of a command line: every `--variant` spec in order, or else one variant
    /// for `--profile` (named after it), or else plain BM25 alone. Names must be distinct, or
    /// the report could not tell the rows apart.
    pub fn resolve(specs: &[String], profile: Option<&str>) -> Result<Vec<Self>, String> {
        let variants: Vec<Self> = if !specs.is_empty() {
            specs
                .iter()
                .map(|s| Self::parse(s))
                .collect::<Result<_, _>>()?
        } else if let Some(p) = profile {
            vec![Self::parse(p)?]
        } else {
            vec![Self::bm25()]
        };
        for (i, v) in variants.iter().enumerate() {
            if variants[..i].iter().any(|w| w.name == v.name) {
                return Err(format!("two variants are named {:?}", v.name));
            }
        }
        Ok(variants)
    }
}

/// A paired difference `variant − first` with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Difference {
    /// Mean of the per-query differences (= difference of the means).
    pub mean: f64,
    /// Lower bound of the 95% interval.
    pub ci_low: f64,
    /// Upper bound of the 95% interval.
    pub ci_high: f64,
    /// Whether the interval excludes zero: the variant is better (`ci_low > 0`) or worse
    /// (`ci_high < 0`) than the first at the 95% level.
    pub excludes_zero: bool,
}

impl Difference {
    /// `better`, `worse` or `no clear difference`: the verdict of the interval.
    pub fn verdict(&self) -> &'static str {
        if self.ci_low > 0.0 {
            "better"
        } else if self.ci_high < 0.0 {
            "worse"
        } else {
            "no clear difference"
        }
    }
}

/// `mean(a − b)` over paired observations (same queries, same order), with a
/// percentile-bootstrap 95% interval: the bootstrap of the per-query differences, which
/// resamples the pairs jointly. Identical inputs give exactly `[0, 0]`.
pub fn paired_difference(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> Difference {
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let e = bootstrap(&diffs, resamples, seed);
    Difference {
        mean: e.mean,
        ci_low: e.ci_low,
        ci_high: e.ci_high,
        excludes_zero: e.ci_low > 0.0 || e.ci_high < 0.0,
    }
}

/// One query's scores under one variant.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct QueryScore {
    /// Reciprocal rank of the first relevant hit within the top 10 (0 below it).
    pub rr_at_10: f64,
    /// nDCG@10.
    pub ndcg_at_10: f64,
}

/// One variant's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VariantFigures {
    /// The variant.
    pub variant: Variant,
    /// MRR@10: mean reciprocal rank of the first relevant hit in the top 10 (0 below it).
    pub mrr_at_10: Estimate,
    /// nDCG@10.
    pub ndcg_at_10: Estimate,
    /// MRR@10 minus the first variant's, paired by query (absent for the first).
    pub mrr_vs_first: Option<Difference>,
    /// nDCG@10 minus the first variant's, paired by query (absent for the first).
    pub ndcg_vs_first: Option<Difference>,
}

/// The figures of every variant from its per-query scores (`scores[v][q]`: the same queries
/// in the same order for every variant), each interval from `resamples` resamples seeded by
/// `seed`.
pub fn figures(
    variants: &[Variant],
    scores: &[Vec<QueryScore>],
    resamples: usize,
    seed: u64,
) -> Vec<VariantFigures> {
    let rr = |s: &[QueryScore]| s.iter().map(|q| q.rr_at_10).collect::<Vec<_>>();
    let nd = |s: &[QueryScore]| s.iter().map(|q| q.ndcg_at_10).collect::<Vec<_>>();
    let (first_rr, first_nd) = scores
        .first()
        .map_or((Vec::new(), Vec::new()), |s| (rr(s), nd(s)));
    variants
        .iter()
        .zip(scores)
        .enumerate()
        .map(|(i, (variant, s))| {
            let (r, n) = (rr(s), nd(s));
            VariantFigures {
                variant: variant.clone(),
                mrr_at_10: bootstrap(&r, resamples, seed),
                ndcg_at_10: bootstrap(&n, resamples, seed),
                mrr_vs_first: (i > 0).then(|| paired_difference(&r, &first_rr, resamples, seed)),
                ndcg_vs_first: (i > 0).then(|| paired_difference(&n, &first_nd, resamples, seed)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_and_resolve() {
        assert_eq!(
            Variant::parse("aff=affinity@2").expect("ok"),
            Variant {
                name: "aff".into(),
                profile: Some("affinity@2".into())
            }
        );
        assert_eq!(Variant::parse("base=bm25").expect("ok").profile, None);
        assert_eq!(Variant::parse("base=").expect("ok").profile, None);
        assert_eq!(Variant::parse("bm25").expect("ok"), Variant::bm25());
        assert_eq!(Variant::parse("affinity").expect("ok").name, "affinity");
        assert!(Variant::parse("=x").is_err());

        assert_eq!(Variant::resolve(&[], None).expect("ok"), [Variant::bm25()]);
        let p = Variant::resolve(&[], Some("aff@1")).expect("ok");
        assert_eq!(
            (p[0].name.as_str(), p[0].profile.as_deref()),
            ("aff@1", Some("aff@1"))
        );
        let two = Variant::resolve(&["bm25".into(), "a=aff".into()], None).expect("ok");
        assert_eq!(two.len(), 2);
        assert!(Variant::resolve(&["a=x".into(), "a=y".into()], None).is_err());
    }

    #[test]
    fn a_variant_identical_to_the_first_differs_by_exactly_zero() {
        let a: Vec<f64> = (0..200).map(|i| f64::from(i % 5) / 5.0).collect();
        let same = paired_difference(&a, &a, 500, 1);
        assert_eq!((same.mean, same.ci_low, same.ci_high), (0.0, 0.0, 0.0));
        assert!(!same.excludes_zero);
        assert_eq!(same.verdict(), "no clear difference");
    }

    #[test]
    fn a_strictly_better_variant_excludes_zero() {
        let a: Vec<f64> = (0..200).map(|i| f64::from(i % 5) / 5.0).collect();
        // Better on every third query, never worse.
        let better: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, x)| if i % 3 == 0 { 1.0 } else { *x })
            .collect();
        let d = paired_difference(&better, &a, 500, 1);
        assert!(
            d.ci_low > 0.0 && d.ci_low <= d.mean && d.mean <= d.ci_high,
            "{d:?}"
        );
        assert!(d.excludes_zero);
        assert_eq!(d.verdict(), "better");
        let worse = paired_difference(&a, &better, 500, 1);
        assert!(worse.ci_high < 0.0 && worse.excludes_zero, "{worse:?}");
        assert_eq!(worse.verdict(), "worse");
    }

    #[test]
    fn pairing_sees_a_small_consistent_gain_that_independent_intervals_miss() {
        // Queries range from hard to easy; the variant adds 0.02 to every one of them.
        let a: Vec<f64> = (0..100).map(|i| f64::from(i % 10) / 10.0).collect();
        let b: Vec<f64> = a.iter().map(|x| x + 0.02).collect();
        let d = paired_difference(&b, &a, 1000, 3);
        assert!(d.excludes_zero && (d.mean - 0.02).abs() < 1e-12, "{d:?}");
        let (ea, eb) = (bootstrap(&a, 1000, 3), bootstrap(&b, 1000, 3));
        assert!(eb.ci_low < ea.ci_high, "the separate intervals overlap");
    }

    #[test]
    fn figures_pair_every_variant_with_the_first() {
        let v = [Variant::bm25(), Variant::parse("p=prof").expect("ok")];
        let q = |rr_at_10, ndcg_at_10| QueryScore {
            rr_at_10,
            ndcg_at_10,
        };
        let scores = vec![
            vec![q(0.5, 0.6), q(0.0, 0.0)],
            vec![q(1.0, 1.0), q(0.5, 0.63)],
        ];
        let f = figures(&v, &scores, 100, 3);
        assert_eq!(f.len(), 2);
        assert!(f[0].mrr_vs_first.is_none() && f[0].ndcg_vs_first.is_none());
        let d = f[1].mrr_vs_first.expect("paired");
        assert!((d.mean - 0.5).abs() < 1e-12);
        assert!((f[1].mrr_at_10.mean - 0.75).abs() < 1e-12);
        assert!((f[1].ndcg_vs_first.expect("paired").mean - 0.515).abs() < 1e-12);
    }
}
