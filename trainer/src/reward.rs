//! The loss of `stage: rm`, as TRL's `RewardTrainer` computes it, on a micro-batch of `P` pairs
//! scored by the value head ([`crate::value_head`]): rows `0..P` are the chosen sequences, rows
//! `P..2P` the rejected ones (`lf_data::collate_pairs`), each scored at its last token.
//!
//! A pair loses `−log σ(r_chosen − r_rejected)`; the step's loss is the mean over its pairs, so a
//! micro-batch backpropagates its summed pair losses times `1 / pairs of the whole step`, as the
//! preference losses do ([`crate::preference`]). LLaMA-Factory's `PairwiseTrainer` has the same
//! loss and exposes no reward centring, so TRL's `center_rewards_coefficient` is not offered.
//!
//! Metrics (per pair over a logging window): TRL's `accuracy` (the share of pairs with
//! `r_chosen > r_rejected`), `margin` (the mean `r_chosen − r_rejected`) and `mean_reward` (over
//! every sequence), plus `rewards/chosen` and `rewards/rejected` (the mean rewards).

use tch::{Kind, Tensor};

use crate::preference::PreferenceSums;

/// Each row's last token (its attention mask's length − 1), `[rows]` int64: where it is scored.
/// Rows are right-padded.
pub fn last_positions(attention_mask: &Tensor) -> Tensor {
    (attention_mask.sum_dim_intlist(1, false, Kind::Int64) - 1).clamp_min(0)
}

/// The summed pair loss of `rewards` (`[2P]`: the chosen sequences', then the rejected ones',
/// differentiable) and the pairs' metric sums.
pub fn pair_loss(rewards: &Tensor) -> Result<(Tensor, PreferenceSums), String> {
    let rows = rewards.size().first().copied().unwrap_or(0);
    if rows % 2 != 0 || rewards.dim() != 1 {
        return Err(format!("{:?} rewards are not pairs", rewards.size()));
    }
    let pairs = rows / 2;
    let chosen = rewards.narrow(0, 0, pairs);
    let rejected = rewards.narrow(0, pairs, pairs);
    let losses = -(&chosen - &rejected).log_sigmoid();
    let sum = |t: &Tensor| {
        t.detach()
            .to_kind(Kind::Double)
            .sum(Kind::Double)
            .double_value(&[])
    };
    let sums = PreferenceSums {
        pairs: pairs as f64,
        chosen: pairs as f64,
        rejected: pairs as f64,
        reward_pairs: pairs as f64,
        loss: sum(&losses),
        rewards_chosen: sum(&chosen),
        rewards_rejected: sum(&rejected),
        accuracies: sum(&chosen.gt_tensor(&rejected)),
        ..PreferenceSums::default()
    };
    Ok((losses.sum(Kind::Float), sums))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_and_metrics_of_two_pairs() {
        // Pairs (1, −1) and (0, 0.5): losses −log σ(2) and −log σ(−0.5), margins 2 and −0.5.
        let r = Tensor::from_slice(&[1.0f32, 0.0, -1.0, 0.5]);
        let (loss, s) = pair_loss(&r).unwrap();
        let sigma = |x: f64| 1.0 / (1.0 + (-x).exp());
        let want = -sigma(2.0).ln() - sigma(-0.5).ln();
        assert!((loss.double_value(&[]) - want).abs() < 1e-6);
        assert!((s.loss - want).abs() < 1e-6);
        assert_eq!((s.pairs, s.accuracies), (2.0, 1.0));
        let m = s.means().unwrap();
        assert_eq!(m.accuracy, Some(0.5));
        assert!((m.margin.unwrap() - 0.75).abs() < 1e-9);
        assert!((m.mean_reward.unwrap() - 0.125).abs() < 1e-9);
        assert!((m.rewards_chosen - 0.5).abs() < 1e-9);
        assert_eq!((m.rewards_accuracies, m.logps_chosen), (None, None));
        assert!(pair_loss(&Tensor::from_slice(&[1.0f32])).is_err());
    }

    #[test]
    fn rows_are_scored_at_their_last_token() {
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0]).reshape([2, 3]);
        let p: Vec<i64> = Vec::try_from(last_positions(&mask)).unwrap();
        assert_eq!(p, [2, 1]);
    }
}
