//! The preference losses of `stage: dpo` (LLaMA-Factory's `pref_loss`), as functions of the
//! summed log-probabilities of each pair's chosen and rejected answers, and the metrics Hugging
//! Face's TRL logs for them (`rewards/*`, `logps/*`).
//!
//! With `Sᶜ, Sʳ` the policy's summed answer log-probabilities, `Rᶜ, Rʳ` the reference's, `aᶜ = Sᶜ/nᶜ`
//! the per-token means and `Δ = (Sᶜ − Rᶜ) − (Sʳ − Rʳ)`:
//!
//! | `pref_loss` | loss of a pair | rewards |
//! |---|---|---|
//! | `sigmoid` (DPO) | `−log σ(βΔ)` | `β(S − R)` |
//! | `hinge` | `max(0, 1 − βΔ)` | `β(S − R)` |
//! | `ipo` | `((Sᶜ−Rᶜ)/nᶜ − (Sʳ−Rʳ)/nʳ − 1/(2β))²` | `β(S − R)` |
//! | `orpo` | `−aᶜ − β log σ(aᶜ − aʳ − log(1−e^{aᶜ}) + log(1−e^{aʳ}))` | `β a` |
//! | `simpo` | `−log σ(β(aᶜ − aʳ) − γ)` | `β a` |
//!
//! plus `pref_ftx · (−aᶜ)` when `pref_ftx > 0`. The step's loss is the mean over its pairs: a
//! micro-batch backpropagates its summed pair losses times `1 / pairs of the whole step`, so
//! gradient accumulation and data parallelism give exactly the full batch's gradient.
//! `logps/*` are the sums `S` (the means `a` for the reference-free losses, which use them).
//!
//! `stage: kto` ([`crate::kto`]) goes through the same step: its micro-batches hold tagged
//! examples (and their KL sequences, which give the estimate the loss takes) in place of pairs,
//! its metrics are per desirable or undesirable example, with `kl` and without
//! `rewards/accuracies`.

use lf_api::training::{PrefLoss, Stage, TrainingConfig};
use lf_model::TokenLogps;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::kto::{kto_terms, KtoTerms, KtoWeights};

/// The loss settings of a preference run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreferenceLoss {
    pub loss: PrefLoss,
    pub beta: f64,
    pub ftx: f64,
    pub simpo_gamma: f64,
    /// `stage: kto`: KTO's loss (and `loss` is not used).
    pub kto: Option<KtoWeights>,
    /// `stage: rm`: the pairs are scored by the value head and lose TRL RewardTrainer's
    /// −log σ(r_chosen − r_rejected) ([`crate::reward`]); nothing else here is used.
    pub value_head: bool,
}

/// Per-sequence log-probabilities of a batch of pairs, `[pairs]` each (differentiable where the
/// policy's are).
pub struct PairLogps {
    pub chosen: Tensor,
    pub rejected: Tensor,
}

/// The answers' labelled-token counts, `[pairs]` each (fp32).
pub struct PairLengths {
    pub chosen: Tensor,
    pub rejected: Tensor,
}

/// Per-pair losses and rewards, `[pairs]` each.
pub struct PairTerms {
    pub losses: Tensor,
    pub chosen_rewards: Tensor,
    pub rejected_rewards: Tensor,
    /// What `logps/chosen` and `logps/rejected` report.
    pub chosen_logps: Tensor,
    pub rejected_logps: Tensor,
}

/// Sums over the pairs of a micro-batch (or a step, or ranks): what the metrics average.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PreferenceSums {
    /// Pairs (`stage: kto`: examples), what the loss is a mean over.
    pub pairs: f64,
    /// What the chosen and the rejected metrics are means over (the pairs; KTO's desirable and
    /// undesirable examples).
    pub chosen: f64,
    pub rejected: f64,
    /// KTO: the micro-batches' summed KL estimates, and how many micro-batches.
    pub kl: f64,
    pub kl_batches: f64,
    /// `stage: rm`: the pairs scored by a value head (then the metrics are TRL RewardTrainer's).
    pub reward_pairs: f64,
    pub loss: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub accuracies: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
}

/// The per-pair means of a step or logging window, under TRL's (and LLaMA-Factory's) names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PreferenceMetrics {
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(
        rename = "rewards/accuracies",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub rewards_accuracies: Option<f64>,
    #[serde(
        rename = "rewards/margins",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub rewards_margins: Option<f64>,
    #[serde(
        rename = "logps/chosen",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub logps_chosen: Option<f64>,
    #[serde(
        rename = "logps/rejected",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub logps_rejected: Option<f64>,
    /// `stage: kto`: the mean over the micro-batches of their KL estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// `stage: rm` (TRL RewardTrainer's names): the share of pairs whose chosen sequence has
    /// the higher reward, the mean reward margin, and the mean reward of every sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_reward: Option<f64>,
}

impl From<PreferenceMetrics> for lf_api::status::PreferenceProgress {
    fn from(m: PreferenceMetrics) -> Self {
        lf_api::status::PreferenceProgress {
            rewards_chosen: m.rewards_chosen,
            rewards_rejected: m.rewards_rejected,
            rewards_accuracies: m.rewards_accuracies.or(m.accuracy),
            rewards_margins: m.rewards_margins.or(m.margin).unwrap_or(0.0),
            logps_chosen: m.logps_chosen.unwrap_or(0.0),
            logps_rejected: m.logps_rejected.unwrap_or(0.0),
            kl: m.kl,
        }
    }
}

impl PreferenceMetrics {
    /// Each metric the run has, with its name.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        [
            ("rewards/chosen", Some(self.rewards_chosen)),
            ("rewards/rejected", Some(self.rewards_rejected)),
            ("rewards/accuracies", self.rewards_accuracies),
            ("rewards/margins", self.rewards_margins),
            ("logps/chosen", self.logps_chosen),
            ("logps/rejected", self.logps_rejected),
            ("kl", self.kl),
            ("accuracy", self.accuracy),
            ("margin", self.margin),
            ("mean_reward", self.mean_reward),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| (name, v)))
        .collect()
    }

    /// [`PreferenceMetrics::named`] under TRL's names for an evaluation (`eval_` + the name).
    pub fn eval_named(&self) -> std::collections::BTreeMap<String, f64> {
        let named = self.named().into_iter();
        named.map(|(name, v)| (format!("eval_{name}"), v)).collect()
    }
}

impl PreferenceLoss {
    /// The loss of `cfg`, when its stage trains on pairs.
    pub fn from_config(cfg: &TrainingConfig) -> Option<Self> {
        let trains_pairs = cfg.stage.is_preference() || cfg.stage == Stage::Rm;
        trains_pairs.then_some(PreferenceLoss {
            loss: cfg.pref_loss,
            beta: cfg.pref_beta,
            ftx: cfg.pref_ftx,
            simpo_gamma: cfg.simpo_gamma,
            kto: (cfg.stage == Stage::Kto).then_some(KtoWeights {
                desirable: cfg.kto_chosen_weight,
                undesirable: cfg.kto_rejected_weight,
            }),
            value_head: cfg.stage == Stage::Rm,
        })
    }

    /// Whether the loss needs the reference model's log-probabilities.
    pub fn uses_reference(&self) -> bool {
        !self.value_head && (self.kto.is_some() || self.loss.uses_reference())
    }

    /// The losses and rewards of a batch of pairs (see the module docs). `reference` is ignored
    /// by the reference-free losses and required by the others.
    pub fn terms(
        &self,
        policy: &PairLogps,
        reference: Option<&PairLogps>,
        lengths: &PairLengths,
    ) -> Result<PairTerms, String> {
        let beta = self.beta;
        let chosen_len = lengths.chosen.clamp_min(1.0);
        let rejected_len = lengths.rejected.clamp_min(1.0);
        let mean_chosen = &policy.chosen / &chosen_len;
        let mean_rejected = &policy.rejected / &rejected_len;
        // The policy/reference log-ratios of the chosen and the rejected answers.
        let ratios = || -> Result<(Tensor, Tensor), String> {
            let r = reference.ok_or("the reference log-probabilities are missing")?;
            Ok((&policy.chosen - &r.chosen, &policy.rejected - &r.rejected))
        };
        // (losses, what the rewards are β times)
        let (losses, chosen_score, rejected_score) = match self.loss {
            PrefLoss::Sigmoid => {
                let (c, r) = ratios()?;
                (-((&c - &r) * beta).log_sigmoid(), c, r)
            }
            PrefLoss::Hinge => {
                let (c, r) = ratios()?;
                (((&c - &r) * -beta + 1.0).relu(), c, r)
            }
            PrefLoss::Ipo => {
                let (c, r) = ratios()?;
                let d = &c / &chosen_len - &r / &rejected_len;
                ((d - 1.0 / (2.0 * beta)).square(), c, r)
            }
            PrefLoss::Orpo => {
                let log_odds = (&mean_chosen - &mean_rejected)
                    - (log1m_exp(&mean_chosen) - log1m_exp(&mean_rejected));
                let losses = -&mean_chosen - log_odds.log_sigmoid() * beta;
                (
                    losses,
                    mean_chosen.shallow_clone(),
                    mean_rejected.shallow_clone(),
                )
            }
            PrefLoss::Simpo => {
                let margin = (&mean_chosen - &mean_rejected) * beta - self.simpo_gamma;
                let losses = -margin.log_sigmoid();
                (
                    losses,
                    mean_chosen.shallow_clone(),
                    mean_rejected.shallow_clone(),
                )
            }
        };
        let losses = if self.ftx > 0.0 {
            losses - &mean_chosen * self.ftx
        } else {
            losses
        };
        let (chosen_logps, rejected_logps) = if self.uses_reference() {
            (policy.chosen.detach(), policy.rejected.detach())
        } else {
            (mean_chosen.detach(), mean_rejected.detach())
        };
        Ok(PairTerms {
            losses,
            chosen_rewards: (chosen_score * beta).detach(),
            rejected_rewards: (rejected_score * beta).detach(),
            chosen_logps,
            rejected_logps,
        })
    }
}

impl PreferenceLoss {
    /// For a micro-batch of `rows` sequences (the chosen answers, then the rejected ones; for
    /// KTO the examples tagged `desirable`, whose KL sequences gave the estimate `kl`): the
    /// gradient of `scale ×` its summed pair losses with respect to each labelled token's
    /// log-probability under the policy (what [`lf_model::CausalLm::token_logps_backward`]
    /// backpropagates), and the pairs' metric sums.
    pub fn coefficients(
        &self,
        policy: &TokenLogps,
        reference: Option<&TokenLogps>,
        rows: i64,
        desirable: &[bool],
        kl: Option<f64>,
        scale: f64,
    ) -> Result<(Tensor, PreferenceSums), String> {
        let logps = policy.logps.detach().set_requires_grad(true);
        let terms = self.token_terms(&logps, policy, reference, rows, desirable, kl)?;
        let total = terms.losses.sum(Kind::Float) * scale;
        let grads = Tensor::f_run_backward(&[total], &[&logps], false, false)
            .map_err(|e| format!("differentiating the preference loss: {e}"))?;
        let coefficients = grads
            .into_iter()
            .next()
            .ok_or("the preference loss gave no gradient")?;
        Ok((coefficients, terms.sums))
    }

    /// The metric sums (the summed loss included) of a micro-batch of `rows` sequences, without
    /// gradients (evaluation).
    pub fn evaluate(
        &self,
        policy: &TokenLogps,
        reference: Option<&TokenLogps>,
        rows: i64,
        desirable: &[bool],
        kl: Option<f64>,
    ) -> Result<PreferenceSums, String> {
        Ok(self
            .token_terms(&policy.logps, policy, reference, rows, desirable, kl)?
            .sums)
    }

    /// The pairs' terms from the policy's token log-probabilities `logps` (laid out as
    /// `policy`'s, possibly a leaf that requires grad) over `rows` sequences: the chosen
    /// answers, then the rejected ones (KTO: the tagged examples, with the KL estimate `kl`).
    fn token_terms(
        &self,
        logps: &Tensor,
        policy: &TokenLogps,
        reference: Option<&TokenLogps>,
        rows: i64,
        desirable: &[bool],
        kl: Option<f64>,
    ) -> Result<StepTerms, String> {
        if let Some(weights) = self.kto {
            let reference = reference.ok_or("the reference log-probabilities are missing")?;
            let kl = kl.ok_or("the KL estimate of a KTO micro-batch is missing")?;
            let terms = kto_terms(
                self.beta,
                weights,
                &policy.per_row(logps, rows),
                &reference.per_row(&reference.logps, rows),
                kl,
                desirable,
            )?;
            return Ok(StepTerms {
                sums: kto_sums(&terms, desirable),
                losses: terms.losses,
            });
        }
        if rows % 2 != 0 {
            return Err(format!("{rows} rows are not pairs"));
        }
        let pairs = rows / 2;
        let split = |t: &Tensor| (t.narrow(0, 0, pairs), t.narrow(0, pairs, pairs));
        let (chosen, rejected) = split(&policy.per_row(logps, rows));
        let (chosen_len, rejected_len) = split(&policy.per_row(&logps.detach().ones_like(), rows));
        let reference = reference.map(|r| {
            let (chosen, rejected) = split(&r.per_row(&r.logps, rows));
            PairLogps { chosen, rejected }
        });
        let terms = self.terms(
            &PairLogps { chosen, rejected },
            reference.as_ref(),
            &PairLengths {
                chosen: chosen_len,
                rejected: rejected_len,
            },
        )?;
        Ok(StepTerms {
            sums: terms.sums(),
            losses: terms.losses,
        })
    }
}

/// A micro-batch's losses (`[pairs]`, differentiable) and metric sums.
struct StepTerms {
    losses: Tensor,
    sums: PreferenceSums,
}

/// The metric sums of a KTO micro-batch: the rewards and log-probabilities of its desirable
/// examples as `chosen`, of its undesirable ones as `rejected`.
fn kto_sums(t: &KtoTerms, desirable: &[bool]) -> PreferenceSums {
    let mask = Tensor::from_slice(desirable).to_device(t.losses.device());
    let sum = |v: &Tensor, m: &Tensor| {
        v.to_kind(Kind::Double)
            .masked_select(m)
            .sum(Kind::Double)
            .double_value(&[])
    };
    let chosen = desirable.iter().filter(|&&d| d).count() as f64;
    let not = mask.logical_not();
    PreferenceSums {
        pairs: desirable.len() as f64,
        chosen,
        rejected: desirable.len() as f64 - chosen,
        kl: t.kl,
        kl_batches: 1.0,
        reward_pairs: 0.0,
        loss: t
            .losses
            .detach()
            .to_kind(Kind::Double)
            .sum(Kind::Double)
            .double_value(&[]),
        rewards_chosen: sum(&t.rewards, &mask),
        rewards_rejected: sum(&t.rewards, &not),
        accuracies: 0.0,
        logps_chosen: sum(&t.logps, &mask),
        logps_rejected: sum(&t.logps, &not),
    }
}

/// `log(1 − eˣ)` for `x < 0` (as `log1p(−exp(x))`, which TRL and LLaMA-Factory use).
fn log1m_exp(x: &Tensor) -> Tensor {
    (-x.exp()).log1p()
}

impl PairTerms {
    /// The metric sums of these pairs.
    pub fn sums(&self) -> PreferenceSums {
        let sum = |t: &Tensor| t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
        let pairs = self.losses.size().first().copied().unwrap_or(0) as f64;
        PreferenceSums {
            pairs,
            chosen: pairs,
            rejected: pairs,
            kl: 0.0,
            kl_batches: 0.0,
            reward_pairs: 0.0,
            loss: sum(&self.losses.detach()),
            rewards_chosen: sum(&self.chosen_rewards),
            rewards_rejected: sum(&self.rejected_rewards),
            accuracies: sum(&self.chosen_rewards.gt_tensor(&self.rejected_rewards)),
            logps_chosen: sum(&self.chosen_logps),
            logps_rejected: sum(&self.rejected_logps),
        }
    }
}

impl std::ops::AddAssign for PreferenceSums {
    fn add_assign(&mut self, o: Self) {
        self.pairs += o.pairs;
        self.chosen += o.chosen;
        self.rejected += o.rejected;
        self.kl += o.kl;
        self.kl_batches += o.kl_batches;
        self.reward_pairs += o.reward_pairs;
        self.loss += o.loss;
        self.rewards_chosen += o.rewards_chosen;
        self.rewards_rejected += o.rewards_rejected;
        self.accuracies += o.accuracies;
        self.logps_chosen += o.logps_chosen;
        self.logps_rejected += o.logps_rejected;
    }
}

impl PreferenceSums {
    /// Every field, in a fixed order (for summing over ranks).
    pub fn to_array(self) -> [f64; 12] {
        [
            self.pairs,
            self.chosen,
            self.rejected,
            self.kl,
            self.kl_batches,
            self.reward_pairs,
            self.loss,
            self.rewards_chosen,
            self.rewards_rejected,
            self.accuracies,
            self.logps_chosen,
            self.logps_rejected,
        ]
    }

    pub fn from_array(a: [f64; 12]) -> Self {
        let [pairs, chosen, rejected, kl, kl_batches, reward_pairs, loss, rewards_chosen, rewards_rejected, accuracies, logps_chosen, logps_rejected] =
            a;
        PreferenceSums {
            pairs,
            chosen,
            rejected,
            kl,
            kl_batches,
            reward_pairs,
            loss,
            rewards_chosen,
            rewards_rejected,
            accuracies,
            logps_chosen,
            logps_rejected,
        }
    }

    /// The per-pair means (`None` without pairs). KTO's chosen (rejected) metrics are means over
    /// the window's desirable (undesirable) examples, 0 when it has none; a value head's pairs
    /// (`stage: rm`) have TRL RewardTrainer's metrics and no log-probabilities.
    pub fn means(&self) -> Option<PreferenceMetrics> {
        if self.reward_pairs > 0.0 {
            return Some(self.reward_means());
        }
        (self.pairs > 0.0).then(|| {
            let per = |sum: f64, n: f64| if n > 0.0 { sum / n } else { 0.0 };
            let kto = self.kl_batches > 0.0;
            let (chosen, rejected) = (
                per(self.rewards_chosen, self.chosen),
                per(self.rewards_rejected, self.rejected),
            );
            PreferenceMetrics {
                rewards_chosen: chosen,
                rewards_rejected: rejected,
                rewards_accuracies: (!kto).then(|| self.accuracies / self.pairs),
                rewards_margins: Some(chosen - rejected),
                logps_chosen: Some(per(self.logps_chosen, self.chosen)),
                logps_rejected: Some(per(self.logps_rejected, self.rejected)),
                kl: kto.then(|| self.kl / self.kl_batches),
                ..PreferenceMetrics::default()
            }
        })
    }

    /// [`PreferenceSums::means`] of a value head's pairs.
    fn reward_means(&self) -> PreferenceMetrics {
        let n = self.reward_pairs;
        let (chosen, rejected) = (self.rewards_chosen / n, self.rewards_rejected / n);
        PreferenceMetrics {
            rewards_chosen: chosen,
            rewards_rejected: rejected,
            accuracy: Some(self.accuracies / n),
            margin: Some(chosen - rejected),
            mean_reward: Some((chosen + rejected) / 2.0),
            ..PreferenceMetrics::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn loss(kind: PrefLoss) -> PreferenceLoss {
        PreferenceLoss {
            loss: kind,
            beta: 0.5,
            ftx: 0.0,
            simpo_gamma: 0.25,
            kto: None,
            value_head: false,
        }
    }

    /// One pair: policy sums Sᶜ = −4, Sʳ = −6 over 2 and 3 tokens; reference −5 and −5.
    fn one_pair(kind: PrefLoss, ftx: f64) -> (PairTerms, f64) {
        let policy = PairLogps {
            chosen: t(&[-4.0]),
            rejected: t(&[-6.0]),
        };
        let reference = PairLogps {
            chosen: t(&[-5.0]),
            rejected: t(&[-5.0]),
        };
        let lengths = PairLengths {
            chosen: t(&[2.0]),
            rejected: t(&[3.0]),
        };
        let l = PreferenceLoss { ftx, ..loss(kind) };
        let terms = l.terms(&policy, Some(&reference), &lengths).unwrap();
        let value = terms.losses.double_value(&[0]);
        (terms, value)
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }

    #[test]
    fn each_loss_is_its_formula() {
        let sigma = |x: f64| 1.0 / (1.0 + (-x).exp());
        // Δ = (−4 + 5) − (−6 + 5) = 2, β = 0.5.
        close(one_pair(PrefLoss::Sigmoid, 0.0).1, -sigma(1.0).ln());
        close(one_pair(PrefLoss::Hinge, 0.0).1, 0.0);
        // IPO: 1/2 − (−1/3) − 1/(2β) = 5/6 − 1.
        close(one_pair(PrefLoss::Ipo, 0.0).1, (5.0f64 / 6.0 - 1.0).powi(2));
        // SimPO: aᶜ = −2, aʳ = −2: −log σ(β·0 − γ).
        close(one_pair(PrefLoss::Simpo, 0.0).1, -sigma(-0.25).ln());
        // ORPO: aᶜ = aʳ = −2, so the log-odds are 0: 2 − β·log σ(0).
        close(one_pair(PrefLoss::Orpo, 0.0).1, 2.0 - 0.5 * sigma(0.0).ln());
        // pref_ftx adds ftx · (−aᶜ).
        close(
            one_pair(PrefLoss::Sigmoid, 0.3).1,
            -sigma(1.0).ln() + 0.3 * 2.0,
        );
    }

    #[test]
    fn rewards_and_metrics_follow_trl() {
        let (terms, _) = one_pair(PrefLoss::Sigmoid, 0.0);
        let s = terms.sums();
        close(s.rewards_chosen, 0.5);
        close(s.rewards_rejected, -0.5);
        close(s.accuracies, 1.0);
        close(s.logps_chosen, -4.0);
        let m = s.means().unwrap();
        close(m.rewards_margins.unwrap(), 1.0);
        // The reference-free losses report β·mean log-prob and the means.
        let (terms, _) = one_pair(PrefLoss::Simpo, 0.0);
        let s = terms.sums();
        close(s.rewards_chosen, -1.0);
        close(s.logps_rejected, -2.0);
        close(s.accuracies, 0.0);
    }

    #[test]
    fn coefficients_are_the_loss_gradient_per_token() {
        // Rows: chosen (tokens 0, 1), rejected (token 2); the reference gives Δ = 2.
        let policy = TokenLogps {
            logps: t(&[-1.0, -3.0, -6.0]),
            rows: Tensor::from_slice(&[0i64, 0, 1]),
        };
        let reference = TokenLogps {
            logps: t(&[-5.0, -5.0]),
            rows: Tensor::from_slice(&[0i64, 1]),
        };
        let l = loss(PrefLoss::Sigmoid);
        let (coef, sums) = l
            .coefficients(&policy, Some(&reference), 2, &[], None, 0.25)
            .unwrap();
        // ∂(−log σ(βΔ))/∂Sᶜ = −β·σ(−βΔ); every chosen token carries it, the rejected the opposite.
        let g = -0.5 / (1.0 + 1.0f64.exp()) * 0.25;
        let coef: Vec<f64> = (0..3).map(|i| coef.double_value(&[i])).collect();
        for (c, want) in coef.iter().zip([g, g, -g]) {
            close(*c, want);
        }
        close(sums.pairs, 1.0);
        assert!(l
            .coefficients(&policy, Some(&reference), 3, &[], None, 1.0)
            .is_err());
    }

    #[test]
    fn a_reference_based_loss_needs_the_reference() {
        let p = PairLogps {
            chosen: t(&[-1.0]),
            rejected: t(&[-2.0]),
        };
        let n = PairLengths {
            chosen: t(&[1.0]),
            rejected: t(&[1.0]),
        };
        assert!(loss(PrefLoss::Sigmoid).terms(&p, None, &n).is_err());
        assert!(loss(PrefLoss::Orpo).terms(&p, None, &n).is_ok());
    }
}
