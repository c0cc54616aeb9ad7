//! The tokenised-dataset cache: one file per cache key, `<dir>/<key>.lfdata`, written atomically
//! (temporary file, fsync, rename) so a reader sees either nothing or a complete file.
//!
//! Layout (little-endian): magic `LFDATA` + version (8 bytes), the JSON [`DataStats`] length (u64)
//! and bytes, then the train and eval splits, each a count (u64) followed by examples written as
//! a sequence — length (u32), ids (u32 × length), labels (i32 × length) — and a byte saying
//! whether the rejected sequence of a preference pair follows (1) or not (0), or (`stage: kto`,
//! nothing following) that the example is desirable (2) or undesirable (3). A KTO example's KL
//! sequence is not cached: it depends on the batch size ([`crate::kto::attach_kl`]).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::encode::Example;
use crate::error::DataError;
use crate::stats::DataStats;

const MAGIC: &[u8; 8] = b"LFDATA\x02\x00";

/// The cache file for `key` in `dir`.
pub fn cache_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.lfdata"))
}

/// The marker rank 0 leaves when tokenisation fails, so waiting ranks fail fast with its message.
pub fn error_marker(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.error"))
}

/// Writes the cache atomically.
pub fn write(
    path: &Path,
    stats: &DataStats,
    train: &[Example],
    eval: &[Example],
) -> Result<(), DataError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let tmp = path.with_extension(format!("lfdata.tmp.{}", std::process::id()));
    let io = |e| DataError::io(&tmp, e);
    let file = File::create(&tmp).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let header = serde_json::to_vec(stats).map_err(|e| DataError::Cache {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    w.write_all(MAGIC).map_err(io)?;
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)?;
    for split in [train, eval] {
        w.write_all(&(split.len() as u64).to_le_bytes())
            .map_err(io)?;
        for ex in split {
            write_sequence(&mut w, ex).map_err(io)?;
            match (&ex.rejected, ex.kto_tag) {
                (None, Some(desirable)) => {
                    w.write_all(&[if desirable { 2 } else { 3 }]).map_err(io)?
                }
                (None, None) => w.write_all(&[0]).map_err(io)?,
                (Some(r), _) => {
                    w.write_all(&[1]).map_err(io)?;
                    write_sequence(&mut w, r).map_err(io)?;
                }
            }
        }
    }
    let file = w
        .into_inner()
        .map_err(|e| DataError::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))?;
    Ok(())
}

/// Reads a cache file written by [`write`].
pub fn read(path: &Path) -> Result<(DataStats, Vec<Example>, Vec<Example>), DataError> {
    let corrupt = |what: &str| DataError::Cache {
        path: path.to_path_buf(),
        message: format!("corrupt cache file ({what}); delete it or set overwrite_cache: true"),
    };
    let file = crate::files::open_regular(path)?;
    let total = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    // Bytes not yet consumed: every count and length below is checked against them before it
    // sizes an allocation, so a corrupt file cannot ask for more memory than it could hold.
    let mut left = total;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    consume(&mut left, 8).ok_or_else(|| corrupt("too short"))?;
    r.read_exact(&mut magic).map_err(|_| corrupt("too short"))?;
    if &magic != MAGIC {
        return Err(corrupt("wrong magic or version"));
    }
    consume(&mut left, 8).ok_or_else(|| corrupt("truncated header"))?;
    let header_len = read_u64(&mut r).map_err(|_| corrupt("truncated header"))?;
    consume(&mut left, header_len).ok_or_else(|| corrupt("header length"))?;
    let mut header = vec![0u8; header_len as usize];
    r.read_exact(&mut header)
        .map_err(|_| corrupt("truncated header"))?;
    let stats: DataStats =
        serde_json::from_slice(&header).map_err(|_| corrupt("header is not valid JSON"))?;
    let mut splits = Vec::with_capacity(2);
    for _ in 0..2 {
        consume(&mut left, 8).ok_or_else(|| corrupt("truncated split"))?;
        let n = read_u64(&mut r).map_err(|_| corrupt("truncated split"))?;
        // Each example takes at least its 4-byte length and its pair byte.
        if n > left / 5 {
            return Err(corrupt("example count"));
        }
        let mut examples = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let mut example = read_sequence(&mut r, &mut left).map_err(&corrupt)?;
            consume(&mut left, 1).ok_or_else(|| corrupt("truncated example"))?;
            let mut flag = [0u8; 1];
            r.read_exact(&mut flag)
                .map_err(|_| corrupt("truncated example"))?;
            match flag[0] {
                0 => {}
                1 => {
                    example.rejected = Some(Box::new(
                        read_sequence(&mut r, &mut left).map_err(&corrupt)?,
                    ))
                }
                2 | 3 => example.kto_tag = Some(flag[0] == 2),
                _ => return Err(corrupt("pair flag")),
            }
            examples.push(example);
        }
        splits.push(examples);
    }
    if r.read(&mut [0u8; 1]).map_err(|e| DataError::io(path, e))? != 0 {
        return Err(corrupt("trailing bytes"));
    }
    let eval = splits.pop().unwrap_or_default();
    let train = splits.pop().unwrap_or_default();
    Ok((stats, train, eval))
}

/// Takes `n` bytes off `left`; `None` when fewer are left.
/// One sequence: length, ids, labels.
fn write_sequence(w: &mut impl Write, ex: &Example) -> std::io::Result<()> {
    w.write_all(&(ex.input_ids.len() as u32).to_le_bytes())?;
    let mut buf = Vec::with_capacity(ex.input_ids.len() * 8);
    ex.input_ids
        .iter()
        .for_each(|t| buf.extend_from_slice(&t.to_le_bytes()));
    ex.labels
        .iter()
        .for_each(|t| buf.extend_from_slice(&t.to_le_bytes()));
    w.write_all(&buf)
}

/// Reads what [`write_sequence`] wrote, checking its length against the `left` bytes first; `Err`
/// says what was corrupt.
fn read_sequence(r: &mut impl Read, left: &mut u64) -> Result<Example, &'static str> {
    consume(left, 4).ok_or("truncated example")?;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|_| "truncated example")?;
    let len = u32::from_le_bytes(len) as usize;
    consume(left, len as u64 * 8).ok_or("example length")?;
    let mut buf = vec![0u8; len * 8];
    r.read_exact(&mut buf).map_err(|_| "truncated example")?;
    let (ids, labels) = buf.split_at(len * 4);
    Ok(Example {
        input_ids: ids
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        labels: labels
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        rejected: None,
        kto_tag: None,
    })
}

fn consume(left: &mut u64, n: u64) -> Option<()> {
    *left = left.checked_sub(n)?;
    Some(())
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// What a non-zero rank does: wait until rank 0's cache file appears (or its error marker, newer
/// than this wait), polling, for at most `timeout`.
pub fn wait_for(
    path: &Path,
    marker: &Path,
    rank: usize,
    timeout: Duration,
    poll: Duration,
) -> Result<(DataStats, Vec<Example>, Vec<Example>), DataError> {
    let started = Instant::now();
    let started_wall = SystemTime::now();
    // A marker older than this wait (minus clock slack between nodes) is from an earlier run.
    let fresh_after = started_wall
        .checked_sub(Duration::from_secs(120))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    loop {
        if path.is_file() {
            return read(path);
        }
        if let Ok(meta) = std::fs::metadata(marker) {
            if meta.modified().map(|m| m >= fresh_after).unwrap_or(false) {
                let message = crate::files::read_regular(marker)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                return Err(DataError::Cache {
                    path: path.to_path_buf(),
                    message: format!("rank 0 failed to prepare the dataset: {message}"),
                });
            }
        }
        if started.elapsed() >= timeout {
            return Err(DataError::Cache {
                path: path.to_path_buf(),
                message: format!(
                    "rank {rank} waited {}s (ddp_timeout) for rank 0 to write it. Rank 0 may have failed, or the cache directory is not shared between ranks (put tokenized_path on a shared volume), or tokenisation takes longer: raise ddp_timeout",
                    timeout.as_secs()
                ),
            });
        }
        std::thread::sleep(poll);
    }
}
