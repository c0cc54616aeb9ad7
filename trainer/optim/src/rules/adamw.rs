//! AdamW exactly as `torch.optim.AdamW` (single-tensor path, `amsgrad=False`, `maximize=False`):
//! decoupled weight decay `p ← p·(1 − lr·wd)`, `m ← lerp(m, g, 1 − β₁)`,
//! `v ← β₂·v + (1 − β₂)·g²`, `p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`.

use tch::{Kind, Tensor};

use crate::engine::UpdateRule;

/// Hyper-parameters shared by AdamW and 8-bit AdamW.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamHyper {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamHyper {
    /// Applies one AdamW step to `p` given the moments (already in `p`'s dtype and device).
    pub fn apply(
        &self,
        p: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: i64,
        lr: f64,
    ) {
        let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
        let _ = m.lerp_(g, 1.0 - self.beta1);
        let _ = v.g_mul_scalar_(self.beta2);
        let _ = v.g_add_(&(g * (1.0 - self.beta2) * g));
        // Python float arithmetic, as torch computes these on the host.
        let bias_correction1 = 1.0 - self.beta1.powf(step as f64);
        let bias_correction2 = 1.0 - self.beta2.powf(step as f64);
        let step_size = lr / bias_correction1;
        let denom = v.sqrt() / bias_correction2.powf(0.5) + self.eps;
        let _ = p.g_add_(&((&*m / denom) * (-step_size)));
    }
}

/// AdamW with full-precision moments (fp32, or the parameter's dtype under `pure_bf16`).
pub(crate) struct AdamW {
    pub hyper: AdamHyper,
}

impl UpdateRule for AdamW {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn state_names(&self, _shape: &[i64]) -> Vec<&'static str> {
        vec!["exp_avg", "exp_avg_sq"]
    }

    fn init(&mut self, target: &Tensor, kind: Kind) -> Vec<Tensor> {
        let opts = (kind, target.device());
        vec![
            Tensor::zeros(target.size(), opts),
            Tensor::zeros(target.size(), opts),
        ]
    }

    fn update(
        &mut self,
        target: &mut Tensor,
        grad: &Tensor,
        state: &mut [Tensor],
        step: i64,
        lr: f64,
    ) {
        if let [m, v] = state {
            self.hyper.apply(target, grad, m, v, step, lr);
        }
    }
}
