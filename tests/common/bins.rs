//! The real clients (kubelet, crictl) from `../shared/bin`: xz-compressed static binaries,
//! unpacked once into `target/e2e-bin/` and checked against the folder's SHA256SUMS, then
//! reused by every later run. Nothing is downloaded.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// `$PEAPOD_SHARED_BIN`, else `../shared/bin` from the project root (CI has the same layout).
pub fn shared_bin_dir() -> PathBuf {
    match std::env::var_os("PEAPOD_SHARED_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bin"),
    }
}

/// Where unpacked binaries are cached across runs.
fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("e2e-bin")
}

/// True in CI, where a missing prerequisite is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A prerequisite is missing: fails under CI=true, else says loudly that the test is skipped.
pub fn missing(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why} (CI=true: a missing prerequisite is a failure)");
    }
    loud(&format!("SKIPPED {test}: {why}"));
}

/// Root and the unpacked binary `name`, which every real-client test needs; None (after
/// saying so, or failing under CI) when one is missing.
pub fn require(test: &str, name: &str) -> Option<PathBuf> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        missing(test, "needs root");
        return None;
    }
    match real_binary(name) {
        Ok(b) => Some(b),
        Err(e) => {
            missing(test, &e);
            None
        }
    }
}

/// A line on the real stderr: the test harness captures `eprintln!` of passing tests, and
/// a skip or a measurement must show in CI's log all the same.
pub fn loud(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn sha256_hex(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The expected checksum of the uncompressed `name`, from SHA256SUMS.
fn expected_sum(dir: &Path, name: &str) -> Result<String, String> {
    let sums = dir.join("SHA256SUMS");
    let text = std::fs::read_to_string(&sums)
        .map_err(|e| format!("cannot read {}: {e}", sums.display()))?;
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?, it.next()?.trim_start_matches('*')))
        })
        .find(|(_, n)| *n == name)
        .map(|(s, _)| s.to_ascii_lowercase())
        .ok_or_else(|| format!("{name} is not listed in {}", sums.display()))
}

/// The unpacked, verified binary `name` (e.g. "kubelet"), or why it is unavailable.
pub fn real_binary(name: &str) -> Result<PathBuf, String> {
    // Tests of one binary run as threads of one process: one unpacks, the others wait and
    // then find the cached file (they once shared a pid-named temp file and lost it).
    static UNPACK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = UNPACK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = shared_bin_dir();
    let xz = dir.join(format!("{name}.xz"));
    if !xz.is_file() {
        return Err(format!(
            "{} not found (set PEAPOD_SHARED_BIN to the folder holding it)",
            xz.display()
        ));
    }
    let sum = expected_sum(&dir, name)?;
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).map_err(|e| format!("mkdir {}: {e}", cache.display()))?;
    // The checksum in the file name: a new binary in ../shared/bin gets a new cache entry.
    let out = cache.join(format!("{name}-{}", &sum[..16]));
    if out.is_file() && sha256_hex(&out).is_ok_and(|s| s == sum) {
        return Ok(out);
    }
    // Unpack beside the final name and rename, so concurrent runs never see half a file;
    // the pid keeps test binaries running side by side apart.
    let tmp = cache.join(format!(".{name}.{}.tmp", std::process::id()));
    let f = std::fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    let st = Command::new("xz")
        .arg("-dc")
        .arg(&xz)
        .stdout(f)
        .status()
        .map_err(|e| format!("run xz (apt-get install xz-utils): {e}"))?;
    if !st.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("xz -dc {} failed: {st}", xz.display()));
    }
    let got = sha256_hex(&tmp).map_err(|e| format!("read {}: {e}", tmp.display()))?;
    if got != sum {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "{name} unpacked from {} has sha256 {got}, SHA256SUMS says {sum}",
            xz.display()
        ));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &out).map_err(|e| format!("rename to {}: {e}", out.display()))?;
    Ok(out)
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
