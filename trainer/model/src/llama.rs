//! The Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text, Phi-3 /
//! Phi-3.5 / Phi-4) in one file.
//!
//! Follows Hugging Face's `modeling_llama.py` operation by operation so that fp32 logits match
//! transformers: RMSNorm computed in fp32 and cast back before the weight multiply, rotate-half
//! RoPE with cos/sin computed in fp32 (with Llama 3.1's `llama3` frequency remap or `linear`
//! scaling), grouped-query attention through libtorch's `scaled_dot_product_attention` (or an
//! explicit eager path), and a SwiGLU MLP. The families differ by switches, not copies: Qwen2 adds
//! a bias to q/k/v; Qwen3 normalises each head's queries and keys (RMSNorm over `head_dim`)
//! before RoPE; Mistral (and Qwen2/Qwen3 layers with `use_sliding_window`) attend to the last
//! `sliding_window` positions only. Gemma 2 and 3 ([`ModelType::is_gemma`]) multiply the
//! embeddings by √hidden, normalise with `(1 + w)` multiplied in fp32 before the cast, add norms
//! after attention and after the MLP (pre-/post-feed-forward), use GeGLU with tanh-GELU, scale
//! scores by `query_pre_attn_scalar^-½`, and alternate sliding and full layers; Gemma 2
//! soft-caps attention scores and the final logits (`c·tanh(x / c)`, which forces the eager
//! path, as in transformers), Gemma 3 normalises q/k like Qwen3 and rotates its sliding layers
//! with a local RoPE base. Phi-3 ([`QkvProjections::Fused`], [`GateUpProjections::Fused`]) computes
//! q, k and v with one `qkv_proj` and the gate and up projections with one `gate_up_proj` (so
//! LoRA adapts the fused linears, as PEFT does), rotates only the first `partial_rotary_factor`
//! of each head, and with `longrope` RoPE scaling divides each frequency by a short or, once the
//! sequence is longer than `original_max_position_embeddings`, a long factor, and multiplies cos
//! and sin by the attention factor; its `sliding_window` applies to every layer, as Mistral's.
//! Field names mirror the Hugging Face tensor names (`model.layers.{i}.self_attn.q_proj.weight`,
//! ...).
//!
//! [`ModelType::is_gemma`]: lf_api::architecture::ModelType::is_gemma
//!
//! References: Touvron et al., "Llama 2" (arXiv:2307.09288); Gemma Team, "Gemma 2"
//! (arXiv:2408.00118), "Gemma 3" (arXiv:2503.19786); Abdin et al., "Phi-3 Technical Report"
//! (arXiv:2404.14219); Ding et al., "LongRoPE" (arXiv:2402.13753); transformers
//! `src/transformers/models/{llama,mistral,qwen3,gemma2,gemma3,phi3}/modeling_*.py`,
//! `modeling_rope_utils.py` (`_compute_longrope_parameters`, `dynamic_rope_update`) and
//! `masking_utils.py` (`sliding_window_overlay`: key `k` is visible from query `q` when
//! `q − w < k ≤ q`).

use lf_api::architecture::ModelArchitecture;
use lf_api::training::LinearModule;
use tch::{Device, Kind, Tensor};

use crate::linear::Linear;
use crate::moe::SparseMoe;
use crate::names::{self, BaseTensor, LayerTensor};
use crate::residency::{Residency, Unit};

/// How attention is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionBackend {
    /// `scaled_dot_product_attention`; libtorch picks flash/efficient/math.
    Sdpa,
    /// Explicit `softmax(QKᵀ/√d + causal mask) V` (materialises the scores).
    Eager,
}

/// Rotary position embedding: the inverse frequencies, computed once.
pub struct Rotary {
    /// fp32, `[rotary_dim / 2]`; with `longrope`, the short factors' (sequences up to the original
    /// context).
    inv_freq: Tensor,
    /// `longrope`: the long factors' inverse frequencies and the original context
    /// (`original_max_position_embeddings`) beyond which a sequence uses them.
    long: Option<(Tensor, i64)>,
    /// The factor cos and sin are multiplied by (`longrope`'s attention factor; 1 otherwise).
    scale: f64,
}

/// Inverse frequencies `θ^(−2i/d)` (fp32, `[d / 2]`).
fn inverse_frequencies(dim: i64, theta: f64) -> Tensor {
    theta_powers(dim, theta).reciprocal()
}

/// `θ^(2i/d)` (fp32, `[⌈d / 2⌉]`).
fn theta_powers(dim: i64, theta: f64) -> Tensor {
    let exponent = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu))
        .to_kind(Kind::Float)
        / dim as f64;
    Tensor::from(theta as f32).pow(&exponent)
}

impl Rotary {
    /// The inverse frequencies of `arch` (fp32, `[rotary_dim / 2]`: Phi-3 rotates the first
    /// `partial_rotary_factor` of each head), with its RoPE scaling applied.
    pub fn new(arch: &ModelArchitecture, device: Device) -> Self {
        let dim = arch.rotary_dim() as i64;
        let inv_freq = inverse_frequencies(dim, arch.rope_theta);
        let mut long = None;
        let mut scale = 1.0;
        let inv_freq = match &arch.rope_scaling {
            Some(s) if s.rope_type == "linear" => inv_freq / s.factor,
            Some(s) if s.rope_type == "llama3" => {
                let factor = s.factor;
                let low = s.low_freq_factor.unwrap_or(1.0);
                let high = s.high_freq_factor.unwrap_or(4.0);
                let old_ctx = s
                    .original_max_position_embeddings
                    .unwrap_or(arch.max_position_embeddings) as f64;
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                let wavelen = (inv_freq.reciprocal()) * (2.0 * std::f64::consts::PI);
                let scaled = inv_freq.where_self(&wavelen.le(low_wavelen), &(&inv_freq / factor));
                let smooth = ((wavelen.reciprocal() * old_ctx) - low) / (high - low);
                let smoothed: Tensor = (1.0 - &smooth) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen
                    .ge(high_wavelen)
                    .logical_and(&wavelen.le(low_wavelen));
                smoothed.where_self(&medium, &scaled)
            }
            // LongRoPE (transformers' `_compute_longrope_parameters`): `1 / (factor_i · θ^(2i/d))`
            // with the short factors up to the original context and the long ones beyond it; cos
            // and sin scaled by the attention factor at every length.
            Some(s) if s.rope_type == "longrope" => {
                let powers = theta_powers(dim, arch.rope_theta);
                let scaled = |factors: &Option<Vec<f64>>| {
                    let f: Vec<f32> = factors
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .map(|&x| x as f32)
                        .collect();
                    (Tensor::from_slice(&f) * &powers).reciprocal()
                };
                let original = s.original_max_position_embeddings.unwrap_or(4096) as i64;
                long = Some((scaled(&s.long_factor).to_device(device), original));
                scale = s.longrope_attention_factor();
                scaled(&s.short_factor)
            }
            _ => inv_freq,
        };
        Rotary {
            inv_freq: inv_freq.to_device(device),
            long,
            scale,
        }
    }

    /// Gemma 3's RoPE of the sliding-window layers: base `rope_local_base_freq`, never scaled
    /// (`None` for families with one RoPE).
    pub fn local(arch: &ModelArchitecture, device: Device) -> Option<Self> {
        let theta = arch
            .rope_local_base_freq
            .filter(|_| arch.model_type.is_gemma())?;
        Some(Rotary {
            inv_freq: inverse_frequencies(arch.head_dim() as i64, theta).to_device(device),
            long: None,
            scale: 1.0,
        })
    }

    /// Whether a sequence of `len` positions uses `longrope`'s long factors.
    pub fn is_long(&self, len: i64) -> bool {
        self.long
            .as_ref()
            .is_some_and(|(_, original)| len > *original)
    }

    /// `(cos, sin)` for `positions` (`[S]`, int64) of a sequence `len` positions long (which picks
    /// `longrope`'s factors, as transformers picks them by the largest position + 1), each
    /// `[S, rotary_dim]` in `kind`.
    pub fn cos_sin(&self, positions: &Tensor, len: i64, kind: Kind) -> (Tensor, Tensor) {
        let inv_freq = match &self.long {
            Some((long, _)) if self.is_long(len) => long,
            _ => &self.inv_freq,
        };
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let (cos, sin) = (emb.cos(), emb.sin());
        let (cos, sin) = if self.scale == 1.0 {
            (cos, sin)
        } else {
            (cos * self.scale, sin * self.scale)
        };
        (cos.to_kind(kind), sin.to_kind(kind))
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

/// RoPE of the first `cos.size(-1)` dimensions of `x`; the rest pass through (Phi-3's partial
/// rotary).
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let width = x.size()[x.dim() - 1];
    let rotary = cos.size()[cos.dim() - 1];
    if rotary == width {
        return x * cos + rotate_half(x) * sin;
    }
    let x_rot = x.narrow(-1, 0, rotary);
    let x_pass = x.narrow(-1, rotary, width - rotary);
    Tensor::cat(&[&x_rot * cos + rotate_half(&x_rot) * sin, x_pass], -1)
}

/// The cos/sin tables of one forward pass: the model's RoPE, and Gemma 3's local one for its
/// sliding layers.
pub struct RopeTables {
    pub global: (Tensor, Tensor),
    pub local: Option<(Tensor, Tensor)>,
    /// Packed rows (`neat_packing`): which keys each query may see, `[B, 1, S, S]` bool (causal
    /// within each example, nothing across examples); the tables are then per row, `[B, 1, S, D]`.
    pub segments: Option<Tensor>,
    /// `segments` as the additive compute-dtype mask (0 or −∞) scaled-dot-product attention takes
    /// as it is: built once, so every layer saves the same tensor for backward (a boolean mask
    /// would be converted, and saved, anew in each layer).
    pub segment_bias: Option<Tensor>,
}

impl RopeTables {
    /// The tables a layer rotates with (`local`: it uses the local RoPE when there is one).
    fn for_layer(&self, local: bool) -> (&Tensor, &Tensor) {
        let (cos, sin) = match (&self.local, local) {
            (Some(t), true) => t,
            _ => &self.global,
        };
        (cos, sin)
    }
}

/// RMSNorm: `w · (x / √(mean(x²) + ε))`, normalised in fp32 and cast back before the multiply;
/// Gemma's (`offset`) is `(1 + w) · (x / √(mean(x²) + ε))` multiplied in fp32, then cast.
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    pub offset: bool,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let variance = xf.square().mean_dim(-1, true, Kind::Float);
        let normed = xf * (variance + self.eps).rsqrt();
        if self.offset {
            (normed * (self.weight.to_kind(Kind::Float) + 1.0)).to_kind(kind)
        } else {
            &self.weight * normed.to_kind(kind)
        }
    }
}

/// Keys and values already computed for earlier positions, per layer (`[B, kv_heads, T, D]`).
#[derive(Default)]
pub struct KvCache {
    pub layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Positions already cached.
    pub fn len(&self) -> i64 {
        match self.layers.first() {
            Some(Some((k, _))) => k.size()[2],
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The query, key and value projections: three linears, or Phi-3's one `qkv_proj` whose output
/// holds the queries, then the keys, then the values.
#[allow(clippy::large_enum_variant)] // one per layer; boxing would only add an indirection
pub enum QkvProjections {
    Separate {
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
    },
    Fused(Linear),
}

/// Multi-head attention with grouped-query key/value heads.
pub struct Attention {
    pub qkv: QkvProjections,
    pub o_proj: Linear,
    /// Qwen3's per-head RMSNorm of the queries and keys (over `head_dim`, before RoPE).
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
    /// The factor scores are multiplied by (`head_dim^-½`, Gemma's `query_pre_attn_scalar^-½`).
    pub scale: f64,
    /// Gemma 2's soft cap of the scores.
    pub softcap: Option<f64>,
    /// The sliding window: a query sees itself and the `window − 1` keys before it (`None`:
    /// every earlier key).
    pub window: Option<i64>,
    /// Rotates with the model's local RoPE (Gemma 3's sliding layers).
    pub local_rope: bool,
}

/// Which of `t` keys each of the last `s` queries may attend to (`[s, t]`, bool): causal, and
/// within `window` positions when there is one.
fn allowed_keys(s: i64, t: i64, window: Option<i64>, device: Device) -> Tensor {
    let causal = Tensor::ones([s, t], (Kind::Bool, device)).tril(t - s);
    match window {
        Some(w) => causal.triu(t - s - w + 1),
        None => causal,
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        backend: AttentionBackend,
        train: bool,
    ) -> Tensor {
        let (cos, sin) = rope.for_layer(self.local_rope);
        let (b, s) = (x.size()[0], x.size()[1]);
        let heads = |t: Tensor, n: i64, norm: Option<&RmsNorm>| {
            let t = t.view([b, s, n, self.head_dim]);
            match norm {
                Some(norm) => norm.forward(&t),
                None => t,
            }
            .transpose(1, 2)
        };
        let (q, k, v) = match &self.qkv {
            QkvProjections::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => (
                q_proj.forward(x, train),
                k_proj.forward(x, train),
                v_proj.forward(x, train),
            ),
            QkvProjections::Fused(qkv_proj) => {
                let qkv = qkv_proj.forward(x, train);
                let (nq, nkv) = (
                    self.num_heads * self.head_dim,
                    self.num_kv_heads * self.head_dim,
                );
                // The values are copied out, so backward keeps them, not the whole fused output
                // (the queries and keys are new tensors after RoPE anyway).
                (
                    qkv.narrow(-1, 0, nq),
                    qkv.narrow(-1, nq, nkv),
                    qkv.narrow(-1, nq + nkv, nkv).contiguous(),
                )
            }
        };
        let q = heads(q, self.num_heads, self.q_norm.as_ref());
        let k = heads(k, self.num_kv_heads, self.k_norm.as_ref());
        let v = heads(v, self.num_kv_heads, None);
        let q = apply_rotary(&q, cos, sin);
        let mut k = apply_rotary(&k, cos, sin);
        let mut v = v;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        let kv_len = k.size()[2];
        let gqa = self.num_kv_heads != self.num_heads;
        // Keys older than the window exist only once the sequence is longer than it.
        let window = self.window.filter(|&w| kv_len > w);
        // One query over cached keys attends to everything; a full sequence is causal. A chunk of
        // several new queries after a non-empty cache, or a window, needs an explicit mask.
        // Soft-capped scores exist only on the eager path.
        let backend = match self.softcap {
            Some(_) => AttentionBackend::Eager,
            None => backend,
        };
        let scale = Some(self.scale);
        let y = match backend {
            AttentionBackend::Sdpa
                if window.is_none() && rope.segments.is_none() && (s == 1 || s == kv_len) =>
            {
                Tensor::scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    None::<Tensor>,
                    0.0,
                    s > 1,
                    scale,
                    gqa,
                )
            }
            AttentionBackend::Sdpa => {
                // Packed rows: the segment mask is already causal, so without a window every
                // layer shares it (one `[B, 1, S, S]` tensor saved for backward, not one each).
                let mask = match (&rope.segments, &rope.segment_bias, window) {
                    (_, Some(bias), None) if s == kv_len => bias.shallow_clone(),
                    (Some(seg), _, _) => {
                        allowed_keys(s, kv_len, window, q.device()).logical_and(seg)
                    }
                    _ => allowed_keys(s, kv_len, window, q.device()),
                };
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, scale, gqa)
            }
            AttentionBackend::Eager => self.eager(&q, &k, &v, window, rope.segments.as_ref()),
        };
        let y = y
            .transpose(1, 2)
            .reshape([b, s, self.num_heads * self.head_dim]);
        self.o_proj.forward(&y, train)
    }

    /// `softmax(cap(s·QKᵀ) + mask) V` with the causal (and window) mask aligned to the last query
    /// (softmax in fp32; `cap` is Gemma 2's soft cap, when set).
    fn eager(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        window: Option<i64>,
        segments: Option<&Tensor>,
    ) -> Tensor {
        let rep = self.num_heads / self.num_kv_heads;
        let (k, v) = if rep > 1 {
            (
                k.repeat_interleave_self_int(rep, 1, None),
                v.repeat_interleave_self_int(rep, 1, None),
            )
        } else {
            (k.shallow_clone(), v.shallow_clone())
        };
        let (s, t) = (q.size()[2], k.size()[2]);
        let scores = q.matmul(&k.transpose(-2, -1)) * self.scale;
        let scores = match self.softcap {
            Some(c) => (scores / c).tanh() * c,
            None => scores,
        };
        let allowed = allowed_keys(s, t, window, q.device());
        let allowed = match segments {
            Some(seg) => allowed.logical_and(seg),
            None => allowed,
        };
        let scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
        let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind());
        probs.matmul(&v)
    }
}

/// The gate's activation in the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU: SwiGLU (Llama, Mistral, Qwen).
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`): GeGLU (Gemma).
    GeluTanh,
}

/// The gate and up projections: two linears, or Phi-3's one `gate_up_proj` whose output holds
/// the gate, then the up projection.
pub enum GateUpProjections {
    Separate { gate_proj: Linear, up_proj: Linear },
    Fused(Linear),
}

/// The gated feed-forward block: `down(act(gate(x)) · up(x))`.
pub struct Mlp {
    pub gate_up: GateUpProjections,
    pub down_proj: Linear,
    pub act: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let (gate, up) = match &self.gate_up {
            GateUpProjections::Separate { gate_proj, up_proj } => {
                (gate_proj.forward(x, train), up_proj.forward(x, train))
            }
            GateUpProjections::Fused(gate_up_proj) => {
                let y = gate_up_proj.forward(x, train);
                let i = y.size()[y.dim() - 1] / 2;
                (y.narrow(-1, 0, i), y.narrow(-1, i, i))
            }
        };
        let gate = match self.act {
            Activation::Silu => gate.silu(),
            Activation::GeluTanh => gate.gelu("tanh"),
        };
        let h = gate * up;
        self.down_proj.forward(&h, train)
    }
}

/// A decoder layer's MLP: dense, or a sparse mixture of experts (Mixtral, Qwen3-MoE; see
/// [`crate::moe`]).
// One per decoder layer, held for the model's life: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

impl FeedForward {
    /// The output, and the router logits (`[B·S, E]`) of a sparse MLP.
    fn forward(&self, x: &Tensor, train: bool) -> (Tensor, Option<Tensor>) {
        match self {
            FeedForward::Dense(mlp) => (mlp.forward(x, train), None),
            FeedForward::Sparse(moe) => {
                let (y, logits) = moe.forward(x, train);
                (y, Some(logits))
            }
        }
    }
}

/// The extra norms of Gemma's layers: before the MLP (where Llama's post-attention norm is) and
/// after it.
pub struct FeedForwardNorms {
    pub pre: RmsNorm,
    pub post: RmsNorm,
}

/// One pre-norm decoder layer (Gemma's also normalises each block's output).
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    /// Llama: the norm before the MLP. Gemma: the norm of the attention's output.
    pub post_attention_layernorm: RmsNorm,
    pub mlp: FeedForward,
    /// Gemma's `pre_feedforward_layernorm` and `post_feedforward_layernorm`.
    pub feed_forward_norms: Option<FeedForwardNorms>,
}

impl DecoderLayer {
    /// `x + attn(norm(x))`, then `+ mlp(norm(·))`; Gemma: `x + norm(attn(norm(x)))`, then
    /// `+ norm(mlp(norm(·)))`.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        backend: AttentionBackend,
        train: bool,
    ) -> Tensor {
        self.forward_routed(x, rope, cache, backend, train).0
    }

    /// [`DecoderLayer::forward`], and the router logits of a sparse MLP (`[B·S, E]`).
    pub fn forward_routed(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        backend: AttentionBackend,
        train: bool,
    ) -> (Tensor, Option<Tensor>) {
        let x = self.attention_half(x, rope, cache, backend, train);
        self.feed_forward_half(&x, train)
    }

    /// The attention half of the layer: `x + attn(norm(x))` (Gemma: `x + norm(attn(norm(x)))`).
    pub(crate) fn attention_half(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        backend: AttentionBackend,
        train: bool,
    ) -> Tensor {
        let h = self.self_attn.forward(
            &self.input_layernorm.forward(x),
            rope,
            cache,
            backend,
            train,
        );
        match &self.feed_forward_norms {
            None => x + h,
            Some(_) => x + self.post_attention_layernorm.forward(&h),
        }
    }

    /// The feed-forward half on `x` (the attention half's output): `x + mlp(norm(x))` (Gemma:
    /// `x + norm(mlp(norm(x)))`), and a sparse MLP's router logits. Token-wise: any split of the
    /// tokens gives the same rows.
    pub(crate) fn feed_forward_half(&self, x: &Tensor, train: bool) -> (Tensor, Option<Tensor>) {
        match &self.feed_forward_norms {
            None => {
                let (h, logits) = self
                    .mlp
                    .forward(&self.post_attention_layernorm.forward(x), train);
                (x + h, logits)
            }
            Some(ff) => {
                let (h, logits) = self.mlp.forward(&ff.pre.forward(x), train);
                (x + ff.post.forward(&h), logits)
            }
        }
    }

    /// Whether the MLP is dense (every token through the same weights, no router).
    pub(crate) fn has_dense_mlp(&self) -> bool {
        matches!(self.mlp, FeedForward::Dense(_))
    }

    /// Every tensor of decoder layer `i` (the tensors of [`Unit::Layer`]), sharing storage: its
    /// linears (see [`Linear::named_tensors`]), a sparse MLP's router and experts, then its norms.
    pub fn named_tensors(&self, i: usize) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .linears()
            .into_iter()
            .flat_map(|(m, l)| l.named_tensors(&names::linear(i, m)))
            .collect();
        if let FeedForward::Sparse(moe) = &self.mlp {
            out.extend(moe.named_tensors(i));
        }
        out.extend(
            self.norms()
                .into_iter()
                .map(|(t, norm)| (BaseTensor::Layer(i, t).name(), norm.weight.shallow_clone())),
        );
        out
    }

    /// The layer's norms in checkpoint order: input, post-attention, Gemma's pre- and
    /// post-feed-forward, then the q and k norms.
    pub fn norms(&self) -> Vec<(LayerTensor, &RmsNorm)> {
        let mut out = vec![
            (LayerTensor::InputLayernorm, &self.input_layernorm),
            (
                LayerTensor::PostAttentionLayernorm,
                &self.post_attention_layernorm,
            ),
        ];
        if let Some(ff) = &self.feed_forward_norms {
            out.push((LayerTensor::PreFeedforwardLayernorm, &ff.pre));
            out.push((LayerTensor::PostFeedforwardLayernorm, &ff.post));
        }
        let attn = &self.self_attn;
        let qk = [
            (LayerTensor::QNorm, attn.q_norm.as_ref()),
            (LayerTensor::KNorm, attn.k_norm.as_ref()),
        ];
        out.extend(qk.into_iter().filter_map(|(t, n)| Some((t, n?))));
        out
    }

    /// The sparse MLP, when the layer has one.
    pub fn sparse(&self) -> Option<&SparseMoe> {
        match &self.mlp {
            FeedForward::Sparse(moe) => Some(moe),
            FeedForward::Dense(_) => None,
        }
    }

    /// The linear of the sparse MLP whose weight is named `name` (router or expert).
    pub fn sparse_linear(&self, i: usize, name: &str) -> Option<&Linear> {
        let moe = self.sparse()?;
        let (_, lin) = moe
            .linears(i)
            .into_iter()
            .find(|(path, _)| path.weight() == name)?;
        Some(lin)
    }

    /// The layer's linears in checkpoint order ([`ModelArchitecture::linear_modules`]; a sparse
    /// MLP's router and experts are [`DecoderLayer::sparse`]'s).
    pub fn linears(&self) -> Vec<(LinearModule, &Linear)> {
        use LinearModule::*;
        let mut out = match &self.self_attn.qkv {
            QkvProjections::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => vec![(QProj, q_proj), (KProj, k_proj), (VProj, v_proj)],
            QkvProjections::Fused(l) => vec![(QkvProj, l)],
        };
        out.push((OProj, &self.self_attn.o_proj));
        if let FeedForward::Dense(mlp) = &self.mlp {
            match &mlp.gate_up {
                GateUpProjections::Separate { gate_proj, up_proj } => {
                    out.extend([(GateProj, gate_proj), (UpProj, up_proj)])
                }
                GateUpProjections::Fused(l) => out.push((GateUpProj, l)),
            }
            out.push((DownProj, &mlp.down_proj));
        }
        out
    }

    /// [`DecoderLayer::linears`], mutably.
    pub fn linears_mut(&mut self) -> Vec<(LinearModule, &mut Linear)> {
        use LinearModule::*;
        let mut out = match &mut self.self_attn.qkv {
            QkvProjections::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => vec![(QProj, q_proj), (KProj, k_proj), (VProj, v_proj)],
            QkvProjections::Fused(l) => vec![(QkvProj, l)],
        };
        out.push((OProj, &mut self.self_attn.o_proj));
        if let FeedForward::Dense(mlp) = &mut self.mlp {
            match &mut mlp.gate_up {
                GateUpProjections::Separate { gate_proj, up_proj } => {
                    out.extend([(GateProj, gate_proj), (UpProj, up_proj)])
                }
                GateUpProjections::Fused(l) => out.push((GateUpProj, l)),
            }
            out.push((DownProj, &mut mlp.down_proj));
        }
        out
    }

    /// The linear layer of `module` (`None` when this layer has no such module: the MLP's of a
    /// sparse layer, or the other layout's).
    pub fn linear(&self, module: LinearModule) -> Option<&Linear> {
        self.linears()
            .into_iter()
            .find_map(|(m, l)| (m == module).then_some(l))
    }

    /// The linear layer of `module`, mutably.
    pub fn linear_mut(&mut self, module: LinearModule) -> Option<&mut Linear> {
        self.linears_mut()
            .into_iter()
            .find_map(|(m, l)| (m == module).then_some(l))
    }
}

/// The decoder stack: embeddings, layers, final norm and the language-model head.
pub struct Llama {
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `None` when the head is tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
    pub rotary: Rotary,
    /// Gemma 3's RoPE of the sliding layers.
    pub local_rotary: Option<Rotary>,
    /// Gemma's √hidden embedding multiplier.
    pub embed_scale: Option<f64>,
    /// Gemma 2's soft cap of the logits.
    pub final_softcap: Option<f64>,
    /// `offload_activations`' tile (`loss_chunk_size` tokens): every pass without a KV cache runs
    /// a dense MLP in tiles of this many tokens ([`DecoderLayer::forward_tiled`]).
    pub mlp_tile: Option<usize>,
}

impl Llama {
    /// Token embeddings, `[B, S, H]` (times Gemma's scale, rounded to the weights' dtype as
    /// transformers rounds it).
    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        let e = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        match self.embed_scale {
            Some(scale) => {
                let scale = Tensor::from(scale as f32)
                    .to_kind(e.kind())
                    .to_device(e.device());
                e * scale
            }
            None => e,
        }
    }

    /// Every tensor `unit` holds, sharing storage (none for a layer that does not exist).
    pub fn unit_tensors(&self, unit: Unit) -> Vec<(String, Tensor)> {
        match unit {
            Unit::Embedding => embedding_tensors(&self.embed_tokens),
            Unit::Head => head_tensors(&self.norm, self.lm_head.as_ref(), &self.embed_tokens),
            Unit::Layer(i) => self
                .layers
                .get(i)
                .map(|layer| layer.named_tensors(i))
                .unwrap_or_default(),
        }
    }

    /// The language-model head's weight (`lm_head.weight`, or the embeddings when tied).
    pub fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Final hidden states after the last norm, `[B, S, H]`, optionally extending `cache`. Each
    /// unit is gathered through `residency` just before it runs and released right after (no
    /// gradients are kept for a partitioned model: call it under `tch::no_grad` then).
    pub fn hidden<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        backend: AttentionBackend,
        train: bool,
        residency: &R,
    ) -> Result<Tensor, R::Error> {
        let x = self.decoder_output(input_ids, cache, backend, train, residency)?;
        residency.gather(Unit::Head)?;
        let out = self.norm.forward(&x);
        residency.release(Unit::Head, false)?;
        Ok(out)
    }

    /// The last decoder layer's output (before the final norm), `[B, S, H]`: [`Llama::hidden`]
    /// without the head unit, for callers that gather the head once for the norm and the logits.
    pub fn decoder_output<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        backend: AttentionBackend,
        train: bool,
        residency: &R,
    ) -> Result<Tensor, R::Error> {
        self.decoder_output_routed(input_ids, cache, backend, train, residency, None)
    }

    /// The tile in which `layer` runs its MLP over `tokens` tokens, in a pass without a KV cache:
    /// [`lf_api::training::mlp_tile`] of [`Llama::mlp_tile`].
    pub(crate) fn tile_for(&self, layer: &DecoderLayer, tokens: usize) -> Option<i64> {
        let tile = self.mlp_tile?;
        lf_api::training::mlp_tile(tile, tokens as u64, !layer.has_dense_mlp()).map(|t| t as i64)
    }

    /// [`Llama::decoder_output`], pushing each sparse MLP's router logits (`[B·S, E]`, layer
    /// order) to `router_logits` when given.
    pub fn decoder_output_routed<R: Residency + ?Sized>(
        &self,
        input_ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        backend: AttentionBackend,
        train: bool,
        residency: &R,
        mut router_logits: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor, R::Error> {
        let start = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let s = input_ids.size()[1];
        residency.gather(Unit::Embedding)?;
        let mut x = self.embed(input_ids);
        residency.release(Unit::Embedding, false)?;
        let rope = self.rope(start, s, x.kind(), x.device());
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize_with(self.layers.len(), || None);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            residency.gather(Unit::Layer(i))?;
            let tile = if slot.is_none() {
                self.tile_for(layer, input_ids.numel())
            } else {
                None
            };
            let (y, logits) = match tile {
                Some(t) => (layer.forward_tiled(&x, &rope, backend, train, t), None),
                None => layer.forward_routed(&x, &rope, slot, backend, train),
            };
            x = y;
            if let (Some(sink), Some(logits)) = (router_logits.as_deref_mut(), logits) {
                sink.push(logits);
            }
            residency.release(Unit::Layer(i), false)?;
        }
        Ok(x)
    }

    /// cos/sin tables for positions `start..start+len`.
    pub fn rope(&self, start: i64, len: i64, kind: Kind, device: Device) -> RopeTables {
        let positions = Tensor::arange_start(start, start + len, (Kind::Int64, device));
        let end = start + len;
        RopeTables {
            global: self.rotary.cos_sin(&positions, end, kind),
            local: self
                .local_rotary
                .as_ref()
                .map(|r| r.cos_sin(&positions, end, kind)),
            segments: None,
            segment_bias: None,
        }
    }

    /// Logits (`[..., V]`) of hidden states, in the activation dtype (soft-capped for Gemma 2).
    pub fn head(&self, hidden: &Tensor) -> Tensor {
        let logits = hidden.linear::<Tensor>(self.head_weight(), None);
        match self.final_softcap {
            Some(c) => (logits / c).tanh() * c,
            None => logits,
        }
    }
}

/// The tensors of [`Unit::Embedding`].
pub fn embedding_tensors(embed_tokens: &Tensor) -> Vec<(String, Tensor)> {
    vec![(names::embed_tokens().weight(), embed_tokens.shallow_clone())]
}

/// The tensors of [`Unit::Head`]: the final norm and `lm_head`, or the embedding it is tied to
/// (under the embedding's name).
pub fn head_tensors(
    norm: &RmsNorm,
    lm_head: Option<&Tensor>,
    embed_tokens: &Tensor,
) -> Vec<(String, Tensor)> {
    let head = match lm_head {
        Some(w) => (names::lm_head().weight(), w.shallow_clone()),
        None => (names::embed_tokens().weight(), embed_tokens.shallow_clone()),
    };
    vec![(names::norm().weight(), norm.weight.shallow_clone()), head]
}
