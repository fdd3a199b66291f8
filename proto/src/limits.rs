//! Every input limit, in one place. Error messages quote these constants so
//! a user can see which limit they hit.

/// Largest document id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Largest title, in bytes.
pub const MAX_TITLE_BYTES: usize = 4 * 1024;
/// Largest body, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most principals over all permission levels of one document.
pub const MAX_PRINCIPALS: usize = 256;
/// Most ancestors of one document (page-tree depth).
pub const MAX_ANCESTORS: usize = 64;
/// Most labels on one document.
pub const MAX_LABELS: usize = 64;
/// Most contributors on one document.
pub const MAX_CONTRIBUTORS: usize = 256;
/// Largest space key, tenant id or label, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Most terms in one query: Lucene's and Elasticsearch's default clause
/// limit, so a pasted paragraph or error message is a query, not bad
/// input. What such a query costs is measured by `scripts/bench.sh core`
/// ("Queries at the term limit").
pub const MAX_QUERY_TERMS: usize = 1024;
/// Largest query text, in bytes: room for `MAX_QUERY_TERMS` words of
/// average length with punctuation.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Most hits in one page of results.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Most operations in one write batch.
pub const MAX_BATCH_OPS: usize = 10_000;
/// Most groups one user may belong to.
pub const MAX_GROUPS_PER_USER: usize = 1024;
/// Most conjuncts a document's permissions may compile to (DNF size).
pub const MAX_CONJUNCTS: usize = 4096;
/// Largest absolute `value` an event may carry, so fixed-point sums of a
/// feature's tiles cannot overflow.
pub const MAX_EVENT_VALUE_ABS: f64 = 1e12;
/// Most rows one `historical_features` request may carry.
pub const MAX_HISTORICAL_ROWS: usize = 100_000;
/// Most feature definitions one tenant may register.
pub const MAX_FEATURES: usize = 256;
/// Largest `features.toml` accepted, in bytes.
pub const MAX_FEATURES_TOML_BYTES: usize = 256 * 1024;
