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
}
