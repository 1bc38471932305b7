//! A map kept as a vector sorted by key, for the isolate's small tables (its timers, the bodies
//! being read by caller, the callers' credit): a lookup is a binary search, as in a
//! `BTreeMap`, and the code is a fraction of a hash map's or a B-tree's, each of which the
//! module carries once per kind of key and value (docs/dependencies.md). An insertion or a
//! removal moves the entries after it, which for the at most a thousand entries of these
//! tables is a copy of a few kilobytes at most.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

#[derive(Clone, PartialEq, Eq)]
pub struct SortedMap<K, V> {
    entries: Vec<(K, V)>,
}

/// As a `BTreeMap` shows itself: `{key: value, …}`.
impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SortedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> SortedMap<K, V> {
    #[must_use]
    pub const fn new() -> Self {
        SortedMap {
            entries: Vec::new(),
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in the order of their keys.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values in the order of their keys.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl<K, V> IntoIterator for SortedMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    /// The entries in the order of their keys.
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, K, V> IntoIterator for &'a SortedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    /// The entries in the order of their keys, borrowed (`for (k, v) in &map`).
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

/// Read from a JSON object as a `BTreeMap` is: a repeated key keeps its last value, and
/// anything else than an object is "expected a map".
impl<'de, K, V> Deserialize<'de> for SortedMap<K, V>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(PhantomData<(K, V)>);

        impl<'de, K, V> Visitor<'de> for Entries<K, V>
        where
            K: Deserialize<'de> + Ord,
            V: Deserialize<'de>,
        {
            type Value = SortedMap<K, V>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = SortedMap::new();
                while let Some((key, value)) = access.next_entry()? {
                    map.insert(key, value);
                }
                Ok(map)
            }
        }

        deserializer.deserialize_map(Entries(PhantomData))
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    #[must_use]
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    #[must_use]
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        let at = self.find(key).ok()?;
        self.entries.get(at).map(|(_, v)| v)
    }

    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let at = self.find(key).ok()?;
        self.entries.get_mut(at).map(|(_, v)| v)
    }

    /// Puts `value` under `key`; returns the value it replaces, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(at) => self
                .entries
                .get_mut(at)
                .map(|(_, v)| std::mem::replace(v, value)),
            Err(at) => {
                self.entries.insert(at, (key, value));
                None
            }
        }
    }

    /// Changes the value under `key` with `change`; a missing one is made with `V::default()`
    /// first, under `owned()` (the key is only made then).
    pub fn update_or_default<Q: Ord + ?Sized>(
        &mut self,
        key: &Q,
        owned: impl FnOnce() -> K,
        change: impl FnOnce(&mut V),
    ) where
        K: Borrow<Q>,
        V: Default,
    {
        match self.find(key) {
            Ok(at) => {
                if let Some((_, value)) = self.entries.get_mut(at) {
                    change(value);
                }
            }
            Err(at) => {
                let mut value = V::default();
                change(&mut value);
                self.entries.insert(at, (owned(), value));
            }
        }
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let at = self.find(key).ok()?;
        Some(self.entries.remove(at).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u8, u32),
        Remove(u8),
        Bump(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Step::Insert(k, v)),
            any::<u8>().prop_map(Step::Remove),
            any::<u8>().prop_map(Step::Bump),
        ]
    }

    #[test]
    fn it_reads_json_as_a_btree_map_does() {
        for text in [
            r#"{"b": 2, "a": 1, "c": 3}"#,
            r#"{"a": 1, "a": 2}"#,
            "{}",
            r#"{"a": "one"}"#,
            r#"["a", 1]"#,
            "1.5",
            r#"{"a": 1"#,
        ] {
            let ours = serde_json::from_str::<SortedMap<String, u32>>(text)
                .map(|m| format!("{m:?}"))
                .map_err(|e| e.to_string());
            let theirs = serde_json::from_str::<BTreeMap<String, u32>>(text)
                .map(|m| format!("{m:?}"))
                .map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{text}");
        }
    }

    proptest! {
        /// Every step gives what a `BTreeMap` gives, and the entries stay in the same order.
        #[test]
        fn it_does_what_a_btree_map_does(steps in prop::collection::vec(step(), 0..200)) {
            let mut ours: SortedMap<String, u32> = SortedMap::new();
            let mut theirs: BTreeMap<String, u32> = BTreeMap::new();
            for step in steps {
                match step {
                    Step::Insert(k, v) => {
                        prop_assert_eq!(ours.insert(k.to_string(), v), theirs.insert(k.to_string(), v));
                    }
                    Step::Remove(k) => {
                        prop_assert_eq!(ours.remove(k.to_string().as_str()), theirs.remove(k.to_string().as_str()));
                    }
                    Step::Bump(k) => {
                        let key = k.to_string();
                        ours.update_or_default(key.as_str(), || key.clone(), |v| *v += 1);
                        *theirs.entry(key.clone()).or_default() += 1;
                    }
                }
                let key = "7";
                prop_assert_eq!(ours.get(key), theirs.get(key));
                prop_assert_eq!(ours.contains_key(key), theirs.contains_key(key));
                prop_assert_eq!(ours.get_mut(key).copied(), theirs.get_mut(key).copied());
                prop_assert_eq!(ours.len(), theirs.len());
                prop_assert_eq!(ours.is_empty(), theirs.is_empty());
                prop_assert!(ours.iter().eq(theirs.iter()));
                prop_assert!(ours.keys().eq(theirs.keys()));
                prop_assert!(ours.values().eq(theirs.values()));
                prop_assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
            }
        }
    }
}
