//! Pieces of peapod's own state shared by sandboxes and containers: name reservations,
//! atomic status files, id-prefix lookup and label selectors.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// Names (`name_namespace_uid_attempt`) in use, each mapped to the id holding it.
#[derive(Default, Clone)]
pub struct Names {
    inner: Arc<Mutex<HashMap<String, String>>>,
}

impl Names {
    /// Reserves `name` for `id`. The reservation is released when the guard drops
    /// unless `keep()` was called, so a failed or cancelled create never leaks a name.
    pub fn reserve(&self, name: &str, id: &str, what: &str) -> Result<Reservation> {
        let mut m = self.lock();
        if let Some(owner) = m.get(name) {
            return Err(Error::AlreadyExists(format!(
                "{what} name {name:?} is reserved for {owner}"
            )));
        }
        m.insert(name.to_string(), id.to_string());
        Ok(Reservation {
            names: self.clone(),
            name: name.to_string(),
            id: id.to_string(),
            kept: false,
        })
    }

    /// Records a name that is already in use (recovery at start).
    pub fn restore(&self, name: &str, id: &str) {
        self.lock().insert(name.to_string(), id.to_string());
    }

    /// Frees `name` if `id` still holds it.
    pub fn release(&self, name: &str, id: &str) {
        let mut m = self.lock();
        if m.get(name).map(|o| o == id).unwrap_or(false) {
            m.remove(name);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A poisoned map still holds valid names; recovering beats failing every later create.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Reservation {
    names: Names,
    name: String,
    id: String,
    kept: bool,
}

impl Reservation {
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.kept {
            self.names.release(&self.name, &self.id);
        }
    }
}

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

/// Writes `value` as JSON to `path` via a temporary file and rename, so a crash leaves
/// either the old file or the new one, never a torn one.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::internal(format!("encode {}: {e}", path.display())))?;
    let dir = path
        .parent()
        .ok_or_else(|| Error::internal(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Removes the temporary files of [`write_json_atomic`] that a crash between write and
/// rename left below `dir` (the state they were to replace is intact). Only at start,
/// before anything writes.
pub fn sweep_temp_files(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() && name.starts_with('.') && name.ends_with(".tmp") => {
                    match std::fs::remove_file(e.path()) {
                        Ok(()) => {
                            tracing::info!(file = %e.path().display(), "removed a state file a crash left half-written")
                        }
                        Err(err) => {
                            tracing::warn!(file = %e.path().display(), error = %err, "remove stale temporary state file")
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Reads a JSON state file; a missing file is `None`, a corrupt one an error naming it.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::internal(format!("state file {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::internal(format!("read {}: {e}", path.display()))),
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
    fn reservation_released_on_drop_and_kept_on_keep() {
        let n = Names::default();
        {
            let _r = n.reserve("a", "1", "sandbox").unwrap();
            assert!(n.reserve("a", "2", "sandbox").is_err());
        }
        let r = n.reserve("a", "2", "sandbox").unwrap();
        r.keep();
        let e = n.reserve("a", "3", "sandbox").err().unwrap();
        assert!(matches!(e, Error::AlreadyExists(_)));
        n.release("a", "3");
        assert!(n.reserve("a", "3", "sandbox").is_err());
        n.release("a", "2");
        assert!(n.reserve("a", "3", "sandbox").is_ok());
    }

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
    fn atomic_json_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x/state.json");
        write_json_atomic(&p, &vec![1, 2, 3]).unwrap();
        let v: Option<Vec<i32>> = read_json(&p).unwrap();
        assert_eq!(v, Some(vec![1, 2, 3]));
        let none: Option<Vec<i32>> = read_json(&d.path().join("nope")).unwrap();
        assert!(none.is_none());
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

    #[test]
    fn stale_temporary_files_are_swept_and_state_kept() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("cni");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(".abc.json.tmp"), "{").unwrap();
        std::fs::write(sub.join("abc.json"), "{}").unwrap();
        std::fs::write(d.path().join("keep.tmp"), "").unwrap();
        sweep_temp_files(d.path());
        assert!(!sub.join(".abc.json.tmp").exists());
        assert!(sub.join("abc.json").exists());
        assert!(d.path().join("keep.tmp").exists());
    }
}
