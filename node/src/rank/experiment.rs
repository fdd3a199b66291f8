//! Experiments (DESIGN.md "Ranking and experiments"): users are split by a hash of their id
//! into variants, each ranking with its own profile; in shadow mode the variant is computed and
//! logged while the control is served.
//!
//! ```toml
//! [[experiment]]
//! name = "affinity_test"
//! control = "bm25"          # a profile ("name" or "name@version"), or "bm25" for plain BM25
//! shadow = false            # true: serve the control to everyone, log the variant's ranking
//! [[experiment.variant]]
//! name = "affinity"
//! profile = "affinity@2"
//! share = 0.5               # fraction of users; what the variants leave goes to control
//! ```
//!
//! Assignment is `xxh3_64(experiment name, 0, user)` mapped to `[0, 1)` and compared with the
//! cumulative shares: stable across processes, machines and releases (xxh3 is a specified
//! function), independent between experiments, and a user keeps their variant when a share
//! grows (only users from the control move in).

use serde::Deserialize;

use super::profile::{select, ProfileError, RankProfile};

/// The name of the variant that gets what the others leave.
pub const CONTROL: &str = "control";
/// The control spec meaning "plain BM25, no second phase".
pub const BM25: &str = "bm25";

/// One variant: a share of the users and the profile they rank with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub profile: String,
    pub share: f64,
}

/// A named split of users between a control and variants.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    #[serde(default = "bm25")]
    pub control: String,
    #[serde(default)]
    pub shadow: bool,
    #[serde(default, rename = "variant")]
    pub variants: Vec<Variant>,
}

fn bm25() -> String {
    BM25.to_string()
}

/// Which variant a user is in and what ranks their results.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// `control` or the variant's name.
    pub variant: String,
    /// The profile spec that ranks what the user sees: the variant's, or the control's
    /// (always the control's in shadow mode).
    pub served: String,
    /// Shadow mode: the variant's profile spec, computed and logged but not served.
    pub shadow: Option<String>,
}

impl Experiment {
    /// The user's variant; deterministic for (experiment name, user).
    pub fn assign(&self, user: &str) -> Assignment {
        let point = bucket(&self.name, user);
        let mut upto = 0.0;
        let chosen = self.variants.iter().find(|v| {
            upto += v.share;
            point < upto
        });
        match chosen {
            None => Assignment {
                variant: CONTROL.to_string(),
                served: self.control.clone(),
                shadow: None,
            },
            Some(v) if self.shadow => Assignment {
                variant: v.name.clone(),
                served: self.control.clone(),
                shadow: Some(v.profile.clone()),
            },
            Some(v) => Assignment {
                variant: v.name.clone(),
                served: v.profile.clone(),
                shadow: None,
            },
        }
    }
}

/// A user's point in `[0, 1)` for one experiment.
fn bucket(experiment: &str, user: &str) -> f64 {
    let mut key = Vec::with_capacity(experiment.len() + 1 + user.len());
    key.extend_from_slice(experiment.as_bytes());
    key.push(0);
    key.extend_from_slice(user.as_bytes());
    // The top 53 bits make an exact f64 in [0, 1).
    (xxhash_rust::xxh3::xxh3_64(&key) >> 11) as f64 / (1u64 << 53) as f64
}

/// Why the `[[experiment]]` part of a features.toml was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExperimentError {
    #[error("experiments are not valid TOML: {0}")]
    Toml(String),
    #[error("experiment {name:?}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("no experiment {wanted:?} is registered for this tenant (registered: {registered})")]
    Unknown { wanted: String, registered: String },
}

#[derive(Deserialize)]
struct ExperimentsFile {
    #[serde(default)]
    experiment: Vec<Experiment>,
}

/// Parses and validates the experiments of a features.toml against its profiles: names are
/// unique, every profile spec resolves (or is `bm25` for the control), shares are in (0, 1]
/// and sum to at most 1, and variant names are unique and not `control`.
pub fn parse_experiments(
    text: &str,
    profiles: &[RankProfile],
) -> Result<Vec<Experiment>, ExperimentError> {
    let file: ExperimentsFile =
        toml::from_str(text).map_err(|e| ExperimentError::Toml(e.to_string()))?;
    for (i, e) in file.experiment.iter().enumerate() {
        let bad = |reason: String| ExperimentError::Invalid {
            name: e.name.clone(),
            reason,
        };
        if e.name.is_empty() {
            return Err(bad("name must not be empty".into()));
        }
        if file.experiment[..i].iter().any(|o| o.name == e.name) {
            return Err(bad("defined twice".into()));
        }
        if e.variants.is_empty() {
            return Err(bad("needs at least one [[experiment.variant]]".into()));
        }
        let resolves = |spec: &str| -> Result<(), ProfileError> {
            if spec == BM25 {
                return Ok(());
            }
            select(profiles, spec).map(|_| ())
        };
        resolves(&e.control).map_err(|p| bad(format!("control: {p}")))?;
        let mut total = 0.0;
        for (j, v) in e.variants.iter().enumerate() {
            if v.name.is_empty() || v.name == CONTROL {
                return Err(bad(format!(
                    "variant name {:?} is reserved or empty",
                    v.name
                )));
            }
            if e.variants[..j].iter().any(|o| o.name == v.name) {
                return Err(bad(format!("variant {:?} is defined twice", v.name)));
            }
            if !(v.share > 0.0 && v.share <= 1.0) {
                return Err(bad(format!(
                    "variant {:?}: share {} is not within (0, 1]",
                    v.name, v.share
                )));
            }
            resolves(&v.profile).map_err(|p| bad(format!("variant {:?}: {p}", v.name)))?;
            total += v.share;
        }
        if total > 1.0 + 1e-9 {
            return Err(bad(format!("variant shares sum to {total}, over 1")));
        }
    }
    Ok(file.experiment)
}

/// The experiment named `wanted`.
pub fn find<'a>(
    experiments: &'a [Experiment],
    wanted: &str,
) -> Result<&'a Experiment, ExperimentError> {
    experiments
        .iter()
        .find(|e| e.name == wanted)
        .ok_or_else(|| ExperimentError::Unknown {
            wanted: wanted.to_string(),
            registered: if experiments.is_empty() {
                "none".to_string()
            } else {
                experiments
                    .iter()
                    .map(|e| e.name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::parse_profiles;

    const TOML: &str = r#"
[[profile]]
name = "affinity"
version = 1
[[profile.term]]
feature = "f"
weight = 1.0

[[experiment]]
name = "split"
[[experiment.variant]]
name = "affinity"
profile = "affinity@1"
share = 0.5

[[experiment]]
name = "shadowed"
control = "bm25"
shadow = true
[[experiment.variant]]
name = "affinity"
profile = "affinity"
share = 1.0
"#;

    fn experiments(text: &str) -> Result<Vec<Experiment>, ExperimentError> {
        let profiles = parse_profiles(text, &["f"]).expect("profiles");
        parse_experiments(text, &profiles)
    }

    #[test]
    fn users_split_by_share_deterministically() {
        let all = experiments(TOML).expect("valid");
        let split = find(&all, "split").expect("split");
        let users: Vec<String> = (0..4000).map(|i| format!("u:{i}")).collect();
        let treated = users
            .iter()
            .filter(|u| split.assign(u).variant == "affinity")
            .count();
        assert!(
            (1800..=2200).contains(&treated),
            "{treated} of 4000 treated"
        );
        for u in &users {
            let a = split.assign(u);
            assert_eq!(a, split.assign(u), "stable for {u}");
            match a.variant.as_str() {
                "affinity" => assert_eq!(a.served, "affinity@1"),
                _ => assert_eq!((a.variant.as_str(), a.served.as_str()), (CONTROL, BM25)),
            }
            assert_eq!(a.shadow, None);
        }
    }

    #[test]
    fn shadow_serves_the_control_and_computes_the_variant() {
        let all = experiments(TOML).expect("valid");
        let a = find(&all, "shadowed").expect("shadowed").assign("u:anyone");
        assert_eq!(a.variant, "affinity");
        assert_eq!(a.served, BM25);
        assert_eq!(a.shadow.as_deref(), Some("affinity"));
    }

    #[test]
    fn growing_a_share_only_moves_users_out_of_control() {
        let mut e = find(&experiments(TOML).expect("valid"), "split")
            .expect("split")
            .clone();
        let before: Vec<String> = (0..2000)
            .map(|i| e.assign(&format!("u:{i}")).variant)
            .collect();
        e.variants[0].share = 0.8;
        for (i, was) in before.iter().enumerate() {
            if was == "affinity" {
                assert_eq!(e.assign(&format!("u:{i}")).variant, "affinity");
            }
        }
    }

    #[test]
    fn invalid_experiments_are_named() {
        let bad = [
            (TOML.replace("share = 0.5", "share = 0.0"), "share"),
            (TOML.replace("affinity@1", "affinity@9"), "affinity@9"),
            (TOML.replace("name = \"shadowed\"", "name = \"split\""), "twice"),
            (TOML.replace("share = 1.0", "share = 1.0\n[[experiment.variant]]\nname = \"control\"\nprofile = \"bm25\"\nshare = 0.1"), "reserved"),
            (TOML.replace("share = 0.5", "share = 0.5\n[[experiment.variant]]\nname = \"more\"\nprofile = \"bm25\"\nshare = 0.6"), "over 1"),
        ];
        for (text, needle) in bad {
            let err = experiments(&text).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        assert!(matches!(
            find(&experiments(TOML).expect("valid"), "nope"),
            Err(ExperimentError::Unknown { .. })
        ));
    }
}
