//! Session tokens: read-your-writes across shards.
//!
//! A write returns, per shard it touched, the Raft index at which it was
//! applied. The token carries that map; a later read passes each shard's
//! index as `min_applied`, so only replicas that have caught up serve it.
//! Clients treat the token as opaque text; the router merges tokens (per
//! shard maximum), so a session of many writes still carries one token.

use crate::error::RouterError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::collections::BTreeMap;
use tessera_proto::ShardId;

const PREFIX: &str = "s1.";

/// Shard → lowest applied index a read must observe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionToken {
    applied: BTreeMap<ShardId, u64>,
}

impl SessionToken {
    /// An empty token (no requirement).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a token; the empty string is the empty token.
    pub fn decode(text: &str) -> Result<Self, RouterError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::new());
        }
        let bad = || {
            RouterError::InvalidArgument(format!(
                "malformed session token {text:?}: pass back the token of a write response unchanged"
            ))
        };
        let body = text.strip_prefix(PREFIX).ok_or_else(bad)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
        let mut pos = 0;
        let mut applied = BTreeMap::new();
        while pos < bytes.len() {
            let shard = read_varint(&bytes, &mut pos).ok_or_else(bad)?;
            let index = read_varint(&bytes, &mut pos).ok_or_else(bad)?;
            applied.insert(shard, index);
        }
        Ok(SessionToken { applied })
    }

    /// Text form: `s1.` + base64url of (shard, index) varint pairs; empty
    /// for the empty token.
    pub fn encode(&self) -> String {
        if self.applied.is_empty() {
            return String::new();
        }
        let mut bytes = Vec::with_capacity(self.applied.len() * 6);
        for (shard, index) in &self.applied {
            write_varint(&mut bytes, *shard);
            write_varint(&mut bytes, *index);
        }
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Raises the requirement for `shard` to at least `index`.
    pub fn observe(&mut self, shard: ShardId, index: u64) {
        let e = self.applied.entry(shard).or_insert(0);
        *e = (*e).max(index);
    }

    /// Per-shard maximum of both tokens.
    pub fn merge(&mut self, other: &SessionToken) {
        for (s, i) in &other.applied {
            self.observe(*s, *i);
        }
    }

    /// The `min_applied` for a read of `shard` (0 = none).
    pub fn min_applied(&self, shard: ShardId) -> u64 {
        self.applied.get(&shard).copied().unwrap_or(0)
    }

    /// Whether the token carries no requirement.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty()
    }

    /// The (shard, index) pairs, in shard order.
    pub fn entries(&self) -> impl Iterator<Item = (ShardId, u64)> + '_ {
        self.applied.iter().map(|(s, i)| (*s, *i))
    }
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_token_is_the_empty_string() {
        assert_eq!(SessionToken::new().encode(), "");
        assert!(SessionToken::decode("").expect("empty").is_empty());
    }

    #[test]
    fn merge_keeps_the_maximum_per_shard() {
        let mut a = SessionToken::new();
        a.observe(1, 10);
        a.observe(2, 5);
        let mut b = SessionToken::new();
        b.observe(2, 9);
        b.observe(3, 1);
        a.merge(&b);
        assert_eq!(
            a.entries().collect::<Vec<_>>(),
            vec![(1, 10), (2, 9), (3, 1)]
        );
        assert_eq!(a.min_applied(4), 0);
    }

    #[test]
    fn garbage_is_bad_input() {
        for bad in ["x", "s1.!!", "s1.gA", "s2.AQE"] {
            assert!(
                matches!(
                    SessionToken::decode(bad),
                    Err(RouterError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn round_trips(pairs in proptest::collection::btree_map(any::<u64>(), any::<u64>(), 0..20)) {
            let mut t = SessionToken::new();
            for (s, i) in &pairs {
                t.observe(*s, *i);
            }
            prop_assert_eq!(SessionToken::decode(&t.encode()).expect("own token"), t);
        }
    }
}
