//! Parsing and scoring of rank profiles.
//!
//! ```toml
//! [[profile]]
//! name = "default"
//! version = 3
//! candidates = 100
//! bm25 = 1.0
//! [[profile.term]]
//! feature = "user_space_views_30d"   # a registered feature
//! weight = 0.4
//! transform = "log1p"                # identity | log1p
//! default = 0.0                      # used when the value is null
//! ```

use serde::{Deserialize, Serialize};

/// Most candidates a profile may rerank.
pub const MAX_CANDIDATES: u32 = 1000;
/// Candidates reranked when a profile does not say.
pub const DEFAULT_CANDIDATES: u32 = 100;

/// How a feature value enters the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    #[default]
    Identity,
    Log1p,
}

/// One weighted feature of a linear profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Term {
    pub feature: String,
    pub weight: f64,
    #[serde(default)]
    pub transform: Transform,
    /// The value used when the feature is null.
    #[serde(default)]
    pub default: f64,
}

/// A named, versioned second-phase model: `bm25 * w + Σ weight * f(value)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankProfile {
    pub name: String,
    pub version: u64,
    #[serde(default = "default_candidates")]
    pub candidates: u32,
    #[serde(default = "one")]
    pub bm25: f64,
    #[serde(default, rename = "term")]
    pub terms: Vec<Term>,
}

fn default_candidates() -> u32 {
    DEFAULT_CANDIDATES
}

fn one() -> f64 {
    1.0
}

/// The `[[profile]]` part of a `features.toml` (its `[[feature]]` part is parsed by the
/// feature registry, which also rejects unknown top-level keys).
#[derive(Deserialize)]
struct ProfilesFile {
    #[serde(default)]
    profile: Vec<RankProfile>,
}

/// Why a profiles file was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("rank profiles are not valid TOML: {0}")]
    Toml(String),
    #[error("rank profile {name:?}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("no rank profile {wanted:?} is registered for this tenant (registered: {registered})")]
    Unknown { wanted: String, registered: String },
}

/// Picks `wanted` from the registered profiles: `name` is the newest version of that name,
/// `name@version` one exact version (so an experiment can pin a version while a newer one
/// rolls out).
pub fn select<'a>(
    profiles: &'a [RankProfile],
    wanted: &str,
) -> Result<&'a RankProfile, ProfileError> {
    let (name, version) = match wanted.rsplit_once('@') {
        // An unparsable version matches nothing rather than falling back to the newest.
        Some((name, v)) => (name, Some(v.parse::<u64>().ok())),
        None => (wanted, None),
    };
    profiles
        .iter()
        .filter(|p| p.name == name && version.is_none_or(|v| v == Some(p.version)))
        .max_by_key(|p| p.version)
        .ok_or_else(|| ProfileError::Unknown {
            wanted: wanted.to_string(),
            registered: if profiles.is_empty() {
                "none".to_string()
            } else {
                profiles
                    .iter()
                    .map(|p| format!("{}@{}", p.name, p.version))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

/// One hit's score and the values that made it, for `explain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explained {
    pub score: f64,
    pub bm25: f64,
    /// Per term of the profile, in order: `(value as served or null, contribution)`. The
    /// names are the profile's, so scoring a candidate allocates no strings.
    pub terms: Vec<(Option<f64>, f64)>,
}

/// Parses and validates a profiles file against the registered feature names.
pub fn parse_profiles(text: &str, features: &[&str]) -> Result<Vec<RankProfile>, ProfileError> {
    let file: ProfilesFile = toml::from_str(text).map_err(|e| ProfileError::Toml(e.to_string()))?;
    let mut seen: Vec<(String, u64)> = Vec::new();
    for p in &file.profile {
        let bad = |reason: String| ProfileError::Invalid {
            name: p.name.clone(),
            reason,
        };
        if p.name.is_empty() {
            return Err(bad("name must not be empty".into()));
        }
        if p.candidates == 0 || p.candidates > MAX_CANDIDATES {
            return Err(bad(format!(
                "candidates {} is not within 1..={MAX_CANDIDATES} (MAX_CANDIDATES)",
                p.candidates
            )));
        }
        if !p.bm25.is_finite() {
            return Err(bad("bm25 weight must be finite".into()));
        }
        for t in &p.terms {
            if !features.contains(&t.feature.as_str()) {
                return Err(bad(format!("unknown feature {:?}", t.feature)));
            }
            if !t.weight.is_finite() || !t.default.is_finite() {
                return Err(bad(format!(
                    "weight and default of {:?} must be finite",
                    t.feature
                )));
            }
        }
        if seen.iter().any(|(n, v)| *n == p.name && *v == p.version) {
            return Err(bad(format!("version {} is defined twice", p.version)));
        }
        seen.push((p.name.clone(), p.version));
    }
    Ok(file.profile)
}

impl RankProfile {
    /// The features a hit needs, in term order.
    pub fn features(&self) -> Vec<String> {
        self.terms.iter().map(|t| t.feature.clone()).collect()
    }

    /// Scores one hit from its BM25 score and its feature values (in
    /// `features()` order), explaining every contribution.
    pub fn score(&self, bm25: f64, values: &[Option<f64>]) -> Explained {
        let mut terms = Vec::with_capacity(self.terms.len());
        let score = self.fold(bm25, values, |value, c| terms.push((value, c)));
        Explained { score, bm25, terms }
    }

    /// [`Self::score`]'s score alone, bit for bit, without building the explanation: the
    /// second phase scores 100 candidates per search and explains at most the page.
    pub fn score_only(&self, bm25: f64, values: &[Option<f64>]) -> f64 {
        self.fold(bm25, values, |_, _| {})
    }

    /// The score, reporting each term's `(value as served, contribution)` in order.
    fn fold(
        &self,
        bm25: f64,
        values: &[Option<f64>],
        mut each: impl FnMut(Option<f64>, f64),
    ) -> f64 {
        let mut score = self.bm25 * bm25;
        for (i, t) in self.terms.iter().enumerate() {
            let value = values.get(i).copied().flatten();
            let x = value.unwrap_or(t.default);
            let x = match t.transform {
                Transform::Identity => x,
                Transform::Log1p => x.max(0.0).ln_1p(),
            };
            let c = t.weight * x;
            score += c;
            each(value, c);
        }
        score
    }

    /// Reranks `(id, bm25, values)` candidates: score descending, then id
    /// ascending so ties are stable across replicas. Only the first
    /// `candidates` inputs are rescored; the rest keep their order after them.
    pub fn rerank(&self, hits: Vec<(String, f64, Vec<Option<f64>>)>) -> Vec<(String, Explained)> {
        let n = (self.candidates as usize).min(hits.len());
        let mut scored: Vec<(String, Explained)> = hits
            .into_iter()
            .enumerate()
            .map(|(i, (id, bm25, vals))| {
                let e = if i < n {
                    self.score(bm25, &vals)
                } else {
                    Explained {
                        score: f64::NEG_INFINITY,
                        bm25,
                        terms: Vec::new(),
                    }
                };
                (id, e)
            })
            .collect();
        scored[..n].sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then_with(|| a.0.cmp(&b.0)));
        scored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[[profile]]
name = "affinity"
version = 2
candidates = 2
bm25 = 1.0
[[profile.term]]
feature = "user_space_views_30d"
weight = 0.5
transform = "log1p"
[[profile.term]]
feature = "doc_popularity"
weight = 0.1
default = 1.0
"#;

    #[test]
    fn parses_and_scores_with_explanations() {
        let p = parse_profiles(TEXT, &["user_space_views_30d", "doc_popularity"])
            .expect("valid")
            .remove(0);
        assert_eq!(
            (p.name.as_str(), p.version, p.candidates),
            ("affinity", 2, 2)
        );
        let e = p.score(2.0, &[Some(std::f64::consts::E - 1.0), None]);
        assert!((e.score - (2.0 + 0.5 + 0.1)).abs() < 1e-12, "{e:?}");
        assert_eq!(e.terms[1].0, None, "null is reported as null");
        assert!((e.terms[1].1 - 0.1).abs() < 1e-12, "null uses the default");
    }

    #[test]
    fn rerank_reorders_only_the_candidates() {
        let p = parse_profiles(TEXT, &["user_space_views_30d", "doc_popularity"])
            .expect("valid")
            .remove(0);
        let out = p.rerank(vec![
            ("a".into(), 3.0, vec![Some(0.0), Some(0.0)]),
            ("b".into(), 2.9, vec![Some(100.0), Some(0.0)]),
            ("c".into(), 1.0, vec![Some(1e9), Some(1e9)]),
        ]);
        let ids: Vec<&str> = out.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["b", "a", "c"]);
    }

    #[test]
    fn select_takes_the_newest_or_a_pinned_version() {
        let two = TEXT.replace("version = 2", "version = 5");
        let mut profiles =
            parse_profiles(TEXT, &["user_space_views_30d", "doc_popularity"]).expect("valid");
        profiles.extend(
            parse_profiles(&two, &["user_space_views_30d", "doc_popularity"]).expect("valid"),
        );
        assert_eq!(select(&profiles, "affinity").expect("newest").version, 5);
        assert_eq!(select(&profiles, "affinity@2").expect("pinned").version, 2);
        for wrong in ["affinity@3", "affinity@x", "other", ""] {
            let err = select(&profiles, wrong).expect_err(wrong);
            assert!(err.to_string().contains("affinity@2, affinity@5"), "{err}");
        }
    }

    #[test]
    fn profiles_live_in_features_toml() {
        let toml = format!(
            "[[feature]]\nname = \"user_space_views_30d\"\nentity = \"user+space\"\n\
             source = \"view\"\naggregation = \"count\"\n\
             [[feature]]\nname = \"doc_popularity\"\nentity = \"doc\"\n\
             source = \"view\"\naggregation = \"count\"\n{TEXT}"
        );
        let defs = crate::features::parse_features_toml(&toml).expect("valid");
        let registry = crate::features::Registry {
            version: 1,
            toml: toml.clone(),
            features: defs,
        };
        assert_eq!(registry.profiles().expect("profiles").len(), 1);
        let err = crate::features::parse_features_toml(&toml.replace(
            "feature = \"doc_popularity\"\nweight",
            "feature = \"nope\"\nweight",
        ))
        .expect_err("profile over an unknown feature");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn rejects_unknown_features_and_bad_limits() {
        let err = parse_profiles(TEXT, &["doc_popularity"]).expect_err("unknown feature");
        assert!(err.to_string().contains("user_space_views_30d"));
        let err = parse_profiles(
            &TEXT.replace("candidates = 2", "candidates = 5000"),
            &["user_space_views_30d", "doc_popularity"],
        )
        .expect_err("limit");
        assert!(err.to_string().contains("MAX_CANDIDATES"));
    }
}
