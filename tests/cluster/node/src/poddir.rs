//! The per-pod directory under the state dir: container logs, termination-message files, start
//! markers, volume contents, and the record of what was created on the host (for crash cleanup).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `<state-dir>/pods/<namespace>_<name>_<uid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDir {
    pub root: PathBuf,
}

impl PodDir {
    pub fn new(state_dir: &Path, namespace: &str, name: &str, uid: &str) -> Self {
        PodDir {
            root: state_dir
                .join("pods")
                .join(format!("{namespace}_{name}_{uid}")),
        }
    }

    pub fn log(&self, container: &str) -> PathBuf {
        self.root.join(format!("{container}.log"))
    }

    pub fn termination_log(&self, container: &str) -> PathBuf {
        self.root.join(format!("{container}.termination-log"))
    }

    /// Written by the launch script just before it executes the container's command.
    pub fn started_marker(&self, container: &str) -> PathBuf {
        self.root.join(format!("{container}.started"))
    }

    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    pub fn volume(&self, kind: &str, name: &str) -> PathBuf {
        self.volumes().join(kind).join(name)
    }

    pub fn runtime_record(&self) -> PathBuf {
        self.root.join("runtime.json")
    }

    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::io(format!("creating {}", self.root.display()), e))
    }
}

/// What the node created on the host for a pod, saved so that a restarted node can remove the
/// leftovers of a crashed run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeRecord {
    pub netns: Option<String>,
    pub veth: Option<String>,
    pub tmpfs: Vec<PathBuf>,
}

impl RuntimeRecord {
    pub fn load(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self)
            .map_err(|e| Error::Invalid(format!("serialising runtime record: {e}")))?;
        std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let d = PodDir::new(Path::new("/s"), "ns", "p", "u");
        assert_eq!(d.root, PathBuf::from("/s/pods/ns_p_u"));
        assert_eq!(d.log("main"), PathBuf::from("/s/pods/ns_p_u/main.log"));
        assert_eq!(
            d.volume("empty-dir", "shm"),
            PathBuf::from("/s/pods/ns_p_u/volumes/empty-dir/shm")
        );
    }

    #[test]
    fn runtime_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let r = RuntimeRecord {
            netns: Some("lfp-1".into()),
            veth: Some("lfv1".into()),
            tmpfs: vec![PathBuf::from("/x")],
        };
        r.save(&path).unwrap();
        assert_eq!(RuntimeRecord::load(&path), Some(r));
        assert_eq!(RuntimeRecord::load(&dir.path().join("none")), None);
    }
}
