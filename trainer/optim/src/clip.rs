//! Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_`.

use tch::{Device, Kind, Tensor};

/// Computes the global L2 norm of all defined gradients (parameters without a gradient are
/// skipped), and when it exceeds `max_norm` scales every gradient in place by
/// `max_norm / (norm + 1e-6)`. Returns the norm before clipping; a non-finite norm is returned as
/// is and the gradients are left untouched (the caller stops the run). With no gradients at all
/// the norm is 0.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params
        .iter()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .collect();
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads
        .iter()
        .map(|g| g.to_kind(Kind::Float).norm().to_device(Device::Cpu))
        .collect();
    let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
    if !total.is_finite() {
        return total;
    }
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for g in &grads {
            let mut g = g.shallow_clone();
            let _ = g.g_mul_scalar_(coef);
        }
    }
    total
}
