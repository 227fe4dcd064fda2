// Compiles the vendored CRI v1 API (proto/api.proto, see its header for the upstream tag)
// into both a server (for peapod) and a client (for peapodctl and the end-to-end tests),
// so that the tests speak exactly the protocol kubelet speaks.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The configs in ContainerStatus/PodSandboxStatus verbose info are these messages as
        // JSON, with the proto field names, as containerd's CRI plugin shows them
        // (`crate::cri_json` leaves out the empty fields, as Go's `omitempty` tags do).
        .type_attribute(".runtime.v1", "#[derive(serde::Serialize)]")
        .compile_protos(&["proto/api.proto"], &["proto"])?;
    Ok(())
}
