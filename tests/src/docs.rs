//! Deterministic test documents.

use serde_json::json;

const WORDS: [&str; 24] = [
    "deploy",
    "runbook",
    "incident",
    "rollback",
    "database",
    "migration",
    "oncall",
    "latency",
    "cache",
    "search",
    "index",
    "replica",
    "quorum",
    "leader",
    "snapshot",
    "region",
    "tenant",
    "budget",
    "roadmap",
    "design",
    "review",
    "metrics",
    "alert",
    "capacity",
];

/// A document with a title and body drawn from a fixed vocabulary.
pub fn doc(id: &str, version: u64, seed: u64) -> Vec<u8> {
    let w = |k: u64| {
        WORDS[((seed.wrapping_mul(2654435761).wrapping_add(k * 40503)) % WORDS.len() as u64)
            as usize]
    };
    let title = format!("{} {}", w(1), w(2));
    let body = (3..15).map(w).collect::<Vec<_>>().join(" ");
    let v = json!({
        "id": id, "space": format!("S{}", seed % 4), "title": title, "body": body,
        "labels": [format!("l{}", seed % 3)], "version": version,
        "updated_at": "2026-03-01T09:00:00Z",
    });
    serde_json::to_vec(&v).unwrap_or_default()
}
