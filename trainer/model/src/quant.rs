//! Quantised base weights (QLoRA). Every decoder linear is stored quantised when
//! [`LoadOptions::quantization`] is set; embeddings, norms and the head stay in the model dtype.
//! Weights are quantised on the device right after loading, so the dense copy of only one
//! linear exists at a time.

use tch::Tensor;

use crate::linear::{BaseWeight, Linear};
use crate::names::TensorPath;
use crate::{LoadOptions, ModelError};

/// Builds the linear layer at `path` from its loaded dense weight, quantising it when asked.
pub fn make_linear(
    path: &TensorPath,
    weight: Tensor,
    bias: Option<Tensor>,
    opts: &LoadOptions,
) -> Result<Linear, ModelError> {
    let Some(q) = opts.quantization else {
        return Ok(Linear::new(weight, bias));
    };
    let quantized = match q.bits {
        4 => lf_quant::QuantizedWeight::quantize_4bit(&weight, q.quant_type, q.double_quant),
        8 => lf_quant::QuantizedWeight::quantize_8bit(&weight),
        other => {
            return Err(ModelError::Quantization {
                name: path.to_string(),
                message: format!("{other}-bit quantisation is not supported; use 4 or 8"),
            })
        }
    }
    .map_err(|e| ModelError::Quantization {
        name: path.weight(),
        message: e.to_string(),
    })?;
    Ok(Linear {
        weight: BaseWeight::Quantized(quantized),
        bias,
        adapter: None,
    })
}
