//! The real Kubernetes clients from `../shared/bin` (crictl, kubelet): unpacked once into
//! `target/e2e-bin/`, checked against `SHA256SUMS`. A missing binary is a loud skip outside CI
//! and a failure in CI (CI=true).

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// `$PEAPOD_SHARED_BIN`, else `../shared/bin` next to the project root.
pub fn shared_bin_dir() -> PathBuf {
    match std::env::var_os("PEAPOD_SHARED_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bin"),
    }
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Says why a test cannot run: panics in CI, prints a loud skip otherwise.
pub fn missing(what: &str) {
    if in_ci() {
        panic!("CI=true and a prerequisite is missing: {what}");
    }
    eprintln!("\n*** SKIPPED: {what} ***\n");
}

fn sha256_file(p: &Path) -> Option<String> {
    let data = std::fs::read(p).ok()?;
    Some(hex::encode(Sha256::digest(&data)))
}

/// The unpacked, verified binary `name` (e.g. "crictl"), or `None` after [`missing`].
pub fn unpack(name: &str) -> Option<PathBuf> {
    let src = shared_bin_dir();
    let xz = src.join(format!("{name}.xz"));
    let sums = std::fs::read_to_string(src.join("SHA256SUMS")).unwrap_or_default();
    let Some(want) = sums
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(_, f)| f.trim().trim_start_matches('*') == name)
        .map(|(h, _)| h.trim().to_string())
    else {
        missing(&format!(
            "{} has no checksum for {name}",
            src.join("SHA256SUMS").display()
        ));
        return None;
    };
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-bin");
    let out = cache.join(name);
    if sha256_file(&out).as_deref() == Some(want.as_str()) {
        return Some(out);
    }
    if !xz.exists() {
        missing(&format!("{} (the shared test binaries)", xz.display()));
        return None;
    }
    std::fs::create_dir_all(&cache).expect("create target/e2e-bin");
    // Unpacked under a unique name and renamed, so parallel tests never see half a binary.
    let tmp = cache.join(format!(".{name}.{}", std::process::id()));
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"xz -dc "$1" > "$2" && chmod 0755 "$2""#)
        .arg("sh")
        .arg(&xz)
        .arg(&tmp)
        .status()
        .expect("run xz");
    assert!(status.success(), "xz -dc {} failed", xz.display());
    let got = sha256_file(&tmp).unwrap_or_default();
    assert_eq!(
        got,
        want,
        "{name} from {} does not match SHA256SUMS",
        xz.display()
    );
    std::fs::rename(&tmp, &out).expect("rename the unpacked binary");
    Some(out)
}
