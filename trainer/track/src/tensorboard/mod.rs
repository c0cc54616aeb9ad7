//! TensorBoard: event files written by us, read by TensorBoard (and `tbparse`, and `wandb sync
//! --sync-tensorboard`). One file per attempt in `logging_dir`; a resumed run adds a file beside
//! the first, which TensorBoard shows as the same run.

mod proto;
mod tfrecord;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;

use crate::error::TrackError;
use crate::sink::{Param, Sink};
use proto::{Event, HParamsPluginData, Kind, PluginData, SessionStartInfo, Summary};
use proto::{SummaryMetadata, SummaryValue, Value};

/// Distinguishes two files opened by one process in the same second.
static FILE_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// An open event file.
pub struct TensorBoard {
    path: PathBuf,
    out: BufWriter<File>,
}

impl TensorBoard {
    /// Creates `dir` and a new event file in it, named as TensorFlow names them
    /// (`events.out.tfevents.<seconds>.<host>.<pid>.<n>`), starting with the file-version event.
    pub fn create(dir: &Path, wall_time: f64) -> Result<Self, TrackError> {
        fs::create_dir_all(dir).map_err(|e| TrackError::io("create", dir, e))?;
        let name = format!(
            "events.out.tfevents.{}.{}.{}.{}",
            wall_time as u64,
            hostname(),
            std::process::id(),
            FILE_SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| TrackError::io("create", &path, e))?;
        let mut tb = TensorBoard {
            path,
            out: BufWriter::new(file),
        };
        tb.write(Event {
            wall_time,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        })?;
        tb.flush()?;
        Ok(tb)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: Event) -> Result<(), TrackError> {
        tfrecord::write_record(&mut self.out, &event.encode_to_vec())
            .map_err(|e| TrackError::io("write", &self.path, e))
    }

    fn flush(&mut self) -> Result<(), TrackError> {
        self.out
            .flush()
            .map_err(|e| TrackError::io("write", &self.path, e))
    }
}

impl Sink for TensorBoard {
    fn name(&self) -> &'static str {
        "tensorboard"
    }

    /// The hyper-parameters as the HParams plugin's session start (what `SummaryWriter.add_hparams`
    /// writes), so TensorBoard's HParams tab lists them.
    fn params(&mut self, params: &[Param], wall_time: f64) -> Result<(), TrackError> {
        let hparams: BTreeMap<String, Value> = params
            .iter()
            .map(|p| {
                let kind = match &p.value {
                    serde_json::Value::Number(n) => n.as_f64().map(Kind::Number),
                    serde_json::Value::Bool(b) => Some(Kind::Bool(*b)),
                    serde_json::Value::String(s) => Some(Kind::Text(s.clone())),
                    serde_json::Value::Null => None,
                    other => Some(Kind::Text(other.to_string())),
                };
                (p.key.clone(), Value { kind })
            })
            .collect();
        let content = HParamsPluginData {
            version: 0,
            session_start_info: Some(SessionStartInfo {
                hparams,
                start_time_secs: wall_time,
            }),
        };
        let value = SummaryValue {
            tag: "_hparams_/session_start_info".into(),
            simple_value: None,
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: "hparams".into(),
                    content: content.encode_to_vec(),
                }),
            }),
        };
        self.write(Event {
            wall_time,
            step: 0,
            file_version: None,
            summary: Some(Summary { value: vec![value] }),
        })?;
        self.flush()
    }

    fn scalars(
        &mut self,
        step: u64,
        wall_time: f64,
        values: &[(String, f64)],
    ) -> Result<(), TrackError> {
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
                metadata: None,
            })
            .collect();
        self.write(Event {
            wall_time,
            step: step as i64,
            file_version: None,
            summary: Some(Summary { value }),
        })?;
        self.flush()
    }

    fn finish(&mut self, _ok: bool, _artifacts: &[(String, PathBuf)]) -> Result<(), TrackError> {
        self.flush()?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| TrackError::io("sync", &self.path, e))
    }
}

/// This machine's name (the pod's name in a cluster), for the event file's name.
fn hostname() -> String {
    let name = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}
