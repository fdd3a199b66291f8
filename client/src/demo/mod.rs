//! A synthetic, Confluence-like demo data set, deterministic for a seed.
//!
//! [`generate`] makes tenants with Zipf-distributed sizes. Each tenant has
//! a few spaces with page trees (ancestor chains up to [`MAX_DEPTH`]
//! deep), users and groups, hierarchical permissions (space-level group
//! sets, some restricted subtrees, some page-level user restrictions, most
//! pages open to their space), labels, contributors and timestamps, plus
//! simulated view, edit and click events, and held-out search sessions
//! with a click to evaluate ranking on. Page text comes from a
//! [`text::TextSource`], normally the Wikipedia dump streamed out of its
//! zstd file.
//!
//! It writes, under the output directory:
//!
//! ```text
//! tenants.json            the manifest (see [`Manifest`])
//! <tenant>/docs.jsonl     documents, parents before children (DESIGN.md data model)
//! <tenant>/groups.jsonl   {"user":"u:x","groups":["g:y"]}
//! <tenant>/events.jsonl   {"kind":"view","user":"u:x","doc":"p-1","space":"ENG","ts":"...","id":"e0"}, in time order
//! <tenant>/clicks.jsonl   {"user":"u:x","query":"two words","doc":"p-1","ts":"..."}: searches with a
//!                         click, in time order after every event, never written as events
//!                         (see [`sessions`] for the model); `tessera eval --clicks` reads them
//! ```
//!
//! The chaos harness and the benchmarks reuse [`generate_tenant`] and
//! [`visible`] (a brute-force permission oracle).

pub mod rng;
pub mod sessions;
pub mod text;
pub mod zipf;

mod tenant;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use tessera_proto::Document;

pub use tenant::generate_tenant;

/// Deepest ancestor chain a generated page gets.
pub const MAX_DEPTH: usize = 6;
/// The demo world starts here (RFC 3339).
pub const EPOCH_START: &str = "2023-01-01T00:00:00Z";
/// The demo world's "now": no timestamp is later (RFC 3339).
pub const EPOCH_END: &str = "2026-10-01T00:00:00Z";
/// The default regions, as `scripts/cluster.sh up` names them.
pub const DEFAULT_REGIONS: &[&str] = &["us-east", "eu-west", "ap-south"];

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Reading the text source or writing output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The text source is unusable.
    #[error("text source: {0}")]
    Text(String),
    /// The configuration makes no sense.
    #[error("bad demo configuration: {0}")]
    Config(String),
    /// A generated document broke the data contract (a generator bug).
    #[error("generated an invalid document {id}: {message}")]
    Invalid {
        /// Document id.
        id: String,
        /// The validation error.
        message: String,
    },
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    /// Number of tenants.
    pub tenants: usize,
    /// Total documents over all tenants.
    pub docs: usize,
    /// Seed: the same seed and text give the same set, byte for byte.
    pub seed: u64,
    /// The cluster's regions; tenants are homed and allowed among them.
    pub regions: Vec<String>,
    /// Zipf exponent of the tenant sizes (1.0: the largest tenant is twice
    /// the second and three times the third).
    pub tenant_zipf: f64,
    /// Events per document, on average.
    pub events_per_doc: f64,
    /// Bodies are cut to this many bytes.
    pub max_body_bytes: usize,
    /// Simulated search sessions with a click per document, on average (see [`sessions`]):
    /// the held-out judgments `tessera eval --clicks` ranks with.
    pub sessions_per_doc: f64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            tenants: 20,
            docs: 10_000,
            seed: 42,
            regions: DEFAULT_REGIONS.iter().map(|r| r.to_string()).collect(),
            tenant_zipf: 1.0,
            events_per_doc: 2.0,
            max_body_bytes: 4096,
            sessions_per_doc: 0.2,
        }
    }
}

impl DemoConfig {
    /// Checks the numbers before any work is done.
    pub fn validate(&self) -> Result<(), DemoError> {
        if self.tenants == 0 {
            return Err(DemoError::Config("--tenants must be at least 1".into()));
        }
        if self.docs < self.tenants {
            return Err(DemoError::Config(format!(
                "--docs ({}) must be at least --tenants ({})",
                self.docs, self.tenants
            )));
        }
        if self.regions.is_empty() || self.regions.iter().any(|r| r.trim().is_empty()) {
            return Err(DemoError::Config(
                "--regions must name at least one region".into(),
            ));
        }
        let distinct: BTreeSet<&String> = self.regions.iter().collect();
        if distinct.len() != self.regions.len() {
            return Err(DemoError::Config(format!(
                "--regions has duplicates: {:?}",
                self.regions
            )));
        }
        if !(self.tenant_zipf.is_finite() && self.tenant_zipf >= 0.0) {
            return Err(DemoError::Config(
                "the Zipf exponent must be a finite number >= 0".into(),
            ));
        }
        if !(self.events_per_doc.is_finite() && self.events_per_doc >= 0.0) {
            return Err(DemoError::Config(
                "--events-per-doc must be a finite number >= 0".into(),
            ));
        }
        if !(self.sessions_per_doc.is_finite() && self.sessions_per_doc >= 0.0) {
            return Err(DemoError::Config(
                "--sessions-per-doc must be a finite number >= 0".into(),
            ));
        }
        if self.max_body_bytes < 16 {
            return Err(DemoError::Config(
                "--max-body-bytes must be at least 16".into(),
            ));
        }
        Ok(())
    }
}

/// Commands that show something with a tenant: a user, a query that
/// matches pages this user may see, and a more restricted user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// A regular member of staff.
    pub user: String,
    /// A word in many pages `user` may see.
    pub query: String,
    /// Pages `user` may see whose title or body contains `query` as a word
    /// (the stemmed search may match a few more).
    pub matching_docs: usize,
    /// A contractor, who sees fewer pages.
    pub other_user: String,
    /// The same count for `other_user`.
    pub other_matching_docs: usize,
}

/// One tenant of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantManifest {
    /// Tenant id.
    pub id: String,
    /// Allowed regions, home first.
    pub regions: Vec<String>,
    /// Home region.
    pub home: String,
    /// Survival goal: `zone` or `region`.
    pub survival: String,
    /// Partition count (larger tenants get 2 to 4).
    pub partitions: u32,
    /// Documents.
    pub docs: usize,
    /// Users.
    pub users: usize,
    /// Space keys.
    pub spaces: Vec<String>,
    /// Events (the history; the sessions are not among them).
    pub events: usize,
    /// Search sessions with a click (`clicks.jsonl`).
    #[serde(default)]
    pub sessions: usize,
    /// Directory of the tenant's files, relative to the manifest.
    pub dir: String,
    /// Something to try.
    pub example: Example,
}

/// `tenants.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The seed the set was made with.
    pub seed: u64,
    /// Total documents.
    pub docs: usize,
    /// The regions tenants were placed in.
    pub regions: Vec<String>,
    /// Tenants, largest first.
    pub tenants: Vec<TenantManifest>,
}

/// One `groups.jsonl` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// `u:<user>`.
    pub user: String,
    /// `g:<group>` principals, sorted.
    pub groups: Vec<String>,
}

/// One `events.jsonl` line (DESIGN.md "Feature store").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `view`, `edit` or `click`.
    pub kind: String,
    /// `u:<user>`.
    pub user: String,
    /// Document id.
    pub doc: String,
    /// The document's space.
    pub space: String,
    /// RFC 3339 time.
    pub ts: String,
    /// Unique per event (`e<n>`, in time order): times are whole seconds, so
    /// two real views of one page by one user can share every other field,
    /// and the feature store counts an event with a repeated id once.
    pub id: String,
}

/// Everything generated for one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantData {
    /// Its manifest entry.
    pub manifest: TenantManifest,
    /// Documents, parents before children.
    pub docs: Vec<Document>,
    /// Group memberships, one per user.
    pub groups: Vec<Membership>,
    /// Events in time order.
    pub events: Vec<Event>,
    /// Search sessions with a click, in time order after every event and never among
    /// `events` (see [`sessions`]).
    pub sessions: Vec<sessions::Session>,
}

/// Well-known tenant names, largest tenant first; more get `tenant-NN`.
const TENANT_NAMES: &[&str] = &[
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "tyrell",
    "cyberdyne",
    "wonka",
    "oscorp",
    "aperture",
    "vandelay",
    "dunder",
    "piedpiper",
    "monarch",
    "nakatomi",
    "soylent",
    "gringotts",
    "duff",
];

/// The id of the tenant of size rank `index` (0 = largest).
pub fn tenant_name(index: usize) -> String {
    TENANT_NAMES
        .get(index)
        .map_or_else(|| format!("tenant-{:02}", index + 1), |n| n.to_string())
}

/// The document counts of the tenants, largest first: Zipf-shaped and
/// summing to `config.docs`.
pub fn tenant_sizes(config: &DemoConfig) -> Vec<usize> {
    let min = (config.docs / config.tenants).min(5);
    zipf::zipf_sizes(config.docs, config.tenants, config.tenant_zipf, min)
}

/// Whether a user holding `principals` (their `u:` id and their groups)
/// may see `doc`: every non-empty permission level must admit one of
/// them. This is the brute-force oracle the permission filter is checked
/// against.
pub fn visible(doc: &Document, principals: &BTreeSet<String>) -> bool {
    let admits = |set: &Vec<String>| set.is_empty() || set.iter().any(|p| principals.contains(p));
    let p = &doc.permissions;
    admits(&p.space) && admits(&p.page) && p.ancestors.iter().all(admits)
}

/// Generates the whole set into `out` and returns its manifest (also
/// written as `out/tenants.json`). Tenants are generated and written one
/// at a time, so memory stays bounded by the largest tenant.
pub fn generate(
    config: &DemoConfig,
    text: &mut dyn text::TextSource,
    out: &Path,
) -> Result<Manifest, DemoError> {
    config.validate()?;
    create_dir(out)?;
    let sizes = tenant_sizes(config);
    let mut tenants = Vec::with_capacity(sizes.len());
    for (index, size) in sizes.iter().enumerate() {
        let data = generate_tenant(config, index, *size, text)?;
        let dir = out.join(&data.manifest.dir);
        create_dir(&dir)?;
        write_jsonl(&dir.join("docs.jsonl"), &data.docs)?;
        write_jsonl(&dir.join("groups.jsonl"), &data.groups)?;
        write_jsonl(&dir.join("events.jsonl"), &data.events)?;
        write_jsonl(&dir.join("clicks.jsonl"), &data.sessions)?;
        tenants.push(data.manifest);
    }
    let manifest = Manifest {
        seed: config.seed,
        docs: config.docs,
        regions: config.regions.clone(),
        tenants,
    };
    let path = out.join("tenants.json");
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| DemoError::Io {
        what: "encoding tenants.json".into(),
        source: e.into(),
    })?;
    std::fs::write(&path, format!("{text}\n")).map_err(|e| DemoError::Io {
        what: format!("writing {}", path.display()),
        source: e,
    })?;
    Ok(manifest)
}

fn create_dir(dir: &Path) -> Result<(), DemoError> {
    std::fs::create_dir_all(dir).map_err(|e| DemoError::Io {
        what: format!("creating {}", dir.display()),
        source: e,
    })
}

/// Writes one JSON object per line.
fn write_jsonl<T: Serialize>(path: &PathBuf, items: &[T]) -> Result<(), DemoError> {
    let io = |e: std::io::Error| DemoError::Io {
        what: format!("writing {}", path.display()),
        source: e,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    for item in items {
        serde_json::to_writer(&mut w, item).map_err(|e| io(e.into()))?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)
}
