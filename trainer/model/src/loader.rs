//! Builds a [`Llama`] from named tensors (a model directory's safetensors, or an in-memory list),
//! checking every name and shape against the architecture.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use lf_api::architecture::ModelArchitecture;
use lf_api::training::LinearModule;
use tch::{Kind, Tensor};

use crate::linear::Linear;
use crate::llama::{
    embedding_tensors, head_tensors, Activation, Attention, DecoderLayer, FeedForward,
    FeedForwardNorms, GateUpProjections, Llama, Mlp, QkvProjections, RmsNorm, Rotary,
};
use crate::moe::{expert_shape, Expert, SparseMoe};
use crate::names::{self, CheckpointLayout, ExpertLinear, MoeNaming};
use crate::residency::Unit;
use crate::safetensors_io::MappedFile;
use crate::{LoadOptions, ModelError};

/// Receives each unit's tensors as the loader finishes it (ZeRO-3 partitions them right away, so
/// at most one unit is whole at a time while loading).
pub type UnitSink<'a> = dyn FnMut(Unit, Vec<(String, Tensor)>) -> Result<(), ModelError> + 'a;

/// Where tensors come from while building.
pub trait TensorSource {
    /// Takes tensor `name` (on `opts.device`, as `kind`), or `None` when absent.
    fn take(
        &mut self,
        name: &str,
        kind: Kind,
        opts: &LoadOptions,
    ) -> Result<Option<Tensor>, ModelError>;
    /// Names not taken yet.
    fn remaining(&self) -> Vec<String>;
    /// Where the tensors come from, for messages.
    fn describe(&self) -> String;
}

/// Tensors given in memory (tests, conversions).
pub struct MemorySource {
    pub tensors: HashMap<String, Tensor>,
}

impl TensorSource for MemorySource {
    fn take(
        &mut self,
        name: &str,
        kind: Kind,
        opts: &LoadOptions,
    ) -> Result<Option<Tensor>, ModelError> {
        Ok(self
            .tensors
            .remove(name)
            .map(|t| t.to_device(opts.device).to_kind(kind).detach()))
    }
    fn remaining(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tensors.keys().cloned().collect();
        v.sort();
        v
    }
    fn describe(&self) -> String {
        "the given tensors".into()
    }
}

/// Tensors in memory-mapped safetensors files, streamed one at a time.
pub struct FileSource {
    files: Vec<MappedFile>,
    index: BTreeMap<String, usize>,
    dir: String,
    /// Bytes copied to the device so far.
    pub bytes: u64,
}

impl FileSource {
    /// Maps every file of `files` and indexes its tensor names.
    pub fn open(dir: &Path, files: &[std::path::PathBuf]) -> Result<Self, ModelError> {
        let mut mapped = Vec::new();
        let mut index = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            let m = MappedFile::open(f)?;
            for name in m.names()? {
                index.insert(name, i);
            }
            mapped.push(m);
        }
        Ok(FileSource {
            files: mapped,
            index,
            dir: dir.display().to_string(),
            bytes: 0,
        })
    }
}

impl TensorSource for FileSource {
    fn take(
        &mut self,
        name: &str,
        kind: Kind,
        opts: &LoadOptions,
    ) -> Result<Option<Tensor>, ModelError> {
        let Some(i) = self.index.remove(name) else {
            return Ok(None);
        };
        let t = self.files[i].load(name, Some(kind), opts.device)?;
        self.bytes += (t.numel() * kind.elt_size_in_bytes()) as u64;
        Ok(Some(t))
    }
    fn remaining(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
    fn describe(&self) -> String {
        format!("the safetensors files of {}", self.dir)
    }
}

/// A checkpoint read through its [`CheckpointLayout`]: lf-model's names are mapped to the file's,
/// and only the language model's tensors count as remaining, so a multimodal checkpoint's vision
/// tower and projector are never taken (never copied off the memory map).
pub struct LayoutSource<'a> {
    pub inner: &'a mut dyn TensorSource,
    pub layout: CheckpointLayout,
}

impl TensorSource for LayoutSource<'_> {
    fn take(
        &mut self,
        name: &str,
        kind: Kind,
        opts: &LoadOptions,
    ) -> Result<Option<Tensor>, ModelError> {
        self.inner.take(&self.layout.file_name(name), kind, opts)
    }
    fn remaining(&self) -> Vec<String> {
        let layout = self.layout;
        self.inner
            .remaining()
            .into_iter()
            .filter(|n| layout.model_name(n).is_some())
            .collect()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Takes a required tensor and checks its shape.
fn required(
    src: &mut dyn TensorSource,
    name: &str,
    shape: &[i64],
    kind: Kind,
    opts: &LoadOptions,
) -> Result<Tensor, ModelError> {
    let t = src
        .take(name, kind, opts)?
        .ok_or_else(|| ModelError::MissingTensor {
            name: name.to_string(),
            source_desc: src.describe(),
        })?;
    if t.size() != shape {
        return Err(ModelError::ShapeMismatch {
            name: name.to_string(),
            source_desc: src.describe(),
            expected: shape.to_vec(),
            found: t.size(),
        });
    }
    Ok(t)
}

/// Takes the linear at `path` (`[fan_out, fan_in]`, with a bias when `bias`), quantised when the
/// options say so.
fn load_linear(
    src: &mut dyn TensorSource,
    path: &names::TensorPath,
    fan_in: u64,
    fan_out: u64,
    bias: bool,
    opts: &LoadOptions,
) -> Result<Linear, ModelError> {
    let kind = opts.dtype;
    let shape = [fan_out as i64, fan_in as i64];
    let w = required(src, &path.weight(), &shape, kind, opts)?;
    let bias = if bias {
        Some(required(src, &path.bias(), &shape[..1], kind, opts)?)
    } else {
        None
    };
    crate::quant::make_linear(path, w, bias, opts)
}

/// Layer `i`'s sparse MLP: the router (kept dense: it is tiny and transformers' bitsandbytes
/// integration skips it too, as it is no `nn.Linear`) and every expert's linears.
fn sparse_moe(
    src: &mut dyn TensorSource,
    arch: &ModelArchitecture,
    i: usize,
    naming: MoeNaming,
    opts: &LoadOptions,
) -> Result<SparseMoe, ModelError> {
    let (h, e) = (arch.hidden_size, arch.num_experts());
    let dense = LoadOptions {
        quantization: None,
        ..opts.clone()
    };
    let router = load_linear(src, &naming.router(i), h, e, false, &dense)?;
    let experts = (0..e as usize)
        .map(|x| {
            let mut linear = |which: ExpertLinear| {
                let (fan_in, fan_out) = expert_shape(arch, which);
                load_linear(
                    src,
                    &naming.expert(i, x, which),
                    fan_in,
                    fan_out,
                    false,
                    opts,
                )
            };
            Ok(Expert {
                gate_proj: linear(ExpertLinear::Gate)?,
                up_proj: linear(ExpertLinear::Up)?,
                down_proj: linear(ExpertLinear::Down)?,
            })
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    Ok(SparseMoe {
        router,
        experts,
        top_k: arch.experts_per_token() as i64,
        norm_topk_prob: arch.norm_topk_prob(),
        weights_in_logit_dtype: naming == MoeNaming::Qwen3Moe,
        naming,
        adapters: Default::default(),
    })
}

/// Builds the whole model from `src`; every tensor of `src` must be used (apart from RoPE caches
/// and a redundant `lm_head.weight` of a tied model). Layer `i` attends within `windows[i]`
/// (full attention where `windows` has no entry or `None`).
///
/// `sink` receives each unit's tensors as soon as the unit is complete (see [`UnitSink`]).
pub fn build(
    arch: &ModelArchitecture,
    windows: &[Option<i64>],
    src: &mut dyn TensorSource,
    opts: &LoadOptions,
    sink: &mut UnitSink<'_>,
) -> Result<Llama, ModelError> {
    let h = arch.hidden_size as i64;
    let v = arch.vocab_size as i64;
    let kind = opts.dtype;
    let gemma = arch.model_type.is_gemma();
    let embed_tokens = required(src, &names::embed_tokens().weight(), &[v, h], kind, opts)?;
    sink(Unit::Embedding, embedding_tensors(&embed_tokens))?;
    let mut layers = Vec::with_capacity(arch.num_hidden_layers as usize);
    for i in 0..arch.num_hidden_layers as usize {
        let mut linear = |m: LinearModule| -> Result<Linear, ModelError> {
            let (fan_in, fan_out) = arch.linear_shape(m);
            let bias = arch.linear_has_bias(m);
            load_linear(src, &names::linear(i, m), fan_in, fan_out, bias, opts)
        };
        // Checkpoint order: q, k, v (or Phi-3's fused qkv), o, gate, up (or fused gate_up), down.
        let fused = arch.linear_modules().contains(&LinearModule::QkvProj);
        let qkv = if fused {
            QkvProjections::Fused(linear(LinearModule::QkvProj)?)
        } else {
            QkvProjections::Separate {
                q_proj: linear(LinearModule::QProj)?,
                k_proj: linear(LinearModule::KProj)?,
                v_proj: linear(LinearModule::VProj)?,
            }
        };
        let o_proj = linear(LinearModule::OProj)?;
        let mlp = match MoeNaming::of(arch.model_type).filter(|_| arch.is_sparse_layer(i as u64)) {
            Some(naming) => FeedForward::Sparse(sparse_moe(src, arch, i, naming, opts)?),
            None => {
                let gate_up = if fused {
                    GateUpProjections::Fused(linear(LinearModule::GateUpProj)?)
                } else {
                    GateUpProjections::Separate {
                        gate_proj: linear(LinearModule::GateProj)?,
                        up_proj: linear(LinearModule::UpProj)?,
                    }
                };
                FeedForward::Dense(Mlp {
                    gate_up,
                    down_proj: linear(LinearModule::DownProj)?,
                    act: if gemma {
                        Activation::GeluTanh
                    } else {
                        Activation::Silu
                    },
                })
            }
        };
        let d = arch.head_dim() as i64;
        let mut norm = |path: names::TensorPath, size: i64| -> Result<RmsNorm, ModelError> {
            Ok(RmsNorm {
                weight: required(src, &path.weight(), &[size], kind, opts)?,
                eps: arch.rms_norm_eps,
                offset: gemma,
            })
        };
        let (q_norm, k_norm) = if arch.qk_norm() {
            (
                Some(norm(names::q_norm(i), d)?),
                Some(norm(names::k_norm(i), d)?),
            )
        } else {
            (None, None)
        };
        let window = windows.get(i).copied().flatten();
        let self_attn = Attention {
            qkv,
            o_proj,
            q_norm,
            k_norm,
            num_heads: arch.num_attention_heads as i64,
            num_kv_heads: arch.kv_heads() as i64,
            head_dim: d,
            scale: arch.attention_scale(),
            softcap: arch.attention_softcap(),
            window,
            local_rope: window.is_some(),
        };
        let input_layernorm = norm(names::input_layernorm(i), h)?;
        let post_attention_layernorm = norm(names::post_attention_layernorm(i), h)?;
        let feed_forward_norms = if gemma {
            Some(FeedForwardNorms {
                pre: norm(names::pre_feedforward_layernorm(i), h)?,
                post: norm(names::post_feedforward_layernorm(i), h)?,
            })
        } else {
            None
        };
        let layer = DecoderLayer {
            input_layernorm,
            self_attn,
            post_attention_layernorm,
            mlp,
            feed_forward_norms,
        };
        sink(Unit::Layer(i), layer.named_tensors(i))?;
        layers.push(layer);
    }
    let norm = RmsNorm {
        weight: required(src, &names::norm().weight(), &[h], kind, opts)?,
        eps: arch.rms_norm_eps,
        offset: gemma,
    };
    let lm_head = if arch.tie_word_embeddings {
        // Some tied checkpoints still store a copy of the head; the embeddings are authoritative.
        let _ = src.take(&names::lm_head().weight(), kind, opts)?;
        None
    } else {
        Some(required(
            src,
            &names::lm_head().weight(),
            &[v, h],
            kind,
            opts,
        )?)
    };
    sink(
        Unit::Head,
        head_tensors(&norm, lm_head.as_ref(), &embed_tokens),
    )?;
    let leftover: Vec<String> = src
        .remaining()
        .into_iter()
        .filter(|n| !names::is_rope_cache(n))
        .collect();
    if let Some(name) = leftover.first() {
        return Err(ModelError::UnexpectedTensor {
            name: name.clone(),
            source_desc: src.describe(),
            what: format!(
                "{:?} architecture ({} more unexpected)",
                arch.model_type,
                leftover.len() - 1
            )
            .to_lowercase(),
        });
    }
    Ok(Llama {
        mlp_tile: None,
        embed_tokens,
        layers,
        norm,
        lm_head,
        rotary: Rotary::new(arch, opts.device),
        local_rotary: Rotary::local(arch, opts.device),
        embed_scale: arch.embedding_scale(),
        final_softcap: arch.logit_softcap(),
    })
}
