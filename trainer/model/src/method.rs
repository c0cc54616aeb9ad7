//! Fine-tuning methods: attaching LoRA/DoRA/rsLoRA adapters (PEFT's initialisation), training
//! everything (`full`) or the last layers (`freeze`), and listing what trains.

use std::collections::BTreeMap;
use std::path::Path;

use lf_api::training::{FinetuningType, TrainingConfig};
use tch::{Device, Kind, Tensor};

use crate::causal_lm::CausalLm;
use crate::linear::Adapter;
use crate::llama::FeedForward;
use crate::lora_settings::LoraSettings;
use crate::moe::MoeAdapters;
use crate::names::{self, BaseTensor};
use crate::residency::{AlwaysResident, Residency, Unit};
use crate::safetensors_io::{self, HostTensor, MappedFile};
use crate::ModelError;

impl CausalLm {
    /// Sets up the fine-tuning method of `cfg` and marks what trains (`requires_grad`).
    ///
    /// * `lora`: adapters on `lora_target` in every layer, initialised as PEFT does
    ///   (`A ~ kaiming_uniform(a=√5)` i.e. `U(−1/√in, 1/√in)`, `B = 0`, DoRA magnitude = row norms
    ///   of `W`), drawn on the CPU from `seed` so every device gets the same adapter. Adapters are
    ///   fp32, or bf16 with `pure_bf16`. Base weights are frozen.
    /// * `full`: every base parameter trains (not possible with quantised weights). Trainable base
    ///   weights stay in [`crate::LoadOptions::dtype`]; fp32 master copies for AMP are the
    ///   optimiser's business.
    /// * `freeze`: every parameter of the last `freeze_trainable_layers` layers trains.
    ///
    /// Also takes `flash_attn`, `gradient_checkpointing`, `offload_activations`,
    /// `loss_chunk_size` and `lora_dropout` from `cfg`.
    pub fn apply_method(&mut self, cfg: &TrainingConfig, seed: u64) -> Result<(), ModelError> {
        self.apply_method_with(cfg, seed, &AlwaysResident)
    }

    /// [`CausalLm::apply_method`] on a model whose weights are partitioned by `residency`: DoRA's
    /// magnitude (the row norms of each base weight) gathers each layer for the moment it reads it.
    pub fn apply_method_with<R: Residency + ?Sized>(
        &mut self,
        cfg: &TrainingConfig,
        seed: u64,
        residency: &R,
    ) -> Result<(), ModelError> {
        self.set_attention(cfg.flash_attn);
        self.method.recompute_layers =
            cfg.recomputed_layers(self.model.layers.len() as u64) as usize;
        self.method.loss_chunk_size = cfg.loss_chunk_size;
        self.method.offload_activations = cfg.offload_activations.enabled();
        self.model.mlp_tile = cfg
            .offload_activations
            .enabled()
            .then_some(cfg.loss_chunk_size)
            .filter(|&t| t > 0);
        self.method.seed = seed;
        self.arch.apply_moe_aux_loss_coef(cfg.moe_aux_loss_coef);
        self.freeze_all();
        match cfg.finetuning_type {
            FinetuningType::Lora => {
                let settings = LoraSettings {
                    r: cfg.adapter_rank(),
                    alpha: cfg.effective_lora_alpha(),
                    dropout: cfg.lora_dropout,
                    targets: cfg
                        .lora_targets_for(&self.arch)
                        .map_err(|e| ModelError::Invalid(e.to_string()))?,
                    use_rslora: cfg.use_rslora,
                    use_dora: cfg.use_dora,
                    experts: cfg
                        .expert_lora_targets_for(&self.arch)
                        .map_err(|e| ModelError::Invalid(e.to_string()))?,
                    adalora: cfg.adalora(),
                };
                if settings.adalora.is_some() && !settings.experts.is_empty() {
                    return Err(ModelError::Invalid(
                        "use_adalora: AdaLoRA's SVD-form adapters are for linear layers; a mixture of experts' router and expert parameters take plain LoRA only (PEFT's AdaLoRA has no target_parameters): target the attention (lora_target: q_proj,k_proj,v_proj,o_proj) or drop use_adalora".into(),
                    ));
                }
                if settings.adalora.is_some() && self.layout.is_multimodal() {
                    return Err(ModelError::Invalid(
                        "use_adalora: AdaLoRA's rank_pattern is not written for a multimodal checkpoint's language model yet; use LoRA (or DoRA) on this model".into(),
                    ));
                }
                let kind = if cfg.pure_bf16 {
                    Kind::BFloat16
                } else {
                    Kind::Float
                };
                self.attach_adapters(&settings, kind, Some(seed), residency)?;
                self.rank_allocator = settings
                    .adalora
                    .map(crate::rank_allocator::RankAllocator::new);
                self.method.lora = Some(settings);
            }
            FinetuningType::Full => {
                if self.opts.quantization.is_some() {
                    return Err(ModelError::Invalid(
                        "full fine-tuning cannot train quantised base weights".into(),
                    ));
                }
                self.remove_adapters();
                for (_, t) in self.base_parameters() {
                    let _ = t.set_requires_grad(true);
                }
            }
            FinetuningType::Freeze => {
                if self.opts.quantization.is_some() {
                    return Err(ModelError::Invalid(
                        "freeze fine-tuning cannot train quantised base weights".into(),
                    ));
                }
                self.remove_adapters();
                for (_, t) in self.freeze_parameters(cfg.freeze_trainable_layers as usize) {
                    let _ = t.set_requires_grad(true);
                }
            }
        }
        self.method.finetuning = Some(cfg.finetuning_type);
        if residency.lockstep() {
            // Partitioned: the base tensors are empty here; the trainer counts from the shards.
            tracing::info!(method = ?cfg.finetuning_type, "fine-tuning method applied");
        } else {
            let n: i64 = self
                .trainable_parameters()
                .iter()
                .map(|(_, t)| t.numel() as i64)
                .sum();
            tracing::info!(method = ?cfg.finetuning_type, trainable = n, "fine-tuning method applied");
        }
        Ok(())
    }

    fn freeze_all(&mut self) {
        for (_, t) in self.base_parameters() {
            if t.requires_grad() {
                let _ = t.set_requires_grad(false);
            }
        }
    }

    fn remove_adapters(&mut self) {
        for layer in &mut self.model.layers {
            for (_, linear) in layer.linears_mut() {
                linear.adapter = None;
            }
            if let FeedForward::Sparse(moe) = &mut layer.mlp {
                moe.adapters = MoeAdapters::default();
            }
        }
        self.method.lora = None;
        self.rank_allocator = None;
    }

    /// Attaches fresh adapters (`seed` given: PEFT init, trainable) or zero placeholders to be
    /// filled by an adapter file (`seed` None: frozen).
    pub(crate) fn attach_adapters<R: Residency + ?Sized>(
        &mut self,
        s: &LoraSettings,
        kind: Kind,
        seed: Option<u64>,
        residency: &R,
    ) -> Result<(), ModelError> {
        self.remove_adapters();
        let device = self.opts.device;
        if let Some(seed) = seed {
            tch::manual_seed(seed as i64);
        }
        let r = s.r as i64;
        let arch = &self.arch;
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            let unit = Unit::Layer(i);
            if s.use_dora {
                residency
                    .gather(unit)
                    .map_err(ModelError::residency(unit, "gathering"))?;
            }
            for &m in &s.targets {
                // A mixture of experts' MLP linears are its dense layers' (the sparse layers'
                // experts take `s.experts`).
                if m.parent() == "mlp" && arch.is_sparse_layer(i as u64) {
                    continue;
                }
                let lin = layer.linear_mut(m).ok_or_else(|| {
                    ModelError::Invalid(format!(
                        "LoRA target `{}` is not a linear of this {} model (its linears: {})",
                        m.name(),
                        arch.model_type.name(),
                        arch.linear_modules()
                            .iter()
                            .map(|m| m.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                let (in_f, out_f) = arch.linear_shape(m);
                let (out_f, in_f) = (out_f as i64, in_f as i64);
                let bound = 1.0 / (in_f as f64).sqrt();
                let a = Tensor::empty([r, in_f], (Kind::Float, Device::Cpu));
                let b = Tensor::zeros([out_f, r], (Kind::Float, Device::Cpu));
                let (a, b) = match (seed, s.adalora) {
                    (None, _) => (a.zero(), b),
                    (Some(_), None) => (a.uniform(-bound, bound), b),
                    // AdaLoRA: A, B ~ N(0, 0.02²), E = 0 (PEFT's `reset_lora_parameters`).
                    (Some(_), Some(_)) => {
                        let (mut a, mut b) = (a, b);
                        (a.normal_(0.0, 0.02), b.normal_(0.0, 0.02))
                    }
                };
                let singular = s
                    .adalora
                    .map(|_| Tensor::zeros([r, 1], (Kind::Float, Device::Cpu)));
                let magnitude = if s.use_dora {
                    let w = lin.weight.dense(Kind::Float);
                    Some(
                        tch::no_grad(|| w.square().sum_dim_intlist(1, false, Kind::Float).sqrt())
                            .to_kind(kind),
                    )
                } else {
                    None
                };
                let train = seed.is_some();
                let prep = |t: Tensor| {
                    t.to_device(device)
                        .to_kind(kind)
                        .detach()
                        .set_requires_grad(train)
                };
                lin.adapter = Some(Adapter {
                    a: prep(a),
                    b: prep(b),
                    magnitude: magnitude.map(|m| m.detach().set_requires_grad(train)),
                    singular: singular.map(prep),
                    scaling: s.scaling(),
                    dropout: s.dropout,
                });
            }
            if let FeedForward::Sparse(moe) = &mut layer.mlp {
                moe.adapters = MoeAdapters::new(arch, s, kind, device, seed.is_some())?;
            }
            if s.use_dora {
                residency
                    .release(unit, false)
                    .map_err(ModelError::residency(unit, "releasing"))?;
            }
        }
        self.method.lora = Some(s.clone());
        Ok(())
    }

    /// Every parameter of the last `n` decoder layers (Hugging Face names).
    fn freeze_parameters(&self, n: usize) -> Vec<(String, Tensor)> {
        let layers = self.model.layers.len();
        let first = layers.saturating_sub(n);
        self.base_parameters()
            .into_iter()
            .filter(|(name, _)| names::layer_of(name).is_some_and(|i| (first..layers).contains(&i)))
            .collect()
    }

    /// The parameters that train, sharing storage (and `.grad`) with the model. Adapters use
    /// PEFT's names (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, `lora_B.weight`,
    /// DoRA `lora_magnitude_vector`); `full`/`freeze` use Hugging Face names.
    pub fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = self.adapter_parameters();
        out.retain(|(_, t)| t.requires_grad());
        let mut seen_embed = false;
        for (name, t) in self.base_parameters() {
            if t.requires_grad() && t.is_leaf() {
                // A tied head is the embedding tensor: list it once.
                match BaseTensor::parse(&name) {
                    Some(BaseTensor::EmbedTokens) => seen_embed = true,
                    Some(BaseTensor::LmHead) if seen_embed && self.arch.tie_word_embeddings => {
                        continue
                    }
                    _ => {}
                }
                out.push((name, t));
            }
        }
        out
    }

    /// Every adapter tensor with its PEFT name (trainable or not).
    pub(crate) fn adapter_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            for (m, linear) in layer.linears() {
                if let Some(ad) = &linear.adapter {
                    out.extend(ad.named_tensors(&names::linear(i, m)));
                }
            }
            if let Some(moe) = layer.sparse() {
                out.extend(moe.adapters.named_tensors(i));
            }
        }
        out
    }

    /// Saves the trainable parameters (names as [`CausalLm::trainable_parameters`]) to one
    /// safetensors file: the weights of a `full`/`freeze` checkpoint.
    pub fn save_trainable(&self, path: &Path) -> Result<(), ModelError> {
        let mut map = BTreeMap::new();
        for (name, t) in self.trainable_parameters() {
            let host = HostTensor::from_tensor(&name, &t)?;
            map.insert(name, host);
        }
        safetensors_io::write_file(path, &map)
    }

    /// Restores what [`CausalLm::save_trainable`] wrote. Every trainable parameter must be in the
    /// file with its shape, and the file must hold nothing else.
    pub fn load_trainable(&mut self, path: &Path) -> Result<(), ModelError> {
        let file = MappedFile::open(path)?;
        let desc = path.display().to_string();
        let params = self.trainable_parameters();
        let mut names: std::collections::BTreeSet<String> = file.names()?.into_iter().collect();
        for (name, t) in &params {
            if !names.remove(name) {
                return Err(ModelError::MissingTensor {
                    name: name.clone(),
                    source_desc: desc.clone(),
                });
            }
            let src = file.load(name, Some(t.kind()), t.device())?;
            if src.size() != t.size() {
                return Err(ModelError::ShapeMismatch {
                    name: name.clone(),
                    source_desc: desc.clone(),
                    expected: t.size(),
                    found: src.size(),
                });
            }
            tch::no_grad(|| t.shallow_clone().copy_(&src));
        }
        if let Some(extra) = names.into_iter().next() {
            return Err(ModelError::UnexpectedTensor {
                name: extra,
                source_desc: desc,
                what: "model's trainable parameters".into(),
            });
        }
        Ok(())
    }
}
