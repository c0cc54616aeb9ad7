//! Files named by what a tenant wrote: `dataset_info.json`'s `file_name`, `dataset` names, a
//! model's `weight_map`, a checkpoint marker's file list. Such a name is joined to its directory
//! only when it stays inside it ([`confined_join`]: no absolute path, no `..`), and a file is
//! read only when it is a regular file ([`read_regular`]): opening a FIFO blocks until a writer
//! appears, which would hang the trainer forever; a device or socket is no data either.
//!
//! Confinement is by name, not by resolving symbolic links: model and dataset volumes
//! legitimately link into blob stores (the Hugging Face cache layout), and a link can only point
//! at what the pod mounts.

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Why a named file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The name is absolute, empty, or has a `..` (or other non-name) component.
    #[error("`{name}` is not a relative path inside {}: absolute paths and `..` are refused", dir.display())]
    Escapes { dir: PathBuf, name: String },
    /// The path exists but is a FIFO, socket, device or directory.
    #[error("{}: not a regular file ({kind}); only regular files are read", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    /// The file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl FileError {
    /// True when the input itself is at fault (a hostile or mistaken name or file), false for an
    /// I/O failure that may be transient.
    pub fn is_input_error(&self) -> bool {
        !matches!(self, FileError::Io { .. })
    }

    /// Whether this is a missing file (so optional files can be skipped).
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// `dir/name` when `name` is a relative path made only of normal components (`a`, `a/b.json`;
/// `./a` is fine too), else [`FileError::Escapes`].
pub fn confined_join(dir: &Path, name: &str) -> Result<PathBuf, FileError> {
    let escapes = || FileError::Escapes {
        dir: dir.to_path_buf(),
        name: name.to_string(),
    };
    let path = Path::new(name);
    let mut normal = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => normal += 1,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(escapes())
            }
        }
    }
    if normal == 0 || name.contains('\0') {
        return Err(escapes());
    }
    Ok(dir.join(path))
}

/// What a non-regular file is, for messages.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

/// Opens `path` for reading only when it is a regular file (following symbolic links). The type
/// is checked before `open` (which would block on a FIFO) and again on the open handle.
pub fn open_regular(path: &Path) -> Result<File, FileError> {
    let io = |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let not_regular = |meta: &std::fs::Metadata| FileError::NotRegular {
        path: path.to_path_buf(),
        kind: kind_of(meta),
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok(file)
}

/// The bytes of a regular file (see [`open_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>, FileError> {
    let mut file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| FileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

/// `Ok(None)` when `path` does not exist, else [`read_regular`].
pub fn read_optional_regular(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    match read_regular(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_their_directory() {
        let dir = Path::new("/data");
        for ok in ["a.json", "sub/a.jsonl", "./a.json", "a..b.json"] {
            assert!(confined_join(dir, ok).is_ok(), "{ok}");
        }
        for bad in ["/etc/passwd", "../x.json", "a/../../x", "", ".", "a/\0"] {
            let err = confined_join(dir, bad).unwrap_err();
            assert!(err.is_input_error());
            assert!(err.to_string().contains("not a relative path inside /data"));
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("data.json");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let start = std::time::Instant::now();
        let err = read_regular(&fifo).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert!(err.is_input_error());
        assert!(err.to_string().contains("a FIFO"), "{err}");
        let err = read_regular(dir.path()).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        assert!(read_optional_regular(&dir.path().join("none"))
            .unwrap()
            .is_none());
    }
}
