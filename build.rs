//! Compiles the protocol buffers with prost-build and tonic-prost-build, parsing them with
//! protox (pure Rust), so building needs no system `protoc`:
//! - proto/xlreg.proto, the registry's own wire messages;
//! - proto/etcd/*.proto, the subset of etcd's v3 API the etcd backend speaks (gRPC client
//!   stubs only; see proto/etcd/README.md for where they come from).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/xlreg.proto");
    let descriptors = protox::compile(["proto/xlreg.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;

    println!("cargo:rerun-if-changed=proto/etcd");
    let etcd = protox::compile(["rpc.proto"], ["proto/etcd"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(etcd)?;
    Ok(())
}
