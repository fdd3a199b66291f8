//! `features.toml`: parsing and validation of feature definitions, and the
//! versioned registry a tenant's shards keep in their replicated state.
//!
//! Definitions are validated completely before anything is proposed, so a
//! bad file never reaches the Raft log and the error names the feature and
//! the rule it broke.

use serde::{Deserialize, Serialize};
use tessera_proto::limits::{MAX_FEATURES, MAX_FEATURES_TOML_BYTES};
use tessera_proto::EventKind;

/// What a feature is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Entity {
    Doc,
    User,
    Space,
    UserSpace,
    UserDoc,
}

impl Entity {
    /// Parses the `entity` value of `features.toml`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "doc" => Some(Self::Doc),
            "user" => Some(Self::User),
            "space" => Some(Self::Space),
            "user+space" => Some(Self::UserSpace),
            "user+doc" => Some(Self::UserDoc),
            _ => None,
        }
    }

    /// The `features.toml` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Doc => "doc",
            Self::User => "user",
            Self::Space => "space",
            Self::UserSpace => "user+space",
            Self::UserDoc => "user+doc",
        }
    }

    /// One byte naming the entity kind inside storage keys.
    pub fn tag(self) -> u8 {
        match self {
            Self::Doc => b'd',
            Self::User => b'u',
            Self::Space => b's',
            Self::UserSpace => b'S',
            Self::UserDoc => b'D',
        }
    }

    /// Every entity kind.
    pub const ALL: [Entity; 5] = [
        Self::Doc,
        Self::User,
        Self::Space,
        Self::UserSpace,
        Self::UserDoc,
    ];

    /// Whether the feature lives on the document's partition (doc-keyed)
    /// rather than on every partition of the tenant.
    pub fn doc_keyed(self) -> bool {
        matches!(self, Self::Doc | Self::UserDoc)
    }

    /// The entity value of this kind, from its parts. `None` names the
    /// missing part. User, space and doc ids never contain `|` (validation
    /// rejects it in principals and names), so joining with it is unambiguous
    /// as long as the doc comes last.
    pub fn key(self, user: &str, space: &str, doc: &str) -> Result<String, &'static str> {
        let mut out = String::new();
        self.write_key(user, space, doc, &mut out)?;
        Ok(out)
    }

    /// [`Self::key`] appended to `out`, so that many keys can share one buffer (reranking
    /// builds hundreds per search). On an error `out` is unchanged.
    pub fn write_key(
        self,
        user: &str,
        space: &str,
        doc: &str,
        out: &mut String,
    ) -> Result<(), &'static str> {
        let need = |v: &str, name: &'static str| {
            if v.is_empty() {
                Err(name)
            } else {
                Ok(())
            }
        };
        let (first, second) = match self {
            Self::Doc => (need(doc, "doc").map(|()| doc)?, None),
            Self::User => (need(user, "user").map(|()| user)?, None),
            Self::Space => (need(space, "space").map(|()| space)?, None),
            Self::UserSpace => {
                need(user, "user")?;
                need(space, "space")?;
                (user, Some(space))
            }
            Self::UserDoc => {
                need(user, "user")?;
                need(doc, "doc")?;
                (user, Some(doc))
            }
        };
        out.push_str(first);
        if let Some(second) = second {
            out.push('|');
            out.push_str(second);
        }
        Ok(())
    }

    /// The document of a doc-keyed entity value (the inverse of [`Self::key`]'s
    /// doc part), so a shard can tell which document a stored row follows.
    /// `None` for kinds not keyed by a document.
    pub fn doc_of(self, entity: &str) -> Option<&str> {
        match self {
            Self::Doc => Some(entity),
            Self::UserDoc => entity.split_once('|').map(|(_, doc)| doc),
            Self::User | Self::Space | Self::UserSpace => None,
        }
    }
}

/// How a feature folds its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Aggregation {
    Count,
    Sum,
    Last,
    DistinctUsers,
    DecayedCount,
}

impl Aggregation {
    /// Parses the `aggregation` value of `features.toml`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "count" => Some(Self::Count),
            "sum" => Some(Self::Sum),
            "last" => Some(Self::Last),
            "distinct_users" | "distinct" => Some(Self::DistinctUsers),
            "decayed_count" => Some(Self::DecayedCount),
            _ => None,
        }
    }

    /// The `features.toml` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Last => "last",
            Self::DistinctUsers => "distinct_users",
            Self::DecayedCount => "decayed_count",
        }
    }
}

/// One validated feature definition. The original strings are kept so
/// `describe` shows exactly what the author wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDef {
    pub name: String,
    pub entity: Entity,
    pub source: EventKind,
    pub aggregation: Aggregation,
    pub field: Option<String>,
    pub window_ms: Option<i64>,
    pub half_life_ms: Option<i64>,
    pub ttl_ms: Option<i64>,
    pub description: String,
    pub raw: RawFeature,
}

impl FeatureDef {
    /// The tile width: a fraction of the window so that edge events are few,
    /// and a day for all-time features.
    pub fn tile_ms(&self) -> i64 {
        const SIZES: [i64; 5] = [86_400_000, 3_600_000, 60_000, 1_000, 1];
        match self.window_ms {
            None => SIZES[0],
            Some(w) => SIZES
                .iter()
                .copied()
                .find(|s| s.saturating_mul(8) <= w)
                .unwrap_or(1),
        }
    }

    /// Whether two definitions aggregate identically (the description may differ).
    pub fn same_semantics(&self, other: &FeatureDef) -> bool {
        self.entity == other.entity
            && self.source == other.source
            && self.aggregation == other.aggregation
            && self.field == other.field
            && self.window_ms == other.window_ms
            && self.half_life_ms == other.half_life_ms
            && self.ttl_ms == other.ttl_ms
    }
}

/// One `[[feature]]` table as written. (No `skip_serializing_if`: the
/// registry is stored with bincode, which needs every field.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeature {
    pub name: String,
    pub entity: String,
    pub source: String,
    pub aggregation: String,
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub window: Option<String>,
    #[serde(default)]
    pub half_life: Option<String>,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeaturesFile {
    #[serde(default)]
    feature: Vec<RawFeature>,
    /// Rank profiles over these features, validated by `crate::rank::parse_profiles`.
    #[serde(default)]
    profile: Vec<toml::Value>,
    /// Experiments over these profiles, validated by `crate::rank::parse_experiments`.
    #[serde(default)]
    experiment: Vec<toml::Value>,
}

/// Why a `features.toml` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("features.toml is not valid TOML: {0}")]
    Toml(String),
    #[error("features.toml is {0} bytes, over the limit of {MAX_FEATURES_TOML_BYTES} (MAX_FEATURES_TOML_BYTES)")]
    TooLarge(usize),
    #[error("features.toml defines {0} features, over the limit of {MAX_FEATURES} (MAX_FEATURES)")]
    TooMany(usize),
    #[error("feature {name:?} is defined twice")]
    Duplicate { name: String },
    #[error("feature {name:?}: {reason}")]
    Invalid { name: String, reason: String },
    #[error(transparent)]
    Profile(#[from] crate::rank::ProfileError),
    #[error(transparent)]
    Experiment(#[from] crate::rank::ExperimentError),
}

/// Parses a duration such as `500ms`, `45s`, `15m`, `12h`, `30d` or `2w`.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| *v > 0)
}

/// Parses and validates a whole `features.toml`.
pub fn parse_features_toml(text: &str) -> Result<Vec<FeatureDef>, DefinitionError> {
    if text.len() > MAX_FEATURES_TOML_BYTES {
        return Err(DefinitionError::TooLarge(text.len()));
    }
    let file: FeaturesFile =
        toml::from_str(text).map_err(|e| DefinitionError::Toml(e.to_string()))?;
    if file.feature.len() > MAX_FEATURES {
        return Err(DefinitionError::TooMany(file.feature.len()));
    }
    let mut out: Vec<FeatureDef> = Vec::with_capacity(file.feature.len());
    for raw in file.feature {
        let def = validate(raw)?;
        if out.iter().any(|d| d.name == def.name) {
            return Err(DefinitionError::Duplicate { name: def.name });
        }
        out.push(def);
    }
    if !file.profile.is_empty() || !file.experiment.is_empty() {
        let names: Vec<&str> = out.iter().map(|d| d.name.as_str()).collect();
        let profiles = crate::rank::parse_profiles(text, &names)?;
        crate::rank::parse_experiments(text, &profiles)?;
    }
    Ok(out)
}

fn validate(raw: RawFeature) -> Result<FeatureDef, DefinitionError> {
    let name = raw.name.clone();
    let bad = |reason: String| DefinitionError::Invalid {
        name: name.clone(),
        reason,
    };
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(bad(
            "name must be 1-64 characters of a-z, 0-9 and '_'".into()
        ));
    }
    let entity = Entity::parse(&raw.entity).ok_or_else(|| {
        bad(format!(
            "entity {:?} is not one of doc, user, space, user+space, user+doc",
            raw.entity
        ))
    })?;
    let source = EventKind::parse(&raw.source).ok_or_else(|| {
        bad(format!(
            "source {:?} is not an event kind (view, edit, click)",
            raw.source
        ))
    })?;
    let aggregation = Aggregation::parse(&raw.aggregation).ok_or_else(|| {
        bad(format!(
            "aggregation {:?} is not one of count, sum, last, distinct_users, decayed_count",
            raw.aggregation
        ))
    })?;
    let field = match (aggregation, raw.field.as_deref()) {
        (Aggregation::Sum | Aggregation::Last, None | Some("value")) => Some("value".to_string()),
        (Aggregation::Sum | Aggregation::Last, Some(f)) => {
            return Err(bad(format!(
                "field {f:?} is not a numeric event field (only \"value\")"
            )))
        }
        (_, None) => None,
        (_, Some(_)) => {
            return Err(bad(format!(
                "field is only meaningful for sum and last, not {}",
                aggregation.as_str()
            )))
        }
    };
    let dur = |what: &str, v: &Option<String>| -> Result<Option<i64>, DefinitionError> {
        match v {
            None => Ok(None),
            Some(s) => parse_duration_ms(s).map(Some).ok_or_else(|| {
                bad(format!(
                    "{what} {s:?} is not a positive duration such as 500ms, 45s, 15m, 12h, 30d or 2w"
                ))
            }),
        }
    };
    let window_ms = dur("window", &raw.window)?;
    let half_life_ms = dur("half_life", &raw.half_life)?;
    let ttl_ms = dur("ttl", &raw.ttl)?;
    match (aggregation, half_life_ms) {
        (Aggregation::DecayedCount, None) => {
            return Err(bad("decayed_count needs a half_life".into()))
        }
        (Aggregation::DecayedCount, Some(_)) | (_, None) => {}
        (_, Some(_)) => return Err(bad("half_life is only meaningful for decayed_count".into())),
    }
    Ok(FeatureDef {
        name: raw.name.clone(),
        entity,
        source,
        aggregation,
        field,
        window_ms,
        half_life_ms,
        ttl_ms,
        description: raw.description.clone(),
        raw,
    })
}

/// A tenant's registered definitions. Every apply that changes the text
/// makes a new version; every replica derives the same version because the
/// apply travels through the shard's log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub version: u64,
    pub toml: String,
    pub features: Vec<FeatureDef>,
}

impl Registry {
    /// The definition named `name`.
    pub fn get(&self, name: &str) -> Option<&FeatureDef> {
        self.features.iter().find(|f| f.name == name)
    }

    /// The definition named `name` with its position, which names it in the online cache
    /// (with the registry version) without a string compare per read.
    pub fn indexed(&self, name: &str) -> Option<(u32, &FeatureDef)> {
        let (i, def) = self
            .features
            .iter()
            .enumerate()
            .find(|(_, f)| f.name == name)?;
        Some((u32::try_from(i).ok()?, def))
    }

    /// The rank profiles of this version of `features.toml`: they are registered with the
    /// features they read, so a profile can never name a feature its registry lacks.
    pub fn profiles(&self) -> Result<Vec<crate::rank::RankProfile>, crate::rank::ProfileError> {
        let names: Vec<&str> = self.features.iter().map(|d| d.name.as_str()).collect();
        crate::rank::parse_profiles(&self.toml, &names)
    }

    /// The experiments of this version of `features.toml`, checked against its profiles.
    pub fn experiments(&self) -> Result<Vec<crate::rank::Experiment>, DefinitionError> {
        let profiles = self.profiles()?;
        Ok(crate::rank::parse_experiments(&self.toml, &profiles)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[feature]]
name = "user_space_views_30d"
entity = "user+space"
source = "view"
aggregation = "count"
window = "30d"
ttl = "90d"
description = "How often the user viewed pages of this space in the last 30 days"

[[feature]]
name = "doc_popularity"
entity = "doc"
source = "view"
aggregation = "decayed_count"
half_life = "7d"
"#;

    #[test]
    fn parses_the_design_example() {
        let defs = parse_features_toml(GOOD).expect("valid");
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[0].entity, Entity::UserSpace);
        assert_eq!(defs[0].window_ms, Some(30 * 86_400_000));
        assert_eq!(defs[0].ttl_ms, Some(90 * 86_400_000));
        assert_eq!(defs[1].aggregation, Aggregation::DecayedCount);
        assert_eq!(defs[1].tile_ms(), 86_400_000);
        assert_eq!(defs[0].tile_ms(), 86_400_000);
    }

    #[test]
    fn rejects_bad_definitions_with_the_rule_broken() {
        let cases = [
            ("[[feature]]\nname=\"a\"\nentity=\"org\"\nsource=\"view\"\naggregation=\"count\"", "entity"),
            ("[[feature]]\nname=\"a\"\nentity=\"doc\"\nsource=\"like\"\naggregation=\"count\"", "source"),
            ("[[feature]]\nname=\"a\"\nentity=\"doc\"\nsource=\"view\"\naggregation=\"avg\"", "aggregation"),
            ("[[feature]]\nname=\"a\"\nentity=\"doc\"\nsource=\"view\"\naggregation=\"count\"\nwindow=\"30x\"", "window"),
            ("[[feature]]\nname=\"a\"\nentity=\"doc\"\nsource=\"view\"\naggregation=\"decayed_count\"", "half_life"),
            ("[[feature]]\nname=\"a\"\nentity=\"doc\"\nsource=\"view\"\naggregation=\"count\"\nfield=\"value\"", "field"),
            ("[[feature]]\nname=\"A b\"\nentity=\"doc\"\nsource=\"view\"\naggregation=\"count\"", "name"),
            ("[[feature]]\nname=\"a\"\nentity=\"doc\"\nsource=\"view\"\naggregation=\"count\"\nwindw=\"1d\"", "unknown field"),
            ("[[feature]]\nname=\"a\"\nentity=\"doc\"\nsource=\"view\"\naggregation=\"count\"\n[[feature]]\nname=\"a\"\nentity=\"doc\"\nsource=\"view\"\naggregation=\"count\"", "twice"),
            ("[[feature]\n", "TOML"),
        ];
        for (text, needle) in cases {
            let err = parse_features_toml(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn durations_and_tiles() {
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("2w"), Some(14 * 86_400_000));
        assert_eq!(parse_duration_ms("0s"), None);
        assert_eq!(parse_duration_ms("d"), None);
        let mut d = parse_features_toml(GOOD).expect("valid").remove(0);
        d.window_ms = Some(10_000);
        assert_eq!(d.tile_ms(), 1_000);
        d.window_ms = Some(5);
        assert_eq!(d.tile_ms(), 1);
    }
}
