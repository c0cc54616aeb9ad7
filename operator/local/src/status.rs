//! The FineTuneJob status as the local runner keeps it: the trainer's fields merged in from the
//! status file the trainer appends to. The operator's fields (phase, conditions, times) are set by
//! the controller's own rule, [`lf_api::conditions::set_phase`].

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use lf_api::status::FineTuneJobStatus;

/// Reads the lines the trainer appends to its status file, from where the last read stopped.
/// Each line is the status body the trainer would server-side apply (optionally wrapped as
/// `{"status": …}`): every top-level field it names replaces the previous value, as an apply by a
/// single field manager does.
#[derive(Debug)]
pub struct StatusFollower {
    path: PathBuf,
    offset: u64,
}

impl StatusFollower {
    pub fn new(path: &Path) -> StatusFollower {
        StatusFollower {
            path: path.to_path_buf(),
            offset: 0,
        }
    }

    /// Applies every complete new line to `status`; returns how many were applied. A line that is
    /// not JSON is skipped with a warning (a torn write is completed on the next call).
    pub fn poll(&mut self, status: &mut FineTuneJobStatus) -> usize {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return 0;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return 0;
        }
        let mut reader = BufReader::new(file);
        let mut applied = 0;
        let mut line = String::new();
        while let Ok(n) = reader.read_line(&mut line) {
            if n == 0 || !line.ends_with('\n') {
                break; // EOF or a line still being written
            }
            self.offset += n as u64;
            match serde_json::from_str::<serde_json::Value>(line.trim()) {
                Ok(patch) => {
                    let patch = patch.get("status").cloned().unwrap_or(patch);
                    if merge_into(status, &patch) {
                        applied += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), "skipping a status line that is not JSON: {e}")
                }
            }
            line.clear();
        }
        applied
    }
}

/// Replaces each top-level field of `status` that `patch` names (`null` removes it).
fn merge_into(status: &mut FineTuneJobStatus, patch: &serde_json::Value) -> bool {
    let Ok(mut current) = serde_json::to_value(&*status) else {
        return false;
    };
    let (Some(target), Some(fields)) = (current.as_object_mut(), patch.as_object()) else {
        return false;
    };
    for (k, v) in fields {
        if v.is_null() {
            target.remove(k);
        } else {
            target.insert(k.clone(), v.clone());
        }
    }
    match serde_json::from_value(current) {
        Ok(s) => {
            *status = s;
            true
        }
        Err(e) => {
            tracing::warn!(
                "ignoring a status update that does not fit the FineTuneJob status: {e}"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn follows_appended_patches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, r#"{{"progress":{{"step":1,"totalSteps":10,"stepDisplay":"1/10","epoch":0.1,"loss":2.5}}}}"#).unwrap();
        write!(f, r#"{{"status":{{"progress":{{"step":2"#).unwrap();
        let mut status = FineTuneJobStatus::default();
        let mut follower = StatusFollower::new(&path);
        assert_eq!(follower.poll(&mut status), 1);
        assert_eq!(status.progress.as_ref().unwrap().step, 1);
        writeln!(
            f,
            r#","totalSteps":10,"stepDisplay":"2/10","epoch":0.2}}}}}}"#
        )
        .unwrap();
        writeln!(f, "not json").unwrap();
        assert_eq!(follower.poll(&mut status), 1);
        let p = status.progress.unwrap();
        assert_eq!((p.step, p.loss), (2, None));
    }
}
