//! PersistentVolumeClaims → local directories.
//!
//! A claim maps to, in order: an explicit `--volume CLAIM=PATH`; `<dir of the job file>/<CLAIM>`
//! when that directory exists (how the bundled examples ship their model and data); otherwise
//! `<workdir>/volumes/<CLAIM>`, created empty (where outputs and checkpoints go).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The claim → directory mapping for one run.
#[derive(Debug, Clone, Default)]
pub struct VolumeMap {
    explicit: BTreeMap<String, PathBuf>,
    job_dir: PathBuf,
    workdir: PathBuf,
}

/// A `--volume` argument that is not `CLAIM=PATH`.
#[derive(Debug, thiserror::Error)]
#[error("--volume `{0}` must look like CLAIM=PATH")]
pub struct BadVolumeArg(pub String);

impl VolumeMap {
    pub fn new(job_dir: &Path, workdir: &Path) -> VolumeMap {
        VolumeMap {
            explicit: BTreeMap::new(),
            job_dir: job_dir.to_path_buf(),
            workdir: workdir.to_path_buf(),
        }
    }

    /// Adds `CLAIM=PATH`.
    pub fn add_arg(&mut self, arg: &str) -> Result<(), BadVolumeArg> {
        let (claim, path) = arg
            .split_once('=')
            .ok_or_else(|| BadVolumeArg(arg.to_string()))?;
        if claim.is_empty() || path.is_empty() {
            return Err(BadVolumeArg(arg.to_string()));
        }
        self.explicit.insert(claim.to_string(), PathBuf::from(path));
        Ok(())
    }

    /// The local directory of a claim's root.
    pub fn claim_dir(&self, claim: &str) -> PathBuf {
        if let Some(p) = self.explicit.get(claim) {
            return p.clone();
        }
        let beside = self.job_dir.join(claim);
        if beside.is_dir() {
            return beside;
        }
        self.workdir.join("volumes").join(claim)
    }

    /// The local directory of `claim` + optional `sub_path`.
    pub fn resolve(&self, claim: &str, sub_path: Option<&str>) -> PathBuf {
        let root = self.claim_dir(claim);
        match sub_path {
            Some(s) if !s.is_empty() => root.join(s),
            _ => root,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_then_beside_then_workdir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jobs/models")).unwrap();
        let mut v = VolumeMap::new(&dir.path().join("jobs"), &dir.path().join("work"));
        assert_eq!(
            v.resolve("models", Some("llama")),
            dir.path().join("jobs/models/llama")
        );
        assert_eq!(v.resolve("out", None), dir.path().join("work/volumes/out"));
        v.add_arg("out=/tmp/x").unwrap();
        assert_eq!(v.resolve("out", Some("a")), PathBuf::from("/tmp/x/a"));
        assert!(v.add_arg("nonsense").is_err());
    }
}
