//! A zero-scoring "field holds any of these terms" filter whose cost follows the matching
//! documents, not the segment size.
//!
//! tantivy's `TermSetQuery` allocates, zeroes and scans a bitset of `max_doc` bits in every
//! segment, even a segment where none of the terms occur. For the permission filter that is the
//! wrong shape: the user's allowed tokens usually match a small part of the tenant, and the
//! documents hidden from the user (which can be millions) would still make every search slower.
//! [`AnyOfQuery`] looks each term up in the segment's term dictionary instead and:
//! - matches nothing in a segment holding none of the terms (an empty scorer, which also lets
//!   the enclosing conjunction skip building the text scorer there);
//! - collects the postings into a sorted list when they are sparse;
//! - falls back to a bitset only when they are dense, where the bitset is the cheaper shape.

use tantivy::query::{
    BitSetDocSet, ConstScorer, EmptyScorer, EnableScoring, Explanation, Query, Scorer, Weight,
};
use tantivy::schema::IndexRecordOption;
use tantivy::{BitSet, DocId, DocSet, Score, SegmentReader, TantivyError, Term, TERMINATED};

/// Above this share of the segment (1 / N) the matches go into a bitset rather than a list: a
/// list costs 4 bytes and a sort step per match, a bitset 1 bit per document of the segment.
const DENSE_SHARE: u64 = 32;

/// Documents whose field holds at least one of the terms; every term must be of the same field.
#[derive(Clone, Debug)]
pub(crate) struct AnyOfQuery {
    terms: Vec<Term>,
}

impl AnyOfQuery {
    /// Deduplicates the terms so that the sparse path never sees a document twice per term.
    pub(crate) fn new(mut terms: Vec<Term>) -> Self {
        terms.sort();
        terms.dedup();
        Self { terms }
    }
}

impl Query for AnyOfQuery {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(AnyOfWeight {
            terms: self.terms.clone(),
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        for term in &self.terms {
            visitor(term, false);
        }
    }
}

struct AnyOfWeight {
    terms: Vec<Term>,
}

impl AnyOfWeight {
    /// The postings of every term present in this segment, with the total document count.
    fn present_terms(
        &self,
        reader: &SegmentReader,
    ) -> tantivy::Result<Vec<(tantivy::postings::TermInfo, u32)>> {
        let Some(first) = self.terms.first() else {
            return Ok(Vec::new());
        };
        let inverted = reader.inverted_index(first.field())?;
        let mut present = Vec::new();
        for term in &self.terms {
            if let Some(info) = inverted.get_term_info(term)? {
                let freq = info.doc_freq;
                present.push((info, freq));
            }
        }
        Ok(present)
    }

    /// Calls `each` with every block of matching documents, term by term.
    fn for_each_block(
        &self,
        reader: &SegmentReader,
        present: &[(tantivy::postings::TermInfo, u32)],
        mut each: impl FnMut(&[DocId]),
    ) -> tantivy::Result<()> {
        let Some(first) = self.terms.first() else {
            return Ok(());
        };
        let inverted = reader.inverted_index(first.field())?;
        for (info, _) in present {
            let mut block =
                inverted.read_block_postings_from_terminfo(info, IndexRecordOption::Basic)?;
            loop {
                let docs = block.docs();
                if docs.is_empty() {
                    break;
                }
                each(docs);
                block.advance();
            }
        }
        Ok(())
    }
}

impl Weight for AnyOfWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let present = self.present_terms(reader)?;
        let matches: u64 = present.iter().map(|(_, freq)| u64::from(*freq)).sum();
        if matches == 0 {
            return Ok(Box::new(EmptyScorer));
        }
        let max_doc = reader.max_doc();
        if matches * DENSE_SHARE > u64::from(max_doc) {
            let mut bits = BitSet::with_max_value(max_doc);
            self.for_each_block(reader, &present, |docs| {
                for &doc in docs {
                    bits.insert(doc);
                }
            })?;
            return Ok(Box::new(ConstScorer::new(BitSetDocSet::from(bits), boost)));
        }
        let mut docs = Vec::with_capacity(usize::try_from(matches).unwrap_or(0));
        self.for_each_block(reader, &present, |block| docs.extend_from_slice(block))?;
        if present.len() > 1 {
            docs.sort_unstable();
            docs.dedup();
        }
        Ok(Box::new(ConstScorer::new(SortedDocs::new(docs), boost)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut scorer = self.scorer(reader, 1.0)?;
        if scorer.doc() <= doc && scorer.seek(doc) == doc {
            Ok(Explanation::new("AnyOf", 1.0))
        } else {
            Err(TantivyError::InvalidArgument(format!(
                "document {doc} holds none of the terms"
            )))
        }
    }
}

/// A strictly increasing list of document ids as a doc set, seeking by binary search.
struct SortedDocs {
    docs: Vec<DocId>,
    cursor: usize,
}

impl SortedDocs {
    fn new(docs: Vec<DocId>) -> Self {
        Self { docs, cursor: 0 }
    }
}

impl DocSet for SortedDocs {
    fn advance(&mut self) -> DocId {
        self.cursor = (self.cursor + 1).min(self.docs.len());
        self.doc()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        let rest = &self.docs[self.cursor..];
        self.cursor += rest.partition_point(|&doc| doc < target);
        self.doc()
    }

    fn doc(&self) -> DocId {
        self.docs.get(self.cursor).copied().unwrap_or(TERMINATED)
    }

    fn size_hint(&self) -> u32 {
        u32::try_from(self.docs.len() - self.cursor).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Seeking and advancing visit exactly the ids at or after each target, in order.
        #[test]
        fn sorted_docs_seek_matches_a_scan(
            ids in proptest::collection::btree_set(0u32..10_000, 0..200),
            targets in proptest::collection::vec(0u32..10_100, 0..20),
        ) {
            let ids: Vec<u32> = ids.into_iter().collect();
            let mut set = SortedDocs::new(ids.clone());
            let mut sorted_targets = targets;
            sorted_targets.sort_unstable();
            for target in sorted_targets {
                // Seeking backwards is not allowed (an exhausted set is at TERMINATED).
                if set.doc() >= target {
                    continue;
                }
                let expected = ids.iter().copied().find(|&d| d >= target).unwrap_or(TERMINATED);
                prop_assert_eq!(set.seek(target), expected);
                if expected != TERMINATED {
                    let next = ids.iter().copied().find(|&d| d > expected).unwrap_or(TERMINATED);
                    prop_assert_eq!(set.advance(), next);
                }
            }
        }
    }
}
