//! The query-side cache of allowed acl tokens.
//!
//! Deciding which of a tenant's conjunct tokens a principal set satisfies
//! costs a term-dictionary prefix scan plus a subset test per token. Both
//! only change when the index changes (a new watermark) or when the user's
//! principals change (a membership write), so the answer is cached under
//! exactly that key: `(shard, tenant, principal set, index watermark)`.
//! A membership change therefore needs no invalidation (the principal set
//! in the key differs) and a new index generation needs none either (the
//! watermark in the key differs); stale generations are evicted lazily.

use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `(shard, tenant, sorted principals, index watermark)`. The tenant is in
/// the key because several tenants share a shard.
type Key = (u64, String, Vec<String>, u64);

/// Default number of cached principal sets per node.
pub const DEFAULT_CAPACITY: usize = 16_384;

/// Allowed-token sets, shared by every read handler of a node.
pub struct AllowedCache {
    entries: Mutex<HashMap<Key, Arc<Vec<String>>>>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Default for AllowedCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl AllowedCache {
    /// A cache holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The allowed tokens of `principals` in `tenant` on `shard` at index
    /// `watermark`, computing them with `list` (the tenant's distinct
    /// tokens) on a miss.
    ///
    /// The caller must read `watermark` *before* `list` reads the index: the
    /// listed generation is then at least as new as the key, so a cached
    /// set can lack tokens of documents indexed later (a transient miss,
    /// fixed by the next watermark) but never holds a token the principals
    /// do not satisfy, since every kept token passed [`super::token_allows`].
    pub fn allowed<L: AsRef<[String]>, E>(
        &self,
        shard: u64,
        tenant: &str,
        principals: &BTreeSet<String>,
        watermark: u64,
        list: impl FnOnce() -> Result<L, E>,
    ) -> Result<Arc<Vec<String>>, E> {
        let key: Key = (
            shard,
            tenant.to_string(),
            principals.iter().cloned().collect(),
            watermark,
        );
        if let Some(found) = self.entries.lock().get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tessera_acl_cache_hits_total").increment(1);
            return Ok(found.clone());
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tessera_acl_cache_misses_total").increment(1);
        let tokens = list()?;
        let allowed = Arc::new(super::allowed_tokens(tenant, tokens.as_ref(), principals));
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            // Older generations of this shard can never be asked for again.
            entries.retain(|(s, _, _, w), _| *s != shard || *w >= watermark);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, allowed.clone());
        Ok(allowed)
    }

    /// `(hits, misses)` since start, for tests and status pages.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keyed_by_principals_and_watermark() {
        let cache = AllowedCache::new(8);
        let tokens = || {
            Ok::<_, std::convert::Infallible>(vec![
                "t|*".to_string(),
                "t|g:a".to_string(),
                "t|g:b".to_string(),
            ])
        };
        let a = set(&["u:x", "g:a"]);
        let first = cache.allowed(1, "t", &a, 5, tokens).expect("infallible");
        assert_eq!(*first, vec!["t|*".to_string(), "t|g:a".to_string()]);
        let again = cache
            .allowed(1, "t", &a, 5, || -> Result<Vec<String>, String> {
                Err("must not be listed again".into())
            })
            .expect("served from the cache");
        assert_eq!(again, first);
        assert_eq!(cache.stats(), (1, 1));
        // A membership change is a different principal set: recomputed.
        let b = set(&["u:x", "g:b"]);
        let other = cache.allowed(1, "t", &b, 5, tokens).expect("infallible");
        assert_eq!(*other, vec!["t|*".to_string(), "t|g:b".to_string()]);
        // A new index generation is a different key: recomputed.
        let newer = cache
            .allowed(1, "t", &a, 6, || Ok::<_, String>(vec!["t|g:b".to_string()]))
            .expect("listed");
        assert!(newer.is_empty(), "g:a no longer has documents");
        assert_eq!(cache.stats(), (1, 3));
    }

    #[test]
    fn bounded() {
        let cache = AllowedCache::new(2);
        for w in 0..10 {
            cache
                .allowed(1, "t", &set(&["u:x"]), w, || {
                    Ok::<_, String>(vec!["t|*".to_string()])
                })
                .expect("listed");
        }
        assert!(cache.entries.lock().len() <= 2);
    }
}
