//! Compiles proto/xlreg.proto into Rust with prost-build, parsing it with protox (pure Rust),
//! so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/xlreg.proto");
    let descriptors = protox::compile(["proto/xlreg.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
