//! AdaLoRA, as PEFT 0.22 computes it (`AdaLoraModel.forward`, `RankAllocator`,
//! `update_and_allocate`).
//!
//! Each adapted linear holds `A` `[r, in]`, the singular values `E` `[r, 1]` and `B` `[out, r]`,
//! `r = init_r` ([`crate::linear::Adapter::singular`]). Training adds to the loss
//! `orth_reg_weight × mean over every A and B of ‖AAᵀ − I‖_F` (`‖BᵀB − I‖_F`), and after each
//! optimiser step (step `t`, 0-based, the gradients still present):
//!
//! * while `t < total − tfinal`: every adapter element's sensitivity `|p · ∇p|` updates two EMAs,
//!   `Ī ← β₁Ī + (1−β₁)I` and `Ū ← β₂Ū + (1−β₂)|I − Ī|`; at steps of the budget schedule
//!   ([`crate::rank_allocator::budget_schedule`]: the initial budget until `tinit`, then a
//!   cubic decrease to `target_r × modules` at `total − tfinal`, applied every `deltaT` steps) each
//!   triplet
//!   `(Aᵢ, Eᵢ, Bᵢ)` is scored `ĪŪ(Eᵢ) + mean ĪŪ(Aᵢ,:) + mean ĪŪ(B:,ᵢ)` and the singular values of
//!   the `init_budget − budget` lowest-scored triplets (ties included) are set to zero;
//! * at `t = total − tfinal`: a last masking to the target budget, whose pattern is kept
//!   (`rank_pattern`), and the EMAs are dropped;
//! * after it: the kept pattern is re-applied (the optimiser moves masked values off zero).
//!
//! Pruned triplets keep their (zeroed) place while training, so the optimiser's state keeps its
//! shapes; the saved adapter drops them, as PEFT's `save_pretrained` does, and records the pattern.
//! Where PEFT would fail — a schedule step whose budget is the whole initial budget asks
//! `kthvalue` for the 0th value — nothing is masked.

use tch::{Kind, Tensor};

use crate::causal_lm::CausalLm;
use crate::names;
use crate::rank_allocator::{Allocation, Module, RankPattern};
use crate::ModelError;

impl CausalLm {
    /// The AdaLoRA-adapted linears, in model order.
    pub(crate) fn adalora_modules(&self) -> Vec<Module<'_>> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            for (m, linear) in layer.linears() {
                let Some(adapter) = &linear.adapter else {
                    continue;
                };
                if let Some(singular) = &adapter.singular {
                    out.push(Module {
                        path: names::linear(i, m),
                        adapter,
                        singular,
                    });
                }
            }
        }
        out
    }

    /// Whether AdaLoRA trains this model.
    pub fn adalora_training(&self) -> bool {
        self.rank_allocator.is_some()
    }

    /// The rank pattern of the last allocation (none before the first).
    pub fn adalora_rank_pattern(&self) -> Option<&RankPattern> {
        self.rank_allocator.as_ref()?.rank_pattern.as_ref()
    }

    /// Tells AdaLoRA the run's number of optimiser steps (PEFT's `total_step`), checking that
    /// the schedule leaves a budgeting phase.
    pub fn adalora_set_total_steps(&mut self, total_steps: u64) -> Result<(), ModelError> {
        if let Some(alloc) = &mut self.rank_allocator {
            alloc
                .cfg
                .check_schedule(total_steps)
                .map_err(|e| ModelError::Invalid(e.to_string()))?;
            alloc.total_steps = Some(total_steps);
        }
        Ok(())
    }

    /// AdaLoRA's orthogonality regulariser, `orth_reg_weight × mean ‖PPᵀ − I‖_F` over every `A`
    /// (`AAᵀ`) and `B` (`BᵀB`), with gradients; `None` without AdaLoRA.
    pub fn adalora_regularizer(&self) -> Option<Tensor> {
        let weight = self.rank_allocator.as_ref()?.cfg.orth_reg_weight;
        let modules = self.adalora_modules();
        let mut total: Option<Tensor> = None;
        let mut count = 0i64;
        for m in &modules {
            let a = &m.adapter.a;
            let b = &m.adapter.b;
            for cov in [a.matmul(&a.tr()), b.tr().matmul(b)] {
                let n = cov.size()[0];
                let eye = Tensor::eye(n, (cov.kind(), cov.device()));
                let norm = (cov - eye).square().sum(Kind::Float).sqrt();
                total = Some(match total {
                    Some(t) => t + norm,
                    None => norm,
                });
                count += 1;
            }
        }
        total.map(|t| t / count as f64 * weight)
    }

    /// AdaLoRA's work after optimiser step `step` (0-based), before the gradients are zeroed
    /// (see the module docs). Returns the allocation when ranks were masked to a budget.
    pub fn adalora_after_step(&mut self, step: u64) -> Result<Option<Allocation>, ModelError> {
        let Some(mut alloc) = self.rank_allocator.take() else {
            return Ok(None);
        };
        let result = tch::no_grad(|| alloc.after_step(&self.adalora_modules(), step));
        self.rank_allocator = Some(alloc);
        result
    }
}
