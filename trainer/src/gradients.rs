//! Gradient arithmetic shared by every optimiser and data-parallel group: the global norm,
//! clipping, zeroing, and the buckets that reductions are cut into.

use std::ops::Range;

use lf_planner::calib::GRADIENT_BUCKET_ELEMENTS;
use tch::Tensor;

use crate::error::TrainerError;

fn tensors(params: &[(String, Tensor)]) -> Vec<Tensor> {
    params.iter().map(|(_, p)| p.shallow_clone()).collect()
}

/// The global L2 norm of the gradients (fp32), or 0 when no parameter has one
/// ([`lf_optim::grad_norm`]).
pub fn grad_norm(params: &[(String, Tensor)]) -> f64 {
    lf_optim::grad_norm(&tensors(params))
}

/// Scales gradients so their global norm (`norm`) is at most `max_norm` (PyTorch's
/// `clip_grad_norm_` arithmetic: coefficient `max_norm / (norm + 1e-6)`, capped at 1; no-op for
/// `max_norm <= 0`; [`lf_optim::clip_to_max_norm`]). A gradient that cannot be scaled is an
/// error: an update from unclipped gradients would be silently wrong.
pub fn clip_gradients(
    params: &[(String, Tensor)],
    norm: f64,
    max_norm: f64,
) -> Result<(), TrainerError> {
    lf_optim::clip_to_max_norm(&tensors(params), norm, max_norm)
        .map_err(|e| TrainerError::from_library("clipping the gradients", e))
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
    use tch::{Device, Kind};

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
