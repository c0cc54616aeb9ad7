// Included (`include!`) by the targets whose readers take a path: one scratch directory per fuzzing
// process, on tmpfs when there is one (the readers open, stat and fsync; a disk makes that slow).

fn scratch_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let builder = tempfile::Builder::new().prefix("lf-fuzz-").tempdir_in(shm);
        builder.or_else(|_| tempfile::tempdir()).expect("a scratch directory")
    })
    .path()
}

/// Writes `data` to `name` in the scratch directory and returns its path.
fn scratch_file(name: &str, data: &[u8]) -> std::path::PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, data).expect("write the scratch file");
    path
}
