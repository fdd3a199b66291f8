//! One tenant: users, groups, spaces, page trees, permissions and events.

use super::rng::Rng;
use super::text::TextSource;
use super::zipf::{zipf_sizes, Zipf};
use super::{
    tenant_name, visible, DemoConfig, DemoError, Event, Example, Membership, TenantData,
    TenantManifest, EPOCH_END, EPOCH_START, MAX_DEPTH,
};
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::{BTreeMap, BTreeSet};
use tessera_proto::{Document, Permissions};

/// Users are named after these; more get a number (`alice2`).
const FIRST_NAMES: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "kim",
    "leo", "mallory", "nina", "oscar", "peggy", "quinn", "rupert", "sybil", "trent", "uma",
    "victor", "wendy", "xavier", "yara", "zoe", "amir", "beth", "chen", "dmitri", "elena", "farah",
    "goran", "hana", "ines", "jonas", "kenji", "lucia", "mateo", "noor",
];

/// Space keys, in the order tenants get them.
const SPACE_KEYS: &[&str] = &[
    "ENG", "OPS", "HR", "SALES", "MKT", "FIN", "LEGAL", "DOCS", "SUPPORT", "DATA", "SEC", "PM",
    "DESIGN", "QA", "IT", "RESEARCH",
];

const LABELS: &[&str] = &[
    "howto",
    "runbook",
    "meeting-notes",
    "design",
    "retro",
    "onboarding",
    "faq",
    "release",
    "incident",
    "policy",
    "draft",
    "archived",
    "decision",
    "okr",
];

/// Words too common to make an interesting example or session query.
pub(super) const STOP: &[&str] = &[
    "about",
    "after",
    "again",
    "along",
    "also",
    "among",
    "around",
    "because",
    "been",
    "before",
    "being",
    "between",
    "both",
    "could",
    "during",
    "each",
    "early",
    "first",
    "following",
    "found",
    "from",
    "have",
    "however",
    "including",
    "into",
    "known",
    "later",
    "least",
    "other",
    "over",
    "second",
    "several",
    "since",
    "some",
    "such",
    "than",
    "that",
    "their",
    "there",
    "these",
    "they",
    "third",
    "this",
    "those",
    "three",
    "through",
    "under",
    "until",
    "used",
    "well",
    "were",
    "when",
    "where",
    "which",
    "while",
    "with",
    "within",
    "would",
    "years",
    "became",
    "based",
    "named",
    "under",
    "until",
    "where",
    "whose",
    "there",
];

/// Who may see a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// No space-level restriction.
    Open,
    /// Staff (not contractors).
    Staff,
    /// The space's team and admins.
    Team,
}

struct Space {
    key: String,
    team: String,
    access: Access,
    /// Users who may create pages here.
    authors: Vec<usize>,
}

struct User {
    id: String,
    groups: BTreeSet<String>,
    primary_space: usize,
}

impl User {
    fn principals(&self) -> BTreeSet<String> {
        let mut p = self.groups.clone();
        p.insert(self.id.clone());
        p
    }
}

/// A page as placed in its space's tree.
struct Node {
    id: String,
    ancestors: Vec<String>,
    ancestor_sets: Vec<Vec<String>>,
    restriction: Vec<String>,
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>, DemoError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| DemoError::Config(format!("bad built-in timestamp {s}: {e}")))
}

/// `secs` (Unix) as RFC 3339 in UTC, to the second.
pub(super) fn fmt_ts(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Where a tenant of rank `index` may live: (allowed regions, home first;
/// survival goal). Most tenants live in their home region and the next
/// one (zone survival); every fifth spans all regions (region survival)
/// when there are at least three.
fn residency(regions: &[String], index: usize) -> (Vec<String>, &'static str) {
    let k = regions.len();
    let at = |i: usize| regions[i % k].clone();
    if k >= 3 && index % 5 == 4 {
        ((0..k).map(|i| at(index + i)).collect(), "region")
    } else if k >= 2 {
        (vec![at(index), at(index + 1)], "zone")
    } else {
        (vec![at(index)], "zone")
    }
}

/// Partitions for a tenant of rank `index` with `docs` documents: the
/// largest tenants get 2 to 4, as long as each partition holds at least
/// 100 documents.
fn partitions(index: usize, docs: usize) -> u32 {
    let wanted: usize = match index {
        0 => 4,
        1 => 3,
        2 | 3 => 2,
        _ => 1,
    };
    wanted.min((docs / 100).max(1)) as u32
}

/// Generates tenant number `index` (0 = largest) with `docs` documents.
/// Its structure depends only on the seed and the index; its text is the
/// next `docs` articles of `text`.
pub fn generate_tenant(
    config: &DemoConfig,
    index: usize,
    docs: usize,
    text: &mut dyn TextSource,
) -> Result<TenantData, DemoError> {
    config.validate()?;
    let id = tenant_name(index);
    let mut rng = Rng::derive(config.seed, &format!("tenant/{index}"));
    let start = parse_ts(EPOCH_START)?.timestamp();
    let end = parse_ts(EPOCH_END)?.timestamp();

    // Spaces.
    let n_spaces = (((docs as f64).sqrt() / 4.0).round() as usize).clamp(2, SPACE_KEYS.len());
    let mut spaces: Vec<Space> = SPACE_KEYS[..n_spaces]
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let access = match i {
                0 | 2 => Access::Team,
                1 => Access::Staff,
                _ => {
                    let u = rng.unit();
                    if u < 0.35 {
                        Access::Open
                    } else if u < 0.8 {
                        Access::Staff
                    } else {
                        Access::Team
                    }
                }
            };
            Space {
                key: key.to_string(),
                team: format!("g:{}", key.to_lowercase()),
                access,
                authors: Vec::new(),
            }
        })
        .collect();

    // Users and groups. alice (0) is staff on the first space's team;
    // bob (1) is an admin; a tenth of the rest are contractors.
    let n_users = (docs / 25).clamp(6, 250);
    let mut users: Vec<User> = Vec::with_capacity(n_users);
    for u in 0..n_users {
        let base = FIRST_NAMES[u % FIRST_NAMES.len()];
        let round = u / FIRST_NAMES.len();
        let name = if round == 0 {
            base.to_string()
        } else {
            format!("{base}{}", round + 1)
        };
        let contractor = u >= 3 && rng.chance(0.1);
        let primary = u % n_spaces;
        let mut groups = BTreeSet::new();
        groups.insert(
            if contractor {
                "g:contractors"
            } else {
                "g:staff"
            }
            .to_string(),
        );
        groups.insert(spaces[primary].team.clone());
        if u > 0 && rng.chance(0.3) {
            groups.insert(spaces[rng.below(n_spaces)].team.clone());
        }
        if u == 1 || (u == n_users - 1 && !contractor) {
            groups.insert("g:admins".to_string());
        }
        users.push(User {
            id: format!("u:{name}"),
            groups,
            primary_space: primary,
        });
    }
    if !users.iter().any(|u| u.groups.contains("g:contractors")) {
        if let Some(last) = users.last_mut() {
            last.groups.remove("g:staff");
            last.groups.remove("g:admins");
            last.groups.insert("g:contractors".to_string());
        }
    }
    for space in &mut spaces {
        space.authors = users
            .iter()
            .enumerate()
            .filter(|(_, u)| match space.access {
                Access::Open => true,
                Access::Staff => u.groups.contains("g:staff"),
                Access::Team => u.groups.contains(&space.team),
            })
            .map(|(i, _)| i)
            .collect();
        if space.authors.is_empty() {
            space.authors = (0..users.len()).collect();
        }
    }

    // Pages, space by space; parents always come before their children.
    let per_space = zipf_sizes(docs, n_spaces, 0.8, 1);
    let mut documents: Vec<Document> = Vec::with_capacity(docs);
    let mut space_docs: Vec<Vec<usize>> = vec![Vec::new(); n_spaces];
    for (si, count) in per_space.iter().enumerate() {
        let space = &spaces[si];
        let space_set: Vec<String> = match space.access {
            Access::Open => Vec::new(),
            Access::Staff => vec!["g:staff".to_string()],
            Access::Team => vec!["g:admins".to_string(), space.team.clone()],
        };
        let step = (end - start) / (*count as i64 + 1);
        let mut nodes: Vec<Node> = Vec::with_capacity(*count);
        for j in 0..*count {
            let parent = if j == 0 || rng.chance(0.12) {
                None
            } else {
                (0..8)
                    .map(|_| rng.below(j))
                    .find(|p| nodes[*p].ancestors.len() < MAX_DEPTH)
            };
            let (ancestors, ancestor_sets) = match parent {
                Some(p) => {
                    let pn = &nodes[p];
                    let mut a = pn.ancestors.clone();
                    a.push(pn.id.clone());
                    let mut s = pn.ancestor_sets.clone();
                    s.push(pn.restriction.clone());
                    (a, s)
                }
                None => (Vec::new(), Vec::new()),
            };
            let creator = space.authors[rng.below(space.authors.len())];
            let under_user_restriction =
                ancestor_sets.iter().flatten().any(|p| p.starts_with("u:"));
            let roll = rng.unit();
            let mut restriction: Vec<String> = if under_user_restriction {
                Vec::new()
            } else if roll < 0.025 {
                // A restricted subtree: only the team (or only admins).
                match space.access {
                    Access::Team => vec!["g:admins".to_string()],
                    _ => vec!["g:admins".to_string(), space.team.clone()],
                }
            } else if roll < 0.05 {
                // A page-level user restriction: its creator and one other.
                let other = space.authors[rng.below(space.authors.len())];
                vec![users[creator].id.clone(), users[other].id.clone()]
            } else {
                Vec::new()
            };
            restriction.sort();
            restriction.dedup();

            let mut contributors = vec![users[creator].id.clone()];
            for _ in 0..rng.below(3) {
                let c = &users[space.authors[rng.below(space.authors.len())]].id;
                if !contributors.contains(c) {
                    contributors.push(c.clone());
                }
            }
            let mut labels: Vec<String> = Vec::new();
            let n_labels = match rng.unit() {
                u if u < 0.35 => 0,
                u if u < 0.7 => 1,
                u if u < 0.9 => 2,
                _ => 3,
            };
            for _ in 0..n_labels {
                if let Some(l) = rng.pick(LABELS) {
                    labels.push(l.to_string());
                }
            }
            labels.sort();
            labels.dedup();
            // Strictly increasing within the space, so a parent is older
            // than its children.
            let created =
                start + step * (j as i64 + 1) - rng.below((step / 2).max(1) as usize) as i64;
            let updated = created + ((end - created) as f64 * rng.unit().powi(3)) as i64;

            let article = text.next_article()?;
            let doc_id = format!("p-{}", documents.len() + 1);
            let doc = Document {
                id: doc_id.clone(),
                space: space.key.clone(),
                title: article.title,
                body: article.body,
                ancestors: ancestors.clone(),
                labels,
                contributors,
                created_at: Some(fmt_ts(created)),
                updated_at: Some(fmt_ts(updated)),
                version: 1,
                permissions: Permissions {
                    space: space_set.clone(),
                    ancestors: ancestor_sets.clone(),
                    page: restriction.clone(),
                },
            };
            doc.validate().map_err(|e| DemoError::Invalid {
                id: doc_id.clone(),
                message: e.to_string(),
            })?;
            space_docs[si].push(documents.len());
            documents.push(doc);
            nodes.push(Node {
                id: doc_id,
                ancestors,
                ancestor_sets,
                restriction,
            });
        }
    }

    // The history ends where the session window begins; sessions draw from their own stream.
    let horizon = end - super::sessions::SESSION_WINDOW_DAYS * 86_400;
    let behaviour = Behaviour::new(&users, &documents, &space_docs, end, horizon)?;
    let events = make_events(config, &mut rng, &behaviour);
    let wanted_sessions = (documents.len() as f64 * config.sessions_per_doc).round() as usize;
    let sessions = super::sessions::make_sessions(
        &behaviour,
        &documents,
        &events,
        wanted_sessions,
        (horizon, end),
        &mut Rng::derive(config.seed, &format!("tenant/{index}/sessions")),
    );
    let groups = users
        .iter()
        .map(|u| Membership {
            user: u.id.clone(),
            groups: u.groups.iter().cloned().collect(),
        })
        .collect();
    let example = make_example(&users, &documents);
    let (regions, survival) = residency(&config.regions, index);
    let manifest = TenantManifest {
        id: id.clone(),
        home: regions[0].clone(),
        regions,
        survival: survival.to_string(),
        partitions: partitions(index, docs),
        docs: documents.len(),
        users: users.len(),
        spaces: spaces.iter().map(|s| s.key.clone()).collect(),
        events: events.len(),
        sessions: sessions.len(),
        dir: id,
        example,
    };
    Ok(TenantData {
        manifest,
        docs: documents,
        groups,
        events,
        sessions,
    })
}

/// How simulated people behave, shared by the events and the search sessions so that both
/// follow one model: heavy users act more often (Zipf over users); a user mostly visits pages
/// of their own team's space (60%), otherwise a space drawn by size (Zipf); within a space,
/// popular pages more often (Zipf); only pages the user may see, and only pages that exist
/// before `horizon` (the end of the history).
struct Behaviour<'a> {
    users: &'a [User],
    docs: &'a [Document],
    space_docs: &'a [Vec<usize>],
    principals: Vec<BTreeSet<String>>,
    /// Creation time of each page (Unix seconds).
    created: Vec<i64>,
    /// The history ends here; the sessions come after.
    horizon: i64,
    user_pick: Zipf,
    space_pick: Zipf,
    doc_picks: Vec<Zipf>,
}

impl<'a> Behaviour<'a> {
    fn new(
        users: &'a [User],
        docs: &'a [Document],
        space_docs: &'a [Vec<usize>],
        end: i64,
        horizon: i64,
    ) -> Result<Self, DemoError> {
        let created = docs
            .iter()
            .map(|d| {
                d.created_at
                    .as_deref()
                    .map(parse_ts)
                    .transpose()
                    .map(|t| t.map_or(end, |t| t.timestamp()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Behaviour {
            users,
            docs,
            space_docs,
            principals: users.iter().map(User::principals).collect(),
            created,
            horizon,
            user_pick: Zipf::new(users.len(), 0.7),
            space_pick: Zipf::new(space_docs.len(), 0.8),
            doc_picks: space_docs.iter().map(|d| Zipf::new(d.len(), 1.0)).collect(),
        })
    }
}

impl super::sessions::Searchers for Behaviour<'_> {
    fn users(&self) -> usize {
        self.users.len()
    }

    fn user_id(&self, u: usize) -> &str {
        &self.users[u].id
    }

    fn pick_user(&self, rng: &mut Rng) -> usize {
        self.user_pick.sample(rng)
    }

    /// Up to 8 draws; `None` when none of them was a page the user may find.
    fn pick_page(&self, rng: &mut Rng, u: usize) -> Option<usize> {
        for _ in 0..8 {
            let s = if rng.chance(0.6) {
                self.users[u].primary_space
            } else {
                self.space_pick.sample(rng)
            };
            let Some(&d) = self.space_docs[s].get(self.doc_picks[s].sample(rng)) else {
                continue;
            };
            if self.may_find(u, d) {
                return Some(d);
            }
        }
        None
    }

    fn may_find(&self, u: usize, d: usize) -> bool {
        self.created[d] < self.horizon && visible(&self.docs[d], &self.principals[u])
    }
}

/// Simulated activity before `behaviour.horizon`: heavy users view (and sometimes edit or
/// click) pages they may see, mostly in their own team's space, popular pages more often.
fn make_events(config: &DemoConfig, rng: &mut Rng, behaviour: &Behaviour<'_>) -> Vec<Event> {
    use super::sessions::Searchers;
    let want = (behaviour.docs.len() as f64 * config.events_per_doc).round() as usize;
    let mut out: Vec<(i64, Event)> = Vec::with_capacity(want);
    for _ in 0..want {
        let u = behaviour.pick_user(rng);
        let kind = match rng.unit() {
            x if x < 0.8 => "view",
            x if x < 0.92 => "click",
            _ => "edit",
        };
        let Some(d) = behaviour.pick_page(rng, u) else {
            continue;
        };
        let doc = &behaviour.docs[d];
        let created = behaviour.created[d];
        let ts = created + ((behaviour.horizon - created) as f64 * rng.unit()) as i64;
        out.push((
            ts,
            Event {
                kind: kind.to_string(),
                user: behaviour.users[u].id.clone(),
                doc: doc.id.clone(),
                space: doc.space.clone(),
                ts: fmt_ts(ts),
                id: String::new(),
            },
        ));
    }
    // Stable: equal times keep generation order.
    out.sort_by_key(|(ts, _)| *ts);
    out.into_iter()
        .enumerate()
        .map(|(i, (_, e))| Event {
            id: format!("e{i}"),
            ..e
        })
        .collect()
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| (5..=12).contains(&w.len()) && w.chars().all(|c| c.is_ascii_alphabetic()))
        .map(str::to_lowercase)
}

/// Picks a query word that matches a good handful of the pages alice may
/// see (about 5%, at least 3), and counts the same for a contractor.
fn make_example(users: &[User], docs: &[Document]) -> Example {
    let alice = &users[0];
    let other = users
        .iter()
        .find(|u| u.groups.contains("g:contractors"))
        .unwrap_or(alice);
    let mine = alice.principals();
    let theirs = other.principals();
    let mut df: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = 0usize;
    for d in docs.iter().filter(|d| visible(d, &mine)) {
        seen += 1;
        let set: BTreeSet<String> = words(&d.title).chain(words(&d.body)).collect();
        for w in set {
            if !STOP.contains(&w.as_str()) {
                *df.entry(w).or_default() += 1;
            }
        }
    }
    let target = (seen / 20).max(3);
    let query = df
        .iter()
        .min_by_key(|(w, n)| ((**n as i64 - target as i64).abs(), (*w).clone()))
        .map(|(w, _)| w.clone())
        .unwrap_or_else(|| "page".to_string());
    let count = |p: &BTreeSet<String>| {
        docs.iter()
            .filter(|d| visible(d, p))
            .filter(|d| words(&d.title).chain(words(&d.body)).any(|w| w == query))
            .count()
    };
    Example {
        user: alice.id.clone(),
        matching_docs: count(&mine),
        other_user: other.id.clone(),
        other_matching_docs: count(&theirs),
        query,
    }
}
