//! What every optimiser of this crate is to its callers: the [`Optimizer`] trait, its errors and
//! its state sizes.

use tch::Tensor;

/// Errors from building, stepping or restoring an optimiser. Each names the key or parameter.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("invalid value for `{key}`: {message}")]
    InvalidConfig { key: &'static str, message: String },
    #[error("step() got {got} parameters but the optimiser was built for {expected}")]
    ParamCount { expected: usize, got: usize },
    #[error("parameter `{name}` {message}")]
    BadParam { name: String, message: String },
    #[error("optimizer state: {0}")]
    State(String),
    #[error("libtorch error in the optimiser: {0}")]
    Torch(#[from] tch::TchError),
}

/// Bytes of optimiser state, by where they live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateBytes {
    /// On the parameters' device (everything, when not offloaded).
    pub device: u64,
    /// In host memory (offloaded states and master weights).
    pub host: u64,
    /// Of which fp32 master weights (counted in `device` or `host` too).
    pub master: u64,
}

/// An optimiser over a fixed, ordered list of parameters (the order given to [`build`]).
pub trait Optimizer: Send {
    /// Applies one update to every parameter that has a gradient (`p.grad()`), in place and
    /// without recording autograd history.
    fn step(&mut self, params: &[Tensor], lr: f64) -> Result<(), OptimError>;
    /// Zeroes every defined gradient.
    fn zero_grad(&mut self, params: &[Tensor]);
    /// Everything needed to resume exactly: `optimizer.kind`, and per parameter `{name}.step`,
    /// `{name}.master` (when kept) and `{name}.{state}`.
    fn state_dict(&self) -> Vec<(String, Tensor)>;
    /// Restores a [`Optimizer::state_dict`]; missing, unexpected or mis-shaped entries are errors
    /// naming the key.
    fn load_state_dict(&mut self, state: Vec<(String, Tensor)>) -> Result<(), OptimError>;
    /// Bytes of state actually held (device + host, master copies included).
    fn state_bytes(&self) -> u64;
    /// [`Optimizer::state_bytes`] split by location.
    fn state_bytes_detail(&self) -> StateBytes;
}
