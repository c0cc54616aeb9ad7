//! Errors from quantising a weight.

/// Errors from quantising a weight.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("only 2-D [out, in] weights can be quantised, got shape {shape:?}")]
    NotMatrix { shape: Vec<i64> },
    #[error("cannot quantise an empty weight of shape {shape:?}")]
    Empty { shape: Vec<i64> },
    #[error("weights of dtype {kind:?} cannot be quantised; use float32, float16 or bfloat16")]
    UnsupportedKind { kind: tch::Kind },
    #[error("the weight contains NaN or infinite values; quantising it would corrupt whole blocks (check the checkpoint)")]
    NonFinite,
    #[error("libtorch error while quantising: {0}")]
    Torch(#[from] tch::TchError),
}
