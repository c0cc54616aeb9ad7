//! Gradient arithmetic shared by every optimiser and data-parallel group: the global norm,
//! clipping, zeroing, and the buckets that reductions are cut into.

use std::ops::Range;

use lf_planner::calib::GRADIENT_BUCKET_ELEMENTS;
use tch::{Device, Kind, Tensor};

use crate::error::TrainerError;

/// The global L2 norm of the gradients (fp32), or 0 when no parameter has one.
pub fn grad_norm(params: &[(String, Tensor)]) -> f64 {
    let _guard = tch::no_grad_guard();
    let norms: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.grad())
        .filter(|g| g.defined())
        .map(|g| g.to_kind(Kind::Float).norm().to_device(Device::Cpu))
        .collect();
    if norms.is_empty() {
        return 0.0;
    }
    Tensor::stack(&norms, 0).norm().double_value(&[])
}

/// Scales gradients so their global norm is at most `max_norm` (PyTorch's `clip_grad_norm_`
/// arithmetic: coefficient `max_norm / (norm + 1e-6)`, capped at 1). A gradient that cannot be
/// scaled is an error: an update from unclipped gradients would be silently wrong.
pub fn clip_gradients(
    params: &[(String, Tensor)],
    norm: f64,
    max_norm: f64,
) -> Result<(), TrainerError> {
    if max_norm <= 0.0 {
        return Ok(());
    }
    let coef = max_norm / (norm + 1e-6);
    if coef >= 1.0 {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    for (name, p) in params {
        let mut g = p.grad();
        if g.defined() {
            g.f_mul_scalar_(coef).map(drop).map_err(|e| {
                TrainerError::from_library(&format!("clipping the gradient of `{name}`"), e)
            })?;
        }
    }
    Ok(())
}

/// Zeroes every parameter's `.grad` (kept allocated) before the next step's backward.
pub fn zero_gradients(params: &[(String, Tensor)]) {
    for (_, p) in params {
        let mut p = p.shallow_clone();
        p.zero_grad();
    }
}

/// Elements per gradient bucket: [`GRADIENT_BUCKET_ELEMENTS`] (what the planner assumes), or
/// `LF_BUCKET_ELEMENTS` when set to a positive number. Every rank must use the same value (the
/// buckets decide how many collectives a step makes); the operator renders one environment for
/// all pods.
pub fn bucket_elements() -> usize {
    std::env::var(lf_api::runtime::env::BUCKET_ELEMENTS)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(GRADIENT_BUCKET_ELEMENTS as usize)
}

/// Consecutive index ranges of `numels` whose sums stay within `limit` elements (a tensor larger
/// than `limit` is a bucket of its own): the gradient buckets of one reduction.
pub fn buckets(numels: &[usize], limit: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0usize);
    for (i, &n) in numels.iter().enumerate() {
        if i > start && size + n > limit {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < numels.len() {
        out.push(start..numels.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_at_the_limit_and_keep_large_tensors_alone() {
        assert_eq!(buckets(&[3, 3, 3, 3], 6), vec![0..2, 2..4]);
        assert_eq!(buckets(&[2, 10, 2], 6), vec![0..1, 1..2, 2..3]);
        assert_eq!(buckets(&[1, 1, 1], 100), vec![0..3]);
        assert!(buckets(&[], 5).is_empty());
    }

    fn param_with_grad(values: &[f32]) -> (String, Tensor) {
        let p = Tensor::zeros([values.len() as i64], (Kind::Float, Device::Cpu))
            .set_requires_grad(true);
        (&p * Tensor::from_slice(values))
            .sum(Kind::Float)
            .backward();
        ("p".into(), p)
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_leaves_small_gradients() {
        let params = vec![param_with_grad(&[3.0, 4.0])];
        let norm = grad_norm(&params);
        assert!((norm - 5.0).abs() < 1e-6);
        clip_gradients(&params, norm, 10.0).unwrap();
        assert!(
            (grad_norm(&params) - 5.0).abs() < 1e-6,
            "under the limit: untouched"
        );
        clip_gradients(&params, norm, 1.0).unwrap();
        assert!((grad_norm(&params) - 1.0).abs() < 1e-5);
        zero_gradients(&params);
        assert_eq!(grad_norm(&params), 0.0);
    }
}
