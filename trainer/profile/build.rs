//! Compiles the profiler shim (cpp/profiler.cpp) against the headers of the libtorch that
//! torch-sys links (`DEP_TCH_LIBTORCH_LIB`), links it to libtorch_cpu, and gives this crate's tests
//! a RUNPATH to that libtorch (../libtorch_link.rs, shared with the other trainer crates).
use std::env;
use std::path::PathBuf;

include!("../libtorch_link.rs");
include!("../shim_build.rs");

fn main() {
    println!("cargo:rerun-if-changed=cpp");
    let lib = libtorch_lib_dir("lf-profile");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    libtorch_shim(&lib, &manifest.join("cpp").join("profiler.cpp")).compile("lf_profile_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    link_libtorch_runtime();
}
