//! A tiny random Llama for tests (feature `test-support`): lf-model's own tests and the trainer's
//! build their models from here, so there is one fixture and one set of seeds.
//!
//! Tests compare numbers produced from these weights across runs and against each other: the draw
//! order and scales below must stay as they are.

use lf_api::architecture::ModelArchitecture;
use tch::{Device, Kind, Tensor};

use crate::names::{self, BaseTensor, LayerTensor};

/// The sizes of a tiny Llama (always 4 query heads, 2 key/value heads, RMSNorm ε = 1e-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinySize {
    pub vocab_size: u64,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_hidden_layers: u64,
}

impl TinySize {
    /// lf-model's tests: 3 layers, hidden 48, vocabulary 80.
    pub const MODEL: TinySize = TinySize {
        vocab_size: 80,
        hidden_size: 48,
        intermediate_size: 96,
        num_hidden_layers: 3,
    };
    /// The trainer's tests, which run many optimiser steps: 2 layers, hidden 32, vocabulary 64.
    pub const TRAINER: TinySize = TinySize {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
    };
}

/// A Llama architecture of `size`, its head tied to the embeddings when `tied`.
pub fn tiny_arch(size: TinySize, tied: bool) -> ModelArchitecture {
    let TinySize {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
    } = size;
    ModelArchitecture::from_json_str(&format!(
        r#"{{"model_type":"llama","vocab_size":{vocab_size},"hidden_size":{hidden_size},
            "intermediate_size":{intermediate_size},"num_hidden_layers":{num_hidden_layers},
            "num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5,
            "tie_word_embeddings":{tied}}}"#
    ))
    .expect("the tiny architecture is valid")
}

/// Random weights with Hugging Face names for `arch`, drawn from libtorch's global generator
/// seeded with `seed` (hold a lock around it when tests run in parallel threads): embeddings
/// N(0, 0.5²), linears N(0, 1/in), attention biases N(0, 0.1²) when the architecture has them, norms
/// (qwen3's q/k norms too) U(0.5, 1.5), an untied head N(0, 0.2²), a sparse MLP's router and
/// experts N(0, 1/in), drawn in checkpoint order.
pub fn random_weights(arch: &ModelArchitecture, seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    let h = arch.hidden_size as i64;
    let v = arch.vocab_size as i64;
    let opts = (Kind::Float, Device::Cpu);
    let norm = || Tensor::rand([h], opts) + 0.5;
    let mut out = vec![(
        BaseTensor::EmbedTokens.name(),
        Tensor::randn([v, h], opts) * 0.5,
    )];
    for i in 0..arch.num_hidden_layers as usize {
        let sparse =
            crate::names::MoeNaming::of(arch.model_type).filter(|_| arch.is_sparse_layer(i as u64));
        for &m in arch.linear_modules() {
            if sparse.is_some() && m.parent() != "self_attn" {
                continue;
            }
            let (fi, fo) = arch.linear_shape(m);
            let path = names::linear(i, m);
            out.push((
                path.weight(),
                Tensor::randn([fo as i64, fi as i64], opts) * (1.0 / (fi as f64).sqrt()),
            ));
            if arch.linear_has_bias(m) {
                out.push((path.bias(), Tensor::randn([fo as i64], opts) * 0.1));
            }
        }
        // A sparse MLP: its router and every expert's linears, N(0, 1/in).
        for (name, shape) in sparse
            .map(|naming| crate::moe::weight_layout(arch, naming, i))
            .unwrap_or_default()
        {
            let scale = 1.0 / (shape[1] as f64).sqrt();
            out.push((name, Tensor::randn(shape, opts) * scale));
        }
        for t in [
            LayerTensor::InputLayernorm,
            LayerTensor::PostAttentionLayernorm,
        ] {
            out.push((BaseTensor::Layer(i, t).name(), norm()));
        }
        if arch.model_type.is_gemma() {
            for t in [
                LayerTensor::PreFeedforwardLayernorm,
                LayerTensor::PostFeedforwardLayernorm,
            ] {
                out.push((BaseTensor::Layer(i, t).name(), norm()));
            }
        }
        if arch.qk_norm() {
            let d = arch.head_dim() as i64;
            for t in [LayerTensor::QNorm, LayerTensor::KNorm] {
                out.push((
                    BaseTensor::Layer(i, t).name(),
                    Tensor::rand([d], opts) + 0.5,
                ));
            }
        }
    }
    out.push((BaseTensor::Norm.name(), norm()));
    if !arch.tie_word_embeddings {
        out.push((BaseTensor::LmHead.name(), Tensor::randn([v, h], opts) * 0.2));
    }
    out
}
