//! AdaLoRA, as PEFT 0.21 computes it (`AdaLoraModel.forward`, `RankAllocator`,
//! `update_and_allocate`).
//!
//! Each adapted linear holds `A` `[r, in]`, the singular values `E` `[r, 1]` and `B` `[out, r]`,
//! `r = init_r` ([`crate::linear::Adapter::singular`]). Training adds to the loss
//! `orth_reg_weight × mean over every A and B of ‖AAᵀ − I‖_F` (`‖BᵀB − I‖_F`), and after each
//! optimiser step (step `t`, 0-based, the gradients still present):
//!
//! * while `t < total − tfinal`: every adapter element's sensitivity `|p · ∇p|` updates two EMAs,
//!   `Ī ← β₁Ī + (1−β₁)I` and `Ū ← β₂Ū + (1−β₂)|I − Ī|`; at steps of the budget schedule
//!   ([`budget_schedule`]: the initial budget until `tinit`, then a cubic decrease to
//!   `target_r × modules` at `total − tfinal`, applied every `deltaT` steps) each triplet
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

use std::collections::BTreeMap;

use lf_api::training::AdaLora;
use tch::{Kind, Tensor};

use crate::causal_lm::CausalLm;
use crate::linear::Adapter;
use crate::names::{self, TensorPath};
use crate::ModelError;

/// The rank budget at optimiser step `step` (0-based) of `total_steps`, and whether ranks are
/// masked to it at that step (PEFT's `RankAllocator.budget_schedule`).
pub fn budget_schedule(
    cfg: &AdaLora,
    step: u64,
    total_steps: u64,
    init_budget: u64,
    target_budget: u64,
) -> (u64, bool) {
    let final_from = total_steps.saturating_sub(cfg.tfinal);
    if step <= cfg.tinit {
        (init_budget, false)
    } else if step > final_from {
        (target_budget, true)
    } else {
        let span = (final_from - cfg.tinit) as f64;
        let mul = 1.0 - (step - cfg.tinit) as f64 / span;
        let excess = (init_budget - target_budget) as f64;
        // Python's `int()` of a non-negative float truncates, as `as` does.
        let budget = (excess * mul.powf(3.0) + target_budget as f64) as u64;
        (budget, step.is_multiple_of(cfg.delta_t))
    }
}

/// Which ranks of each adapted linear are kept (`true`), by Hugging Face module path.
pub type RankPattern = BTreeMap<String, Vec<bool>>;

/// What an allocation after a step did (for the logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// The budget masked to.
    pub budget: u64,
    /// Ranks kept over all modules.
    pub kept: u64,
}

/// AdaLoRA's state between steps: the importance EMAs and the last rank pattern.
pub struct RankAllocator {
    pub(crate) cfg: AdaLora,
    pub(crate) total_steps: Option<u64>,
    /// `Ī` and `Ū` of every adapter tensor, by PEFT name.
    pub(crate) exp_avg_ipt: BTreeMap<String, Tensor>,
    pub(crate) exp_avg_unc: BTreeMap<String, Tensor>,
    pub(crate) rank_pattern: Option<RankPattern>,
}

impl RankAllocator {
    pub fn new(cfg: AdaLora) -> Self {
        RankAllocator {
            cfg,
            total_steps: None,
            exp_avg_ipt: BTreeMap::new(),
            exp_avg_unc: BTreeMap::new(),
            rank_pattern: None,
        }
    }
}

/// One adapted linear: its module path and adapter.
pub(crate) struct Module<'a> {
    pub path: TensorPath,
    pub adapter: &'a Adapter,
}

impl Module<'_> {
    fn singular(&self) -> &Tensor {
        // Only AdaLoRA adapters are listed ([`CausalLm::adalora_modules`]).
        self.adapter
            .singular
            .as_ref()
            .expect("an AdaLoRA module has singular values")
    }

    /// `(PEFT name, tensor)` of A, E and B.
    fn tensors(&self) -> [(String, Tensor); 3] {
        [
            (self.path.adalora_a(), self.adapter.a.shallow_clone()),
            (self.path.adalora_e(), self.singular().shallow_clone()),
            (self.path.adalora_b(), self.adapter.b.shallow_clone()),
        ]
    }
}

fn missing(what: &str, name: &str) -> ModelError {
    ModelError::Invalid(format!(
        "AdaLoRA: no {what} for `{name}` (the allocator's state does not match the adapters)"
    ))
}

impl CausalLm {
    /// The AdaLoRA-adapted linears, in model order.
    pub(crate) fn adalora_modules(&self) -> Vec<Module<'_>> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            for (m, linear) in layer.linears() {
                if let Some(ad) = linear.adapter.as_ref().filter(|a| a.singular.is_some()) {
                    out.push(Module {
                        path: names::linear(i, m),
                        adapter: ad,
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

impl RankAllocator {
    fn after_step(
        &mut self,
        modules: &[Module<'_>],
        step: u64,
    ) -> Result<Option<Allocation>, ModelError> {
        let total = self.total_steps.ok_or_else(|| {
            ModelError::Invalid("AdaLoRA: the run's total steps were not set".into())
        })?;
        let final_from = total.saturating_sub(self.cfg.tfinal);
        let init_budget: u64 = modules.iter().map(|m| m.singular().size()[0] as u64).sum();
        let target_budget = self.cfg.target_r as u64 * modules.len() as u64;
        let (budget, due) = budget_schedule(&self.cfg, step, total, init_budget, target_budget);
        if step < final_from {
            self.update_importance(modules);
            if !due {
                return Ok(None);
            }
        } else if step > final_from {
            if let Some(pattern) = &self.rank_pattern {
                apply_pattern(modules, pattern)?;
            }
            return Ok(None);
        }
        let pattern = self.mask_to_budget(modules, init_budget - budget.min(init_budget))?;
        let kept = pattern.values().flatten().filter(|k| **k).count() as u64;
        self.rank_pattern = Some(pattern);
        if step == final_from {
            self.exp_avg_ipt.clear();
            self.exp_avg_unc.clear();
        }
        Ok(Some(Allocation { budget, kept }))
    }

    /// `I = |p·∇p|`; `Ī ← β₁Ī + (1−β₁)I`; `Ū ← β₂Ū + (1−β₂)|I − Ī|` for every adapter tensor.
    fn update_importance(&mut self, modules: &[Module<'_>]) {
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        for m in modules {
            for (name, p) in m.tensors() {
                let grad = p.grad();
                let ipt = if grad.defined() {
                    (&p * grad).abs()
                } else {
                    p.zeros_like()
                };
                let avg = self
                    .exp_avg_ipt
                    .remove(&name)
                    .unwrap_or_else(|| p.zeros_like());
                let unc = self
                    .exp_avg_unc
                    .remove(&name)
                    .unwrap_or_else(|| p.zeros_like());
                let avg = avg * b1 + &ipt * (1.0 - b1);
                let unc = unc * b2 + (&ipt - &avg).abs() * (1.0 - b2);
                self.exp_avg_ipt.insert(name.clone(), avg);
                self.exp_avg_unc.insert(name, unc);
            }
        }
    }

    /// The element scores `ĪŪ` of the tensor `name`.
    fn score(&self, name: &str) -> Result<Tensor, ModelError> {
        let avg = self
            .exp_avg_ipt
            .get(name)
            .ok_or_else(|| missing("importance", name))?;
        let unc = self
            .exp_avg_unc
            .get(name)
            .ok_or_else(|| missing("uncertainty", name))?;
        Ok(avg * unc)
    }

    /// Zeroes the singular values of the `prune` lowest-scored triplets (ties at the threshold
    /// included) and returns the pattern of kept ranks.
    fn mask_to_budget(
        &self,
        modules: &[Module<'_>],
        prune: u64,
    ) -> Result<RankPattern, ModelError> {
        let mut triplets = Vec::with_capacity(modules.len());
        for m in modules {
            let [(a, _), (e, _), (b, _)] = m.tensors();
            let a = self.score(&a)?.mean_dim(1, true, Kind::Float);
            let b = self
                .score(&b)?
                .mean_dim(0, false, Kind::Float)
                .view([-1, 1]);
            let e = self.score(&e)?;
            let sum = e.view([-1]) + Tensor::cat(&[a, b], 1).sum_dim_intlist(1, false, Kind::Float);
            triplets.push(sum);
        }
        let threshold = match prune {
            0 => None,
            k => {
                let all = Tensor::cat(&triplets, 0);
                Some(all.kthvalue(k as i64, 0, false).0.double_value(&[]))
            }
        };
        let mut pattern = RankPattern::new();
        for (m, score) in modules.iter().zip(&triplets) {
            let pruned = match threshold {
                Some(t) => score.le(t),
                None => score.zeros_like().to_kind(Kind::Bool),
            };
            let _ = m
                .singular()
                .shallow_clone()
                .masked_fill_(&pruned.view([-1, 1]), 0.0);
            let kept: Vec<bool> = Vec::<bool>::try_from(pruned.logical_not())
                .map_err(|e| ModelError::Invalid(format!("AdaLoRA rank pattern: {e}")))?;
            pattern.insert(m.path.to_string(), kept);
        }
        Ok(pattern)
    }
}

/// Zeroes the singular values `pattern` does not keep.
pub(crate) fn apply_pattern(
    modules: &[Module<'_>],
    pattern: &RankPattern,
) -> Result<(), ModelError> {
    for m in modules {
        let key = m.path.to_string();
        let kept = pattern
            .get(&key)
            .ok_or_else(|| missing("rank pattern", &key))?;
        let e = m.singular();
        if kept.len() as i64 != e.size()[0] {
            return Err(ModelError::Invalid(format!(
                "AdaLoRA: the rank pattern of `{key}` has {} ranks, its adapter {}",
                kept.len(),
                e.size()[0]
            )));
        }
        let pruned = Tensor::from_slice(&kept.iter().map(|k| !k).collect::<Vec<_>>())
            .to_device(e.device())
            .view([-1, 1]);
        tch::no_grad(|| {
            let _ = e.shallow_clone().masked_fill_(&pruned, 0.0);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tinit: u64, tfinal: u64, delta_t: u64) -> AdaLora {
        AdaLora {
            target_r: 2,
            init_r: 4,
            tinit,
            tfinal,
            delta_t,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg_weight: 0.5,
        }
    }

    #[test]
    fn the_budget_follows_peft_s_cubic_schedule() {
        // tinit 2, tfinal 3, total 15, deltaT 2, init 40, target 20: the values PEFT 0.21.2's
        // RankAllocator.budget_schedule returns.
        let c = cfg(2, 3, 2);
        let want = [
            (0, 40, false),
            (2, 40, false),
            (3, 34, false),
            (4, 30, true),
            (6, 24, true),
            (7, 22, false),
            (11, 20, false),
            (12, 20, true),
            (13, 20, true),
            (14, 20, true),
        ];
        for (step, budget, mask) in want {
            assert_eq!(
                budget_schedule(&c, step, 15, 40, 20),
                (budget, mask),
                "step {step}"
            );
        }
    }
}
