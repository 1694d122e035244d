//! A record's changes by field name: a `Vec` of pairs kept sorted by name, not a map. A
//! record names a handful of fields, and a batch holds thousands of records: a `BTreeMap`
//! would allocate a node of several hundred bytes for each of them. Names are shared with
//! the field index (`FieldName`): a million records naming three fields would otherwise
//! allocate three million copies of the same few names.

use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fields::FieldChange;

/// A field's name, shared by every record that names it.
pub type FieldName = Arc<str>;

/// What a record does to each field it names, sorted by name, each name once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldChanges(Vec<(FieldName, FieldChange)>);

impl FieldChanges {
    pub fn get(&self, name: &str) -> Option<&FieldChange> {
        self.position(name).ok().map(|at| &self.0[at].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets `name`'s change, replacing an earlier one.
    pub fn insert(&mut self, name: impl Into<FieldName>, change: FieldChange) {
        let name = name.into();
        match self.position(&name) {
            Ok(at) => self.0[at].1 = change,
            Err(at) => self.0.insert(at, (name, change)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldChange)> {
        self.0.iter().map(|(name, change)| (&**name, change))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, _)| &**name)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(held, _)| (**held).cmp(name))
    }
}

impl std::ops::Index<&str> for FieldChanges {
    type Output = FieldChange;

    fn index(&self, name: &str) -> &FieldChange {
        self.get(name)
            .unwrap_or_else(|| panic!("no change of {name}"))
    }
}

impl<'a> IntoIterator for &'a FieldChanges {
    type Item = (&'a str, &'a FieldChange);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (FieldName, FieldChange)>,
        fn(&'a (FieldName, FieldChange)) -> (&'a str, &'a FieldChange),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(name, change)| (&**name, change))
    }
}

impl IntoIterator for FieldChanges {
    type Item = (FieldName, FieldChange);
    type IntoIter = std::vec::IntoIter<(FieldName, FieldChange)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<N: Into<FieldName>> FromIterator<(N, FieldChange)> for FieldChanges {
    fn from_iter<I: IntoIterator<Item = (N, FieldChange)>>(changes: I) -> Self {
        let mut all = Self::default();
        for (name, change) in changes {
            all.insert(name, change);
        }
        all
    }
}

impl<N: Into<FieldName>> Extend<(N, FieldChange)> for FieldChanges {
    fn extend<I: IntoIterator<Item = (N, FieldChange)>>(&mut self, changes: I) {
        for (name, change) in changes {
            self.insert(name, change);
        }
    }
}

/// A JSON object, as a `BTreeMap` of the same pairs would be.
impl Serialize for FieldChanges {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, change) in &self.0 {
            map.serialize_entry(&**name, change)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for FieldChanges {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Changes;

        impl<'de> Visitor<'de> for Changes {
            type Value = FieldChanges;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of field changes")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FieldChanges, A::Error> {
                let mut changes = FieldChanges::default();
                while let Some((name, change)) = map.next_entry::<String, FieldChange>()? {
                    changes.insert(name, change);
                }
                Ok(changes)
            }
        }

        deserializer.deserialize_map(Changes)
    }
}
