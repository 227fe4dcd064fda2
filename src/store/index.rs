//! The in-memory indexes List and Status RPCs are served from: id and unique-prefix
//! lookup, and CRI label selectors.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Something an [`Index`] holds, keyed by its id.
pub trait Indexed {
    /// What the object is called in error messages ("pod sandbox", "container").
    const KIND: &'static str;
    fn id(&self) -> &str;
}

/// An in-memory id → object index, served to List/Status RPCs without containerd round trips.
pub struct Index<T> {
    map: std::sync::RwLock<HashMap<String, Arc<T>>>,
}

impl<T> Default for Index<T> {
    fn default() -> Self {
        Index {
            map: Default::default(),
        }
    }
}

impl<T: Indexed> Index<T> {
    pub fn insert(&self, v: Arc<T>) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(v.id().to_string(), v);
    }

    pub fn remove(&self, id: &str) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// By full id or unique prefix.
    pub fn get(&self, id_or_prefix: &str) -> Result<Arc<T>> {
        let m = self.map.read().unwrap_or_else(|p| p.into_inner());
        // A full id (what kubelet always sends) without scanning for prefixes.
        if let Some(v) = m.get(id_or_prefix) {
            return Ok(v.clone());
        }
        let id = resolve_prefix(m.keys(), id_or_prefix, T::KIND)?;
        m.get(&id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("{} {id_or_prefix:?} not found", T::KIND)))
    }

    /// For the idempotent RPCs (StopContainer, RemoveContainer, StopPodSandbox,
    /// RemovePodSandbox): what `id_or_prefix` names, or None when it names nothing, whatever
    /// its form (a UUID, a path, 65 characters): containerd 2.x answers those with OK, and
    /// kubelet retries a failed removal for ever. Such an id is never looked up further, so
    /// it reaches no path or containerd filter. A prefix naming several objects is still an
    /// error.
    pub fn find(&self, id_or_prefix: &str) -> Result<Option<Arc<T>>> {
        if !crate::id::is_valid_ref(id_or_prefix) {
            return Ok(None);
        }
        match self.get(id_or_prefix) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn all(&self) -> Vec<Arc<T>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Finds the one id that starts with `prefix`.
pub fn resolve_prefix<'a>(
    ids: impl Iterator<Item = &'a String>,
    prefix: &str,
    what: &str,
) -> Result<String> {
    if !crate::id::is_valid_ref(prefix) {
        return Err(Error::invalid(format!(
            "{what} id {prefix:?} is not a hex id or id prefix"
        )));
    }
    let mut found: Option<&String> = None;
    for id in ids {
        if id == prefix {
            return Ok(id.clone());
        }
        if id.starts_with(prefix) {
            if found.is_some() {
                return Err(Error::invalid(format!(
                    "{what} id prefix {prefix:?} matches more than one {what}"
                )));
            }
            found = Some(id);
        }
    }
    found
        .cloned()
        .ok_or_else(|| Error::not_found(format!("{what} {prefix:?} not found")))
}

/// CRI label selectors are plain equality on every key given.
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_lookup() {
        let ids = ["abc1".to_string(), "abd2".to_string()];
        assert_eq!(resolve_prefix(ids.iter(), "abc", "pod").unwrap(), "abc1");
        assert!(matches!(
            resolve_prefix(ids.iter(), "ab", "pod"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(resolve_prefix(ids.iter(), "ff", "pod")
            .unwrap_err()
            .is_not_found());
        assert!(matches!(
            resolve_prefix(ids.iter(), "../x", "pod"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[derive(Debug)]
    struct Obj(String);
    impl Indexed for Obj {
        const KIND: &'static str = "thing";
        fn id(&self) -> &str {
            &self.0
        }
    }

    #[test]
    fn find_treats_what_names_nothing_as_absent() {
        let idx: Index<Obj> = Index::default();
        idx.insert(Arc::new(Obj("abc1".into())));
        idx.insert(Arc::new(Obj("abd2".into())));
        assert_eq!(idx.find("abc").unwrap().unwrap().0, "abc1");
        for nothing in [
            "ff",
            "7f1f1e2d-3c4b-4a5e-9f8a-0b1c2d3e4f50",
            "../../etc",
            &"a".repeat(65),
        ] {
            assert!(idx.find(nothing).unwrap().is_none(), "{nothing}");
        }
        assert!(matches!(idx.find("ab"), Err(Error::InvalidArgument(_))));
        // The non-idempotent lookup keeps telling the two apart.
        assert!(idx.get("ff").unwrap_err().is_not_found());
        assert!(matches!(idx.get("../x"), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn selector() {
        let l: HashMap<_, _> = [("a".to_string(), "1".to_string())].into();
        assert!(labels_match(&l, &HashMap::new()));
        assert!(labels_match(
            &l,
            &[("a".to_string(), "1".to_string())].into()
        ));
        assert!(!labels_match(
            &l,
            &[("a".to_string(), "2".to_string())].into()
        ));
    }
}
