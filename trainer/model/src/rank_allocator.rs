//! AdaLoRA's rank allocator (PEFT 0.22's `RankAllocator`): the importance EMAs, the budget
//! schedule and the masking of singular values, over the adapted linears it is handed. The
//! algorithm is described in [`crate::adalora`], which drives it from the model.

use std::collections::BTreeMap;

use lf_api::training::AdaLora;
use tch::{Kind, Tensor};

use crate::linear::Adapter;
use crate::names::TensorPath;
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

/// One AdaLoRA-adapted linear: its module path, adapter and the adapter's singular values.
pub(crate) struct Module<'a> {
    pub(crate) path: TensorPath,
    pub(crate) adapter: &'a Adapter,
    pub(crate) singular: &'a Tensor,
}

impl Module<'_> {
    fn singular(&self) -> &Tensor {
        self.singular
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

impl RankAllocator {
    /// AdaLoRA's work after optimiser step `step` (0-based) on `modules` (see [`crate::adalora`]).
    pub(crate) fn after_step(
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
