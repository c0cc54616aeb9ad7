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
//! `nanmean`). TRL runs the KL sequences through the policy without gradients; here they share
//! the micro-batch's forward pass and their tokens get a zero gradient coefficient, which is the
//! same gradient.

use tch::{Kind, Tensor};

/// The weights of the desirable and the undesirable examples' losses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoWeights {
    pub desirable: f64,
    pub undesirable: f64,
}

/// A micro-batch's KTO terms.
pub struct KtoTerms {
    /// `[B]` weighted losses (differentiable where the policy's log-probabilities are).
    pub losses: Tensor,
    /// `[B]` `β(S − R)`, detached.
    pub rewards: Tensor,
    /// `[B]` the policy's summed answer log-probabilities `S`, detached.
    pub logps: Tensor,
    /// The KL estimate `z` of the micro-batch.
    pub kl: f64,
}

/// The KTO terms of a micro-batch (see the module docs): `policy` and `reference` are `[2B]`
/// per-sequence sums, the examples' then their KL sequences'; `desirable` has `B` tags.
pub fn kto_terms(
    beta: f64,
    weights: KtoWeights,
    policy: &Tensor,
    reference: &Tensor,
    desirable: &[bool],
) -> Result<KtoTerms, String> {
    let b = desirable.len() as i64;
    if policy.size() != [2 * b] || reference.size() != [2 * b] {
        return Err(format!(
            "{} KTO sequences for {b} tagged examples (each needs its KL sequence)",
            policy.numel()
        ));
    }
    let kl = (policy.narrow(0, b, b) - reference.narrow(0, b, b))
        .detach()
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
        .max(0.0);
    let logratios = policy.narrow(0, 0, b) - reference.narrow(0, 0, b);
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
        logps: policy.narrow(0, 0, b).detach(),
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
        let policy = Tensor::from_slice(&[-3.0f32, -6.0, -4.0, -5.0]);
        let reference = Tensor::from_slice(&[-5.0f32, -5.0, -5.0, -5.0]);
        let w = KtoWeights {
            desirable: 1.0,
            undesirable: 2.0,
        };
        let t = kto_terms(0.5, w, &policy, &reference, &[true, false]).unwrap();
        assert!((t.kl - 0.5).abs() < 1e-9);
        let want = [
            1.0 - sigma(0.5 * (2.0 - 0.5)),
            2.0 * (1.0 - sigma(0.5 * (0.5 + 1.0))),
        ];
        for (i, w) in want.iter().enumerate() {
            assert!((t.losses.double_value(&[i as i64]) - w).abs() < 1e-6);
        }
        assert!((t.rewards.double_value(&[1]) + 0.5).abs() < 1e-6);
        // A negative KL estimate is clamped to 0.
        let policy = Tensor::from_slice(&[-3.0f32, -6.0, -9.0, -9.0]);
        let t = kto_terms(0.5, w, &policy, &reference, &[true, false]).unwrap();
        assert_eq!(t.kl, 0.0);
        assert!(kto_terms(0.5, w, &policy, &reference, &[true]).is_err());
    }
}
