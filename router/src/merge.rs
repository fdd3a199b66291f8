//! Merging shard results into one page, and the opaque pagination cursor.
//!
//! Every shard returns its hits ordered by (score desc, id asc) and strictly
//! after the cursor; the router merges them in the same order and cuts the
//! page. Because every shard applies the same "strictly after (score, id)"
//! rule and ids are unique within a tenant, paging this way has no
//! duplicates and no gaps while the index does not change.

use crate::error::RouterError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::cmp::Ordering;
use std::collections::HashSet;
use tessera_proto::pb::{Hit, SearchAfter};

const CURSOR_PREFIX: &str = "c1.";

/// Where the next page starts: strictly after this (score, id).
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    /// Score of the last hit of the previous page.
    pub score: f32,
    /// Id of that hit.
    pub id: String,
}

impl Cursor {
    /// The cursor pointing after `hit`.
    pub fn after(hit: &Hit) -> Self {
        Cursor {
            score: hit.score,
            id: hit.id.clone(),
        }
    }

    /// Opaque text form: `c1.` + base64url(score bits, big-endian ++ id).
    /// The exact f32 bits round-trip, so no hit at the boundary is lost.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(4 + self.id.len());
        bytes.extend_from_slice(&self.score.to_bits().to_be_bytes());
        bytes.extend_from_slice(self.id.as_bytes());
        format!("{CURSOR_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses [`Cursor::encode`]'s output; anything else is bad input.
    pub fn decode(text: &str) -> Result<Self, RouterError> {
        let bad = || {
            RouterError::InvalidArgument(format!(
                "malformed cursor {text:?}: pass back the cursor of a previous response unchanged"
            ))
        };
        let body = text.strip_prefix(CURSOR_PREFIX).ok_or_else(bad)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
        if bytes.len() < 5 {
            return Err(bad());
        }
        let (score, id) = bytes.split_at(4);
        let bits = u32::from_be_bytes([score[0], score[1], score[2], score[3]]);
        let score = f32::from_bits(bits);
        let id = String::from_utf8(id.to_vec()).map_err(|_| bad())?;
        if !score.is_finite() {
            return Err(bad());
        }
        Ok(Cursor { score, id })
    }

    /// The node API form.
    pub fn to_search_after(&self) -> SearchAfter {
        SearchAfter {
            score: self.score,
            id: self.id.clone(),
        }
    }
}

/// Result order: score descending, then id ascending.
pub fn hit_order(a: &Hit, b: &Hit) -> Ordering {
    b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id))
}

/// Whether `hit` comes strictly after the cursor in result order.
pub fn is_after(hit: &Hit, cursor: &Cursor) -> bool {
    match cursor.score.total_cmp(&hit.score) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => hit.id > cursor.id,
    }
}

/// A merged page and the cursor of the next one (`None` when there is none).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// At most `limit` hits in result order.
    pub hits: Vec<Hit>,
    /// Where the next page starts.
    pub next: Option<Cursor>,
}

/// Merges per-shard hit lists into one page of `limit` hits.
///
/// Hits at or before `after` are dropped (defence against a replica that
/// ignored the cursor); an id seen twice (possible while a partition is
/// being moved) is kept once, at its best position. `more` says whether any
/// shard reported more hits than it returned; together with a page that
/// overflowed `limit`, it decides whether a next cursor is given.
pub fn merge(shard_hits: Vec<Vec<Hit>>, after: Option<&Cursor>, limit: usize, more: bool) -> Page {
    let mut all: Vec<Hit> = shard_hits
        .into_iter()
        .flatten()
        .filter(|h| after.is_none_or(|c| is_after(h, c)))
        .collect();
    all.sort_by(hit_order);
    let mut seen = HashSet::new();
    all.retain(|h| seen.insert(h.id.clone()));
    let overflow = all.len() > limit;
    all.truncate(limit);
    let next = if (overflow || more) && !all.is_empty() {
        all.last().map(Cursor::after)
    } else {
        None
    };
    Page { hits: all, next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hit(id: &str, score: f32) -> Hit {
        Hit {
            id: id.into(),
            score,
            explanation: None,
            ..Default::default()
        }
    }

    #[test]
    fn cursor_round_trips_exact_bits() {
        for c in [
            Cursor {
                score: 1.0,
                id: "p-17".into(),
            },
            Cursor {
                score: 0.1 + 0.2,
                id: "ünïcode/ä".into(),
            },
            Cursor {
                score: f32::MIN_POSITIVE,
                id: "x".into(),
            },
            Cursor {
                score: 0.0,
                id: "a b".into(),
            },
        ] {
            let text = c.encode();
            assert!(text.starts_with("c1."));
            let back = Cursor::decode(&text).expect("round trip");
            assert_eq!(back.score.to_bits(), c.score.to_bits());
            assert_eq!(back.id, c.id);
        }
    }

    #[test]
    fn malformed_cursors_are_bad_input() {
        for bad in ["", "c1.", "zz", "c1.!!!", "c1.AAAA", "c2.AAAAAGE"] {
            let e = Cursor::decode(bad).expect_err(bad);
            assert!(matches!(e, RouterError::InvalidArgument(_)), "{bad}: {e:?}");
        }
        let nan = {
            let mut b = f32::NAN.to_bits().to_be_bytes().to_vec();
            b.push(b'a');
            format!("c1.{}", URL_SAFE_NO_PAD.encode(b))
        };
        assert!(Cursor::decode(&nan).is_err());
    }

    #[test]
    fn merges_by_score_then_id_and_dedupes() {
        let page = merge(
            vec![
                vec![hit("b", 3.0), hit("d", 1.0)],
                vec![hit("a", 3.0), hit("c", 2.0), hit("b", 0.5)],
            ],
            None,
            3,
            false,
        );
        let ids: Vec<&str> = page.hits.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
        assert_eq!(
            page.next,
            Some(Cursor {
                score: 2.0,
                id: "c".into()
            })
        );
        let last = merge(vec![vec![hit("d", 1.0)]], page.next.as_ref(), 3, false);
        assert_eq!(last.hits.len(), 1);
        assert_eq!(last.next, None);
    }

    /// A shard: its hits in result order, answering "top n after cursor".
    fn shard_page(shard: &[Hit], after: Option<&Cursor>, n: usize) -> (Vec<Hit>, bool) {
        let rest: Vec<Hit> = shard
            .iter()
            .filter(|h| after.is_none_or(|c| is_after(h, c)))
            .cloned()
            .collect();
        let more = rest.len() > n;
        (rest.into_iter().take(n).collect(), more)
    }

    proptest! {
        #[test]
        fn paging_has_no_duplicates_and_no_gaps(
            // Scores from a small set so that ties are common.
            docs in proptest::collection::vec((0u8..6, 0usize..4), 0..120),
            limit in 1usize..17,
        ) {
            let shards_n = 4;
            let mut shards: Vec<Vec<Hit>> = vec![Vec::new(); shards_n];
            let mut expected: Vec<Hit> = Vec::new();
            for (i, (score, shard)) in docs.iter().enumerate() {
                let h = hit(&format!("d{i:03}"), f32::from(*score) * 0.37);
                shards[*shard].push(h.clone());
                expected.push(h);
            }
            for s in &mut shards {
                s.sort_by(hit_order);
            }
            expected.sort_by(hit_order);

            let mut got: Vec<Hit> = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..=expected.len() + 1 {
                let after = cursor.as_deref().map(|c| Cursor::decode(c).expect("own cursor"));
                let mut pages = Vec::new();
                let mut more = false;
                for s in &shards {
                    let (p, m) = shard_page(s, after.as_ref(), limit);
                    more |= m;
                    pages.push(p);
                }
                let page = merge(pages, after.as_ref(), limit, more);
                prop_assert!(page.hits.len() <= limit);
                got.extend(page.hits);
                match page.next {
                    Some(c) => cursor = Some(c.encode()),
                    None => break,
                }
            }
            prop_assert_eq!(got, expected);
        }
    }
}
