//! The event schema of DESIGN.md ("Data model", "features.toml") and its
//! validation, shared by the CLI, the router and the node so bad input is
//! rejected with one message wherever it enters.

use crate::document::{check_name, validate_principal, DocumentError};
use crate::limits::{MAX_EVENT_VALUE_ABS, MAX_ID_BYTES, MAX_NAME_BYTES};
use serde::{Deserialize, Serialize};

/// The kinds of user activity the feature store aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    View,
    Edit,
    Click,
}

impl EventKind {
    /// Parses the lowercase name used in JSON and `features.toml`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "view" => Some(Self::View),
            "edit" => Some(Self::Edit),
            "click" => Some(Self::Click),
            _ => None,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::View => "view",
            Self::Edit => "edit",
            Self::Click => "click",
        }
    }
}

/// One event line. Unknown fields are rejected: a misspelt `value` would
/// otherwise silently count as the default weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub kind: EventKind,
    pub user: String,
    pub doc: String,
    pub space: String,
    /// RFC 3339 event time.
    pub ts: String,
    /// Optional numeric payload for `sum` and `last`; absent counts as 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// For a click: the impression (a search page served under an experiment) it came from,
    /// as the search response named it. The router logs such clicks beside the impressions;
    /// the feature store ignores the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impression: Option<String>,
    /// What makes a retried or duplicated event count once: each shard
    /// applies an id at most once. Absent, the id is derived from every
    /// other field ([`derived_event_id`]), so two identical events in the
    /// same millisecond count once; give them distinct ids when both are
    /// real.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// An event after validation, with its time in epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidEvent {
    pub kind: EventKind,
    pub user: String,
    pub doc: String,
    pub space: String,
    pub event_ts_ms: i64,
    pub value: f64,
    /// The event's id, given or derived (see [`Event::id`]).
    pub id: String,
}

/// The id of an event sent without one: a digest of everything it says
/// (kind, user, doc, space, time, value, impression), so a resent copy has
/// the same id and any real difference gives another.
pub fn derived_event_id(
    kind: EventKind,
    user: &str,
    doc: &str,
    space: &str,
    event_ts_ms: i64,
    value: f64,
    impression: Option<&str>,
) -> String {
    let mut h = blake3::Hasher::new();
    for part in [kind.as_str(), user, doc, space, impression.unwrap_or("")] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(&event_ts_ms.to_be_bytes());
    h.update(&value.to_bits().to_be_bytes());
    let digest = h.finalize();
    let hex: String = digest.as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("d-{hex}")
}

impl Event {
    /// Parses and validates one JSON line.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<ValidEvent, DocumentError> {
        let text =
            std::str::from_utf8(bytes).map_err(|e| DocumentError::InvalidUtf8(e.valid_up_to()))?;
        let event: Event =
            serde_json::from_str(text).map_err(|e| DocumentError::Json(e.to_string()))?;
        event.validate()
    }

    /// Checks every field and converts the timestamp.
    pub fn validate(&self) -> Result<ValidEvent, DocumentError> {
        validate_principal(&self.user)?;
        if !self.user.starts_with("u:") {
            return Err(DocumentError::BadPrincipal(self.user.clone()));
        }
        check_len("user (MAX_ID_BYTES)", &self.user, MAX_ID_BYTES)?;
        if self.doc.is_empty() {
            return Err(DocumentError::MissingId);
        }
        check_len("doc (MAX_ID_BYTES)", &self.doc, MAX_ID_BYTES)?;
        if self.doc.chars().any(|c| c == '\u{1f}' || c.is_control()) {
            return Err(DocumentError::BadName {
                field: "doc",
                value: self.doc.clone(),
            });
        }
        check_len("space (MAX_NAME_BYTES)", &self.space, MAX_NAME_BYTES)?;
        check_name("space", &self.space)?;
        let event_ts_ms = parse_ts_millis(&self.ts).ok_or_else(|| DocumentError::BadTimestamp {
            field: "ts",
            value: self.ts.clone(),
        })?;
        if let Some(impression) = &self.impression {
            check_len("impression (MAX_ID_BYTES)", impression, MAX_ID_BYTES)?;
            if impression.is_empty() || !impression.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(DocumentError::BadName {
                    field: "impression",
                    value: impression.clone(),
                });
            }
        }
        let value = self.value.unwrap_or(1.0);
        if !value.is_finite() || value.abs() > MAX_EVENT_VALUE_ABS {
            return Err(DocumentError::Json(format!(
                "value {value} is not a finite number within ±{MAX_EVENT_VALUE_ABS} (MAX_EVENT_VALUE_ABS)"
            )));
        }
        let id = match &self.id {
            Some(id) => {
                check_len("id (MAX_ID_BYTES)", id, MAX_ID_BYTES)?;
                if id.is_empty() || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(DocumentError::BadName {
                        field: "id",
                        value: id.clone(),
                    });
                }
                id.clone()
            }
            None => derived_event_id(
                self.kind,
                &self.user,
                &self.doc,
                &self.space,
                event_ts_ms,
                value,
                self.impression.as_deref(),
            ),
        };
        Ok(ValidEvent {
            kind: self.kind,
            user: self.user.clone(),
            doc: self.doc.clone(),
            space: self.space.clone(),
            event_ts_ms,
            value,
            id,
        })
    }
}

/// RFC 3339 to epoch milliseconds.
pub fn parse_ts_millis(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Epoch milliseconds to RFC 3339 (UTC, millisecond precision).
pub fn format_ts_millis(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_valid_event_and_defaults_value() {
        let e = Event::from_json_bytes(
            br#"{"kind":"view","user":"u:alice","doc":"p-17","space":"ENG","ts":"2026-01-01T00:00:01Z"}"#,
        )
        .expect("valid");
        assert_eq!(e.kind, EventKind::View);
        assert_eq!(e.event_ts_ms, 1_767_225_601_000);
        assert_eq!(e.value, 1.0);
    }

    #[test]
    fn ids_are_kept_or_derived_from_every_field() {
        let line = |extra: &str| {
            format!(
                r#"{{"kind":"view","user":"u:alice","doc":"p-17","space":"ENG","ts":"2026-01-01T00:00:01Z"{extra}}}"#
            )
        };
        let given = Event::from_json_bytes(line(r#","id":"evt-1""#).as_bytes()).expect("valid");
        assert_eq!(given.id, "evt-1");
        let a = Event::from_json_bytes(line("").as_bytes()).expect("valid");
        let b = Event::from_json_bytes(line("").as_bytes()).expect("valid");
        assert_eq!(a.id, b.id, "a resent event has the same id");
        assert!(a.id.starts_with("d-") && a.id.len() == 34, "{}", a.id);
        let other = Event::from_json_bytes(line(r#","value":2"#).as_bytes()).expect("valid");
        assert_ne!(a.id, other.id, "another value is another event");
        for bad in [r#","id":"" "#, r#","id":"a b""#] {
            let err = Event::from_json_bytes(line(bad).as_bytes()).expect_err("bad id");
            assert!(err.to_string().contains("id"), "{err}");
        }
    }

    #[test]
    fn rejects_bad_events_with_named_causes() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"kind":"like","user":"u:a","doc":"d","space":"S","ts":"2026-01-01T00:00:00Z"}"#, "unknown variant"),
            (br#"{"kind":"view","user":"u:a","doc":"d","space":"S","ts":"yesterday"}"#, "ts"),
            (br#"{"kind":"view","user":"g:a","doc":"d","space":"S","ts":"2026-01-01T00:00:00Z"}"#, "g:a"),
            (br#"{"kind":"view","user":"u:a","doc":"d","space":"S","ts":"2026-01-01T00:00:00Z","valu":2}"#, "unknown field"),
            (br#"{"kind":"view","user":"u:a","space":"S","ts":"2026-01-01T00:00:00Z"}"#, "doc"),
            (b"\xff", "UTF-8"),
        ];
        for (line, needle) in cases {
            let err = Event::from_json_bytes(line)
                .expect_err("must reject")
                .to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }
}
