// Included (`include!`) by the targets whose readers take a path: one scratch directory per fuzzing
// process, on tmpfs when there is one (the readers open, stat and fsync; a disk makes that slow).

// It is removed when the process exits (a `TempDir` in a static is never dropped, so each run left
// its directory in /dev/shm).

fn scratch_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    extern "C" fn remove_scratch() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let builder = tempfile::Builder::new().prefix("lf-fuzz-").tempdir_in(shm);
        let dir = builder
            .or_else(|_| tempfile::tempdir())
            .expect("a scratch directory");
        // SAFETY: registers a plain function that only reads this function's static.
        unsafe { libc::atexit(remove_scratch) };
        dir.keep()
    })
}

/// Writes `data` to `name` in the scratch directory and returns its path.
fn scratch_file(name: &str, data: &[u8]) -> std::path::PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, data).expect("write the scratch file");
    path
}
