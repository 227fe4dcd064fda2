//! Builds small OCI images from the host's busybox-static, packed as an OCI image-layout
//! tarball that `ctr images import` (and a registry push) accept. No registry on the
//! internet is reachable from the test machines, so every test image is made here.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// What goes into a test image's config.
#[derive(Clone, Debug, Default)]
pub struct ImageSpec {
    /// Fully qualified name, e.g. `localhost/peapod-test/busybox:1`.
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub stop_signal: String,
    /// Extra files (path inside the image, content).
    pub files: Vec<(String, Vec<u8>)>,
    /// Entries that are not regular files (a hostile image's FIFOs, devices, links); one at
    /// `etc/passwd` or `etc/group` replaces the rig's own.
    pub special: Vec<(String, Special)>,
}

/// A non-regular layer entry.
#[derive(Clone, Debug)]
pub enum Special {
    Fifo,
    CharDevice(u32, u32),
    Symlink(String),
    /// A regular file of this many bytes (zeros).
    Sized(u64),
}

pub struct BuiltImage {
    pub layout_tar: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
}

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
alice:x:1000:1000:alice:/home/alice:/bin/sh\n\
bob:x:1001:1001:bob:/home/bob:/bin/sh\n";
const GROUP: &str = "root:x:0:\n\
daemon:x:1:\n\
wheel:x:10:alice\n\
alice:x:1000:\n\
bob:x:1001:\n\
staff:x:50:alice,bob\n\
nogroup:x:65534:\n";

/// The uncompressed root filesystem layer: busybox with every applet linked, /etc files.
pub fn busybox_layer(extra: &[(String, Vec<u8>)]) -> Vec<u8> {
    busybox_layer_with(extra, &[])
}

/// [`busybox_layer`] plus non-regular entries.
pub fn busybox_layer_with(extra: &[(String, Vec<u8>)], special: &[(String, Special)]) -> Vec<u8> {
    let replaced = |p: &str| special.iter().any(|(q, _)| q.trim_start_matches('/') == p);
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static installed at /bin/busybox");
    let applets = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, p, std::io::empty()).unwrap();
    };
    for d in [
        "bin",
        "etc",
        "tmp",
        "proc",
        "sys",
        "dev",
        "root",
        "var",
        "home",
        "home/alice",
        "home/bob",
        "usr",
        "usr/bin",
        "sbin",
        "run",
    ] {
        dir(&mut b, d, if d == "tmp" { 0o1777 } else { 0o755 });
    }
    let file = |b: &mut tar::Builder<Vec<u8>>, p: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, p, data).unwrap();
    };
    file(&mut b, "bin/busybox", &busybox, 0o755);
    if !replaced("etc/passwd") {
        file(&mut b, "etc/passwd", PASSWD.as_bytes(), 0o644);
    }
    if !replaced("etc/group") {
        file(&mut b, "etc/group", GROUP.as_bytes(), 0o644);
    }
    for a in String::from_utf8_lossy(&applets.stdout).lines() {
        let a = a.trim();
        if a.is_empty() || a == "busybox" {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    for (p, data) in extra {
        file(&mut b, p.trim_start_matches('/'), data, 0o755);
    }
    for (p, s) in special {
        let p = p.trim_start_matches('/');
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(0);
        h.set_mtime(0);
        match s {
            Special::Fifo => h.set_entry_type(tar::EntryType::Fifo),
            Special::CharDevice(major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
            }
            Special::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, p, target).unwrap();
                continue;
            }
            Special::Sized(n) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*n);
                b.append_data(&mut h, p, std::io::repeat(0).take(*n))
                    .unwrap();
                continue;
            }
        }
        b.append_data(&mut h, p, std::io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Builds the image and writes an OCI layout tarball into `dir`.
pub fn build(dir: &Path, spec: &ImageSpec) -> BuiltImage {
    let layer = busybox_layer_with(&spec.files, &spec.special);
    let layer_digest = sha256(&layer);
    let mut cfg = json!({
        "Env": if spec.env.is_empty() { vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()] } else { spec.env.clone() },
    });
    if !spec.entrypoint.is_empty() {
        cfg["Entrypoint"] = json!(spec.entrypoint);
    }
    if !spec.cmd.is_empty() {
        cfg["Cmd"] = json!(spec.cmd);
    }
    if !spec.user.is_empty() {
        cfg["User"] = json!(spec.user);
    }
    if !spec.working_dir.is_empty() {
        cfg["WorkingDir"] = json!(spec.working_dir);
    }
    if !spec.stop_signal.is_empty() {
        cfg["StopSignal"] = json!(spec.stop_signal);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "peapod test rig"}],
    }))
    .unwrap();
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let manifest_digest = sha256(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": spec.name,
                "org.opencontainers.image.ref.name": spec.name.rsplit(':').next().unwrap_or("latest"),
            },
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }))
    .unwrap();
    let mut t = tar::Builder::new(Vec::new());
    let mut add = |p: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        t.append_data(&mut h, p, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for (d, data) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        add(
            &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            data,
        );
    }
    let out = t.into_inner().unwrap();
    let safe: String = spec
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let layout_tar = dir.join(format!("{safe}.oci.tar"));
    std::fs::File::create(&layout_tar)
        .unwrap()
        .write_all(&out)
        .unwrap();
    BuiltImage {
        layout_tar,
        manifest_digest,
        config_digest,
        layer_digest,
        manifest,
        config,
        layer,
    }
}
