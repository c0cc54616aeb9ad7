//! The KTO loss of `stage: kto`, as TRL's `KTOTrainer` computes it (`loss_type="kto"`), on a
//! micro-batch of `B` examples tagged desirable or not, each scored with its own answer and with
//! its KL sequence (its prompt and another example's answer, `lf_data::kto`).
//!
//! With `S`, `R` the policy's and the reference's summed answer log-probabilities of the examples
//! and `Sᴷ`, `Rᴷ` those of the KL sequences, `z = max(0, mean(Sᴷ − Rᴷ))` (no gradient):
//!
//! - a desirable example loses `w_d · (1 − σ(β(S − R − z)))`, an undesirable one
//!   `w_u · (1 − σ(β(z − (S − R))))` (`kto_chosen_weight`, `kto_rejected_weight`);
//! - its reward is `β(S − R)`.
//!
//! The micro-batch's loss is the mean over its examples (weights in the numerator only, as TRL's
//! `nanmean`). As in TRL, the KL sequences go through the policy without gradients (a pass of
//! their own, before the examples' forward and backward), and the mean is over the KL sequences
//! of every data-parallel process's micro-batch: TRL gathers each process's mean
//! (`accelerator.gather_for_metrics`) and averages those; here the processes sum [`KlSum`] (the
//! log-ratios and their count), which is the same mean when the processes' micro-batches are of
//! one size and the pooled mean of world 1 otherwise.

use tch::{Kind, Tensor};

/// The weights of the desirable and the undesirable examples' losses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoWeights {
    pub desirable: f64,
    pub undesirable: f64,
}

/// The KL estimate's terms: the summed policy/reference log-ratio of KL sequences, and how many
/// (summed over processes, their mean is the estimate).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KlSum {
    pub sum: f64,
    pub count: f64,
}

impl KlSum {
    /// The terms of KL sequences whose summed log-probabilities are `policy` and `reference`
    /// (`[B]` each).
    pub fn of(policy: &Tensor, reference: &Tensor) -> Result<KlSum, String> {
        if policy.size() != reference.size() || policy.dim() != 1 {
            return Err(format!(
                "{:?} policy and {:?} reference KL sequences",
                policy.size(),
                reference.size()
            ));
        }
        Ok(KlSum {
            sum: (policy - reference)
                .detach()
                .to_kind(Kind::Double)
                .sum(Kind::Double)
                .double_value(&[]),
            count: policy.size()[0] as f64,
        })
    }

    /// `z`: the mean log-ratio, at least 0 (0 without KL sequences).
    pub fn estimate(self) -> f64 {
        if self.count > 0.0 {
            (self.sum / self.count).max(0.0)
        } else {
            0.0
        }
    }
}

/// A micro-batch's KTO terms.
pub struct KtoTerms {
    /// `[B]` weighted losses (differentiable where the policy's log-probabilities are).
    pub losses: Tensor,
    /// `[B]` `β(S − R)`, detached.
    pub rewards: Tensor,
    /// `[B]` the policy's summed answer log-probabilities `S`, detached.
    pub logps: Tensor,
    /// The KL estimate `z` the losses used.
    pub kl: f64,
}

/// The KTO terms of `B` examples (see the module docs): `policy` and `reference` are their `[B]`
/// summed answer log-probabilities, `kl` the estimate `z` ([`KlSum::estimate`]); `desirable`
/// has the `B` tags.
pub fn kto_terms(
    beta: f64,
    weights: KtoWeights,
    policy: &Tensor,
    reference: &Tensor,
    kl: f64,
    desirable: &[bool],
) -> Result<KtoTerms, String> {
    let b = desirable.len() as i64;
    if policy.size() != [b] || reference.size() != [b] {
        return Err(format!(
            "{} policy and {} reference KTO sequences for {b} tagged examples",
            policy.numel(),
            reference.numel()
        ));
    }
    let logratios = policy - reference;
    let tags = Tensor::from_slice(desirable).to_device(policy.device());
    let chosen = ((&logratios - kl) * beta).sigmoid().neg() + 1.0;
    let rejected = ((-&logratios + kl) * beta).sigmoid().neg() + 1.0;
    let losses = chosen.where_self(&tags, &rejected)
        * Tensor::from_slice(
            &desirable
                .iter()
                .map(|&d| if d { weights.desirable } else { weights.undesirable } as f32)
                .collect::<Vec<f32>>(),
        )
        .to_device(policy.device());
    Ok(KtoTerms {
        losses,
        rewards: (logratios.detach() * beta),
        logps: policy.detach(),
        kl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_example_loses_its_formula() {
        let sigma = |x: f64| 1.0 / (1.0 + (-x).exp());
        // Examples: S − R = 2 (desirable), −1 (undesirable); KL rows: S − R = 1 and 0, z = 0.5.
        let policy = Tensor::from_slice(&[-3.0f32, -6.0]);
        let reference = Tensor::from_slice(&[-5.0f32, -5.0]);
        let kl = KlSum::of(
            &Tensor::from_slice(&[-4.0f32, -5.0]),
            &Tensor::from_slice(&[-5.0f32, -5.0]),
        )
        .unwrap();
        assert_eq!(
            kl,
            KlSum {
                sum: 1.0,
                count: 2.0
            }
        );
        let w = KtoWeights {
            desirable: 1.0,
            undesirable: 2.0,
        };
        let t = kto_terms(0.5, w, &policy, &reference, kl.estimate(), &[true, false]).unwrap();
        assert!((t.kl - 0.5).abs() < 1e-9);
        let want = [
            1.0 - sigma(0.5 * (2.0 - 0.5)),
            2.0 * (1.0 - sigma(0.5 * (0.5 + 1.0))),
        ];
        for (i, w) in want.iter().enumerate() {
            assert!((t.losses.double_value(&[i as i64]) - w).abs() < 1e-6);
        }
        assert!((t.rewards.double_value(&[1]) + 0.5).abs() < 1e-6);
        assert!(kto_terms(0.5, w, &policy, &reference, 0.0, &[true]).is_err());
    }

    #[test]
    fn the_estimate_is_the_pooled_mean_clamped_at_zero() {
        // Two processes' sums pool into one mean: (1 + (−4)) / (2 + 2) < 0 is clamped to 0.
        let a = KlSum {
            sum: 1.0,
            count: 2.0,
        };
        let b = KlSum {
            sum: -4.0,
            count: 2.0,
        };
        assert_eq!(a.estimate(), 0.5);
        let pooled = KlSum {
            sum: a.sum + b.sum,
            count: a.count + b.count,
        };
        assert_eq!(pooled.estimate(), 0.0);
        assert_eq!(KlSum::default().estimate(), 0.0);
        assert!(KlSum::of(
            &Tensor::from_slice(&[1.0f32]),
            &Tensor::from_slice(&[1.0f32, 2.0])
        )
        .is_err());
    }
}
