//! The document schema of DESIGN.md ("Data model") and its validation.

use crate::limits::*;
use serde::{Deserialize, Serialize};

/// A page, exactly as the client and CLI take it in JSON Lines.
///
/// Unknown fields are an error rather than silently dropped: a typo such as
/// `permisions` would otherwise publish a page without its restrictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub id: String,
    #[serde(default)]
    pub space: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub ancestors: Vec<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub contributors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    pub version: u64,
    #[serde(default)]
    pub permissions: Permissions,
}

/// Hierarchical permissions: an AND of ORs over the levels.
///
/// An empty set means "no restriction at this level".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    #[serde(default)]
    pub space: Vec<String>,
    /// One restriction set per entry of `Document::ancestors`, in order.
    #[serde(default)]
    pub ancestors: Vec<Vec<String>>,
    #[serde(default)]
    pub page: Vec<String>,
}

/// Why a document (or other input) was rejected. The message names the
/// limit or rule, because the user has to fix their input from it alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("invalid UTF-8 at byte {0}")]
    InvalidUtf8(usize),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("missing id: `id` must be a non-empty string")]
    MissingId,
    #[error("{field} is {len} bytes, over the limit of {limit} bytes")]
    TooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("{field} has {len} entries, over the limit of {limit}")]
    TooMany {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("document has {0} principals, over the limit of {MAX_PRINCIPALS} (MAX_PRINCIPALS)")]
    TooManyPrincipals(usize),
    #[error("malformed principal {0:?}: expected `u:<user>` or `g:<group>` without '&', '|' or whitespace")]
    BadPrincipal(String),
    #[error(
        "malformed timestamp in {field}: {value:?} is not RFC 3339 (e.g. 2026-01-02T10:00:00Z)"
    )]
    BadTimestamp { field: &'static str, value: String },
    #[error("version must be at least 1")]
    ZeroVersion,
    #[error("permissions.ancestors has {got} sets but the document has {want} ancestors")]
    AncestorMismatch { got: usize, want: usize },
    #[error("{field} {value:?} is malformed: it must be non-empty and contain no '|', '&' or control characters")]
    BadName { field: &'static str, value: String },
    #[error(transparent)]
    QuerySyntax(#[from] crate::query_syntax::QuerySyntaxError),
}

impl Document {
    /// Parses and validates one JSON document from raw bytes.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, DocumentError> {
        let text =
            std::str::from_utf8(bytes).map_err(|e| DocumentError::InvalidUtf8(e.valid_up_to()))?;
        let doc: Document =
            serde_json::from_str(text).map_err(|e| DocumentError::Json(e.to_string()))?;
        doc.validate()?;
        Ok(doc)
    }

    /// Checks every rule and limit of the data contract.
    pub fn validate(&self) -> Result<(), DocumentError> {
        if self.id.is_empty() {
            return Err(DocumentError::MissingId);
        }
        check_len("id (MAX_ID_BYTES)", &self.id, MAX_ID_BYTES)?;
        check_name("id", &self.id)?;
        if !self.space.is_empty() {
            check_len("space (MAX_NAME_BYTES)", &self.space, MAX_NAME_BYTES)?;
            check_name("space", &self.space)?;
        }
        check_len("title (MAX_TITLE_BYTES)", &self.title, MAX_TITLE_BYTES)?;
        check_len("body (MAX_BODY_BYTES)", &self.body, MAX_BODY_BYTES)?;
        check_count(
            "ancestors (MAX_ANCESTORS)",
            self.ancestors.len(),
            MAX_ANCESTORS,
        )?;
        check_count("labels (MAX_LABELS)", self.labels.len(), MAX_LABELS)?;
        check_count(
            "contributors (MAX_CONTRIBUTORS)",
            self.contributors.len(),
            MAX_CONTRIBUTORS,
        )?;
        for a in &self.ancestors {
            check_len("ancestor id (MAX_ID_BYTES)", a, MAX_ID_BYTES)?;
            check_name("ancestor id", a)?;
        }
        for l in &self.labels {
            check_len("label (MAX_NAME_BYTES)", l, MAX_NAME_BYTES)?;
            check_name("label", l)?;
        }
        for c in &self.contributors {
            validate_principal(c)?;
        }
        if self.version == 0 {
            return Err(DocumentError::ZeroVersion);
        }
        check_timestamp("created_at", self.created_at.as_deref())?;
        check_timestamp("updated_at", self.updated_at.as_deref())?;
        self.validate_permissions()
    }

    fn validate_permissions(&self) -> Result<(), DocumentError> {
        let p = &self.permissions;
        if !p.ancestors.is_empty() && p.ancestors.len() != self.ancestors.len() {
            return Err(DocumentError::AncestorMismatch {
                got: p.ancestors.len(),
                want: self.ancestors.len(),
            });
        }
        let total = p.space.len() + p.page.len() + p.ancestors.iter().map(Vec::len).sum::<usize>();
        if total > MAX_PRINCIPALS {
            return Err(DocumentError::TooManyPrincipals(total));
        }
        p.space
            .iter()
            .chain(p.page.iter())
            .chain(p.ancestors.iter().flatten())
            .try_for_each(|s| validate_principal(s))
    }

    /// `updated_at` as milliseconds since the epoch, for recency ranking.
    pub fn updated_at_millis(&self) -> Option<i64> {
        self.updated_at
            .as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_millis())
    }
}

/// Checks the `u:<user>` / `g:<group>` shape of a principal.
pub fn validate_principal(p: &str) -> Result<(), DocumentError> {
    let ok = (p.starts_with("u:") || p.starts_with("g:"))
        && p.len() > 2
        && p.len() <= MAX_NAME_BYTES
        && !p
            .chars()
            .any(|c| c == '&' || c == '|' || c == '*' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(DocumentError::BadPrincipal(p.to_string()))
    }
}

/// Checks a tenant id, space key or label: non-empty, no separators.
pub fn check_name(field: &'static str, value: &str) -> Result<(), DocumentError> {
    let bad = value.is_empty()
        || value
            .chars()
            .any(|c| c == '|' || c == '&' || c == '\u{1f}' || c.is_control());
    if bad {
        Err(DocumentError::BadName {
            field,
            value: value.to_string(),
        })
    } else {
        Ok(())
    }
}

fn check_len(field: &'static str, value: &str, limit: usize) -> Result<(), DocumentError> {
    if value.len() > limit {
        Err(DocumentError::TooLong {
            field,
            len: value.len(),
            limit,
        })
    } else {
        Ok(())
    }
}

fn check_count(field: &'static str, len: usize, limit: usize) -> Result<(), DocumentError> {
    if len > limit {
        Err(DocumentError::TooMany { field, len, limit })
    } else {
        Ok(())
    }
}

fn check_timestamp(field: &'static str, value: Option<&str>) -> Result<(), DocumentError> {
    match value {
        Some(v) if chrono::DateTime::parse_from_rfc3339(v).is_err() => {
            Err(DocumentError::BadTimestamp {
                field,
                value: v.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// Checks a tenant id.
pub fn validate_tenant(tenant: &str) -> Result<(), DocumentError> {
    check_len("tenant (MAX_NAME_BYTES)", tenant, MAX_NAME_BYTES)?;
    check_name("tenant", tenant)
}

/// Checks query text against the term and size limits and the query
/// syntax (see [`crate::query_syntax`]).
pub fn validate_query(query: &str) -> Result<(), DocumentError> {
    check_len("query (MAX_QUERY_BYTES)", query, MAX_QUERY_BYTES)?;
    let terms = query.split_whitespace().count();
    check_count("query terms (MAX_QUERY_TERMS)", terms, MAX_QUERY_TERMS)?;
    crate::query_syntax::parse(query)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> &'static str {
        r#"{"id":"p-17","space":"ENG","title":"Deploy runbook","body":"...",
 "ancestors":["p-1","p-9"],"labels":["ops"],"contributors":["u:alice"],
 "created_at":"2026-01-02T10:00:00Z","updated_at":"2026-03-01T09:00:00Z",
 "version":7,
 "permissions":{"space":["g:eng","u:cto"],"ancestors":[["g:eng"],[]],"page":[]}}"#
    }

    #[test]
    fn design_example_parses() {
        let d = Document::from_json_bytes(good().as_bytes()).expect("valid");
        assert_eq!(d.id, "p-17");
        assert_eq!(d.permissions.ancestors.len(), 2);
        assert!(d.updated_at_millis().is_some());
    }

    #[test]
    fn bad_inputs_have_clear_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"{\"id\":\"a\xff\",\"version\":1}".to_vec(),
                "invalid UTF-8",
            ),
            (
                br#"{"id":"a","version":1,"permisions":{}}"#.to_vec(),
                "unknown field",
            ),
            (br#"{"version":1}"#.to_vec(), "missing field `id`"),
            (br#"{"id":"","version":1}"#.to_vec(), "missing id"),
            (
                format!(
                    r#"{{"id":"a","version":1,"body":"{}"}}"#,
                    "x".repeat(MAX_BODY_BYTES + 1)
                )
                .into_bytes(),
                "MAX_BODY_BYTES",
            ),
            (
                format!(
                    r#"{{"id":"a","version":1,"permissions":{{"page":[{}]}}}}"#,
                    (0..=MAX_PRINCIPALS)
                        .map(|i| format!("\"u:{i}\""))
                        .collect::<Vec<_>>()
                        .join(",")
                )
                .into_bytes(),
                "MAX_PRINCIPALS",
            ),
            (
                br#"{"id":"a","version":1,"updated_at":"yesterday"}"#.to_vec(),
                "RFC 3339",
            ),
            (
                br#"{"id":"a","version":1,"permissions":{"page":["alice"]}}"#.to_vec(),
                "principal",
            ),
        ];
        for (input, needle) in cases {
            let err = Document::from_json_bytes(&input)
                .expect_err(needle)
                .to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn query_term_limit() {
        let q = vec!["w"; MAX_QUERY_TERMS + 1].join(" ");
        let err = validate_query(&q).expect_err("over limit").to_string();
        assert!(err.contains("MAX_QUERY_TERMS"), "{err}");
        assert!(validate_query("deploy runbook").is_ok());
    }

    #[test]
    fn malformed_query_syntax_is_refused_with_its_position() {
        let err = validate_query("deploy \"error budget").expect_err("unclosed");
        assert_eq!(
            err.to_string(),
            "query syntax error at character 8: this quote is never closed; add the closing \" (or remove it)"
        );
        assert!(validate_query("\"error budget\" -draft depl* title:runbook").is_ok());
    }
}
