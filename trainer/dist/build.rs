//! Compiles the c10d shim (cpp/shim.cpp) against the headers of the libtorch that torch-sys links,
//! links it to libtorch, and gives this crate's binaries and tests a RUNPATH to that libtorch
//! (../libtorch_link.rs, shared with the other trainer crates).
//!
//! The libtorch location comes from torch-sys (`links = "tch"` exports `DEP_TCH_LIBTORCH_LIB`),
//! so the shim always matches the libtorch tch uses. Environment:
//! - `LF_GLOO_INCLUDE`: a real gloo include directory instead of cpp/gloo_stub (optional).
//! - `LF_CUDA_INCLUDE`: extra include directories (`:`-separated) for the `nccl` feature, e.g. a
//!   system CUDA toolkit; by default every `<libtorch>/../nvidia/*/include` of the wheel layout.
//! - `TCH_FORCE_CUDA_LINK`: keep libtorch_cuda in the NEEDED list of binaries (GPU builds).
use std::env;
use std::path::{Path, PathBuf};

include!("../libtorch_link.rs");
include!("../shim_build.rs");

fn main() {
    println!("cargo:rerun-if-changed=cpp");
    println!("cargo:rerun-if-env-changed=LF_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=LF_CUDA_INCLUDE");

    let lib = libtorch_lib_dir("lf-dist");
    let torch = lib.parent().unwrap_or(Path::new("/")).to_path_buf();
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let gloo = env::var("LF_GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| manifest.join("cpp").join("gloo_stub"));
    let nccl = env::var_os("CARGO_FEATURE_NCCL").is_some();

    let mut build = libtorch_shim(&lib, &manifest.join("cpp").join("shim.cpp"));
    build.include(&gloo).define("USE_C10D_GLOO", None);
    if nccl {
        build
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("LF_DIST_NCCL", None);
        for dir in cuda_include_dirs(&torch) {
            build.include(dir);
        }
    }
    build.compile("lf_dist_shim");

    println!("cargo:rustc-link-search=native={}", lib.display());
    if nccl {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    // This crate's own binaries and test executables (dependants do the same in their build.rs).
    link_libtorch_runtime();
}

/// Include directories for the CUDA/NCCL headers: `LF_CUDA_INCLUDE` first, then every
/// `nvidia/*/include` (and its `cccl` subdirectory) next to the torch directory of the wheel layout.
fn cuda_include_dirs(torch: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var("LF_CUDA_INCLUDE")
        .map(|v| {
            v.split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    let nvidia = torch.parent().unwrap_or(Path::new("/")).join("nvidia");
    if let Ok(entries) = std::fs::read_dir(&nvidia) {
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("include"))
            .filter(|p| p.is_dir())
            .collect();
        found.sort();
        for dir in found {
            let cccl = dir.join("cccl");
            dirs.push(dir);
            if cccl.is_dir() {
                dirs.push(cccl);
            }
        }
    }
    if dirs.is_empty() {
        println!(
            "cargo:warning=feature `nccl`: no CUDA include directories found under {} and \
             LF_CUDA_INCLUDE is unset; install the cuda flavour (scripts/install-libtorch.sh cuda)",
            nvidia.display()
        );
    }
    dirs
}
