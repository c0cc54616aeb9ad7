//! Gives this crate's test binaries a RUNPATH to the libtorch they were built against, so
//! `cargo test -p lf-model` runs without LD_LIBRARY_PATH (same trick as trainer/build.rs).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=TCH_FORCE_CUDA_LINK");
    if std::env::var("TCH_FORCE_CUDA_LINK").is_ok() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
