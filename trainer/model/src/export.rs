//! `export`: merge the adapter into the base weights and write a Hugging Face model directory.

use std::path::Path;

use crate::causal_lm::CausalLm;
use crate::durable;
use crate::names::{self, BaseTensor, CheckpointLayout, LayerTensor};
use crate::safetensors_io::{self, HostTensor, MappedFile};
use crate::ModelError;

/// Files copied from the source model directory when present (tokenizer and generation config).
const COPIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    // A multimodal checkpoint's image processor, so the export loads with AutoProcessor too.
    "preprocessor_config.json",
    "processor_config.json",
];

fn kind_name(kind: tch::Kind) -> &'static str {
    match kind {
        tch::Kind::BFloat16 => "bfloat16",
        tch::Kind::Half => "float16",
        _ => "float32",
    }
}

/// The tensors of a multimodal checkpoint outside its language model (the vision tower, the
/// projector), which `export` copies from the source files unchanged (names, dtypes, values):
/// lf-model never loaded them. Empty for a `…ForCausalLM`.
struct PassThrough {
    files: Vec<MappedFile>,
    /// `(name, file index, stored bytes)`, in the source's order.
    tensors: Vec<(String, usize, u64)>,
}

impl PassThrough {
    fn open(src_model_dir: &Path, layout: CheckpointLayout) -> Result<Self, ModelError> {
        let mut out = PassThrough {
            files: Vec::new(),
            tensors: Vec::new(),
        };
        if !layout.is_multimodal() {
            return Ok(out);
        }
        for path in safetensors_io::weight_files(src_model_dir)? {
            let file = MappedFile::open(&path)?;
            let index = out.files.len();
            let mut names = file.names()?;
            names.sort();
            for name in names {
                if layout.model_name(&name).is_none() {
                    let bytes = file.stored_len(&name).unwrap_or(0);
                    out.tensors.push((name, index, bytes));
                }
            }
            out.files.push(file);
        }
        Ok(out)
    }

    fn sizes(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.tensors.iter().map(|(n, _, b)| (n.clone(), *b))
    }

    fn fetch(&self, name: &str) -> Result<HostTensor, ModelError> {
        let (_, index, _) = self
            .tensors
            .iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                source_desc: "the source checkpoint".into(),
            })?;
        let t = self.files[*index].load(name, None, tch::Device::Cpu)?;
        HostTensor::from_tensor(name, &t)
    }
}

impl CausalLm {
    /// Writes `out_dir` as a Hugging Face model: every weight (LoRA/DoRA merged as PEFT's
    /// `merge_and_unload` does, quantised weights dequantised) in the model dtype, as safetensors
    /// shards of at most `shard_bytes` (plus `model.safetensors.index.json` when there are several),
    /// `config.json` from `src_model_dir` with its dtype updated, and the tokenizer files. Each file
    /// is written atomically and durably ([`durable`]). A multimodal checkpoint is written in its
    /// source's layout, its vision tower and projector copied from the source unchanged
    /// ([`PassThrough`]), so transformers loads the export as the same multimodal class.
    pub fn export_merged(
        &self,
        out_dir: &Path,
        src_model_dir: &Path,
        shard_bytes: u64,
    ) -> Result<(), ModelError> {
        std::fs::create_dir_all(out_dir).map_err(|source| ModelError::Write {
            path: out_dir.to_path_buf(),
            source,
        })?;
        let kind = self.opts.dtype;
        let layout = self.layout;
        let mut sizes: Vec<(String, u64)> = self
            .base_layout()
            .into_iter()
            .map(|(n, shape)| {
                (
                    layout.file_name(&n),
                    shape.iter().product::<i64>() as u64 * kind.elt_size_in_bytes() as u64,
                )
            })
            .collect();
        let passthrough = PassThrough::open(src_model_dir, layout)?;
        sizes.extend(passthrough.sizes());
        // Merge one linear at a time while writing, so only one merged matrix exists at once.
        let merged = self.base_parameters_lazy();
        safetensors_io::write_sharded(out_dir, &sizes, shard_bytes, |file_name| {
            let Some(name) = layout.model_name(file_name) else {
                return passthrough.fetch(file_name);
            };
            let t = merged(&name).ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                source_desc: "the model".into(),
            })?;
            HostTensor::from_tensor(file_name, &t.to_kind(kind))
        })?;

        let src_config = src_model_dir.join("config.json");
        let text = std::fs::read_to_string(&src_config).map_err(|source| ModelError::Io {
            path: src_config.clone(),
            source,
        })?;
        let mut config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Json {
                path: src_config.clone(),
                message: e.to_string(),
            })?;
        if let Some(obj) = config.as_object_mut() {
            obj.remove("quantization_config");
            // transformers ≥ 5 writes `dtype`, older versions `torch_dtype`: update the one present.
            let key = if obj.contains_key("dtype") {
                "dtype"
            } else {
                "torch_dtype"
            };
            obj.insert(key.into(), kind_name(kind).into());
        }
        let path = out_dir.join("config.json");
        let text = serde_json::to_string_pretty(&config).map_err(|e| ModelError::Json {
            path: path.clone(),
            message: e.to_string(),
        })?;
        durable::write_atomic(&path, text.as_bytes())?;
        for file in COPIED_FILES {
            let src = src_model_dir.join(file);
            if let Ok(meta) = std::fs::metadata(&src) {
                let dst = out_dir.join(file);
                durable::write_with(&dst, meta.len(), |tmp| std::fs::copy(&src, tmp).map(drop))?;
            }
        }
        tracing::info!(out = %out_dir.display(), "merged model exported");
        Ok(())
    }

    /// A lookup from Hugging Face name to the tensor to export: decoder linear weights merged with
    /// their adapter (and dequantised), everything else as held.
    fn base_parameters_lazy(&self) -> impl Fn(&str) -> Option<tch::Tensor> + '_ {
        move |name: &str| match BaseTensor::parse(name) {
            Some(BaseTensor::Layer(i, LayerTensor::Weight(module))) => {
                let layer = self.model.layers.get(i)?;
                Some(layer.linear(module)?.merged_weight(self.opts.dtype))
            }
            None => {
                let i = names::layer_of(name)?;
                let moe = self.model.layers.get(i)?.sparse()?;
                moe.merged_weight(i, name, self.opts.dtype)
            }
            _ => self.dense_tensor(name),
        }
    }
}
