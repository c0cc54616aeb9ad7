//! The loop's traits ([`crate::interfaces`]) implemented for lf-model's [`CausalLm`] and
//! lf-optim's optimisers.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use lf_dist::ProcessGroup;
use lf_model::{
    CausalLm, ModelError, Residency, TokenLogps, ADALORA_STATE, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
use tch::{Kind, Tensor};

use crate::data_parallel::dist_error;
use crate::error::TrainerError;
use crate::grad_reduce::{GradientReducer, UnitParameters};
use crate::interfaces::{MicroOutput, ModelMemory, OptimizerBytes, StepOptimizer, TrainModel};
use crate::kto::KlSum;
use crate::preference::{PreferenceLoss, PreferenceSums};
use crate::value_head::{ValueHead, VALUE_HEAD_FILE};
use crate::zero3::ParameterPartition;

/// The file of trainable weights in a `full`/`freeze` checkpoint.
pub const TRAINABLE_WEIGHTS: &str = "trainable_model.safetensors";

/// Maps a model error onto the trainer's classes: files and shapes the user gave are
/// configuration errors, allocation failures are OOM, the rest is a runtime failure.
pub fn model_error(context: &str, e: ModelError) -> TrainerError {
    match &e {
        ModelError::Io { .. }
        | ModelError::Architecture(_)
        | ModelError::Safetensors { .. }
        | ModelError::Json { .. }
        | ModelError::NoWeights { .. }
        | ModelError::WeightMapEntry { .. }
        | ModelError::NotRegular(_)
        | ModelError::MissingTensor { .. }
        | ModelError::ShapeMismatch { .. }
        | ModelError::UnsupportedDtype { .. }
        | ModelError::UnexpectedTensor { .. }
        | ModelError::UnsupportedConfig { .. }
        | ModelError::Adapter { .. }
        | ModelError::Invalid(_) => TrainerError::config(format!("{context}: {e}")),
        ModelError::Residency { .. } => residency_error(context, e),
        ModelError::StorageFull { path, needed, .. } => {
            TrainerError::volume_full(path, Some(*needed))
        }
        _ => TrainerError::from_library(context, e),
    }
}

/// A ZeRO-3 gather or release that failed: the partition's own error (a collective failure stays
/// a communication error), with what the model was doing.
fn residency_error(context: &str, e: ModelError) -> TrainerError {
    match e {
        ModelError::Residency { unit, source } => match source.downcast::<TrainerError>() {
            Ok(inner) => inner.with_context(&format!("{context}: {unit}")),
            Err(other) => TrainerError::runtime(format!("{context}: {unit}: {other}")),
        },
        other => TrainerError::from_library(context, other),
    }
}

/// What brackets the model's units in a training pass: the ZeRO-3 partition, or the reducer of
/// `overlap_comm`.
type TrainResidency<'a> = Option<&'a dyn Residency<Error = TrainerError>>;

/// A [`CausalLm`] as the loop trains it.
pub struct LmTrainee {
    pub lm: CausalLm,
    /// `base_model_name_or_path` written into `adapter_config.json`.
    pub base_name: String,
    /// Training micro-batches run so far (the model's dropout stream position).
    micro_batches: u64,
    /// The ZeRO-3 parameter partition, when the parameters are partitioned (shared with the
    /// ZeRO optimiser, whose parameters are its shards).
    partition: Option<Rc<ParameterPartition>>,
    /// `overlap_comm` under ZeRO 0–2: the gradient reduction each unit starts as its backward
    /// finishes (shared with the optimiser, which waits for it).
    overlap: Option<Rc<GradientReducer>>,
    /// A preference run without LoRA: the frozen starting weights, the reference model.
    reference: Option<Reference>,
    /// The data-parallel group (several processes): KTO's KL estimate is a mean over it.
    group: Option<Rc<ProcessGroup>>,
    /// `stage: rm`: the value head that scores each sequence.
    value_head: Option<ValueHead>,
    /// The tokenizer's pad token, which a `full`/`freeze` reward model's config names.
    pad_token_id: Option<u32>,
}

impl LmTrainee {
    pub fn new(lm: CausalLm, base_name: impl Into<String>) -> Self {
        LmTrainee {
            lm,
            base_name: base_name.into(),
            micro_batches: 0,
            partition: None,
            overlap: None,
            reference: None,
            group: None,
            value_head: None,
            pad_token_id: None,
        }
    }

    /// Trains `head` with the model (`stage: rm`): it scores each sequence at its last token.
    pub fn with_value_head(mut self, head: ValueHead, pad_token_id: u32) -> Self {
        self.value_head = Some(head);
        self.pad_token_id = Some(pad_token_id);
        self
    }

    fn head(&self) -> Result<&ValueHead, TrainerError> {
        self.value_head.as_ref().ok_or_else(no_value_head)
    }

    /// Takes `reference` (the starting weights, frozen) as the reference model of a preference
    /// loss, for `full`/`freeze` fine-tuning; under ZeRO-3 its weights are partitioned by
    /// `partition` (frozen only: gathered and released without gradients), as the planner counts
    /// them.
    pub fn with_reference(
        mut self,
        reference: CausalLm,
        partition: Option<ParameterPartition>,
    ) -> Self {
        self.reference = Some(Reference {
            lm: reference,
            partition,
        });
        self
    }

    /// The processes of data parallelism, over which KTO's KL estimate is taken (as TRL gathers
    /// it).
    pub fn reduce_over(&mut self, group: Rc<ProcessGroup>) {
        self.group = Some(group);
    }

    /// Trains with the parameters partitioned by `partition` (ZeRO-3): every pass gathers each
    /// unit through it, and layers are recomputed in backward (which ZeRO-3 needs).
    pub fn partition_parameters(&mut self, partition: Rc<ParameterPartition>) {
        self.lm.force_layer_recomputation();
        self.partition = Some(partition);
    }

    /// Starts each unit's gradient reduction as its backward finishes (`overlap_comm`, ZeRO 0–2):
    /// `reducer` brackets the units of every training pass.
    pub fn overlap_gradients(&mut self, reducer: Rc<GradientReducer>) {
        self.overlap = Some(reducer);
    }

    /// The trainable parameters of each unit of the model, by name.
    pub fn unit_parameters(&self) -> UnitParameters {
        self.lm
            .units()
            .into_iter()
            .map(|unit| {
                let names = self
                    .lm
                    .unit_tensors(unit)
                    .into_iter()
                    .filter(|(_, t)| t.requires_grad())
                    .map(|(name, _)| name)
                    .collect();
                (unit, names)
            })
            .collect()
    }

    fn active_partition(&self) -> Option<&ParameterPartition> {
        self.partition.as_deref()
    }

    fn train_residency(&self) -> TrainResidency<'_> {
        match (&self.partition, &self.overlap) {
            (Some(p), _) => Some(&**p),
            (None, Some(r)) => Some(&**r),
            (None, None) => None,
        }
    }

    /// One training micro-batch: `run` (the forward and backward, given the model and what
    /// brackets its units, when anything does) returns the loss sum; the micro-batch is counted.
    fn micro_step(
        &mut self,
        run: impl FnOnce(&CausalLm, TrainResidency<'_>) -> Result<f64, ModelError>,
    ) -> Result<MicroOutput, TrainerError> {
        let loss_sum =
            run(&self.lm, self.train_residency()).map_err(|e| model_error("training step", e))?;
        self.micro_batches += 1;
        Ok(MicroOutput {
            loss_sum,
            forward_secs: None,
        })
    }

    fn is_lora(&self) -> bool {
        self.lm.lora_settings().is_some()
    }

    /// The reference model's token log-probabilities for a preference `loss` that uses them:
    /// the same weights with the LoRA adapter off, or the frozen copy of the starting weights
    /// ([`LmTrainee::with_reference`]), without gradients (each through its ZeRO-3 partition).
    fn reference_logps(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        loss: &PreferenceLoss,
    ) -> Result<Option<TokenLogps>, TrainerError> {
        if !loss.uses_reference() {
            return Ok(None);
        }
        let logps = match &self.reference {
            Some(reference) => reference.token_logps(input_ids, labels),
            None if self.is_lora() => {
                lf_model::without_adapters(|| self.token_logps(input_ids, labels))
            }
            None => {
                return Err(TrainerError::config(
                    "the reference model of a preference loss is the base with the LoRA adapter off, or for `full`/`freeze` a frozen copy of the starting weights, which this run has not loaded",
                ))
            }
        };
        logps
            .map(Some)
            .map_err(|e| model_error("the reference pass", e))
    }

    /// The policy's token log-probabilities without gradients, each unit gathered through the
    /// ZeRO-3 partition when there is one.
    fn token_logps(&self, input_ids: &Tensor, labels: &Tensor) -> Result<TokenLogps, ModelError> {
        match self.active_partition() {
            Some(p) => self.lm.token_logps_with(input_ids, labels, p),
            None => self.lm.token_logps(input_ids, labels),
        }
    }

    /// KTO's KL estimate `z` of a micro-batch whose KL sequences are `policy`'s and
    /// `reference`'s rows (summed over `rows` of them): the mean log-ratio over every process's
    /// KL sequences (one all-reduce of their sum and count), at least 0.
    fn kl_estimate(
        &self,
        policy: &TokenLogps,
        reference: &TokenLogps,
        rows: i64,
    ) -> Result<f64, TrainerError> {
        let local = KlSum::of(
            &policy.per_row(&policy.logps, rows),
            &reference.per_row(&reference.logps, rows),
        )
        .map_err(TrainerError::runtime)?;
        Ok(self.reduce_kl(local)?.estimate())
    }

    /// `local` summed over the data-parallel processes (every process calls this once per
    /// micro-batch, one all-reduce).
    fn reduce_kl(&self, local: KlSum) -> Result<KlSum, TrainerError> {
        let Some(pg) = &self.group else {
            return Ok(local);
        };
        let mut t = Tensor::from_slice(&[local.sum, local.count]).to_device(pg.device());
        pg.all_reduce_sum(&mut t).map_err(dist_error)?;
        let t = t.to_device(tch::Device::Cpu).to_kind(Kind::Double);
        Ok(KlSum {
            sum: t.double_value(&[0]),
            count: t.double_value(&[1]),
        })
    }

    /// KTO: the micro-batch's first `examples` rows are the tagged examples, the next as many
    /// their KL sequences. The estimate `z` (over every process) and the reference's
    /// log-probabilities of the examples alone. The KL sequences' pass runs without dropout (an
    /// estimate, as TRL's, whose trainer disables dropout), so no random draw depends on it.
    fn kto_split(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
        reference: &TokenLogps,
        examples: i64,
    ) -> Result<(f64, TokenLogps), TrainerError> {
        let (kl_ids, kl_labels) = (
            input_ids.narrow(0, examples, examples),
            labels.narrow(0, examples, examples),
        );
        let training = self.lm.is_training();
        self.lm.set_training(false);
        let policy_kl = self.token_logps(&kl_ids, &kl_labels);
        self.lm.set_training(training);
        let policy_kl = policy_kl.map_err(|e| model_error("the KL sequences' pass", e))?;
        let reference_kl = reference.row_range(examples, examples);
        let kl = self.kl_estimate(&policy_kl, &reference_kl, examples)?;
        Ok((kl, reference.row_range(0, examples)))
    }

    /// A preference micro-batch without pairs ([`holds_no_pairs`]) contributes nothing, but takes
    /// part in what the other processes' micro-batches run collectively: under ZeRO-3 every pass,
    /// the training pass (with zero gradients) whenever something brackets the units (ZeRO-3, or
    /// the reductions `overlap_comm` starts during backward), and KTO's all-reduce of the KL
    /// estimate.
    fn preference_step_without_pairs(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
        loss: &PreferenceLoss,
    ) -> Result<PreferenceSums, TrainerError> {
        let partitioned = self.active_partition().is_some();
        if partitioned {
            self.reference_logps(input_ids, labels, loss)?;
        }
        if loss.kto.is_some() {
            if partitioned {
                self.token_logps(input_ids, labels)
                    .map_err(|e| model_error("the KL sequences' pass", e))?;
            }
            self.reduce_kl(KlSum::default())?;
        }
        if self.train_residency().is_some() {
            self.micro_step(|lm, residency| {
                let no_labels = |_: &TokenLogps| -> Result<Tensor, ModelError> {
                    Err(ModelError::Invalid(
                        "a micro-batch without pairs has labelled tokens".into(),
                    ))
                };
                match residency {
                    Some(r) => lm.token_logps_backward_with(input_ids, labels, r, no_labels),
                    None => Ok(()),
                }
                .map(|()| 0.0)
            })?;
        }
        Ok(PreferenceSums::default())
    }

    /// [`LmTrainee::preference_step_without_pairs`] for `stage: rm`: when something brackets the
    /// units, the value head's pass with a zero loss.
    fn reward_step_without_pairs(
        &mut self,
        input_ids: &Tensor,
        positions: &Tensor,
    ) -> Result<PreferenceSums, TrainerError> {
        if self.train_residency().is_some() {
            let value_head = self.head()?.shallow_clone();
            let zero = |hidden: &Tensor| Ok(value_head.rewards(hidden).sum(Kind::Float) * 0.0);
            self.micro_step(|lm, residency| {
                match residency {
                    Some(r) => lm.hidden_at_backward_with(input_ids, positions, r, zero),
                    None => Ok(()),
                }
                .map(|()| 0.0)
            })?;
        }
        Ok(PreferenceSums::default())
    }

    /// Every rank calls this before rank 0 (`keep`) calls [`LmTrainee::save_final`]: under ZeRO-3
    /// it gathers, unit by unit into rank 0's host memory, what the final save writes (the
    /// adapter; every weight for `full`/`freeze`). A no-op without partitioning.
    pub fn gather_for_final_save(&mut self, keep: bool) -> Result<(), TrainerError> {
        if let Some(p) = self.reference.as_ref().and_then(|r| r.partition.as_ref()) {
            p.discard_prefetch()?;
        }
        match &self.partition {
            Some(p) => p.gather_to_host(self.is_lora(), keep),
            None => Ok(()),
        }
    }

    /// Writes the result of training into `dir`: the PEFT adapter for LoRA methods, a complete
    /// Hugging Face model (from `src_model_dir`'s config and tokenizer) for `full`/`freeze`.
    pub fn save_final(
        &self,
        dir: &Path,
        src_model_dir: &Path,
        shard_bytes: u64,
    ) -> Result<Vec<PathBuf>, TrainerError> {
        if self.is_lora() {
            self.lm
                .save_adapter(dir, &self.base_name)
                .map_err(|e| model_error("saving the adapter", e))?;
            if let Some(head) = &self.value_head {
                head.add_to_adapter(dir)
                    .map_err(|e| model_error("saving the value head", e))?;
            }
            Ok(vec![dir.join(ADAPTER_WEIGHTS), dir.join(ADAPTER_CONFIG)])
        } else {
            self.lm
                .export_merged(dir, src_model_dir, shard_bytes)
                .map_err(|e| model_error("saving the model", e))?;
            if let Some(head) = &self.value_head {
                head.add_to_export(dir, self.pad_token_id)
                    .map_err(|e| model_error("saving the value head", e))?;
            }
            Ok(vec![dir.to_path_buf()])
        }
    }

    /// Restores the decoder's trainable weights (the adapter, or the `full`/`freeze` weights)
    /// from checkpoint `dir`.
    fn load_decoder_weights(&mut self, dir: &Path) -> Result<(), TrainerError> {
        let ctx = format!("checkpoint {}", dir.display());
        let file = if self.is_lora() {
            ADAPTER_WEIGHTS
        } else {
            TRAINABLE_WEIGHTS
        };
        // Under ZeRO-3 every rank reads its own ranges straight into its shards (a
        // `full`/`freeze` reward model's value head, partitioned with the head, from its file).
        if let Some(p) = self.active_partition() {
            let (weights, head) = (dir.join(file), dir.join(VALUE_HEAD_FILE));
            let files: Vec<&Path> = match &self.value_head {
                Some(_) if !self.is_lora() => vec![&weights, &head],
                _ => vec![&weights],
            };
            return p.load_trainable_shards(&files);
        }
        if self.lm.adalora_training() {
            self.lm
                .load_adalora_state(&dir.join(ADALORA_STATE))
                .map_err(|e| model_error(&ctx, e))
        } else if self.is_lora() {
            self.lm.load_adapter(dir).map_err(|e| model_error(&ctx, e))
        } else {
            self.lm
                .load_trainable(&dir.join(file))
                .map_err(|e| model_error(&ctx, e))
        }
    }
}

impl TrainModel for LmTrainee {
    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        let mut params = self.lm.trainable_parameters();
        if let Some(head) = &self.value_head {
            params.push((head.name.clone(), head.weight.shallow_clone()));
        }
        params
    }

    fn set_training(&mut self, on: bool) {
        self.lm.set_training(on);
    }

    fn last_micro_batch(&mut self, last: bool) {
        if let Some(r) = &self.overlap {
            r.arm(last);
        }
    }

    fn loss_sum_and_backward(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
        loss_scale: f64,
    ) -> Result<MicroOutput, TrainerError> {
        self.micro_step(|lm, partition| match partition {
            Some(p) => lm.loss_sum_and_backward_with(input_ids, labels, loss_scale, p),
            None => lm.loss_sum_and_backward(input_ids, labels, loss_scale),
        })
    }

    fn loss_sum_and_backward_masked(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
        attention_mask: &Tensor,
        loss_scale: f64,
    ) -> Result<MicroOutput, TrainerError> {
        let (ids, mask) = (input_ids, attention_mask);
        self.micro_step(|lm, partition| match partition {
            Some(p) => lm.loss_sum_and_backward_masked_with(ids, labels, mask, loss_scale, p),
            None => lm.loss_sum_and_backward_masked(ids, labels, mask, loss_scale),
        })
    }

    fn loss_sum_and_backward_packed(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
        position_ids: &Tensor,
        attention_mask: &Tensor,
        loss_scale: f64,
    ) -> Result<MicroOutput, TrainerError> {
        if self.active_partition().is_some() {
            return Err(TrainerError::config(
                "neat_packing does not run with zero_stage 3",
            ));
        }
        let (ids, pos, mask) = (input_ids, position_ids, attention_mask);
        self.micro_step(|lm, residency| match residency {
            Some(r) => {
                lm.loss_sum_and_backward_packed_masked_with(ids, labels, pos, mask, loss_scale, r)
            }
            None => lm.loss_sum_and_backward_packed_masked(ids, labels, pos, mask, loss_scale),
        })
    }

    fn preference_backward(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
        desirable: &[bool],
        loss: &PreferenceLoss,
        loss_scale: f64,
    ) -> Result<PreferenceSums, TrainerError> {
        let rows = input_ids.size().first().copied().unwrap_or(0);
        if holds_no_pairs(rows, desirable, loss) {
            return self.preference_step_without_pairs(input_ids, labels, loss);
        }
        let reference = self.reference_logps(input_ids, labels, loss)?;
        // KTO trains on the examples alone; their KL sequences gave the estimate.
        let (ids, labels, reference, kl) = match (&loss.kto, &reference) {
            (Some(_), Some(r)) => {
                let b = desirable.len() as i64;
                let (kl, examples) = self.kto_split(input_ids, labels, r, b)?;
                (
                    input_ids.narrow(0, 0, b),
                    labels.narrow(0, 0, b),
                    Some(examples),
                    Some(kl),
                )
            }
            _ => (
                input_ids.shallow_clone(),
                labels.shallow_clone(),
                reference,
                None,
            ),
        };
        let rows = ids.size().first().copied().unwrap_or(0);
        let mut sums = PreferenceSums::default();
        let coefficients = |policy: &TokenLogps| {
            let (coefficients, s) = loss
                .coefficients(policy, reference.as_ref(), rows, desirable, kl, loss_scale)
                .map_err(ModelError::Invalid)?;
            sums = s;
            Ok(coefficients)
        };
        self.micro_step(|lm, residency| {
            match residency {
                Some(r) => lm.token_logps_backward_with(&ids, &labels, r, coefficients),
                None => lm.token_logps_backward(&ids, &labels, coefficients),
            }
            .map(|()| 0.0)
        })?;
        Ok(sums)
    }

    fn preference_eval(
        &mut self,
        input_ids: &Tensor,
        labels: &Tensor,
        desirable: &[bool],
        loss: &PreferenceLoss,
    ) -> Result<PreferenceSums, TrainerError> {
        let rows = input_ids.size().first().copied().unwrap_or(0);
        if holds_no_pairs(rows, desirable, loss) {
            // The other processes' collectives (under ZeRO-3 the passes), for nothing.
            if self.active_partition().is_some() {
                self.reference_logps(input_ids, labels, loss)?;
                self.token_logps(input_ids, labels)
                    .map_err(|e| model_error("evaluating the pairs", e))?;
            }
            if loss.kto.is_some() {
                self.reduce_kl(KlSum::default())?;
            }
            return Ok(PreferenceSums::default());
        }
        let reference = self.reference_logps(input_ids, labels, loss)?;
        let policy = self
            .token_logps(input_ids, labels)
            .map_err(|e| model_error("evaluating the pairs", e))?;
        // KTO: the examples, with the estimate of their KL sequences over every process (the
        // KL rows shared the pass here, without gradients).
        let (policy, reference, rows, kl) = match (&loss.kto, reference) {
            (Some(_), Some(r)) => {
                let b = desirable.len() as i64;
                let kl = self.kl_estimate(&policy.row_range(b, b), &r.row_range(b, b), b)?;
                (policy.row_range(0, b), Some(r.row_range(0, b)), b, Some(kl))
            }
            (_, reference) => (policy, reference, rows, None),
        };
        loss.evaluate(&policy, reference.as_ref(), rows, desirable, kl)
            .map_err(TrainerError::runtime)
    }

    fn reward_backward(
        &mut self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        loss_scale: f64,
    ) -> Result<PreferenceSums, TrainerError> {
        let positions = crate::reward::last_positions(attention_mask);
        let rows = input_ids.size().first().copied().unwrap_or(0);
        if rows % 2 != 0 {
            return self.reward_step_without_pairs(input_ids, &positions);
        }
        let mut sums = PreferenceSums::default();
        let value_head = self.head()?.shallow_clone();
        // Under ZeRO-3 the value head is partitioned with the head unit, gathered while `loss`
        // runs; its gradient is reduced as that unit is released.
        let loss = |hidden: &Tensor| {
            let (loss, s) = crate::reward::pair_loss(&value_head.rewards(hidden))
                .map_err(ModelError::Invalid)?;
            sums = s;
            Ok(loss * loss_scale)
        };
        self.micro_step(|lm, residency| {
            match residency {
                Some(r) => lm.hidden_at_backward_with(input_ids, &positions, r, loss),
                None => lm.hidden_at_backward(input_ids, &positions, loss),
            }
            .map(|()| 0.0)
        })?;
        Ok(sums)
    }

    fn reward_eval(
        &mut self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<PreferenceSums, TrainerError> {
        let positions = crate::reward::last_positions(attention_mask);
        let rows = input_ids.size().first().copied().unwrap_or(0);
        if rows % 2 != 0 && self.active_partition().is_none() {
            return Ok(PreferenceSums::default());
        }
        let head = self.head()?;
        let rewards = |hidden: &Tensor| head.rewards(hidden);
        let rewards = match self.active_partition() {
            Some(p) => self.lm.hidden_at_with(input_ids, &positions, p, rewards),
            None => self
                .lm
                .hidden_at(input_ids, &positions)
                .map(|h| rewards(&h)),
        }
        .map_err(|e| model_error("evaluating the pairs", e))?;
        if rows % 2 != 0 {
            // Without pairs under ZeRO-3: the other processes' passes, for nothing.
            return Ok(PreferenceSums::default());
        }
        let (_, sums) = crate::reward::pair_loss(&rewards).map_err(TrainerError::runtime)?;
        Ok(sums)
    }

    fn eval_loss_sum(&mut self, input_ids: &Tensor, labels: &Tensor) -> Result<f64, TrainerError> {
        let t = match self.active_partition() {
            Some(p) => tch::no_grad(|| self.lm.loss_sum_with(input_ids, labels, p))
                .map_err(|e| e.with_context("evaluation"))?,
            None => tch::no_grad(|| self.lm.loss_sum(input_ids, labels)),
        };
        t.f_double_value(&[])
            .map_err(|e| TrainerError::from_library("evaluation", e))
    }

    /// An AdaLoRA checkpoint also holds [`ADALORA_STATE`]: the full-rank adapters, importance
    /// scores and rank pattern a resume continues from (the PEFT adapter beside it drops pruned
    /// ranks).
    fn save_weights(&self, dir: &Path) -> Result<(), TrainerError> {
        if let Some(head) = &self.value_head {
            if !self.is_lora() {
                head.save(&dir.join(VALUE_HEAD_FILE))
                    .map_err(|e| model_error("saving the value head", e))?;
            }
        }
        if self.is_lora() {
            self.lm
                .save_adapter(dir, &self.base_name)
                .map_err(|e| model_error("saving the adapter", e))?;
            if let Some(head) = &self.value_head {
                head.add_to_adapter(dir)
                    .map_err(|e| model_error("saving the value head", e))?;
            }
            if self.lm.adalora_training() {
                self.lm
                    .save_adalora_state(&dir.join(ADALORA_STATE))
                    .map_err(|e| model_error("saving AdaLoRA's state", e))?;
            }
            Ok(())
        } else {
            self.lm
                .save_trainable(&dir.join(TRAINABLE_WEIGHTS))
                .map_err(|e| model_error("saving the trainable weights", e))
        }
    }

    fn load_weights(&mut self, dir: &Path) -> Result<(), TrainerError> {
        self.load_decoder_weights(dir)?;
        // Under ZeRO-3 the value head is partitioned with the head unit: its shard was read with
        // the decoder's.
        if self.active_partition().is_some() {
            return Ok(());
        }
        if let Some(head) = &self.value_head {
            let file = if self.is_lora() {
                dir.join(ADAPTER_WEIGHTS)
            } else {
                dir.join(VALUE_HEAD_FILE)
            };
            let ctx = format!("checkpoint {}", dir.display());
            if !head.load_from(&file).map_err(|e| model_error(&ctx, e))? {
                return Err(TrainerError::config(format!(
                    "checkpoint {}: {} holds no value head ({})",
                    dir.display(),
                    file.display(),
                    head.name
                )));
            }
        }
        Ok(())
    }

    fn gather_weights(&mut self, keep: bool) -> Result<(), TrainerError> {
        match self.active_partition() {
            Some(p) => p.gather_to_host(true, keep),
            None => Ok(()),
        }
    }

    fn release_weights(&mut self) -> Result<(), TrainerError> {
        match self.active_partition() {
            Some(p) => p.release_all(),
            None => Ok(()),
        }
    }

    fn rng_position(&self) -> u64 {
        self.micro_batches
    }

    fn set_rng_position(&mut self, micro_batches: u64) {
        // lf-model derives dropout masks from (seed, its micro-batch counter): move both.
        self.lm.set_micro_step(micro_batches);
        self.micro_batches = micro_batches;
    }

    /// [`CausalLm::weight_bytes`] (every base tensor as stored) less the base tensors that train
    /// (`full`/`freeze`); adapters are not base tensors (PEFT names, `base_model.model.` prefix).
    /// Under ZeRO-3 the model's tensors are empty between uses and the partition's shards count.
    fn memory(&self) -> Option<ModelMemory> {
        let trained_base: u64 = self
            .lm
            .trainable_parameters()
            .iter()
            .filter(|(name, _)| !name.starts_with(PEFT_PREFIX))
            .map(|(_, t)| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64)
            .sum();
        let (frozen_shards, trainable_shards) = self
            .active_partition()
            .map(|p| (p.frozen_shard_bytes(), p.trainable_shard_bytes()))
            .unwrap_or((0, 0));
        let reference = self.reference.as_ref().map_or(0, Reference::weight_bytes);
        Some(ModelMemory {
            frozen_weight_bytes: self.lm.weight_bytes().saturating_sub(trained_base)
                + frozen_shards
                + reference,
            partitioned_trainable_bytes: trainable_shards,
            offloaded_activation_bytes: self.lm.offload_stats().host_bytes,
            architecture: self.lm.architecture().clone(),
        })
    }

    fn set_total_steps(&mut self, total_steps: u64) -> Result<(), TrainerError> {
        self.lm
            .adalora_set_total_steps(total_steps)
            .map_err(|e| model_error("AdaLoRA", e))
    }

    fn regularizer_backward(&mut self, scale: f64) -> Result<f64, TrainerError> {
        let Some(reg) = self.lm.adalora_regularizer() else {
            return Ok(0.0);
        };
        (&reg * scale)
            .f_backward()
            .map_err(|e| TrainerError::from_library("AdaLoRA's orthogonality regulariser", e))?;
        reg.f_double_value(&[])
            .map_err(|e| TrainerError::from_library("AdaLoRA's orthogonality regulariser", e))
    }

    fn after_optimizer_step(&mut self, step: u64) -> Result<(), TrainerError> {
        let allocation = self
            .lm
            .adalora_after_step(step)
            .map_err(|e| model_error("AdaLoRA's rank allocation", e))?;
        if let Some(a) = allocation {
            tracing::info!(
                step = step + 1,
                budget = a.budget,
                kept = a.kept,
                "AdaLoRA: ranks masked to the budget"
            );
        }
        Ok(())
    }
}

/// The frozen reference model of a `full`/`freeze` preference run.
struct Reference {
    lm: CausalLm,
    /// Its ZeRO-3 partition (frozen tensors only).
    partition: Option<ParameterPartition>,
}

impl Reference {
    fn token_logps(&self, input_ids: &Tensor, labels: &Tensor) -> Result<TokenLogps, ModelError> {
        match &self.partition {
            Some(p) => self.lm.token_logps_with(input_ids, labels, p),
            None => self.lm.token_logps(input_ids, labels),
        }
    }

    /// The bytes of its weights this process holds (under ZeRO-3 its shards).
    fn weight_bytes(&self) -> u64 {
        self.lm.weight_bytes()
            + self
                .partition
                .as_ref()
                .map_or(0, ParameterPartition::frozen_shard_bytes)
    }
}

/// Whether a preference micro-batch holds no pairs (KTO: no tagged examples): the label-free
/// batch (`lf_data::Batch::label_free`, one row) of a process whose share of the step's
/// examples ran out (the last micro-batch of an epoch that does not divide evenly).
fn holds_no_pairs(rows: i64, desirable: &[bool], loss: &PreferenceLoss) -> bool {
    match loss.kto {
        Some(_) => desirable.is_empty(),
        None => rows % 2 != 0,
    }
}

fn no_value_head() -> TrainerError {
    TrainerError::config("`stage: rm` needs the model's value head")
}

/// The prefix of PEFT adapter parameter names.
const PEFT_PREFIX: &str = "base_model.model.";

/// An lf-optim optimiser as the loop drives it.
pub struct OptimStep(pub Box<dyn lf_optim::Optimizer>);

impl StepOptimizer for OptimStep {
    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<(), TrainerError> {
        let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
        self.0
            .step(&tensors, lr)
            .map_err(|e| TrainerError::from_library("optimizer step", e))
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.0.state_dict()
    }

    fn state_bytes(&self) -> Option<OptimizerBytes> {
        let b = self.0.state_bytes_detail();
        Some(OptimizerBytes {
            device: b.device,
            host: b.host,
        })
    }

    fn load_state_tensors(&mut self, state: Vec<(String, Tensor)>) -> Result<(), TrainerError> {
        self.0.load_state_dict(state).map_err(|e| {
            TrainerError::config(format!(
                "the checkpoint's optimizer state does not fit this run: {e}"
            ))
        })
    }
}
