// Shared by the build scripts of the crates with a C++ shim against libtorch (lf-dist's c10d
// shim, lf-profile's profiler shim), each of which `include!`s this file next to
// libtorch_link.rs: where that libtorch is, and the compiler settings its headers need.

/// The `lib` directory of the libtorch torch-sys links (`DEP_TCH_LIBTORCH_LIB`); `krate` names
/// the crate in the panic that says how to fix a missing one.
fn libtorch_lib_dir(krate: &str) -> std::path::PathBuf {
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => std::path::PathBuf::from(lib),
        Err(_) => panic!(
            "DEP_TCH_LIBTORCH_LIB is not set: {krate} needs torch-sys as a direct dependency \
             (set LIBTORCH=<root>/torch, see scripts/install-libtorch.sh)"
        ),
    }
}

/// A C++17 build of `source` against the headers of the libtorch whose `lib` directory is `lib`.
fn libtorch_shim(lib: &std::path::Path, source: &std::path::Path) -> cc::Build {
    let include = lib
        .parent()
        .unwrap_or(std::path::Path::new("/"))
        .join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file(source)
        .include(&include)
        .include(include.join("torch").join("csrc").join("api").join("include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("GLOG_USE_GLOG_EXPORT", None)
        // libtorch's headers are not warning-clean; our own shims are small and reviewed.
        .warnings(false);
    build
}
