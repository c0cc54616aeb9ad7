//! Generation accuracy: greedy exact match of the first answer of each evaluation example.
//!
//! The prompt is an example's tokens up to its first trained (label) token; the expected answer is
//! that trained span without the stop token. Generation stops at the template's stop tokens; the
//! decoded, trimmed texts must be equal. Working on the tokenised examples means the prompt is
//! exactly what training saw, whatever the template.

use lf_data::{Example, TokenizerBundle, IGNORE_INDEX};
use lf_model::{CausalLm, GenerationParams};

use crate::adapters::model_error;
use crate::error::TrainerError;
use crate::setup;

/// The fraction of `examples` whose greedy answer equals the reference answer (0 with no example).
pub fn exact_match(
    lm: &CausalLm,
    tok: &TokenizerBundle,
    examples: &[Example],
    stop: &[i64],
) -> Result<f64, TrainerError> {
    let mut correct = 0usize;
    let mut counted = 0usize;
    for ex in examples {
        let Some(start) = ex.labels.iter().position(|l| *l != IGNORE_INDEX) else {
            continue;
        };
        let end = ex.labels[start..]
            .iter()
            .position(|l| *l == IGNORE_INDEX)
            .map_or(ex.labels.len(), |n| start + n);
        let expected: Vec<u32> = ex.input_ids[start..end]
            .iter()
            .copied()
            .filter(|t| !stop.contains(&i64::from(*t)))
            .collect();
        let prompt: Vec<i64> = ex.input_ids[..start]
            .iter()
            .map(|t| i64::from(*t))
            .collect();
        let params = GenerationParams::greedy(end - start + 4);
        let mut generated: Vec<u32> = Vec::new();
        lm.generate(&prompt, &params, stop, |t| generated.push(t as u32))
            .map_err(|e| model_error("generation", e))?;
        generated.retain(|t| !stop.contains(&i64::from(*t)));
        let got = tok.decode(&generated, true).map_err(setup::data_error)?;
        let want = tok.decode(&expected, true).map_err(setup::data_error)?;
        counted += 1;
        if got.trim() == want.trim() {
            correct += 1;
        }
    }
    Ok(if counted == 0 {
        0.0
    } else {
        correct as f64 / counted as f64
    })
}
