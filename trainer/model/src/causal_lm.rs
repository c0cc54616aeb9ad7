//! [`CausalLm`]: the model the trainer, evaluator, chat and export commands drive.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use lf_api::architecture::ModelArchitecture;
use lf_api::training::{FinetuningType, FlashAttn};
use tch::{Kind, Tensor};

use crate::llama::{AttentionBackend, Llama};
use crate::loader::{self, FileSource, LayoutSource, MemorySource, TensorSource, UnitSink};
use crate::lora_settings::LoraSettings;
use crate::names::{self, BaseTensor, CheckpointLayout, LayerTensor};
use crate::residency::{AlwaysResident, Unit};
use crate::{options, safetensors_io, LoadOptions, ModelError};

/// What `load` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Wall time from opening the files to the last tensor on the device.
    pub seconds: f64,
    /// Bytes copied to the device.
    pub bytes: u64,
    /// Number of weight files read.
    pub files: usize,
}

/// The fine-tuning method in effect.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MethodState {
    pub finetuning: Option<FinetuningType>,
    pub lora: Option<LoraSettings>,
    /// How many of the first decoder layers are recomputed in training (`usize::MAX`: all).
    pub recompute_layers: usize,
    pub loss_chunk_size: usize,
    /// `offload_activations`: recomputed layers' checkpoints in host memory, dense MLPs tiled.
    pub offload_activations: bool,
    pub seed: u64,
}

/// A Llama-family causal language model with optional adapters.
pub struct CausalLm {
    pub(crate) arch: ModelArchitecture,
    pub(crate) model: Llama,
    pub(crate) opts: LoadOptions,
    pub(crate) method: MethodState,
    pub(crate) training: bool,
    pub(crate) backend: AttentionBackend,
    /// Counts training micro-batches, so each gets its own (replayable) dropout masks.
    pub(crate) micro_step: AtomicU64,
    pub(crate) load_report: Option<LoadReport>,
    /// AdaLoRA's importance scores and rank allocation, while training with `use_adalora`.
    pub(crate) rank_allocator: Option<crate::rank_allocator::RankAllocator>,
    /// Where the checkpoint keeps the decoder (a multimodal model's language model): the names
    /// adapters and exports are written with.
    pub(crate) layout: CheckpointLayout,
    /// The last training pass's checkpoint offload ([`CausalLm::offload_stats`]).
    pub(crate) offload_stats: std::sync::Mutex<crate::offload::OffloadStats>,
}

impl CausalLm {
    /// Loads a Hugging Face model directory: `config.json` plus `model.safetensors` or the shards of
    /// `model.safetensors.index.json`. Files are memory-mapped and each tensor is converted to
    /// `opts.dtype` and moved to `opts.device` on its own; the time taken is logged and kept in
    /// [`CausalLm::load_report`].
    pub fn load(model_dir: &Path, opts: &LoadOptions) -> Result<Self, ModelError> {
        Self::load_into(model_dir, opts, &mut |_, _| Ok(()))
    }

    /// [`CausalLm::load`], handing each unit's tensors to `sink` as soon as the unit is loaded
    /// (ZeRO-3 partitions them there, so a process never holds more than its shards plus one
    /// unit while loading).
    pub fn load_into(
        model_dir: &Path,
        opts: &LoadOptions,
        sink: &mut UnitSink<'_>,
    ) -> Result<Self, ModelError> {
        let start = Instant::now();
        let (arch, windows) = options::read_config(model_dir)?;
        let files = safetensors_io::weight_files(model_dir)?;
        let mut files_src = FileSource::open(model_dir, &files)?;
        let layout = match arch.multimodal {
            Some(_) => {
                CheckpointLayout::of_multimodal(files_src.remaining().iter().map(|n| n.as_str()))
            }
            None => CheckpointLayout::CausalLm,
        };
        let mut src = LayoutSource {
            inner: &mut files_src,
            layout,
        };
        let model = loader::build(&arch, &windows, &mut src, opts, sink)?;
        let report = LoadReport {
            seconds: start.elapsed().as_secs_f64(),
            bytes: files_src.bytes,
            files: files.len(),
        };
        if let Some(m) = arch.multimodal {
            tracing::info!(
                class = m.class_name(),
                layout = ?layout,
                "multimodal checkpoint: its text decoder is loaded, the vision tower and projector stay on disk"
            );
        }
        tracing::info!(
            model = %model_dir.display(),
            seconds = report.seconds,
            gib = report.bytes as f64 / (1u64 << 30) as f64,
            files = report.files,
            "model loaded"
        );
        let mut lm = Self::assemble(arch, model, opts);
        lm.load_report = Some(report);
        lm.layout = layout;
        Ok(lm)
    }

    /// Builds a model from named tensors (Hugging Face names), for tests and conversions (full
    /// attention on every layer: a sliding window is read from `config.json` by [`CausalLm::load`]).
    pub fn from_tensors(
        arch: ModelArchitecture,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
        opts: &LoadOptions,
    ) -> Result<Self, ModelError> {
        arch.validate()?;
        let mut src = MemorySource {
            tensors: tensors.into_iter().collect::<HashMap<_, _>>(),
        };
        let model = loader::build(&arch, &[], &mut src, opts, &mut |_, _| Ok(()))?;
        Ok(Self::assemble(arch, model, opts))
    }

    fn assemble(arch: ModelArchitecture, model: Llama, opts: &LoadOptions) -> Self {
        CausalLm {
            arch,
            model,
            opts: opts.clone(),
            method: MethodState {
                finetuning: None,
                lora: None,
                recompute_layers: 0,
                loss_chunk_size: 1024,
                offload_activations: false,
                seed: 0,
            },
            training: false,
            backend: AttentionBackend::Sdpa,
            micro_step: AtomicU64::new(0),
            load_report: None,
            rank_allocator: None,
            layout: CheckpointLayout::CausalLm,
            offload_stats: Default::default(),
        }
    }

    /// The architecture read from `config.json`.
    pub fn architecture(&self) -> &ModelArchitecture {
        &self.arch
    }

    /// The options the model was loaded with.
    pub fn load_options(&self) -> &LoadOptions {
        &self.opts
    }

    /// Where the checkpoint keeps the decoder (a multimodal model's language model, in which
    /// layout).
    pub fn checkpoint_layout(&self) -> CheckpointLayout {
        self.layout
    }

    /// Load time and size, when the model came from [`CausalLm::load`].
    pub fn load_report(&self) -> Option<&LoadReport> {
        self.load_report.as_ref()
    }

    /// The LoRA settings in effect, if any adapter is attached.
    pub fn lora_settings(&self) -> Option<&LoraSettings> {
        self.method.lora.as_ref()
    }

    /// Chooses the attention implementation (`flash_attn`) and logs, once, the SDPA kernel
    /// libtorch picks for this model's shapes and dtype. Returns that kernel's name.
    pub fn set_attention(&mut self, flash_attn: FlashAttn) -> &'static str {
        self.backend = match flash_attn {
            FlashAttn::Eager => AttentionBackend::Eager,
            FlashAttn::Auto | FlashAttn::Sdpa | FlashAttn::Fa2 => AttentionBackend::Sdpa,
        };
        let name = self.attention_kernel(512);
        tracing::info!(flash_attn = ?flash_attn, kernel = name, "attention backend");
        if flash_attn == FlashAttn::Fa2 && name != "flash" {
            tracing::warn!(
                kernel = name,
                "flash_attn: fa2 asked, but libtorch picks another kernel for this device/dtype"
            );
        }
        name
    }

    /// The attention kernel used for a causal sequence of `seq_len` tokens: `eager` (asked for, or
    /// Gemma 2's soft-capped scores, which only it computes), or the SDPA backend libtorch chooses
    /// (`math`, `flash`, `efficient`, `cudnn`, `overrideable`).
    pub fn attention_kernel(&self, seq_len: i64) -> &'static str {
        if self.backend == AttentionBackend::Eager || self.arch.attention_softcap().is_some() {
            return "eager";
        }
        let a = &self.arch;
        let d = a.head_dim() as i64;
        let opts = (self.opts.dtype, self.opts.device);
        let q = Tensor::zeros([1, a.num_attention_heads as i64, seq_len, d], opts);
        let kv = Tensor::zeros([1, a.kv_heads() as i64, seq_len, d], opts);
        let gqa = a.kv_heads() != a.num_attention_heads;
        match Tensor::internal_fused_sdp_choice(&q, &kv, &kv, None::<Tensor>, 0.0, true, None, gqa)
        {
            0 => "math",
            1 => "flash",
            2 => "efficient",
            3 => "cudnn",
            4 => "overrideable",
            _ => "none",
        }
    }

    /// Switches dropout (adapter dropout) and, when the method asks for it, layer recomputation
    /// in [`CausalLm::loss_sum_and_backward`] on or off.
    pub fn set_training(&mut self, on: bool) {
        self.training = on;
    }

    /// Training micro-batches run so far: the position in the dropout-mask stream.
    pub fn micro_step(&self) -> u64 {
        self.micro_step.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves the dropout-mask stream to `step` micro-batches, so a resumed run draws the same
    /// masks as an uninterrupted one.
    pub fn set_micro_step(&self, step: u64) {
        self.micro_step
            .store(step, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether training mode is on.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Whether `loss_sum_and_backward` recomputes any layer (training mode and
    /// `gradient_checkpointing`).
    pub fn recomputes_layers(&self) -> bool {
        self.recomputed_layers() > 0
    }

    /// How many of the first decoder layers `loss_sum_and_backward` recomputes (0 outside
    /// training mode).
    pub fn recomputed_layers(&self) -> usize {
        if self.training {
            self.method.recompute_layers.min(self.model.layers.len())
        } else {
            0
        }
    }

    /// Logits `[B, S, V]` in fp32 (materialises them all: for tests and small evaluations).
    pub fn forward_logits(&self, input_ids: &Tensor) -> Tensor {
        let Ok(hidden) = self.model.hidden(
            input_ids,
            None,
            self.backend,
            self.training,
            &AlwaysResident,
        );
        self.model.head(&hidden).to_kind(Kind::Float)
    }

    /// Bytes held by the base weights (quantised storage counted as stored; a tied head once).
    pub fn weight_bytes(&self) -> u64 {
        let dense = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        let m = &self.model;
        let mut total = dense(&m.embed_tokens)
            + dense(&m.norm.weight)
            + m.lm_head.as_ref().map(dense).unwrap_or(0);
        let linear = |l: &crate::linear::Linear| {
            l.weight.storage_bytes() + l.bias.as_ref().map(dense).unwrap_or(0)
        };
        for (i, layer) in m.layers.iter().enumerate() {
            total += layer
                .norms()
                .into_iter()
                .map(|(_, norm)| dense(&norm.weight))
                .sum::<u64>();
            for (_, l) in layer.linears() {
                total += linear(l);
            }
            if let Some(moe) = layer.sparse() {
                total += moe
                    .linears(i)
                    .into_iter()
                    .map(|(_, l)| linear(l))
                    .sum::<u64>();
            }
        }
        total
    }

    /// The `(name, tensor)` of every dense base (non-adapter) parameter, Hugging Face names, in
    /// checkpoint order, sharing storage with the model. Quantised linear weights are left out:
    /// they never train, and listing them would dequantise the whole model at once.
    pub(crate) fn base_parameters(&self) -> Vec<(String, Tensor)> {
        self.base_layout()
            .into_iter()
            .filter_map(|(name, _)| self.dense_tensor(&name).map(|t| (name, t)))
            .collect()
    }

    /// Every base tensor's Hugging Face name and shape, in checkpoint order (quantised ones too).
    /// Shapes come from the architecture, so the layout is known while ZeRO-3 has the tensors
    /// emptied.
    pub(crate) fn base_layout(&self) -> Vec<(String, Vec<i64>)> {
        let m = &self.model;
        let h = self.arch.hidden_size as i64;
        let vocab = self.arch.vocab_size as i64;
        let mut out = vec![(BaseTensor::EmbedTokens.name(), vec![vocab, h])];
        for (i, layer) in m.layers.iter().enumerate() {
            let name = |t: LayerTensor| BaseTensor::Layer(i, t).name();
            for (module, linear) in layer.linears() {
                let (n, o) = self.arch.linear_shape(module);
                let (o, n) = (o as i64, n as i64);
                out.push((name(LayerTensor::Weight(module)), vec![o, n]));
                if linear.bias.is_some() {
                    out.push((name(LayerTensor::Bias(module)), vec![o]));
                }
            }
            if let Some(moe) = layer.sparse() {
                out.extend(crate::moe::weight_layout(&self.arch, moe.naming, i));
            }
            for (t, norm) in layer.norms() {
                out.push((name(t), vec![norm.weight.size()[0]]));
            }
        }
        out.push((BaseTensor::Norm.name(), vec![h]));
        if m.lm_head.is_some() {
            out.push((BaseTensor::LmHead.name(), vec![vocab, h]));
        }
        out
    }

    /// The model's own tensor named `name` (Hugging Face name), when it is held dense.
    pub(crate) fn dense_tensor(&self, name: &str) -> Option<Tensor> {
        let m = &self.model;
        let Some(parsed) = BaseTensor::parse(name) else {
            // A sparse MLP's router or expert weight.
            let i = names::layer_of(name)?;
            let lin = m.layers.get(i)?.sparse_linear(i, name)?;
            return lin.weight.as_dense().map(Tensor::shallow_clone);
        };
        let t = match parsed {
            BaseTensor::EmbedTokens => &m.embed_tokens,
            BaseTensor::Norm => &m.norm.weight,
            BaseTensor::LmHead => m.lm_head.as_ref()?,
            BaseTensor::Layer(i, t) => {
                let layer = m.layers.get(i)?;
                match t {
                    LayerTensor::Weight(module) => layer.linear(module)?.weight.as_dense()?,
                    LayerTensor::Bias(module) => layer.linear(module)?.bias.as_ref()?,
                    norm => {
                        let (_, n) = layer.norms().into_iter().find(|(t, _)| *t == norm)?;
                        &n.weight
                    }
                }
            }
        };
        Some(t.shallow_clone())
    }

    /// The model's units in the order a forward pass uses them.
    pub fn units(&self) -> Vec<Unit> {
        let mut units = vec![Unit::Embedding];
        units.extend((0..self.model.layers.len()).map(Unit::Layer));
        units.push(Unit::Head);
        units
    }

    /// Every tensor `unit` holds, named as [`CausalLm::trainable_parameters`] names the trainable
    /// ones (PEFT names for adapters, Hugging Face names for base weights; quantised storage as
    /// `{weight}.{role}`), sharing storage with the model. A tied head lists the embedding.
    pub fn unit_tensors(&self, unit: Unit) -> Vec<(String, Tensor)> {
        self.model.unit_tensors(unit)
    }

    /// Turns layer recomputation on for training whatever the method said (a partitioned model
    /// cannot keep autograd's references to gathered weights across layers).
    pub fn force_layer_recomputation(&mut self) {
        self.method.recompute_layers = usize::MAX;
    }
}
