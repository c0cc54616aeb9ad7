//! Compiles the profiler shim (cpp/profiler.cpp) against the headers of the libtorch that
//! torch-sys links (`DEP_TCH_LIBTORCH_LIB`), links it to libtorch_cpu, and gives this crate's tests
//! a RUNPATH to that libtorch (../libtorch_link.rs, shared with the other trainer crates).
use std::env;
use std::path::{Path, PathBuf};

include!("../libtorch_link.rs");

fn main() {
    println!("cargo:rerun-if-changed=cpp");
    let Ok(lib) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!(
            "DEP_TCH_LIBTORCH_LIB is not set: lf-profile needs torch-sys as a direct dependency \
             (set LIBTORCH=<root>/torch, see scripts/install-libtorch.sh)"
        );
    };
    let lib = PathBuf::from(lib);
    let include = lib.parent().unwrap_or(Path::new("/")).join("include");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file(manifest.join("cpp").join("profiler.cpp"))
        .include(&include)
        .include(
            include
                .join("torch")
                .join("csrc")
                .join("api")
                .join("include"),
        )
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("GLOG_USE_GLOG_EXPORT", None)
        // libtorch's headers are not warning-clean; our own file is small and reviewed.
        .warnings(false)
        .compile("lf_profile_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    link_libtorch_runtime();
}
