//! Builds a small OCI image from the host's busybox-static and writes it as an OCI
//! image-layout tarball for `ctr images import`. scripts/run.sh uses it to make the demo's
//! pause and web server images, so the demo needs no registry. It shares its code with the test rig
//! (tests/common/oci.rs), so the demo runs exactly the images the tests run.
//!
//!     cargo run --release --example mkimage -- --name localhost/peapod/pause:busybox \
//!         --entrypoint /bin/sh --entrypoint -c --entrypoint 'sleep inf' --out pause.tar

#[allow(dead_code)]
#[path = "../tests/common/oci.rs"]
mod oci;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Build a busybox-static OCI image-layout tarball")]
struct Args {
    /// Fully qualified image name, e.g. localhost/peapod/pause:busybox.
    #[arg(long)]
    name: String,
    /// Entrypoint; repeat for each argument.
    #[arg(long, allow_hyphen_values = true)]
    entrypoint: Vec<String>,
    /// Cmd; repeat for each argument.
    #[arg(long, allow_hyphen_values = true)]
    cmd: Vec<String>,
    /// A file to add: PATH_IN_IMAGE=HOST_FILE; repeat for several.
    #[arg(long = "file")]
    files: Vec<String>,
    /// Output tarball.
    #[arg(long)]
    out: PathBuf,
}

fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().expect("temporary directory");
    let files = args
        .files
        .iter()
        .map(|f| {
            let (at, from) = f
                .split_once('=')
                .unwrap_or_else(|| panic!("--file {f}: expected PATH_IN_IMAGE=HOST_FILE"));
            let data = std::fs::read(from).unwrap_or_else(|e| panic!("read {from}: {e}"));
            (at.to_string(), data)
        })
        .collect();
    let img = oci::build(
        dir.path(),
        &oci::ImageSpec {
            name: args.name.clone(),
            entrypoint: args.entrypoint,
            cmd: args.cmd,
            files,
            ..Default::default()
        },
    );
    std::fs::copy(&img.layout_tar, &args.out)
        .unwrap_or_else(|e| panic!("write {}: {e}", args.out.display()));
    println!(
        "{} {} -> {}",
        args.name,
        img.manifest_digest,
        args.out.display()
    );
}
