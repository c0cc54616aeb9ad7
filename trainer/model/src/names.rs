//! Every tensor name lf-model reads or writes, derived from one path builder (as candle's
//! `VarBuilder::pp` does): Hugging Face checkpoint names, PEFT adapter names and quantised storage
//! names are all a [`TensorPath`] plus a suffix.
//!
//! ```
//! use lf_api::training::LinearModule;
//! use lf_model::names::{self, TensorPath};
//!
//! let q = TensorPath::root().pp("model").pp("layers").pp(3).pp("self_attn").pp("q_proj");
//! assert_eq!(q, names::linear(3, LinearModule::QProj));
//! assert_eq!(q.weight(), "model.layers.3.self_attn.q_proj.weight");
//! assert_eq!(q.lora_a(), "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight");
//! ```
//!
//! These names are a file format (transformers, PEFT, vLLM read them): they must not change.

use std::fmt;

use lf_api::training::LinearModule;

/// A dotted module path (`model.layers.3.self_attn.q_proj`), extended one segment at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TensorPath(String);

impl TensorPath {
    /// The empty path: the model itself.
    pub fn root() -> Self {
        TensorPath(String::new())
    }

    /// This path extended by `segment` (`pp` for "push prefix", as in candle).
    pub fn pp(&self, segment: impl fmt::Display) -> Self {
        if self.0.is_empty() {
            TensorPath(segment.to_string())
        } else {
            TensorPath(format!("{}.{segment}", self.0))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The module's `weight` tensor.
    pub fn weight(&self) -> String {
        self.pp("weight").0
    }

    /// The module's `bias` tensor.
    pub fn bias(&self) -> String {
        self.pp("bias").0
    }

    /// What follows this path in `name` (`model.layers` in `model.layers.3.mlp` → `3.mlp`), or
    /// `None` when `name` is not below this path.
    pub fn strip_from<'a>(&self, name: &'a str) -> Option<&'a str> {
        if self.0.is_empty() {
            return Some(name);
        }
        name.strip_prefix(self.0.as_str())?.strip_prefix('.')
    }

    /// The module's path in a PEFT model, which wraps the Hugging Face model twice
    /// (`PeftModel.base_model` is a `LoraModel` whose `model` is the transformers model).
    pub fn peft(&self) -> TensorPath {
        peft_root().pp(self)
    }

    /// PEFT's LoRA `A` of the linear at this (Hugging Face) path.
    pub fn lora_a(&self) -> String {
        self.peft().pp("lora_A").weight()
    }

    /// PEFT's LoRA `B` of the linear at this (Hugging Face) path.
    pub fn lora_b(&self) -> String {
        self.peft().pp("lora_B").weight()
    }

    /// PEFT's AdaLoRA `A` (`[r, in]`, a parameter of the layer: no `.weight`).
    pub fn adalora_a(&self) -> String {
        self.peft().pp("lora_A").0
    }

    /// PEFT's AdaLoRA `B` (`[out, r]`).
    pub fn adalora_b(&self) -> String {
        self.peft().pp("lora_B").0
    }

    /// PEFT's AdaLoRA singular values `E` (`[r, 1]`).
    pub fn adalora_e(&self) -> String {
        self.peft().pp("lora_E").0
    }

    /// PEFT's DoRA magnitude of the linear at this (Hugging Face) path.
    pub fn lora_magnitude_vector(&self) -> String {
        self.peft().pp("lora_magnitude_vector").0
    }
}

impl fmt::Display for TensorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where PEFT puts the Hugging Face model: every adapter name starts with `base_model.model.`.
pub fn peft_root() -> TensorPath {
    TensorPath::root().pp("base_model").pp("model")
}

/// The decoder stack (`LlamaModel`) inside `LlamaForCausalLM`.
pub fn model() -> TensorPath {
    TensorPath::root().pp("model")
}

/// The token embeddings.
pub fn embed_tokens() -> TensorPath {
    model().pp("embed_tokens")
}

/// The decoder layers' container.
pub fn layers() -> TensorPath {
    model().pp("layers")
}

/// Decoder layer `i`.
pub fn layer(i: usize) -> TensorPath {
    layers().pp(i)
}

/// The linear `module` of decoder layer `i` (`model.layers.{i}.self_attn.q_proj`).
pub fn linear(i: usize, module: LinearModule) -> TensorPath {
    layer(i).pp(module.parent()).pp(module.name())
}

/// PEFT's prefix of a decoder linear: `base_model.model.model.layers.{i}.self_attn.q_proj`.
pub fn peft_prefix(layer: usize, module: LinearModule) -> String {
    linear(layer, module).peft().0
}

/// The norm before attention in decoder layer `i`.
pub fn input_layernorm(i: usize) -> TensorPath {
    layer(i).pp("input_layernorm")
}

/// The norm before the MLP in decoder layer `i`.
pub fn post_attention_layernorm(i: usize) -> TensorPath {
    layer(i).pp("post_attention_layernorm")
}

/// Gemma's norm before the MLP in decoder layer `i`.
pub fn pre_feedforward_layernorm(i: usize) -> TensorPath {
    layer(i).pp("pre_feedforward_layernorm")
}

/// Gemma's norm of the MLP's output in decoder layer `i`.
pub fn post_feedforward_layernorm(i: usize) -> TensorPath {
    layer(i).pp("post_feedforward_layernorm")
}

/// Qwen3's per-head RMSNorm of the queries in decoder layer `i` (`self_attn.q_norm`).
pub fn q_norm(i: usize) -> TensorPath {
    layer(i).pp("self_attn").pp("q_norm")
}

/// Qwen3's per-head RMSNorm of the keys in decoder layer `i` (`self_attn.k_norm`).
pub fn k_norm(i: usize) -> TensorPath {
    layer(i).pp("self_attn").pp("k_norm")
}

/// A sparse MLP's linear inside one expert: SwiGLU's gate, up and down projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpertLinear {
    Gate,
    Up,
    Down,
}

impl ExpertLinear {
    pub const ALL: [ExpertLinear; 3] = [ExpertLinear::Gate, ExpertLinear::Up, ExpertLinear::Down];
}

/// How a mixture-of-experts family names its sparse MLP in checkpoints (the names on the Hub and
/// the ones transformers 5's `save_pretrained` writes back): Mixtral's
/// `block_sparse_moe.{gate, experts.{e}.w1|w3|w2}`, Qwen3-MoE's
/// `mlp.{gate, experts.{e}.gate_proj|up_proj|down_proj}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MoeNaming {
    Mixtral,
    Qwen3Moe,
}

impl MoeNaming {
    /// The naming of `model_type` (`None` for dense families).
    pub fn of(model_type: lf_api::architecture::ModelType) -> Option<MoeNaming> {
        use lf_api::architecture::ModelType;
        match model_type {
            ModelType::Mixtral => Some(MoeNaming::Mixtral),
            ModelType::Qwen3Moe => Some(MoeNaming::Qwen3Moe),
            _ => None,
        }
    }

    /// Decoder layer `i`'s sparse MLP.
    pub fn block(self, i: usize) -> TensorPath {
        layer(i).pp(match self {
            MoeNaming::Mixtral => "block_sparse_moe",
            MoeNaming::Qwen3Moe => "mlp",
        })
    }

    /// The router (`gate`, `[experts, hidden]`) of layer `i`.
    pub fn router(self, i: usize) -> TensorPath {
        self.block(i).pp("gate")
    }

    /// Linear `which` of expert `e` in layer `i`.
    pub fn expert(self, i: usize, e: usize, which: ExpertLinear) -> TensorPath {
        let name = match (self, which) {
            (MoeNaming::Mixtral, ExpertLinear::Gate) => "w1",
            (MoeNaming::Mixtral, ExpertLinear::Up) => "w3",
            (MoeNaming::Mixtral, ExpertLinear::Down) => "w2",
            (MoeNaming::Qwen3Moe, ExpertLinear::Gate) => "gate_proj",
            (MoeNaming::Qwen3Moe, ExpertLinear::Up) => "up_proj",
            (MoeNaming::Qwen3Moe, ExpertLinear::Down) => "down_proj",
        };
        self.block(i).pp("experts").pp(e).pp(name)
    }
}

/// transformers 5's path of decoder layer `i`'s sparse MLP, where PEFT's adapters of the router
/// and experts live: `mlp` for both families (transformers 5 renames Mixtral's
/// `block_sparse_moe`, and fuses the experts into 3-D parameters; see [`crate::moe`]).
pub fn peft_moe_block(i: usize) -> TensorPath {
    layer(i).pp("mlp")
}

/// The module PEFT's LoRA of layer `i`'s router is named after (`mlp.gate`, its `weight`
/// wrapped by a `ParamWrapper`).
pub fn peft_moe_router(i: usize) -> TensorPath {
    peft_moe_block(i).pp("gate")
}

/// The module PEFT's LoRA of one of layer `i`'s expert parameters is named after: PEFT wraps the
/// experts module once per targeted parameter, `gate_up_proj` first, so with both adapted
/// `gate_up_proj`'s wrapper is the inner one (`mlp.experts.base_layer`) and `down_proj`'s the
/// outer (`mlp.experts`); a single one is `mlp.experts`.
pub fn peft_moe_experts(i: usize, inner: bool) -> TensorPath {
    let experts = peft_moe_block(i).pp("experts");
    if inner {
        experts.pp("base_layer")
    } else {
        experts
    }
}

/// The final norm.
pub fn norm() -> TensorPath {
    model().pp("norm")
}

/// The language-model head (absent from the model when tied to the embeddings).
pub fn lm_head() -> TensorPath {
    TensorPath::root().pp("lm_head")
}

/// Where a checkpoint keeps the decoder's tensors. lf-model names every tensor as
/// `…ForCausalLM` does (`model.…`, `lm_head.…`); a multimodal checkpoint (Gemma 3's
/// `Gemma3ForConditionalGeneration`) nests the same decoder under its language model, beside a
/// vision tower and a projector, and this maps the names at the file boundary (base weights,
/// PEFT adapters, exports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointLayout {
    /// `…ForCausalLM`: the names as they are.
    #[default]
    CausalLm,
    /// The multimodal model as transformers 5 holds it (and as transformers 4.52–4.57 saved it):
    /// `model.language_model.…` (the decoder stack), `lm_head.…`, `model.vision_tower.…`,
    /// `model.multi_modal_projector.…`. PEFT's adapter names always follow this layout.
    Multimodal,
    /// The multimodal model as the Hub's files and transformers 5's `save_pretrained` store it:
    /// `language_model.model.…`, `language_model.lm_head.…`, `vision_tower.…`,
    /// `multi_modal_projector.…` (transformers' `llava` conversion maps it onto [`Self::Multimodal`]).
    MultimodalLegacy,
}

/// The multimodal model's language model in transformers 5 (`Gemma3Model.language_model`).
fn language_model() -> TensorPath {
    model().pp("language_model")
}

/// The legacy files' language model (`language_model`, a whole `…ForCausalLM`).
fn legacy_language_model() -> TensorPath {
    TensorPath::root().pp("language_model")
}

impl CheckpointLayout {
    /// The layout of a multimodal checkpoint whose tensors are `names`: the legacy one when some
    /// name starts with `language_model.`.
    pub fn of_multimodal<'a>(names: impl IntoIterator<Item = &'a str>) -> CheckpointLayout {
        let legacy = legacy_language_model();
        if names.into_iter().any(|n| legacy.strip_from(n).is_some()) {
            CheckpointLayout::MultimodalLegacy
        } else {
            CheckpointLayout::Multimodal
        }
    }

    /// The name, in a checkpoint of this layout, of the tensor lf-model names `name`.
    pub fn file_name(self, name: &str) -> String {
        match self {
            CheckpointLayout::CausalLm => name.to_string(),
            CheckpointLayout::Multimodal => match model().strip_from(name) {
                Some(rest) => language_model().pp(rest).0,
                None => name.to_string(),
            },
            CheckpointLayout::MultimodalLegacy => legacy_language_model().pp(name).0,
        }
    }

    /// The inverse of [`CheckpointLayout::file_name`]: lf-model's name of a checkpoint tensor, or
    /// `None` for one outside the language model (the vision tower, the projector).
    pub fn model_name(self, file: &str) -> Option<String> {
        match self {
            CheckpointLayout::CausalLm => Some(file.to_string()),
            CheckpointLayout::Multimodal => {
                if let Some(rest) = language_model().strip_from(file) {
                    Some(model().pp(rest).0)
                } else {
                    lm_head().strip_from(file).map(|_| file.to_string())
                }
            }
            CheckpointLayout::MultimodalLegacy => {
                legacy_language_model().strip_from(file).map(str::to_string)
            }
        }
    }

    /// PEFT's name, on the model this checkpoint loads as, of the adapter tensor lf-model names
    /// `peft` (`base_model.model.model.layers.0.…` →
    /// `base_model.model.model.language_model.layers.0.…` for a multimodal model, whichever layout
    /// its files have: PEFT wraps the model transformers builds).
    pub fn peft_name(self, peft: &str) -> String {
        let hf = match peft_root().strip_from(peft) {
            Some(hf) if self != CheckpointLayout::CausalLm => hf,
            _ => return peft.to_string(),
        };
        peft_root().pp(CheckpointLayout::Multimodal.file_name(hf)).0
    }

    /// The module path PEFT's `target_modules` names the linear at `path` by on this model
    /// (`model.language_model.layers.0.self_attn.q_proj` on a multimodal one).
    pub fn peft_module(self, path: &TensorPath) -> String {
        match self {
            CheckpointLayout::CausalLm => path.0.clone(),
            _ => CheckpointLayout::Multimodal.file_name(path.as_str()),
        }
    }

    /// Whether the checkpoint holds more than the decoder (its other tensors are left on disk and
    /// copied through by `export`).
    pub fn is_multimodal(self) -> bool {
        self != CheckpointLayout::CausalLm
    }
}

/// The decoder layer a Hugging Face or PEFT tensor name belongs to (`None` outside the layers).
pub fn layer_of(name: &str) -> Option<usize> {
    let hf = peft_root().strip_from(name).unwrap_or(name);
    let (index, _) = layers().strip_from(hf)?.split_once('.')?;
    let i = index.parse::<usize>().ok()?;
    // `model.layers.03.…` is no layer's name.
    (i.to_string() == index).then_some(i)
}

/// Whether `name` is RoPE's inverse-frequency cache, which older transformers saved with each
/// layer's attention (`model.layers.{i}.self_attn.rotary_emb.inv_freq`): lf-model computes it.
pub fn is_rope_cache(name: &str) -> bool {
    name.ends_with(TensorPath::root().pp("rotary_emb").pp("inv_freq").as_str())
}

/// A sequence-classification head (`…ForSequenceClassification.score`, `num_labels: 1`: a
/// reward model's value head). In a PEFT `SEQ_CLS` adapter it is a module to save, stored as
/// `base_model.model.score.weight`.
pub fn score() -> TensorPath {
    TensorPath::root().pp("score")
}

/// Whether `name` (Hugging Face or PEFT) is the [`score`] head's.
pub fn is_score(name: &str) -> bool {
    let hf = peft_root().strip_from(name).unwrap_or(name);
    score().strip_from(hf).is_some()
}

/// A base (non-adapter) tensor of a Llama-family checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BaseTensor {
    EmbedTokens,
    Layer(usize, LayerTensor),
    Norm,
    LmHead,
}

/// A base tensor of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerTensor {
    InputLayernorm,
    PostAttentionLayernorm,
    /// Gemma's norm before the MLP.
    PreFeedforwardLayernorm,
    /// Gemma's norm of the MLP's output.
    PostFeedforwardLayernorm,
    /// Qwen3's per-head query norm.
    QNorm,
    /// Qwen3's per-head key norm.
    KNorm,
    Weight(LinearModule),
    Bias(LinearModule),
}

impl LayerTensor {
    /// Every tensor a layer can hold, linears first (checkpoint order, biases after weights).
    fn all() -> impl Iterator<Item = LayerTensor> {
        LinearModule::ALL
            .into_iter()
            .chain(LinearModule::FUSED)
            .flat_map(|m| [LayerTensor::Weight(m), LayerTensor::Bias(m)])
            .chain([
                LayerTensor::InputLayernorm,
                LayerTensor::PostAttentionLayernorm,
                LayerTensor::PreFeedforwardLayernorm,
                LayerTensor::PostFeedforwardLayernorm,
                LayerTensor::QNorm,
                LayerTensor::KNorm,
            ])
    }
}

impl BaseTensor {
    /// The Hugging Face name.
    pub fn name(&self) -> String {
        match *self {
            BaseTensor::EmbedTokens => embed_tokens().weight(),
            BaseTensor::Norm => norm().weight(),
            BaseTensor::LmHead => lm_head().weight(),
            BaseTensor::Layer(i, LayerTensor::InputLayernorm) => input_layernorm(i).weight(),
            BaseTensor::Layer(i, LayerTensor::PostAttentionLayernorm) => {
                post_attention_layernorm(i).weight()
            }
            BaseTensor::Layer(i, LayerTensor::PreFeedforwardLayernorm) => {
                pre_feedforward_layernorm(i).weight()
            }
            BaseTensor::Layer(i, LayerTensor::PostFeedforwardLayernorm) => {
                post_feedforward_layernorm(i).weight()
            }
            BaseTensor::Layer(i, LayerTensor::QNorm) => q_norm(i).weight(),
            BaseTensor::Layer(i, LayerTensor::KNorm) => k_norm(i).weight(),
            BaseTensor::Layer(i, LayerTensor::Weight(m)) => linear(i, m).weight(),
            BaseTensor::Layer(i, LayerTensor::Bias(m)) => linear(i, m).bias(),
        }
    }

    /// The tensor a Hugging Face name denotes: the inverse of [`BaseTensor::name`].
    pub fn parse(name: &str) -> Option<BaseTensor> {
        let fixed = [
            BaseTensor::EmbedTokens,
            BaseTensor::Norm,
            BaseTensor::LmHead,
        ];
        if let Some(t) = fixed.into_iter().find(|t| t.name() == name) {
            return Some(t);
        }
        let i = layer_of(name)?;
        LayerTensor::all()
            .map(|t| BaseTensor::Layer(i, t))
            .find(|t| t.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_and_peft_names() {
        use LinearModule::*;
        assert_eq!(embed_tokens().weight(), "model.embed_tokens.weight");
        assert_eq!(norm().weight(), "model.norm.weight");
        assert_eq!(lm_head().weight(), "lm_head.weight");
        assert_eq!(
            input_layernorm(2).weight(),
            "model.layers.2.input_layernorm.weight"
        );
        assert_eq!(
            post_attention_layernorm(0).weight(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(q_norm(4).weight(), "model.layers.4.self_attn.q_norm.weight");
        assert_eq!(k_norm(0).weight(), "model.layers.0.self_attn.k_norm.weight");
        assert_eq!(
            linear(1, DownProj).bias(),
            "model.layers.1.mlp.down_proj.bias"
        );
        assert_eq!(
            linear(1, KProj).pp("weight").pp("absmax").as_str(),
            "model.layers.1.self_attn.k_proj.weight.absmax"
        );
        assert_eq!(
            peft_prefix(0, QProj),
            "base_model.model.model.layers.0.self_attn.q_proj"
        );
        assert_eq!(
            linear(5, UpProj).lora_b(),
            "base_model.model.model.layers.5.mlp.up_proj.lora_B.weight"
        );
        assert_eq!(
            linear(0, VProj).lora_magnitude_vector(),
            "base_model.model.model.layers.0.self_attn.v_proj.lora_magnitude_vector"
        );
    }

    #[test]
    fn names_parse_back() {
        for t in [
            BaseTensor::EmbedTokens,
            BaseTensor::Norm,
            BaseTensor::LmHead,
        ]
        .into_iter()
        .chain(LayerTensor::all().map(|t| BaseTensor::Layer(11, t)))
        {
            assert_eq!(BaseTensor::parse(&t.name()), Some(t), "{}", t.name());
        }
        for other in [
            "model.layers.03.input_layernorm.weight",
            "model.layers.3.self_attn.rotary_emb.inv_freq",
            "model.layers.3.mlp.q_proj.weight",
            "lm_head.bias",
        ] {
            assert_eq!(BaseTensor::parse(other), None, "{other}");
        }
        assert_eq!(layer_of("model.layers.7.mlp.up_proj.weight"), Some(7));
        assert_eq!(layer_of(&linear(7, LinearModule::OProj).lora_a()), Some(7));
        assert_eq!(layer_of("model.norm.weight"), None);
        assert_eq!(layer_of("model.layers.x.mlp"), None);
        assert!(is_rope_cache(
            "model.layers.0.self_attn.rotary_emb.inv_freq"
        ));
        assert!(!is_rope_cache("model.layers.0.self_attn.q_proj.weight"));
    }

    #[test]
    fn multimodal_layouts_map_both_ways() {
        use CheckpointLayout::*;
        let q = linear(2, LinearModule::QProj).weight();
        for (layout, file) in [
            (CausalLm, "model.layers.2.self_attn.q_proj.weight"),
            (
                Multimodal,
                "model.language_model.layers.2.self_attn.q_proj.weight",
            ),
            (
                MultimodalLegacy,
                "language_model.model.layers.2.self_attn.q_proj.weight",
            ),
        ] {
            assert_eq!(layout.file_name(&q), file);
            assert_eq!(layout.model_name(file).as_deref(), Some(q.as_str()));
        }
        assert_eq!(Multimodal.file_name("lm_head.weight"), "lm_head.weight");
        assert_eq!(
            MultimodalLegacy.file_name("lm_head.weight"),
            "language_model.lm_head.weight"
        );
        assert_eq!(
            MultimodalLegacy
                .model_name("language_model.lm_head.weight")
                .as_deref(),
            Some("lm_head.weight")
        );
        for vision in [
            "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight",
            "model.multi_modal_projector.mm_input_projection_weight",
        ] {
            assert_eq!(Multimodal.model_name(vision), None);
        }
        assert_eq!(
            MultimodalLegacy.model_name("vision_tower.embeddings.patch_embedding.weight"),
            None
        );
        assert_eq!(
            CheckpointLayout::of_multimodal(["vision_tower.x", "language_model.model.norm.weight"]),
            MultimodalLegacy
        );
        assert_eq!(
            CheckpointLayout::of_multimodal(["model.language_model.norm.weight"]),
            Multimodal
        );
        // PEFT names follow transformers 5's modules whatever the files' layout.
        let a = linear(0, LinearModule::QProj).lora_a();
        for layout in [Multimodal, MultimodalLegacy] {
            assert_eq!(
                layout.peft_name(&a),
                "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
            );
            assert_eq!(
                layout.peft_module(&linear(1, LinearModule::DownProj)),
                "model.language_model.layers.1.mlp.down_proj"
            );
        }
        assert_eq!(CausalLm.peft_name(&a), a);
    }

    #[test]
    fn expert_names_are_the_checkpoints() {
        use ExpertLinear::*;
        let m = MoeNaming::Mixtral;
        assert_eq!(
            m.router(1).weight(),
            "model.layers.1.block_sparse_moe.gate.weight"
        );
        assert_eq!(
            m.expert(0, 7, Up).weight(),
            "model.layers.0.block_sparse_moe.experts.7.w3.weight"
        );
        assert_eq!(
            m.expert(0, 7, Down).weight(),
            "model.layers.0.block_sparse_moe.experts.7.w2.weight"
        );
        let q = MoeNaming::Qwen3Moe;
        assert_eq!(q.router(2).weight(), "model.layers.2.mlp.gate.weight");
        assert_eq!(
            q.expert(2, 0, Gate).weight(),
            "model.layers.2.mlp.experts.0.gate_proj.weight"
        );
        assert_eq!(layer_of(&q.expert(3, 1, Down).weight()), Some(3));
        // PEFT's names on transformers 5's modules (both families).
        assert_eq!(
            peft_moe_router(1).lora_a(),
            "base_model.model.model.layers.1.mlp.gate.lora_A.weight"
        );
        assert_eq!(
            peft_moe_experts(0, true).lora_b(),
            "base_model.model.model.layers.0.mlp.experts.base_layer.lora_B.weight"
        );
        assert_eq!(
            peft_moe_experts(2, false).lora_a(),
            "base_model.model.model.layers.2.mlp.experts.lora_A.weight"
        );
        assert_eq!(layer_of(&peft_moe_experts(2, true).lora_a()), Some(2));
    }
}
