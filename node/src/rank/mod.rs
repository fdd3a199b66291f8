//! Rank profiles (DESIGN.md "Ranking and experiments"): named, versioned
//! linear models over BM25 and feature values, registered in `features.toml`
//! beside the features they read, and evaluated on the node over the
//! first phase's top-N candidates (`rerank`), and experiments that split users
//! between profiles (`experiment`).

pub mod experiment;
pub mod profile;
pub mod rerank;

pub use experiment::{parse_experiments, Assignment, Experiment, ExperimentError};
pub use profile::{parse_profiles, select, Explained, ProfileError, RankProfile, Term, Transform};
pub use rerank::{after_cursor, rerank, RerankContext, Reranked};
