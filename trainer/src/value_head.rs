//! The value head of `stage: rm`: `score.weight` `[1, H]` (fp32, no bias), the reward of a
//! sequence being `score · h` at its last token, as transformers' `…ForSequenceClassification`
//! with `num_labels: 1` computes it (the model TRL's `RewardTrainer` trains).
//!
//! Saved in the format transformers and PEFT load as a reward model: with LoRA, a PEFT `SEQ_CLS`
//! adapter whose `modules_to_save` is `score`, the head stored as `base_model.model.score.weight`
//! beside the LoRA tensors (`AutoModelForSequenceClassification.from_pretrained(base,
//! num_labels=1)` then `PeftModel.from_pretrained`); with `full`/`freeze`, the exported model is
//! `…ForSequenceClassification` with `score.weight`. Errors are lf-model's (files and tensors);
//! the trainer classifies them as it does the model's.

use std::collections::BTreeMap;
use std::path::Path;

use lf_model::safetensors_io::{self, HostTensor, MappedFile};
use lf_model::{names, ModelError, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use tch::{Device, Kind, Tensor};

/// A `full`/`freeze` checkpoint's value head, beside its trainable weights.
pub const VALUE_HEAD_FILE: &str = "value_head.safetensors";
/// The reward model export's file of `score.weight`, beside the weight shards (whose names it
/// never takes).
pub const HEAD_FILE: &str = "model-score.safetensors";

/// The value head: a trainable `[1, H]` fp32 leaf.
pub struct ValueHead {
    pub weight: Tensor,
    /// Its name in what is saved: PEFT's under LoRA, transformers' otherwise.
    pub name: String,
}

impl ValueHead {
    /// A new head as transformers initialises `score` (normal, mean 0, std
    /// `initializer_range`), drawn from libtorch's generator seeded with `seed`.
    pub fn init(
        hidden: i64,
        initializer_range: f64,
        seed: u64,
        device: Device,
        lora: bool,
    ) -> Self {
        tch::manual_seed(seed as i64);
        let weight = (Tensor::randn([1, hidden], (Kind::Float, device)) * initializer_range)
            .set_requires_grad(true);
        ValueHead {
            weight,
            name: Self::name_for(lora),
        }
    }

    /// The same head (its weight shares storage, and its gradient, with this one's).
    pub fn shallow_clone(&self) -> Self {
        ValueHead {
            weight: self.weight.shallow_clone(),
            name: self.name.clone(),
        }
    }

    pub fn name_for(lora: bool) -> String {
        if lora {
            names::score().peft().weight()
        } else {
            names::score().weight()
        }
    }

    /// The rewards `[B]` (fp32) of final hidden states `[B, H]`.
    pub fn rewards(&self, hidden: &Tensor) -> Tensor {
        hidden
            .to_kind(Kind::Float)
            .matmul(&self.weight.transpose(0, 1))
            .squeeze_dim(1)
    }

    /// Replaces the head's values with `file`'s tensor of its name; `Ok(false)` when the file
    /// has none (an adapter trained for another stage).
    pub fn load_from(&self, file: &Path) -> Result<bool, ModelError> {
        let mapped = MappedFile::open(file)?;
        if !mapped.names()?.contains(&self.name) {
            return Ok(false);
        }
        let t = mapped.load(&self.name, Some(Kind::Float), self.weight.device())?;
        if t.size() != self.weight.size() {
            return Err(ModelError::ShapeMismatch {
                name: self.name.clone(),
                source_desc: file.display().to_string(),
                expected: self.weight.size(),
                found: t.size(),
            });
        }
        tch::no_grad(|| self.weight.shallow_clone().copy_(&t));
        Ok(true)
    }

    /// Writes the head alone to `path` (a `full`/`freeze` checkpoint).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        safetensors_io::write_file(path, &self.alone()?)
    }

    /// Adds the head to the PEFT adapter in `dir` and makes it a `SEQ_CLS` adapter that saves
    /// `score`.
    pub fn add_to_adapter(&self, dir: &Path) -> Result<(), ModelError> {
        let weights = dir.join(ADAPTER_WEIGHTS);
        let file = MappedFile::open(&weights)?;
        let mut map = self.alone()?;
        for name in file.names()? {
            let t = file.load(&name, None, Device::Cpu)?;
            map.insert(name.clone(), HostTensor::from_tensor(&name, &t)?);
        }
        drop(file);
        safetensors_io::write_file(&weights, &map)?;
        let path = dir.join(ADAPTER_CONFIG);
        let mut config = read_json(&path)?;
        config["task_type"] = "SEQ_CLS".into();
        config["modules_to_save"] = serde_json::json!([names::score().as_str()]);
        write_json(&path, &config)
    }

    /// Turns the `full`/`freeze` export in `dir` (a `…ForCausalLM` directory) into the reward
    /// model: `score.weight` in a file of its own, [`HEAD_FILE`], which no weight shard uses,
    /// listed by the weight index (written for a single `model.safetensors`, which becomes its
    /// one shard; extended for a sharded export, its `total_size` included), and `config.json`'s architecture
    /// `…ForSequenceClassification` with one label and `pad_token_id` (transformers reads the
    /// score at each row's last token that is not the pad token).
    pub fn add_to_export(&self, dir: &Path, pad_token_id: Option<u32>) -> Result<(), ModelError> {
        let index_path = dir.join("model.safetensors.index.json");
        let mut index = if index_path.exists() {
            read_json(&index_path)?
        } else {
            // transformers loads a `model.safetensors` in preference to any index: the single
            // file becomes the index's one shard.
            let single = dir.join("model.safetensors");
            let shard = "model-00001-of-00001.safetensors";
            let names = MappedFile::open(&single)?.names()?;
            std::fs::rename(&single, dir.join(shard)).map_err(|source| ModelError::Write {
                path: single.clone(),
                source,
            })?;
            let map: serde_json::Map<String, serde_json::Value> =
                names.into_iter().map(|n| (n, shard.into())).collect();
            serde_json::json!({ "metadata": {}, "weight_map": map })
        };
        let head = self.alone()?;
        safetensors_io::write_file(&dir.join(HEAD_FILE), &head)?;
        index["weight_map"][self.name.as_str()] = HEAD_FILE.into();
        if let Some(total) = index["metadata"]["total_size"].as_u64() {
            let bytes = (self.weight.numel() * self.weight.kind().elt_size_in_bytes()) as u64;
            index["metadata"]["total_size"] = (total + bytes).into();
        }
        write_json(&index_path, &index)?;

        let config_path = dir.join("config.json");
        let mut config = read_json(&config_path)?;
        let archs: Vec<String> = config["architectures"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .map(seq_cls_class)
                    .collect()
            })
            .unwrap_or_default();
        config["architectures"] = serde_json::json!(archs);
        config["id2label"] = serde_json::json!({"0": "LABEL_0"});
        config["label2id"] = serde_json::json!({"LABEL_0": 0});
        if let Some(pad) = pad_token_id {
            config["pad_token_id"] = pad.into();
        }
        write_json(&config_path, &config)
    }

    /// The head as the only entry of a safetensors map.
    fn alone(&self) -> Result<BTreeMap<String, HostTensor>, ModelError> {
        let host = HostTensor::from_tensor(&self.name, &self.weight.detach())?;
        Ok(BTreeMap::from([(self.name.clone(), host)]))
    }
}

/// `LlamaForCausalLM` → `LlamaForSequenceClassification`.
fn seq_cls_class(class: &str) -> String {
    let stem = class.strip_suffix("ForCausalLM").unwrap_or(class);
    format!("{stem}ForSequenceClassification")
}

fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    lf_model::durable::write_atomic(path, text.as_bytes())
}

/// transformers' `initializer_range` from the model's `config.json` (0.02, its default, when
/// absent).
pub fn initializer_range(model_dir: &Path) -> f64 {
    read_json(&model_dir.join("config.json"))
        .ok()
        .and_then(|c| c["initializer_range"].as_f64())
        .unwrap_or(0.02)
}
