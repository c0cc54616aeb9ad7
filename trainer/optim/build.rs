//! Gives the binary a RUNPATH to the libtorch it was built against, so it runs without
//! LD_LIBRARY_PATH; GPU builds (TCH_FORCE_CUDA_LINK=1) keep libtorch_cuda in the NEEDED list.
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
