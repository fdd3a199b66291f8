//! A reranked search's first-phase page: up to a few hundred candidates whose ids and spaces
//! are only read (to key feature rows and to break ties) until the second phase keeps a page
//! of ten.
//!
//! Ids therefore share one buffer and spaces are interned, instead of two `String`s per
//! candidate: on a 100-candidate search those 200 allocations (and their frees, often on
//! another thread) profiled as the largest part of the deeper first phase's cost.

/// The first phase's best candidates (see [`Candidates::keep_best`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidates {
    /// Every candidate's id, back to back.
    ids: String,
    entries: Vec<Entry>,
    /// Distinct spaces; `Entry::space` indexes it.
    spaces: Vec<String>,
    /// Whether every candidate's space is known (an index built before the `space` column
    /// has none: the caller then reads spaces from the stored rows).
    spaces_known: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    id_start: u32,
    id_end: u32,
    score: f32,
    space: u32,
}

/// The space number of a candidate whose space is unknown or empty: it reads as "".
pub const NO_SPACE: u32 = u32::MAX;

/// One candidate, borrowed from [`Candidates`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CandidateRef<'a> {
    /// The document id, which feature rows and tie-breaks use.
    pub id: &'a str,
    /// The first phase's (BM25) score.
    pub score: f32,
    /// "" when unknown or when the document has no space.
    pub space: &'a str,
}

/// Ids and spaces longer than `u32::MAX` bytes in one page cannot happen (ids are bounded by
/// document validation, pages by `MAX_SEARCH_LIMIT`); this is what one would be cut to.
fn offset(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

impl Candidates {
    /// An empty page for about `n` candidates; `spaces_known` says whether pushes carry spaces.
    pub fn with_capacity(n: usize, spaces_known: bool) -> Self {
        Self {
            ids: String::with_capacity(n * 16),
            entries: Vec::with_capacity(n),
            spaces: Vec::new(),
            spaces_known,
        }
    }

    /// Adds a candidate in space number `space` (from [`Self::intern_space`], or [`NO_SPACE`]).
    pub fn push(&mut self, id: &str, score: f32, space: u32) {
        let id_start = offset(self.ids.len());
        self.ids.push_str(id);
        self.entries.push(Entry {
            id_start,
            id_end: offset(self.ids.len()),
            score,
            space,
        });
    }

    /// The number of `space` for [`Self::push`]. A page spans few spaces, so a scan is
    /// cheaper than hashing; callers intern each distinct space once per segment.
    pub fn intern_space(&mut self, space: &str) -> u32 {
        match self.spaces.iter().position(|s| s == space) {
            Some(i) => offset(i),
            None => {
                self.spaces.push(space.to_string());
                offset(self.spaces.len() - 1)
            }
        }
    }

    /// Whether every candidate's space is known.
    pub fn spaces_known(&self) -> bool {
        self.spaces_known
    }

    /// How many candidates the page holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the first phase found nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Candidate `i` (panics out of range, as slice indexing does).
    pub fn get(&self, i: usize) -> CandidateRef<'_> {
        let e = self.entries[i];
        CandidateRef {
            id: &self.ids[e.id_start as usize..e.id_end as usize],
            score: e.score,
            space: self.spaces.get(e.space as usize).map_or("", String::as_str),
        }
    }

    /// The candidates in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = CandidateRef<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Keeps the first `limit` candidates in (score descending, id ascending) order, in no
    /// particular order: the second phase orders them by its own score, so a selection (linear)
    /// does instead of a sort (which, with the many equal BM25 scores of short documents,
    /// spent most of its time comparing ids).
    pub fn keep_best(&mut self, limit: usize) {
        if self.entries.len() <= limit {
            return;
        }
        if let Some(last) = limit.checked_sub(1) {
            let ids = &self.ids;
            let id = |e: &Entry| &ids[e.id_start as usize..e.id_end as usize];
            self.entries.select_nth_unstable_by(last, |a, b| {
                b.score.total_cmp(&a.score).then_with(|| id(a).cmp(id(b)))
            });
        }
        self.entries.truncate(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_keep_ids_and_interned_spaces_in_hit_order() {
        let mut c = Candidates::with_capacity(4, true);
        let eng = c.intern_space("ENG");
        let ops = c.intern_space("OPS");
        assert_eq!(c.intern_space("ENG"), eng, "a space is interned once");
        let none = c.intern_space("");
        c.push("b", 1.0, eng);
        c.push("a", 1.0, ops);
        c.push("c", 3.0, none);
        c.push("d", 0.5, eng);
        c.push("0", 0.5, ops);
        c.keep_best(4);
        let mut got: Vec<(&str, f32, &str)> = c.iter().map(|h| (h.id, h.score, h.space)).collect();
        got.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(
            got,
            vec![
                ("0", 0.5, "OPS"),
                ("a", 1.0, "OPS"),
                ("b", 1.0, "ENG"),
                ("c", 3.0, "")
            ],
            "the best by score, a tie at the cut broken by id"
        );
        c.keep_best(0);
        assert!(c.is_empty());
        assert!(c.spaces_known());
    }
}
