//! The per-sandbox files every container of the pod mounts: hostname, resolv.conf, hosts,
//! and a tmpfs for /dev/shm.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::cri;
use crate::error::{Error, Result};

/// Size of each pod's /dev/shm, as containerd's CRI plugin makes it.
pub const SHM_SIZE: &str = "size=65536k";

/// resolv.conf from the pod's DNS config; without one the host's is copied, as containerd does.
pub fn resolv_conf(dns: Option<&cri::DnsConfig>) -> Result<Vec<u8>> {
    match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for n in &d.servers {
                s.push_str(&format!("nameserver {n}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            Ok(s.into_bytes())
        }
        _ => Ok(std::fs::read("/etc/resolv.conf").unwrap_or_default()),
    }
}

/// Writes hostname, hosts and resolv.conf into `dir`; mounts the shm tmpfs unless the pod
/// shares the host's IPC namespace (then containers use the host's /dev/shm).
pub fn write(
    dir: &Path,
    config: &cri::PodSandboxConfig,
    hostname: &str,
    host_ipc: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    // kubelet mounts its own /etc/hosts into pod containers; this copy serves the rest.
    let hosts = std::fs::read("/etc/hosts").unwrap_or_else(|_| {
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_vec()
    });
    std::fs::write(dir.join("hosts"), hosts)?;
    std::fs::write(
        dir.join("resolv.conf"),
        resolv_conf(config.dns_config.as_ref())?,
    )?;
    if !host_ipc {
        let shm = dir.join("shm");
        std::fs::create_dir_all(&shm)?;
        mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777,size=65536k"),
        )
        .map_err(|e| Error::internal(format!("mount shm tmpfs at {}: {e}", shm.display())))?;
    }
    Ok(())
}

/// Unmounts the shm tmpfs if mounted. Idempotent.
pub fn unmount_shm(dir: &Path) -> Result<()> {
    let shm = dir.join("shm");
    if !shm.exists() {
        return Ok(());
    }
    match umount2(&shm, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::internal(format!("unmount {}: {e}", shm.display()))),
    }
}

/// Unmounts and deletes the sandbox directory. Idempotent.
pub fn remove(dir: &Path) -> Result<()> {
    unmount_shm(dir)?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(format!("remove {}: {e}", dir.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = cri::DnsConfig {
            servers: vec!["10.0.0.10".into(), "8.8.8.8".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        let s = String::from_utf8(resolv_conf(Some(&d)).unwrap()).unwrap();
        assert_eq!(
            s,
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\nnameserver 8.8.8.8\noptions ndots:5\n"
        );
    }
}
