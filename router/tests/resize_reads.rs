//! Paged search across a resize, as a property: random tenants resized
//! 1 → N (or moved to other shards), pages read at random moments of the
//! copy, the cut-over, the drops and the end, with the router's own shard
//! choice (`Topology::read_shards`), statistics set
//! (`Topology::complete_shards`), merge and cursor. Every matching document
//! comes back exactly once over the pages (no duplicate, no gap) and the
//! match count is the tenant's, whichever phase each page saw.
//!
//! Shards are modelled (which documents each holds in each phase, and BM25
//! over the global statistics the router would send); the router code under
//! test is the real one.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use tessera_proto::pb::{Hit, ResizeInfo, TenantInfo};
use tessera_proto::ShardId;
use tessera_router::merge::{hit_order, is_after, merge, Cursor};
use tessera_router::topology::Topology;

/// One document: its id, how often it holds the query term, its length.
#[derive(Debug, Clone)]
struct Doc {
    id: String,
    tf: u32,
    len: u32,
}

/// Where a resize is when a page is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Moment {
    Copying,
    /// Dropping, with this many of the old shards done dropping.
    Dropping(usize),
    Done,
}

fn tenant_at(old: &[ShardId], new: &[ShardId], m: Moment) -> TenantInfo {
    let resize = |phase: &str, dropped: Vec<ShardId>| ResizeInfo {
        to: new.to_vec(),
        phase: phase.into(),
        dropped,
        ..Default::default()
    };
    match m {
        Moment::Copying => TenantInfo {
            id: "t".into(),
            partitions: old.to_vec(),
            resize: Some(resize("copying", Vec::new())),
            ..Default::default()
        },
        Moment::Dropping(n) => TenantInfo {
            id: "t".into(),
            partitions: old.to_vec(),
            resize: Some(resize("dropping", old.iter().take(n).copied().collect())),
            ..Default::default()
        },
        Moment::Done => TenantInfo {
            id: "t".into(),
            partitions: new.to_vec(),
            ..Default::default()
        },
    }
}

/// The documents `shard` holds at moment `m`: its old-placement documents
/// (until its drop, only those it keeps afterwards) and, once the copy is
/// done, its new-placement documents.
fn held(docs: &[Doc], old: &[ShardId], new: &[ShardId], m: Moment, shard: ShardId) -> Vec<Doc> {
    let place = |placement: &[ShardId], id: &str| {
        Topology::shard_for_doc(
            &TenantInfo {
                partitions: placement.to_vec(),
                ..Default::default()
            },
            id,
        )
    };
    let dropped_old = match m {
        Moment::Copying => false,
        Moment::Dropping(n) => old.iter().take(n).any(|s| *s == shard),
        Moment::Done => true,
    };
    docs.iter()
        .filter(|d| {
            let in_old = place(old, &d.id) == Some(shard);
            let in_new = place(new, &d.id) == Some(shard);
            // New-placement rows exist from the copy on (the model reads
            // them only once the router does).
            (in_old && (!dropped_old || in_new)) || (in_new && m != Moment::Copying)
        })
        .cloned()
        .collect()
}

/// (documents, total length, documents with the term) over `shards`.
fn stats(
    docs: &[Doc],
    old: &[ShardId],
    new: &[ShardId],
    m: Moment,
    shards: &[ShardId],
) -> (u64, u64, u64) {
    let mut out = (0, 0, 0);
    for &s in shards {
        for d in held(docs, old, new, m, s) {
            out.0 += 1;
            out.1 += u64::from(d.len);
            out.2 += u64::from(d.tf > 0);
        }
    }
    out
}

fn bm25(d: &Doc, (n, total_len, df): (u64, u64, u64)) -> f32 {
    let (k1, b) = (1.2f64, 0.75f64);
    let avg = total_len as f64 / n.max(1) as f64;
    let idf = (1.0 + (n as f64 - df as f64 + 0.5) / (df as f64 + 0.5)).ln();
    let tf = f64::from(d.tf);
    (idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * f64::from(d.len) / avg))) as f32
}

/// One page the way the router reads it at moment `m`.
fn page(
    docs: &[Doc],
    old: &[ShardId],
    new: &[ShardId],
    m: Moment,
    after: Option<&Cursor>,
    limit: usize,
) -> (Vec<Hit>, Option<Cursor>, u64) {
    let tenant = tenant_at(old, new, m);
    let read = Topology::read_shards(&tenant);
    let complete = Topology::complete_shards(&tenant);
    let global = stats(docs, old, new, m, &complete);
    let mut pages = Vec::new();
    let mut more = false;
    let mut total = 0;
    for &s in &read {
        let mut hits: Vec<Hit> = held(docs, old, new, m, s)
            .iter()
            .filter(|d| d.tf > 0)
            .map(|d| Hit {
                id: d.id.clone(),
                score: bm25(d, global),
                explanation: None,
                ..Default::default()
            })
            .collect();
        if complete.contains(&s) {
            total += hits.len() as u64;
        }
        hits.sort_by(hit_order);
        hits.retain(|h| after.is_none_or(|c| is_after(h, c)));
        more |= hits.len() > limit;
        hits.truncate(limit + 1);
        pages.push(hits);
    }
    let p = merge(pages, after, limit, more);
    (p.hits, p.next, total)
}

fn docs_strategy() -> impl Strategy<Value = Vec<Doc>> {
    prop::collection::vec((0u32..4, 1u32..40), 5..60).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (tf, len))| Doc {
                id: format!("p-{i}"),
                tf,
                len: len.max(tf),
            })
            .collect()
    })
}

/// Old and new placements: a resize 1 → 2, 4 or 8 that keeps the first
/// shard, or a move of every partition to fresh shards.
fn placements() -> impl Strategy<Value = (Vec<ShardId>, Vec<ShardId>)> {
    prop_oneof![
        (1u64..4).prop_map(|k| {
            let n = 1usize << k;
            let mut new = vec![1];
            new.extend((0..n - 1).map(|i| 10 + i as u64));
            (vec![1], new)
        }),
        Just((vec![1, 2], vec![1, 2, 11, 12])),
        Just((vec![1, 2], vec![21, 22])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn paging_across_a_resize_returns_every_match_once(
        docs in docs_strategy(),
        (old, new) in placements(),
        limit in 1usize..7,
        steps in prop::collection::vec(0usize..4, 1..40),
    ) {
        let matching: BTreeSet<String> =
            docs.iter().filter(|d| d.tf > 0).map(|d| d.id.clone()).collect();
        // Moments only move forward; each page may see a later one.
        let mut moments = vec![Moment::Copying];
        moments.extend((0..=old.len()).map(Moment::Dropping));
        moments.push(Moment::Done);
        let mut at = 0usize;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut cursor: Option<Cursor> = None;
        let mut pages = 0;
        loop {
            let (hits, next, total) = page(&docs, &old, &new, moments[at], cursor.as_ref(), limit);
            prop_assert_eq!(total as usize, matching.len(), "match count at {:?}", moments[at]);
            for h in hits {
                *seen.entry(h.id).or_default() += 1;
            }
            pages += 1;
            prop_assert!(pages <= matching.len() + 2, "paging did not end");
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
            at = (at + steps[pages % steps.len()]).min(moments.len() - 1);
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        prop_assert!(twice.is_empty(), "returned twice: {:?}", twice);
        let got: BTreeSet<String> = seen.into_keys().collect();
        prop_assert_eq!(got, matching, "missing or extra documents");
    }
}
