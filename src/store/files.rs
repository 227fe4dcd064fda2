//! peapod's status files: JSON written atomically, read back at start.

use std::io::Write;
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

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

/// Objects whose state peapod holds in memory but could not write (disk full, read-only
/// state directory), with the last error; Status reports them until the retries succeed.
#[derive(Default)]
pub struct Unpersisted(std::sync::Mutex<std::collections::BTreeMap<String, String>>);

impl Unpersisted {
    pub fn note(&self, id: &str, error: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), error.to_string());
    }

    pub fn clear(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// The number of objects and one of their errors, when there are any.
    pub fn summary(&self) -> Option<(usize, String, String)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .next()
            .map(|(id, e)| (m.len(), id.clone(), e.clone()))
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

#[cfg(test)]
mod tests {
    use super::*;

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
