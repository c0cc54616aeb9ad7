// Shared by the build scripts of lf-trainer and its libtorch crates (lf-model, lf-dist, lf-quant,
// lf-optim), each of which `include!`s this file: the one place that says how their binaries and
// test executables link libtorch.

/// Gives this crate's binaries and test executables a RUNPATH to the libtorch tch was built
/// against (torch-sys exports it as `DEP_TCH_LIBTORCH_LIB`), so they run without
/// LD_LIBRARY_PATH; GPU builds (`TCH_FORCE_CUDA_LINK=1`) keep libtorch_cuda in the NEEDED list,
/// which the linker would otherwise drop as unused.
fn link_libtorch_runtime() {
    println!("cargo:rerun-if-env-changed=TCH_FORCE_CUDA_LINK");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    if std::env::var_os("TCH_FORCE_CUDA_LINK").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
