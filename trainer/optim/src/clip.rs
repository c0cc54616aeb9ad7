//! Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_` with Hugging Face's
//! convention that a `max_norm` of 0 or less means no clipping. The one implementation: lf-trainer
//! clips through it too (its ZeRO optimiser computes the norm over all ranks' shards first).

use tch::{Device, Kind, TchError, Tensor};

/// The global L2 norm (fp32) of every defined gradient of `params` (parameters without a gradient
/// are skipped); 0 with no gradients at all.
pub fn grad_norm(params: &[Tensor]) -> f64 {
    let _guard = tch::no_grad_guard();
    let norms: Vec<Tensor> = params
        .iter()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .map(|g| g.to_kind(Kind::Float).norm().to_device(Device::Cpu))
        .collect();
    if norms.is_empty() {
        return 0.0;
    }
    Tensor::stack(&norms, 0).norm().double_value(&[])
}

/// Scales every defined gradient of `params` in place by `max_norm / (norm + 1e-6)` when that is
/// below 1, `norm` being their global norm ([`grad_norm`], or the norm over every rank's shards).
/// No-op for `max_norm <= 0`. A gradient that cannot be scaled is an error: an update from
/// unclipped gradients would be silently wrong.
pub fn clip_to_max_norm(params: &[Tensor], norm: f64, max_norm: f64) -> Result<(), TchError> {
    if max_norm <= 0.0 {
        return Ok(());
    }
    let coef = max_norm / (norm + 1e-6);
    if coef >= 1.0 {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            g.f_mul_scalar_(coef).map(drop)?;
        }
    }
    Ok(())
}

/// [`grad_norm`], then [`clip_to_max_norm`] unless the norm is not finite (the gradients are left
/// untouched and the caller stops the run). Returns the norm before clipping.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<f64, TchError> {
    let norm = grad_norm(params);
    if norm.is_finite() {
        clip_to_max_norm(params, norm, max_norm)?;
    }
    Ok(norm)
}
