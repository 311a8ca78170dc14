//! A bounded cache keyed by a hash of its inputs, for the two hot caches
//! (Layer 2's decisions, Layer 3's verified tokens): the inputs (a ~1 KB
//! token, a caller, method and path) are hashed once per look-up and never
//! copied on a hit.
//!
//! The key is foldhash seeded per process, and moka's table hashes that `u64`
//! with foldhash too (SipHash, twice per request, before). foldhash's seed
//! comes from ASLR addresses and the time, not the OS's randomness, and it
//! resists no attacker who sees its outputs: correctness never rests on it.
//! A hit counts only if its entry [`Answers`] the very inputs looked up, so a
//! collision is a miss, never another request's answer.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// An entry that remembers the inputs it was made for.
pub trait Answers<I: ?Sized> {
    /// Whether this entry was made for exactly `input`. Load-bearing: every
    /// input that went into the key must be compared.
    fn answers(&self, input: &I) -> bool;
}

/// `S`, the key's hasher, is a parameter so a test can make every key collide.
pub struct HashedCache<V, S = foldhash::quality::RandomState> {
    entries: moka::sync::Cache<u64, Arc<V>, foldhash::fast::RandomState>,
    key: S,
}

impl<V: Send + Sync + 'static> HashedCache<V> {
    /// `builder` sets the bounds (capacity, weigher, time to live).
    pub fn new(builder: moka::sync::CacheBuilder<u64, Arc<V>, moka::sync::Cache<u64, Arc<V>>>) -> Self {
        Self::with_key(builder, foldhash::quality::RandomState::default())
    }
}

impl<V: Send + Sync + 'static, S: BuildHasher> HashedCache<V, S> {
    pub fn with_key(builder: moka::sync::CacheBuilder<u64, Arc<V>, moka::sync::Cache<u64, Arc<V>>>, key: S) -> Self {
        Self { entries: builder.build_with_hasher(foldhash::fast::RandomState::default()), key }
    }

    /// The entry made for exactly `input`.
    pub fn get<I: Hash + ?Sized>(&self, input: &I) -> Option<Arc<V>>
    where
        V: Answers<I>,
    {
        self.entries.get(&self.key.hash_one(input)).filter(|hit| hit.answers(input))
    }

    pub fn insert<I: Hash + ?Sized>(&self, input: &I, value: V) {
        self.entries.insert(self.key.hash_one(input), Arc::new(value));
    }

    /// Drops what is stored under `input`'s key.
    pub fn invalidate<I: Hash + ?Sized>(&self, input: &I) {
        self.entries.invalidate(&self.key.hash_one(input));
    }

    /// Entries and their weighed size (after pending evictions).
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}

/// A hasher under which every key is the same (tests: each look-up finds
/// whatever was stored last).
#[doc(hidden)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Collide;

impl std::hash::Hasher for Collide {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, _: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasherDefault;

    use super::*;

    struct Named {
        name: &'static str,
        value: u32,
    }

    impl Answers<str> for Named {
        fn answers(&self, input: &str) -> bool {
            self.name == input
        }
    }

    #[test]
    fn a_key_collision_is_a_miss_never_another_inputs_entry() {
        let cache = HashedCache::with_key(moka::sync::Cache::builder(), BuildHasherDefault::<Collide>::default());
        let value = |hit: Option<Arc<Named>>| hit.map(|n| n.value);
        cache.insert("a", Named { name: "a", value: 1 });
        assert_eq!(value(cache.get("a")), Some(1));
        assert_eq!(value(cache.get("b")), None, "same key, other input");
        cache.insert("b", Named { name: "b", value: 2 });
        assert_eq!(value(cache.get("b")), Some(2));
        assert_eq!(value(cache.get("a")), None, "replaced under the shared key");
        cache.invalidate("a");
        assert_eq!(value(cache.get("b")), None, "invalidating drops the key, whoever holds it");
    }
}
