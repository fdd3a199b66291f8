//! Rank profiles (DESIGN.md "Ranking and experiments"): named, versioned
//! linear models over BM25 and feature values, evaluated on the node over
//! the top-N candidates.
//!
//! Status: parsing, validation and scoring (with per-hit explanations) are
//! here and tested; the search handler does not call them yet.

pub mod profile;

pub use profile::{parse_profiles, Explained, ProfileError, RankProfile, Term, Transform};
