//! Compiles proto/kserve.proto with protox (pure Rust, so no protoc is needed) into the
//! gRPC server and client of `inference.GRPCInferenceService`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/kserve.proto");
    let fds = protox::compile(["kserve.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
