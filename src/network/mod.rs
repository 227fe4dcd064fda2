//! Pod networking: network namespaces pinned under /var/run/netns and CNI plugins run
//! against them.

pub mod cni;

use std::path::PathBuf;
use std::sync::Mutex;

use crate::config::Config;
use crate::error::{Error, Result};

pub struct Network {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pod_cidr: Mutex<String>,
}

impl Network {
    pub fn new(config: &Config) -> Self {
        Network {
            conf_dir: config.cni_conf_dir.clone(),
            bin_dirs: config.cni_bin_dirs.clone(),
            pod_cidr: Mutex::new(String::new()),
        }
    }

    /// Ok(network name) when a CNI configuration loads and its plugins exist; otherwise why not.
    pub fn status(&self) -> std::result::Result<String, String> {
        let list = cni::load_default(&self.conf_dir).map_err(|e| e.to_string())?;
        list.check_plugins(&self.bin_dirs)
            .map_err(|e| e.to_string())?;
        Ok(list.name)
    }

    /// kubelet hands over the node's pod CIDR; peapod's CNI configs are static files,
    /// so it is validated and remembered for Status, not written anywhere.
    pub fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        if !cidr.is_empty() {
            let (addr, len) = cidr
                .split_once('/')
                .ok_or_else(|| Error::invalid(format!("pod CIDR {cidr:?} is not a CIDR")))?;
            let ok_addr = addr.parse::<std::net::IpAddr>().is_ok();
            let ok_len = len.parse::<u8>().map(|l| l <= 128).unwrap_or(false);
            if !ok_addr || !ok_len {
                return Err(Error::invalid(format!("pod CIDR {cidr:?} is not a CIDR")));
            }
        }
        *self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()) = cidr.to_string();
        Ok(())
    }

    pub fn pod_cidr(&self) -> String {
        self.pod_cidr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
