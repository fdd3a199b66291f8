//! The command line (DESIGN.md "Interfaces": `tessera` CLI).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Tessera's command-line client: tenants, documents, groups, search, status.
///
/// Exit codes: 0 success, 2 bad input (nothing written), 3 unavailable or
/// timed out (retryable), 4 not allowed, 5 limited (retry after the hint),
/// 1 anything unexpected. Errors go to stderr as one line.
#[derive(Debug, Parser)]
#[command(name = "tessera", version)]
pub struct Cli {
    /// Router address (host:port); overrides --cluster.
    #[arg(long, global = true, env = "TESSERA_ROUTER")]
    pub router: Option<String>,
    /// Cluster file written by `scripts/cluster.sh up`.
    #[arg(long, global = true, default_value = ".cluster/cluster.json")]
    pub cluster: PathBuf,
    /// With --cluster: use this region's router instead of the first one.
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Deadline of each request, in ms (propagated to the nodes).
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// API key (tsk_...). Default: from the cluster file, the key of the command's tenant,
    /// else the admin key.
    #[arg(long, global = true, env = "TESSERA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// File holding the API key (as `keys create --out` writes it).
    #[arg(long, global = true, conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,
    /// The cluster CA (PEM) the router's TLS certificate is checked against. Default: the
    /// cluster file's. Without one the CLI connects in plaintext (routers run with --insecure).
    #[arg(long, global = true, env = "TESSERA_CA")]
    pub ca: Option<PathBuf>,
    /// A signed user token (JWT) for the acting user, for tenants that require one.
    #[arg(
        long,
        global = true,
        env = "TESSERA_USER_TOKEN",
        hide_env_values = true
    )]
    pub user_token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or show tenants.
    Tenant {
        /// Which tenant command.
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Bulk upsert documents from JSON Lines (a file, or - for stdin).
    Put(LoadArgs),
    /// Delete a document.
    Delete {
        /// Tenant.
        tenant: String,
        /// Document id.
        doc_id: String,
        /// Version of the delete (must be newer than the stored document's).
        #[arg(long)]
        version: u64,
        /// Session token of earlier writes to extend.
        #[arg(long)]
        token: Option<String>,
        /// Print {"acked":N,"rejected":[...],"token":"..."}.
        #[arg(long)]
        json: bool,
    },
    /// Read a document as a user sees it.
    Get {
        /// Tenant.
        tenant: String,
        /// Document id.
        doc_id: String,
        /// The reading user (u:alice).
        #[arg(long)]
        user: String,
        /// Session token: only read from replicas that have applied it.
        #[arg(long)]
        token: Option<String>,
        /// Print {"found":...,"doc":{...}}.
        #[arg(long)]
        json: bool,
    },
    /// Load group memberships from JSON Lines: {"user":"u:x","groups":["g:y"]}.
    Groups(LoadArgs),
    /// Search a tenant as a user.
    Search(SearchArgs),
    /// Evaluate relevance (nDCG@10, MAP, MRR, MRR@10) on a test collection or on search sessions
    /// with a click, and compare rankings.
    ///
    /// Loads a collection directory (docs.jsonl, queries.tsv, qrels.txt; see
    /// ../shared/data/ir) into a tenant through the router, runs every judged
    /// query and reports the means with 95% bootstrap confidence intervals.
    /// The tenant is created with --partitions P, or reused when it exists
    /// with that many partitions (reloading is harmless: every document has
    /// version 1). Queries are lowercased, stripped of punctuation and cut to
    /// MAX_QUERY_TERMS (64) terms, since nodes reject longer ones.
    ///
    /// With --clicks FILE --tenant T, evaluates a loaded tenant on search
    /// sessions instead (the demo set's clicks.jsonl). With --variant (repeatable),
    /// every query runs under every ranking and each is compared with the first:
    /// MRR@10 and nDCG@10 per variant, and the paired difference with its 95%
    /// interval. With --impressions, reads an experiment's router logs.
    Eval(EvalArgs),
    /// Write events (JSON Lines: {"kind":"view","user":"u:a","doc":"p-1","space":"ENG","ts":"..."}).
    /// One invalid line rejects the whole input; nothing is written. Each event counts once,
    /// however often it is sent (retries are safe): by its "id" when it has one, otherwise by
    /// its content, so two identical events in the same millisecond need distinct ids.
    Events {
        /// Tenant.
        tenant: String,
        /// JSON Lines file, or - for stdin.
        file: PathBuf,
        /// Print {"acked":N,"token":"..."}.
        #[arg(long)]
        json: bool,
    },
    /// The feature store: definitions, online and historical values.
    Features {
        /// Which feature command.
        #[command(subcommand)]
        command: FeaturesCommand,
    },
    /// Train a linear rank profile's weights from click logs (offline; needs no router).
    ///
    /// Reads the CSV that `tessera features historical` writes (feature
    /// columns, empty cell = null) with a label column (1 = clicked, 0 = shown
    /// and not clicked), a group column (query or session id) and a bm25 column
    /// (the candidate's first-phase score). Fits a pairwise logistic model
    /// (RankNet) over (clicked, not clicked) pairs within each group, linear in
    /// bm25 and the transformed features, exactly as the node scores a profile
    /// (a null takes the term's default before the transform). Deterministic:
    /// Newton's method from zero weights, no random initialisation.
    ///
    /// Prints a `[[profile]]` block to append to features.toml and register
    /// with `tessera features apply`; weights are scaled so bm25 = 1.0 when the
    /// learned bm25 weight is positive (scaling does not change a ranking).
    /// Training figures go to stderr: rows, groups, pairs, skipped groups,
    /// loss, and pairwise accuracy on the training groups and on a held-out
    /// share of groups chosen by a stable hash of the group id.
    Train(TrainArgs),
    /// Show the cluster's nodes and shards.
    Status {
        /// Print {"epoch":N,"nodes":[...],"shards":[...]}.
        #[arg(long)]
        json: bool,
    },
    /// Operate on nodes; check cluster invariants.
    Admin {
        /// Which admin command.
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Manage API keys (needs a cluster-level key with the admin scope).
    Keys {
        /// Which key command.
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key. Its text is printed once (or written to --out): store it now.
    Create {
        /// The tenant the key acts for; omit for a cluster-level key.
        #[arg(long)]
        tenant: Option<String>,
        /// What it may do: search, write, features, admin (admin only without --tenant).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// A label shown by `keys list`.
        #[arg(long, default_value = "")]
        name: String,
        /// Write the key's text to this file (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print {"key":"...","info":{...}}.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets), revoked ones included.
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; every router refuses it within the map watch delay.
    Revoke {
        /// The key id (the 16 hex digits after tsk_).
        id: String,
    },
    /// Require (or stop requiring) signed user tokens for a tenant's searches and gets.
    UserTokens {
        /// Tenant.
        tenant: String,
        /// The Ed25519 public key (PEM) that verifies the tenant's tokens.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Refuse searches and gets whose user comes without a valid token.
        #[arg(long)]
        required: bool,
    },
}

impl Command {
    /// The tenant the command acts on, which picks its key from the cluster
    /// file; `None` for cluster-level commands.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Command::Put(a) | Command::Groups(a) => Some(&a.tenant),
            Command::Search(a) => Some(&a.tenant),
            Command::Delete { tenant, .. }
            | Command::Get { tenant, .. }
            | Command::Events { tenant, .. } => Some(tenant),
            Command::Tenant {
                command: TenantCommand::Show { id, .. },
            } => Some(id),
            _ => None,
        }
    }
}

/// `admin` subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Move every replica off a node, online: each replica's replacement
    /// catches up first, then takes its place. The node takes no new
    /// replicas afterwards.
    Drain {
        /// Node id.
        node: u64,
        /// Return once the drain has begun instead of waiting until the node holds no replica.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (the drain goes on).
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
    },
    /// Return a drained or dead node to service: it takes new replicas again
    /// and the cluster moves its share of replicas back onto it, a few at a
    /// time. Calls off a drain still under way.
    Undrain {
        /// Node id.
        node: u64,
    },
    /// Check that no replica of any tenant's shard sits outside the tenant's allowed
    /// regions, both as the cluster map places replicas and as the nodes really host them.
    /// Exit 0: the invariant holds; 1: violations (each printed); 3: some node did not
    /// answer, so what it hosts went unchecked.
    CheckResidency {
        /// Print the report as one line of JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `tenant` subcommands.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        /// Tenant id.
        id: String,
        /// Regions the tenant's data may live in (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        regions: Vec<String>,
        /// Home region (default: the first of --regions).
        #[arg(long)]
        home: Option<String>,
        /// Survival goal.
        #[arg(long, value_enum)]
        survival: Option<Survival>,
        /// Partition count (default 1).
        #[arg(long)]
        partitions: Option<u32>,
        /// Print the tenant as `tenant show --json` does.
        #[arg(long)]
        json: bool,
    },
    /// Grow a tenant to more partitions, online: documents move while
    /// searches and writes go on. The new count must be a multiple of the
    /// current one (shrinking is not supported).
    Resize {
        /// Tenant id.
        id: String,
        /// The new partition count.
        #[arg(long)]
        partitions: u32,
        /// Return once the resize has begun instead of waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (the resize goes on).
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
        /// Print the tenant as `tenant show --json` does.
        #[arg(long)]
        json: bool,
    },
    /// Move a tenant's partitions to another shard, online (off a hot shard,
    /// or onto a fresh one): the same copy, double-write and cut-over as a
    /// resize, with the partition count unchanged.
    Move {
        /// Tenant id.
        id: String,
        /// Partition index to move (repeat or comma-separate; default: all).
        #[arg(long = "partition", value_delimiter = ',')]
        partitions: Vec<u32>,
        /// Target shard; it must serve the tenant's regions with the same
        /// home and survival goal (default: the open shard of that policy
        /// holding fewest tenants and none of this one, or a new shard).
        #[arg(long)]
        to_shard: Option<u64>,
        /// Return once the move has begun instead of waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (the move goes on).
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
        /// Print the tenant as `tenant show --json` does.
        #[arg(long)]
        json: bool,
    },
    /// Show a tenant's partitions, shards, replicas, document count and any resize or move in progress.
    Show {
        /// Tenant id.
        id: String,
        /// Print {"id":...,"regions":[...],...,"docs":N}.
        #[arg(long)]
        json: bool,
    },
}

/// A tenant's survival goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Survival {
    /// Voters in the home region, learners elsewhere.
    Zone,
    /// Voters spread over three or more regions.
    Region,
}

impl Survival {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Survival::Zone => "zone",
            Survival::Region => "region",
        }
    }
}

/// Arguments of `put` and `groups`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Tenant.
    pub tenant: String,
    /// JSON Lines file, or - for stdin.
    pub file: String,
    /// Lines per batch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Keep retrying a batch on retryable errors for this many seconds.
    #[arg(long, default_value_t = 60)]
    pub retry_secs: u64,
    /// Session token of earlier writes to extend.
    #[arg(long)]
    pub token: Option<String>,
    /// Print {"acked":N,"rejected":[{"line":N,"error":"..."}],"token":"..."}.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Tenant.
    pub tenant: String,
    /// The searching user (u:alice); results are filtered by their permissions.
    #[arg(long)]
    pub user: String,
    /// Query text (several words may be given unquoted). Plain words match
    /// either word (BM25). Syntax: "a phrase" (quote it for the shell: '"a b"'),
    /// -word (exclude), +word or `a AND b` (require), `a OR b`, pref* (prefix),
    /// "a phr"* (phrase prefix), title:word / body:word (one field). AND and OR
    /// are operators only in capitals. Put `--` before a query that starts
    /// with `-`. A malformed query is refused with the position of the problem.
    #[arg(required = true, num_args = 1..)]
    pub query: Vec<String>,
    /// Only this space (repeatable).
    #[arg(long = "space")]
    pub spaces: Vec<String>,
    /// Only documents under this page (repeatable).
    #[arg(long = "ancestor")]
    pub ancestors: Vec<String>,
    /// Only documents with this label (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Match titles only.
    #[arg(long)]
    pub title_only: bool,
    /// Page size (at most 1000).
    #[arg(long, default_value_t = 10)]
    pub limit: u32,
    /// Cursor from a previous page.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Session token: only use replicas that have applied it.
    #[arg(long)]
    pub token: Option<String>,
    /// Rank profile registered in the tenant's features.toml: NAME (its newest version) or
    /// NAME@VERSION. The node reranks the profile's top BM25 candidates with feature values.
    #[arg(long, conflicts_with = "experiment")]
    pub profile: Option<String>,
    /// Search under an experiment of the tenant's features.toml: the user's variant (by a
    /// hash of the user id) picks the profile. Prints the variant and, when the router keeps
    /// an impression log, the impression id that click events cite (`"impression"` field).
    #[arg(long)]
    pub experiment: Option<String>,
    /// With --profile: print each hit's BM25 score, feature values and their contributions.
    #[arg(long, requires = "profile")]
    pub explain: bool,
    /// Hits carry only id and score: no title, space, update time or snippet (cheaper, for
    /// callers that fetch the documents themselves).
    #[arg(long)]
    pub ids_only: bool,
    /// Print {"hits":[...],"cursor":...,"served_by":[...],"took_ms":F}; each hit has id,
    /// score, title, space, updated_at and snippet (HTML-escaped, matches in <b></b>).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Collection directory with docs.jsonl, queries.tsv and qrels.txt (not with --clicks or
    /// --impressions).
    #[arg(required_unless_present_any = ["clicks", "impressions"])]
    pub collection: Option<PathBuf>,
    /// Evaluate an already-loaded tenant (--tenant) on search sessions with a click instead of
    /// a collection: JSON lines {"user","query","doc","ts"}, e.g. a demo tenant's
    /// .cluster/demo/<tenant>/clicks.jsonl. Nothing is loaded. Each session is searched as its
    /// user (with their permissions) under every --variant; the clicked page is the one
    /// relevant result (grade 1). Reports MRR@10 and nDCG@10 per variant and each variant's
    /// paired difference to the first, with 95% bootstrap intervals over the sessions.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "impressions",
        requires = "tenant"
    )]
    pub clicks: Option<PathBuf>,
    /// A ranking to compare: NAME=PROFILE, where PROFILE is a profile registered in the
    /// tenant's features.toml (its newest version, or PROFILE@V pinned), or `bm25` or nothing
    /// for plain BM25; a bare PROFILE is named after itself. Repeatable: every query (or
    /// session) runs under every variant, and each variant after the first is compared with
    /// the first, paired by query: the difference of MRR@10 and nDCG@10 with its 95% bootstrap
    /// interval and whether that interval excludes zero. Default: --profile, else bm25 alone.
    #[arg(
        long = "variant",
        value_name = "NAME=PROFILE",
        conflicts_with_all = ["profile", "impressions"]
    )]
    pub variants: Vec<String>,
    /// Evaluate an experiment from router impression logs (`tessera-router --impression-log`;
    /// repeatable, one per router): MRR@10 and nDCG@10 per variant over the impressions with a
    /// click, and each variant's difference to control. Needs no cluster.
    #[arg(long, value_name = "FILE")]
    pub impressions: Vec<PathBuf>,
    /// Sessions to use with --clicks (the first N; 0 = all).
    #[arg(long, default_value_t = 0, requires = "clicks")]
    pub limit_sessions: usize,
    /// With --clicks: a session token of earlier writes (as `tessera events --json` prints)
    /// that every search must see, so an evaluation right after loading counts every event.
    #[arg(long, requires = "clicks")]
    pub token: Option<String>,
    /// Tenant to load and search (default: eval-<collection>-p<P>); with --clicks, the loaded
    /// tenant to search (required).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Partition count of the tenant.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Regions of a new tenant (comma-separated; default: the region of the
    /// first node the router lists).
    #[arg(long, value_delimiter = ',')]
    pub regions: Vec<String>,
    /// The searching user (the documents carry no restriction).
    #[arg(long, default_value = "u:eval")]
    pub user: String,
    /// Rank profile passed to every search: NAME or NAME@VERSION (a single variant named
    /// after it; use --variant to compare rankings).
    #[arg(long)]
    pub profile: Option<String>,
    /// Hits fetched per query; MAP and MRR are computed over them (at most 1000).
    #[arg(long, default_value_t = 1000)]
    pub depth: u32,
    /// nDCG gain: linear (trec_eval) or exponential (2^grade - 1).
    #[arg(long, value_enum, default_value_t = GainArg::Linear)]
    pub gain: GainArg,
    /// Bootstrap resamples for the 95% intervals.
    #[arg(long, default_value_t = 1000)]
    pub resamples: usize,
    /// Seed of the bootstrap resampling (same seed, same intervals).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Documents per write batch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Searches in flight at once (collections and --clicks).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Do not load the documents (the tenant already holds them).
    #[arg(long)]
    pub skip_load: bool,
    /// Print the report as JSON, including per-query scores with --per-query.
    #[arg(long)]
    pub json: bool,
    /// Include every query's scores in the output.
    #[arg(long)]
    pub per_query: bool,
}

/// Arguments of `train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training rows: the CSV of `tessera features historical` (- for stdin).
    #[arg(long)]
    pub rows: PathBuf,
    /// Label column: 1 = clicked, 0 = shown and not clicked (higher is preferred).
    #[arg(long)]
    pub label: String,
    /// Group column (query or session id): only rows of one group are compared.
    #[arg(long)]
    pub group: String,
    /// Column with each candidate's BM25 (first-phase) score.
    #[arg(long)]
    pub bm25: String,
    /// Comma-separated features (columns of --rows), in profile term order.
    #[arg(long, value_delimiter = ',', required = true)]
    pub features: Vec<String>,
    /// FEATURE=identity|log1p, comma-separated (default identity).
    #[arg(long = "transform", value_name = "FEATURE=T", value_delimiter = ',')]
    pub transforms: Vec<String>,
    /// FEATURE=VALUE used for a null (empty) cell, before the transform (default 0).
    #[arg(long = "default", value_name = "FEATURE=V", value_delimiter = ',')]
    pub defaults: Vec<String>,
    /// Profile name.
    #[arg(long)]
    pub name: String,
    /// Profile version (bump it on every retrain; `--profile NAME@V` pins one).
    #[arg(long)]
    pub version: u64,
    /// BM25 candidates the node reranks per shard (1..=1000).
    #[arg(long, default_value_t = tessera_client::train::DEFAULT_CANDIDATES)]
    pub candidates: u32,
    /// Most Newton iterations (full passes over the pairs).
    #[arg(long, default_value_t = tessera_client::train::DEFAULT_EPOCHS)]
    pub epochs: usize,
    /// L2 strength on the standardised weights (0 disables it).
    #[arg(long, default_value_t = tessera_client::train::DEFAULT_L2)]
    pub l2: f64,
    /// Percent of groups held out from training to measure held-out accuracy (0..=90).
    #[arg(long, default_value_t = tessera_client::train::DEFAULT_HOLDOUT_PERCENT)]
    pub holdout: u8,
    /// Write the `[[profile]]` block to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print {"profile":{...},"rows":N,"groups":N,"pairs":N,"loss":F,
    /// "train_accuracy":F,"holdout_accuracy":F|null,...} instead of the TOML.
    #[arg(long)]
    pub json: bool,
}

/// How a relevance grade becomes nDCG gain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GainArg {
    /// gain = grade (trec_eval's ndcg_cut).
    Linear,
    /// gain = 2^grade - 1.
    Exponential,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tessera").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tenant_create_with_partitions() {
        let cli = parse(&[
            "tenant",
            "create",
            "acme",
            "--regions",
            "us-east,eu-west",
            "--home",
            "eu-west",
            "--survival",
            "region",
            "--partitions",
            "4",
        ])
        .expect("parses");
        match cli.command {
            Command::Tenant {
                command:
                    TenantCommand::Create {
                        id,
                        regions,
                        home,
                        survival,
                        partitions,
                        json,
                    },
            } => {
                assert_eq!(id, "acme");
                assert_eq!(regions, vec!["us-east", "eu-west"]);
                assert_eq!(home.as_deref(), Some("eu-west"));
                assert_eq!(survival, Some(Survival::Region));
                assert_eq!(partitions, Some(4));
                assert!(!json);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            parse(&["tenant", "create", "acme"]).is_err(),
            "--regions is required"
        );
        assert!(parse(&[
            "tenant",
            "create",
            "acme",
            "--regions",
            "x",
            "--survival",
            "galaxy"
        ])
        .is_err());
    }

    #[test]
    fn search_takes_repeatable_filters_and_global_flags_anywhere() {
        let cli = parse(&[
            "search",
            "acme",
            "--user",
            "u:alice",
            "deploy",
            "runbook",
            "--space",
            "ENG",
            "--space",
            "OPS",
            "--label",
            "ops",
            "--title-only",
            "--limit",
            "50",
            "--json",
            "--router",
            "127.0.0.1:7300",
        ])
        .expect("parses");
        assert_eq!(cli.router.as_deref(), Some("127.0.0.1:7300"));
        match cli.command {
            Command::Search(s) => {
                assert_eq!(s.query.join(" "), "deploy runbook");
                assert_eq!(s.spaces, vec!["ENG", "OPS"]);
                assert_eq!(s.labels, vec!["ops"]);
                assert!(s.title_only && s.json);
                assert_eq!(s.limit, 50);
                assert_eq!(s.cursor, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            parse(&["search", "acme", "deploy"]).is_err(),
            "--user is required"
        );
    }

    #[test]
    fn put_delete_get_groups_status() {
        let cli = parse(&["put", "acme", "-", "--json"]).expect("put");
        assert!(
            matches!(cli.command, Command::Put(ref a) if a.file == "-" && a.json && a.batch == 500)
        );
        let cli = parse(&["delete", "acme", "p-1", "--version", "8"]).expect("delete");
        assert!(matches!(cli.command, Command::Delete { version: 8, .. }));
        assert!(
            parse(&["delete", "acme", "p-1"]).is_err(),
            "--version is required"
        );
        let cli = parse(&["get", "acme", "p-1", "--user", "u:bob", "--json"]).expect("get");
        assert!(
            matches!(cli.command, Command::Get { ref user, json: true, .. } if user == "u:bob")
        );
        let cli = parse(&[
            "eval",
            "../shared/data/ir/cacm",
            "--partitions",
            "4",
            "--profile",
            "bm25",
            "--json",
        ])
        .expect("eval");
        match cli.command {
            Command::Eval(e) => {
                assert_eq!(e.partitions, 4);
                assert_eq!(e.profile.as_deref(), Some("bm25"));
                assert!(e.json && !e.skip_load);
                assert_eq!((e.depth, e.seed, e.gain), (1000, 42, GainArg::Linear));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse(&["eval"]).is_err(), "the collection is required");
        let cli = parse(&[
            "train",
            "--rows",
            "hist.csv",
            "--label",
            "clicked",
            "--group",
            "qid",
            "--bm25",
            "bm25",
            "--features",
            "views,age",
            "--transform",
            "views=log1p",
            "--default",
            "age=-1",
            "--name",
            "learned",
            "--version",
            "3",
        ])
        .expect("train");
        match cli.command {
            Command::Train(t) => {
                assert_eq!(t.features, vec!["views", "age"]);
                assert_eq!(t.transforms, vec!["views=log1p"]);
                assert_eq!(t.defaults, vec!["age=-1"]);
                assert_eq!((t.version, t.candidates, t.holdout), (3, 100, 20));
                assert!(t.out.is_none() && !t.json);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            parse(&["train", "--rows", "h.csv", "--label", "c"]).is_err(),
            "group, bm25, features, name and version are required"
        );
        let cli = parse(&["groups", "acme", "groups.jsonl"]).expect("groups");
        assert!(matches!(cli.command, Command::Groups(_)));
        let cli = parse(&[
            "status",
            "--json",
            "--cluster",
            "c.json",
            "--region",
            "eu-west",
        ])
        .expect("status");
        assert_eq!(cli.cluster, PathBuf::from("c.json"));
        assert_eq!(cli.region.as_deref(), Some("eu-west"));
        assert!(matches!(cli.command, Command::Status { json: true }));
    }
}

/// `tessera features ...`.
#[derive(Debug, Subcommand)]
pub enum FeaturesCommand {
    /// Validate a features.toml and register it as a new version.
    Apply {
        /// Tenant.
        tenant: String,
        /// The features.toml file.
        file: PathBuf,
    },
    /// List the registered features.
    List {
        /// Tenant.
        tenant: String,
        /// Print {"version":N,"features":[...]}.
        #[arg(long)]
        json: bool,
    },
    /// Show one feature's definition.
    Describe {
        /// Tenant.
        tenant: String,
        /// Feature name.
        name: String,
        /// Print the definition as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Current values for one entity.
    Online {
        /// Tenant.
        tenant: String,
        /// The entity: user=u:a,space=ENG,doc=p-1 (the parts the features need).
        #[arg(long)]
        entity: String,
        /// Comma-separated feature names.
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Session token of earlier event writes.
        #[arg(long)]
        token: Option<String>,
        /// Print {"features":{"name":value|null},"as_of":"..."}.
        #[arg(long)]
        json: bool,
    },
    /// Point-in-time values for every row of a rows file (columns ts and
    /// user/space/doc); writes the rows, in order, plus one column per feature.
    ///
    /// Each file is CSV or Parquet by its extension (.csv or .parquet, any
    /// case; - is CSV), independently. In Parquet, ts is an RFC 3339 string
    /// or a timestamp (any unit, taken as UTC), user/space/doc are strings
    /// (null = empty), other columns are carried through with their types,
    /// and each feature is a nullable Float64 column (null = null).
    Historical {
        /// Tenant.
        tenant: String,
        /// Input rows (.csv or .parquet; - for CSV on stdin).
        #[arg(long)]
        rows: PathBuf,
        /// Comma-separated feature names.
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Output file (.csv or .parquet); - for CSV on stdout.
        #[arg(long, default_value = "-")]
        out: PathBuf,
        /// Only use events also ingested by each row's time.
        #[arg(long)]
        as_of_known: bool,
        /// Session token of earlier event writes.
        #[arg(long)]
        token: Option<String>,
    },
}
