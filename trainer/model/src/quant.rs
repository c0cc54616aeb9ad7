//! Quantised base weights (QLoRA). Every decoder linear is stored quantised when
//! [`LoadOptions::quantization`] is set; embeddings, norms and the head stay in the model dtype.

use tch::Tensor;

use crate::linear::Linear;
use crate::{LoadOptions, ModelError};

/// Builds the linear layer `name` from its loaded dense weight, quantising it when asked.
pub fn make_linear(
    name: &str,
    weight: Tensor,
    bias: Option<Tensor>,
    opts: &LoadOptions,
) -> Result<Linear, ModelError> {
    match opts.quantization {
        None => Ok(Linear::new(weight, bias)),
        Some(q) => Err(ModelError::Quantization {
            name: name.to_string(),
            message: format!(
                "{}-bit base weights need the lf-quant crate, which this build of lf-model does not include yet",
                q.bits
            ),
        }),
    }
}
