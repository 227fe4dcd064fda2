//! CNI network configuration loading (the CNI spec's conflist, and single-plugin .conf files).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// A loaded network configuration list.
#[derive(Debug, Clone)]
pub struct NetConfList {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's configuration as given in the file.
    pub plugins: Vec<Value>,
    pub source: PathBuf,
}

impl NetConfList {
    pub fn plugin_types(&self) -> Vec<String> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(|t| t.as_str()).map(String::from))
            .collect()
    }

    /// Every plugin binary must be found in one of `bin_dirs`.
    pub fn check_plugins(&self, bin_dirs: &[PathBuf]) -> Result<()> {
        for t in self.plugin_types() {
            find_plugin(bin_dirs, &t)?;
        }
        Ok(())
    }
}

pub fn find_plugin(bin_dirs: &[PathBuf], plugin: &str) -> Result<PathBuf> {
    if plugin.contains('/') || plugin.is_empty() {
        return Err(Error::invalid(format!(
            "CNI plugin type {plugin:?} is not a plain name"
        )));
    }
    bin_dirs
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "CNI plugin {plugin:?} not found in {}",
                bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Loads the first valid configuration in `dir`, in lexical file-name order, as libcni does.
pub fn load_default(dir: &Path) -> Result<NetConfList> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::FailedPrecondition(format!("CNI config dir {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let mut last_err = None;
    for f in &files {
        match load_file(f) {
            Ok(l) => return Ok(l),
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "skipping invalid CNI config");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        Error::FailedPrecondition(format!("no CNI network config found in {}", dir.display()))
    }))
}

pub fn load_file(path: &Path) -> Result<NetConfList> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::FailedPrecondition(format!("{}: {e}", path.display())))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::FailedPrecondition(format!("{}: invalid JSON: {e}", path.display())))?;
    let name = v
        .get("name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::FailedPrecondition(format!("{}: no network name", path.display())))?
        .to_string();
    let cni_version = v
        .get("cniVersion")
        .and_then(|n| n.as_str())
        .unwrap_or("0.4.0")
        .to_string();
    let plugins = match v.get("plugins") {
        Some(Value::Array(p)) => p.clone(),
        Some(_) => {
            return Err(Error::FailedPrecondition(format!(
                "{}: \"plugins\" is not a list",
                path.display()
            )))
        }
        // A single-plugin .conf is a list of one.
        None if v.get("type").is_some() => vec![v.clone()],
        None => {
            return Err(Error::FailedPrecondition(format!(
                "{}: neither \"plugins\" nor \"type\"",
                path.display()
            )))
        }
    };
    if plugins.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "{}: no plugins",
            path.display()
        )));
    }
    for p in &plugins {
        if p.get("type").and_then(|t| t.as_str()).is_none() {
            return Err(Error::FailedPrecondition(format!(
                "{}: a plugin has no \"type\"",
                path.display()
            )));
        }
    }
    Ok(NetConfList {
        name,
        cni_version,
        plugins,
        source: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_first_valid_conflist_in_order() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("05-bad.conflist"), "{not json").unwrap();
        std::fs::write(
            d.path().join("10-good.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n1","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("20-other.conf"),
            r#"{"cniVersion":"0.4.0","name":"n2","type":"bridge"}"#,
        )
        .unwrap();
        let l = load_default(d.path()).unwrap();
        assert_eq!(l.name, "n1");
        assert_eq!(l.plugin_types(), vec!["bridge", "portmap"]);
    }

    #[test]
    fn empty_dir_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(load_default(d.path()).is_err());
        assert!(load_default(&d.path().join("missing")).is_err());
    }

    #[test]
    fn missing_plugin_binary_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.conf");
        std::fs::write(&f, r#"{"name":"n","type":"nosuchplugin"}"#).unwrap();
        let l = load_file(&f).unwrap();
        let e = l.check_plugins(&[d.path().to_path_buf()]).unwrap_err();
        assert!(e.to_string().contains("nosuchplugin"));
    }
}
