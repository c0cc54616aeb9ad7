//! Held-out preference accuracy (`lf-trainer eval` on a `stage: dpo` config): the share of pairs
//! whose chosen answer the model finds more likely than the rejected one (summed log-probability
//! of the answer tokens), the model as loaded (base plus adapter).

use lf_data::{collate_pairs, Example};
use lf_model::CausalLm;
use tch::{Device, Tensor};

use crate::adapters::model_error;
use crate::error::TrainerError;

/// The share of `pairs` (examples holding their rejected sequence) whose chosen answer has the
/// higher summed log-probability, evaluated `batch_size` pairs at a time; `None` without pairs.
pub fn preference_accuracy(
    lm: &CausalLm,
    pairs: &[Example],
    batch_size: usize,
    pad_id: u32,
    device: Device,
) -> Result<Option<f64>, TrainerError> {
    let (mut preferred, mut counted) = (0u64, 0u64);
    for chunk in pairs.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = collate_pairs(&refs, pad_id);
        if !batch.paired {
            continue;
        }
        let shape = [batch.batch_size as i64, batch.seq_len as i64];
        let ids = Tensor::from_slice(&batch.input_ids)
            .reshape(shape)
            .to_device(device);
        let labels = Tensor::from_slice(&batch.labels)
            .reshape(shape)
            .to_device(device);
        let tokens = lm
            .token_logps(&ids, &labels)
            .map_err(|e| model_error("evaluating the pairs", e))?;
        let rows = shape[0];
        let sums = tokens.per_row(&tokens.logps, rows);
        let n = batch.examples as i64;
        let wins = sums
            .narrow(0, 0, n)
            .gt_tensor(&sums.narrow(0, n, n))
            .sum(tch::Kind::Int64)
            .int64_value(&[]);
        preferred += wins as u64;
        counted += n as u64;
    }
    Ok((counted > 0).then(|| preferred as f64 / counted as f64))
}
