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

/// moka's builder for a table of `V`s: the caller sets the bounds.
pub type Builder<V> = moka::sync::CacheBuilder<u64, Arc<V>, moka::sync::Cache<u64, Arc<V>>>;

/// `S`, the key's hasher, is a parameter so a test can make every key collide
/// (`with_key` and [`Collide`]: tests and the `test-util` feature only).
pub struct HashedCache<V, S = foldhash::quality::RandomState> {
    entries: moka::sync::Cache<u64, Arc<V>, foldhash::fast::RandomState>,
    key: S,
}

impl<V: Send + Sync + 'static> HashedCache<V> {
    /// `builder` sets the bounds (capacity, weigher, time to live).
    pub fn new(builder: Builder<V>) -> Self {
        Self::build(builder, foldhash::quality::RandomState::default())
    }
}

impl<V: Send + Sync + 'static, S: BuildHasher> HashedCache<V, S> {
    fn build(builder: Builder<V>, key: S) -> Self {
        Self { entries: builder.build_with_hasher(foldhash::fast::RandomState::default()), key }
    }

    #[cfg(any(test, feature = "test-util"))]
    pub fn with_key(builder: Builder<V>, key: S) -> Self {
        Self::build(builder, key)
    }

    /// The entry made for exactly `input`.
    pub fn get<I: Hash + ?Sized>(&self, input: &I) -> Option<Arc<V>>
    where
        V: Answers<I>,
    {
        self.entries.get(&self.key.hash_one(input)).filter(|hit| hit.answers(input))
    }

    /// Stores `value` for `input` (it replaces whatever held the same key).
    pub fn insert<I: Hash + ?Sized>(&self, input: &I, value: V)
    where
        V: Answers<I>,
    {
        self.entries.insert(self.key.hash_one(input), Arc::new(value));
    }

    /// Drops `stale` (a hit for `input` that is no longer usable), and only
    /// it: an entry stored under the same key since then stays.
    pub fn remove<I: Hash + ?Sized>(&self, input: &I, stale: &Arc<V>)
    where
        V: Answers<I>,
    {
        let _ = self.entries.entry(self.key.hash_one(input)).and_compute_with(|held| match held {
            Some(entry) if Arc::ptr_eq(entry.value(), stale) => moka::ops::compute::Op::Remove,
            _ => moka::ops::compute::Op::Nop,
        });
    }

    /// Entries and their weighed size (after pending evictions).
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}

/// A hasher under which every key is the same (tests: each look-up finds
/// whatever was stored last).
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default, Clone, Copy)]
pub struct Collide;

#[cfg(any(test, feature = "test-util"))]
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
        // Removing a stale hit for "b" removes it, and only it.
        let stale = cache.get("b").unwrap();
        cache.insert("b", Named { name: "b", value: 3 });
        cache.remove("b", &stale);
        assert_eq!(value(cache.get("b")), Some(3), "a newer entry under the key stays");
        let fresh = cache.get("b").unwrap();
        cache.remove("b", &fresh);
        assert_eq!(value(cache.get("b")), None);
    }
}
