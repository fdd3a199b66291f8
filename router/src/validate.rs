//! Input checks at the edge, so bad input is refused before anything is
//! written, with a message that names the rule or limit. Documents are
//! checked with the shared validator of `tessera_proto`, exactly as the
//! node and the CLI check them.

use crate::error::RouterError;
use tessera_proto::document::{check_name, validate_principal, validate_tenant};
use tessera_proto::limits::{MAX_ANCESTORS, MAX_GROUPS_PER_USER, MAX_ID_BYTES, MAX_LABELS};
use tessera_proto::pb::{DeleteOp, Membership, SearchFilters};
use tessera_proto::Document;

fn bad(e: impl std::fmt::Display) -> RouterError {
    RouterError::InvalidArgument(e.to_string())
}

/// A tenant id.
pub fn tenant(id: &str) -> Result<(), RouterError> {
    validate_tenant(id).map_err(bad)
}

/// The user a read runs as: a `u:` principal.
pub fn user(u: &str) -> Result<(), RouterError> {
    if u.is_empty() {
        return Err(bad(
            "user is required (e.g. u:alice): reads are filtered by the user's permissions",
        ));
    }
    validate_principal(u).map_err(bad)?;
    if !u.starts_with("u:") {
        return Err(bad(format!(
            "user {u:?} must be a `u:` principal, not a group"
        )));
    }
    Ok(())
}

/// A document id given on its own (get, delete).
pub fn doc_id(id: &str) -> Result<(), RouterError> {
    if id.is_empty() {
        return Err(bad("missing id: `id` must be a non-empty string"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(bad(format!(
            "id is {} bytes, over the limit of {MAX_ID_BYTES} bytes (MAX_ID_BYTES)",
            id.len()
        )));
    }
    check_name("id", id).map_err(bad)
}

/// One upsert: the id it is routed by, or why it is rejected.
pub fn document(json: &[u8]) -> Result<String, String> {
    Document::from_json_bytes(json)
        .map(|d| d.id)
        .map_err(|e| e.to_string())
}

/// One delete.
pub fn delete(op: &DeleteOp) -> Result<(), String> {
    doc_id(&op.id).map_err(|e| e.to_string())?;
    if op.version == 0 {
        return Err("version must be at least 1".into());
    }
    Ok(())
}

/// One group membership line: a `u:` user and `g:` groups.
pub fn membership(m: &Membership) -> Result<(), String> {
    user(&m.user).map_err(|e| e.to_string())?;
    if m.groups.len() > MAX_GROUPS_PER_USER {
        return Err(format!(
            "groups has {} entries, over the limit of {MAX_GROUPS_PER_USER} (MAX_GROUPS_PER_USER)",
            m.groups.len()
        ));
    }
    for g in &m.groups {
        validate_principal(g).map_err(|e| e.to_string())?;
        if !g.starts_with("g:") {
            return Err(format!("group {g:?} must be a `g:` principal"));
        }
    }
    Ok(())
}

/// Search filters: well-formed names, bounded lists.
pub fn filters(f: &SearchFilters) -> Result<(), RouterError> {
    let lists: [(&'static str, &Vec<String>, usize, &str); 3] = [
        ("space", &f.spaces, MAX_LABELS, "MAX_LABELS"),
        ("ancestor", &f.ancestors, MAX_ANCESTORS, "MAX_ANCESTORS"),
        ("label", &f.labels, MAX_LABELS, "MAX_LABELS"),
    ];
    for (field, values, limit, name) in lists {
        if values.len() > limit {
            return Err(bad(format!(
                "{field} filter has {} entries, over the limit of {limit} ({name})",
                values.len()
            )));
        }
        for v in values {
            check_name(field, v).map_err(bad)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_must_be_user_principals() {
        assert!(user("u:alice").is_ok());
        for bad in ["", "alice", "g:eng", "u:a b"] {
            assert!(user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn documents_are_checked_with_the_shared_validator() {
        assert_eq!(
            document(br#"{"id":"p-1","version":1}"#),
            Ok("p-1".to_string())
        );
        let e = document(br#"{"id":"p-1","version":1,"permisions":{}}"#).expect_err("typo");
        assert!(e.contains("unknown field"), "{e}");
        assert!(document(b"\xff").is_err());
    }

    #[test]
    fn deletes_and_memberships() {
        assert!(delete(&DeleteOp {
            id: "p-1".into(),
            version: 2
        })
        .is_ok());
        assert!(delete(&DeleteOp {
            id: "p-1".into(),
            version: 0
        })
        .is_err());
        assert!(delete(&DeleteOp {
            id: String::new(),
            version: 1
        })
        .is_err());
        let ok = Membership {
            user: "u:a".into(),
            groups: vec!["g:eng".into()],
        };
        assert!(membership(&ok).is_ok());
        let wrong = Membership {
            user: "u:a".into(),
            groups: vec!["u:b".into()],
        };
        assert!(membership(&wrong).is_err());
        let many = Membership {
            user: "u:a".into(),
            groups: (0..=MAX_GROUPS_PER_USER)
                .map(|i| format!("g:{i}"))
                .collect(),
        };
        assert!(membership(&many)
            .expect_err("too many")
            .contains("MAX_GROUPS_PER_USER"));
    }

    #[test]
    fn filters_are_bounded() {
        let mut f = SearchFilters {
            spaces: vec!["ENG".into()],
            ..Default::default()
        };
        assert!(filters(&f).is_ok());
        f.labels = (0..=MAX_LABELS).map(|i| format!("l{i}")).collect();
        assert!(filters(&f)
            .expect_err("too many")
            .to_string()
            .contains("MAX_LABELS"));
        f.labels = vec!["a|b".into()];
        assert!(filters(&f).is_err());
    }
}
