//! Mount points the node had to create on the host (a bind mount needs an existing target, and a
//! pod's mount namespace shares the host's root). Each created directory or file is recorded (in
//! memory and in `<state-dir>/mountpoints.created`, so a restarted node removes the leftovers of a
//! crash) and removed at node exit, only if empty and not a mount point in any process's mount
//! namespace: other nodes on this machine may share it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Debug)]
pub struct Mountpoints {
    created: Vec<PathBuf>,
    record: PathBuf,
}

impl Mountpoints {
    /// Starts with the records left by a previous run (removed by `cleanup`).
    pub fn load(state_dir: &Path) -> Self {
        let record = state_dir.join("mountpoints.created");
        let created = std::fs::read_to_string(&record)
            .map(|t| {
                t.lines()
                    .filter(|l| !l.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Mountpoints { created, record }
    }

    fn remember(&mut self, path: PathBuf) {
        // Mount tables list resolved paths (`/var/run/x` is mounted on as `/run/x`): record the
        // resolved path, or the in-use check at cleanup would miss it.
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        if !self.created.contains(&path) {
            self.created.push(path);
            self.save();
        }
    }

    fn save(&self) {
        let text: String = self
            .created
            .iter()
            .map(|p| format!("{}\n", p.display()))
            .collect();
        if let Err(e) = std::fs::write(&self.record, text) {
            tracing::warn!(file = %self.record.display(), error = %e, "recording created mount points");
        }
    }

    /// Creates the directory and any missing parents, recording each one created.
    pub fn ensure_dir(&mut self, path: &Path) -> Result<()> {
        let mut missing = vec![];
        let mut p = Some(path);
        while let Some(cur) = p {
            if cur.exists() {
                break;
            }
            missing.push(cur.to_path_buf());
            p = cur.parent();
        }
        for dir in missing.into_iter().rev() {
            match std::fs::create_dir(&dir) {
                Ok(()) => self.remember(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("creating mount point {}", dir.display()),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Creates an empty file (and its parents) for a file bind mount, recording what it created.
    pub fn ensure_file(&mut self, path: &Path) -> Result<()> {
        if path.exists() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            self.ensure_dir(parent)?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(_) => {
                self.remember(path.to_path_buf());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::io(
                format!("creating mount point {}", path.display()),
                e,
            )),
        }
    }

    /// Removes what was created, deepest first, when empty and not mounted on anywhere.
    pub fn cleanup(&mut self) {
        let mounted = mount_points_everywhere();
        let mut kept = vec![];
        for path in self.created.drain(..).rev() {
            let in_use = mounted.contains(&path);
            let removed = match std::fs::symlink_metadata(&path) {
                Err(_) => true,
                Ok(_) if in_use => false,
                Ok(m) if m.is_dir() => std::fs::remove_dir(&path).is_ok(),
                Ok(m) if m.len() == 0 => std::fs::remove_file(&path).is_ok(),
                Ok(_) => false,
            };
            if !removed {
                tracing::info!(path = %path.display(), in_use, "keeping a created mount point (in use or not empty)");
                kept.push(path);
            }
        }
        kept.reverse();
        self.created = kept;
        if self.created.is_empty() {
            let _ = std::fs::remove_file(&self.record);
        } else {
            self.save();
        }
    }
}

fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Mount points as listed in one `mountinfo` file.
pub fn parse_mountinfo(text: &str) -> impl Iterator<Item = PathBuf> + '_ {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| PathBuf::from(unescape(f)))
}

/// Every mount point of every mount namespace on the machine (through `/proc/<pid>/mountinfo`).
fn mount_points_everywhere() -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    let mut seen_ns = BTreeSet::new();
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // One read per mount namespace is enough.
        if let Ok(ns) = std::fs::read_link(e.path().join("ns/mnt")) {
            if !seen_ns.insert(ns) {
                continue;
            }
        }
        if let Ok(text) = std::fs::read_to_string(e.path().join("mountinfo")) {
            out.extend(parse_mountinfo(&text));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_records_and_removes_only_empty() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let mut m = Mountpoints::load(&state);
        let target = dir.path().join("models/llama");
        m.ensure_dir(&target).unwrap();
        m.ensure_file(&dir.path().join("dev2/termination-log"))
            .unwrap();
        m.ensure_dir(&dir.path().join("keep")).unwrap();
        std::fs::write(dir.path().join("keep/data"), b"x").unwrap();
        assert_eq!(m.created.len(), 5);
        // A restarted node knows what the previous run created.
        assert_eq!(Mountpoints::load(&state).created, m.created);
        m.cleanup();
        assert!(!dir.path().join("models").exists());
        assert!(!dir.path().join("dev2").exists());
        assert!(dir.path().join("keep/data").exists());
        assert_eq!(m.created, vec![dir.path().join("keep")]);
    }

    #[test]
    fn records_resolved_paths() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("run");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("varrun")).unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let mut m = Mountpoints::load(&state);
        m.ensure_dir(&dir.path().join("varrun/secrets/sa")).unwrap();
        let real = std::fs::canonicalize(&real).unwrap();
        assert_eq!(
            m.created,
            vec![real.join("secrets"), real.join("secrets/sa")]
        );
    }

    #[test]
    fn mountinfo_fields() {
        let text = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw\n";
        assert_eq!(
            parse_mountinfo(text).collect::<Vec<_>>(),
            vec![PathBuf::from("/mnt two")]
        );
    }
}
