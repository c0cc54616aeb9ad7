//! Reading the configured datasets into samples: files → records (`max_samples`, `num_samples`) →
//! conversations or texts, with bad records reported as `file:line` errors or, with
//! `skip_bad_examples`, counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::convert::{convert, detect_layout, Sample};
use crate::error::DataError;
use crate::reader::{read_records, RawRecord};
use crate::source::DatasetSpec;

/// A sample and the record it came from.
#[derive(Debug, Clone)]
pub struct Sourced {
    pub path: Arc<Path>,
    pub line: usize,
    pub sample: Sample,
}

/// Samples of some datasets, plus what was skipped.
#[derive(Debug, Default)]
pub struct Loaded {
    pub samples: Vec<Sourced>,
    /// Records read (after the sample limits), good or bad.
    pub records: usize,
    /// `file:line: reason` of each skipped record.
    pub skipped: Vec<String>,
}

/// Reads every dataset in `specs`, in order.
pub fn load(
    specs: &[DatasetSpec],
    max_samples: Option<usize>,
    seed: u64,
    pretraining: bool,
    skip_bad: bool,
) -> Result<Loaded, DataError> {
    let mut out = Loaded::default();
    for spec in specs {
        load_one(spec, max_samples, seed, pretraining, skip_bad, &mut out)?;
    }
    Ok(out)
}

fn load_one(
    spec: &DatasetSpec,
    max_samples: Option<usize>,
    seed: u64,
    pretraining: bool,
    skip_bad: bool,
    out: &mut Loaded,
) -> Result<(), DataError> {
    // `num_samples` needs the whole dataset; otherwise stop reading at `max_samples`.
    let read_limit = if spec.num_samples.is_some() {
        None
    } else {
        max_samples
    };
    let mut records: Vec<(Arc<Path>, RawRecord)> = Vec::new();
    let mut skipped_lines = 0;
    for file in &spec.files {
        let left = read_limit.map(|n| n.saturating_sub(records.len() + skipped_lines));
        if left == Some(0) {
            break;
        }
        let got = read_records(file, left, skip_bad)?;
        skipped_lines += got.skipped.len();
        out.skipped.extend(got.skipped);
        let path: Arc<Path> = Arc::from(file.as_path());
        records.extend(got.records.into_iter().map(|r| (path.clone(), r)));
    }
    if let Some(n) = spec.num_samples {
        records = sample_subset(records, n, seed);
    }
    if let Some(n) = max_samples {
        records.truncate(n);
    }
    out.records += records.len() + skipped_lines;
    let layout = detect_layout(spec, records.first().map(|(_, r)| &r.value));
    for (path, rec) in records {
        match convert(&layout, &rec.value, pretraining) {
            Ok(sample) => out.samples.push(Sourced {
                path,
                line: rec.line,
                sample,
            }),
            Err(message) => {
                let err = bad(
                    &path,
                    rec.line,
                    format!("dataset `{}`: {message}", spec.name),
                );
                if !skip_bad {
                    return Err(err);
                }
                out.skipped.push(err.to_string());
            }
        }
    }
    Ok(())
}

pub(crate) fn bad(path: &Path, line: usize, message: String) -> DataError {
    DataError::BadRecord {
        path: PathBuf::from(path),
        line,
        column: None,
        message,
    }
}

/// LLaMA-Factory's `num_samples`: a seeded random subset, topped up with random repeats when `n`
/// exceeds the dataset.
fn sample_subset<T: Clone>(records: Vec<T>, n: usize, seed: u64) -> Vec<T> {
    let len = records.len();
    if len == 0 {
        return records;
    }
    let perm = crate::sampler::permutation(len, seed);
    let mut idx: Vec<usize> = perm.iter().copied().take(n).collect();
    let mut extra = crate::sampler::permutation(len, seed.wrapping_add(1))
        .into_iter()
        .cycle();
    while idx.len() < n {
        idx.extend(extra.next());
    }
    idx.into_iter().map(|i| records[i].clone()).collect()
}
