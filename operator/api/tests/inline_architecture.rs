//! A `config.json` pasted whole into `spec.model.architecture` plans as the file does, after the
//! API server has pruned, defaulted and validated it with the CRD's schema (emulated here:
//! [`admit`]): Gemma 3's multimodal layout (the decoder in `text_config`), in transformers 4's and
//! 5's spellings, and families whose config classes default keys differently from lf-api.

use lf_api::architecture::{ModelArchitecture, Multimodal};
use lf_api::FineTuneJob;
use serde_json::{json, Map, Value};

/// The Hub's `google/gemma-3-12b-it` `config.json` (transformers 4.50).
const GEMMA3_12B: &str = r#"{
  "architectures": ["Gemma3ForConditionalGeneration"],
  "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106],
  "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
  "model_type": "gemma3",
  "text_config": {
    "hidden_size": 3840, "intermediate_size": 15360, "model_type": "gemma3_text",
    "num_attention_heads": 16, "num_hidden_layers": 48, "num_key_value_heads": 8,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024
  },
  "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
  "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
    "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
    "patch_size": 14, "vision_use_head": false}
}"#;

/// The same checkpoint as transformers 5 saves it: `dtype`, per-layer-type `rope_parameters`,
/// `layer_types`, the decoder's defaults written out.
fn gemma3_12b_v5() -> Value {
    let layer_types: Vec<&str> = (0..48)
        .map(|i| {
            if (i + 1) % 6 == 0 {
                "full_attention"
            } else {
                "sliding_attention"
            }
        })
        .collect();
    json!({
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "dtype": "bfloat16", "transformers_version": "5.25.0", "image_token_id": 262144,
        "text_config": {
            "model_type": "gemma3_text", "vocab_size": 262208, "hidden_size": 3840,
            "intermediate_size": 15360, "num_hidden_layers": 48, "num_attention_heads": 16,
            "num_key_value_heads": 8, "head_dim": 256, "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256, "sliding_window": 1024,
            "layer_types": layer_types, "hidden_activation": "gelu_pytorch_tanh",
            "final_logit_softcapping": null, "attn_logit_softcapping": null, "use_cache": true,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}
            }
        },
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152}
    })
}

/// What the API server stores for `value` under `schema` (a structural schema): unknown fields
/// pruned unless `x-kubernetes-preserve-unknown-fields`, a property's `default` written where the
/// key is absent, and the types, enums, `required` lists and `anyOf` of `required` lists checked.
fn admit(value: &mut Value, schema: &Value, path: &str) -> Result<(), String> {
    if value.is_null() {
        return match schema.get("nullable") == Some(&json!(true)) {
            true => Ok(()),
            false => Err(format!("{path}: null is not allowed")),
        };
    }
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let ty = schema.get("type").and_then(Value::as_str);
    let ok = match ty {
        None => preserve,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("boolean") => value.is_boolean(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some(other) => return Err(format!("{path}: type {other} not emulated")),
    };
    if !ok {
        return Err(format!(
            "{path}: {value} is not a {}",
            ty.unwrap_or("value")
        ));
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!("{path}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array_mut()) {
        for (i, item) in list.iter_mut().enumerate() {
            admit(item, items, &format!("{path}[{i}]"))?;
        }
    }
    let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object_mut(),
    ) else {
        return Ok(());
    };
    if !preserve {
        obj.retain(|k, _| props.contains_key(k));
    }
    for (key, prop) in props {
        if let (false, Some(default)) = (obj.contains_key(key), prop.get("default")) {
            obj.insert(key.clone(), default.clone());
        }
        if let Some(v) = obj.get_mut(key) {
            admit(v, prop, &format!("{path}.{key}"))?;
        }
    }
    let has_all = |required: &Value| {
        required
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .all(|k| obj.contains_key(k))
    };
    if let Some(required) = schema.get("required") {
        if !has_all(required) {
            return Err(format!("{path}: missing one of {required}"));
        }
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
        if !branches
            .iter()
            .any(|b| b.get("required").is_some_and(has_all))
        {
            return Err(format!("{path}: satisfies none of anyOf {branches:?}"));
        }
    }
    Ok(())
}

/// The CRD's schema of `spec.model.architecture`.
fn architecture_schema() -> Value {
    let crd = serde_json::to_value(FineTuneJob::definition()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["model"]["properties"]["architecture"]
        .clone()
}

/// The architecture a FineTuneJob carrying `paste` inline plans with, after the API server.
fn inline(paste: &Value) -> Result<ModelArchitecture, String> {
    let mut stored = paste.clone();
    admit(
        &mut stored,
        &architecture_schema(),
        "spec.model.architecture",
    )?;
    let job = json!({
        "apiVersion": "lf-operator.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "demo"},
        "spec": {"model": {"name": "some/model", "architecture": stored},
                 "data": {"source": {"claimName": "data"}}, "output": {"claimName": "out"},
                 "resources": {"gpuMemoryGib": 24}, "training": {"lora_rank": 16}}
    });
    let job = FineTuneJob::from_yaml_str(&serde_yaml::to_string(&job).unwrap())
        .map_err(|e| e.to_string())?;
    Ok(job.spec.model.architecture.expect("an inline architecture"))
}

#[test]
fn a_pasted_multimodal_config_plans_as_its_file() {
    let v4: Value = serde_json::from_str(GEMMA3_12B).unwrap();
    for (layout, paste) in [("transformers 4", v4), ("transformers 5", gemma3_12b_v5())] {
        let file = ModelArchitecture::from_json_str(&paste.to_string()).unwrap();
        let pasted = inline(&paste).unwrap_or_else(|e| panic!("{layout}: {e}"));
        assert_eq!(pasted, file, "{layout}: the paste plans differently");
        assert_eq!(pasted.multimodal, Some(Multimodal::Gemma3), "{layout}");
        assert_eq!(
            (pasted.hidden_size, pasted.vocab_size, pasted.rope_theta),
            (3840, 262_208, 1e6),
            "{layout}"
        );
        assert!(
            pasted.tie_word_embeddings,
            "{layout}: Gemma 3's head is tied"
        );
        assert_eq!(pasted.rope_scaling.as_ref().map(|s| s.factor), Some(8.0));
        assert_eq!(pasted.torch_dtype.as_deref(), Some("bfloat16"), "{layout}");
    }
}

#[test]
fn the_api_server_writes_no_default_over_a_family_default() {
    // Gemma 2 leaves its tied head and soft caps to Gemma2Config; Phi-3's `su` scaling derives
    // its factor (131072 / 4096) from the context and spells `rope_type` `type`; Gemma 3's RoPE
    // base is 1e6 and its context 131072.
    let factors = json!(vec![1.0; 48]);
    for paste in [
        json!({"model_type": "gemma2", "vocab_size": 256000, "hidden_size": 3584,
               "intermediate_size": 14336, "num_hidden_layers": 42, "num_attention_heads": 16,
               "num_key_value_heads": 8, "head_dim": 256}),
        json!({"model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072,
               "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32,
               "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
               "rope_scaling": {"type": "su", "short_factor": factors, "long_factor": factors}}),
        json!({"model_type": "gemma3_text", "vocab_size": 96, "hidden_size": 64,
               "intermediate_size": 112, "num_hidden_layers": 2, "num_attention_heads": 4}),
    ] {
        let file = ModelArchitecture::from_json_str(&paste.to_string()).unwrap();
        let pasted = inline(&paste).unwrap();
        assert_eq!(pasted, file, "{}", paste["model_type"]);
    }
    let gemma2 = inline(
        &json!({"model_type": "gemma2", "vocab_size": 96, "hidden_size": 64,
        "intermediate_size": 112, "num_hidden_layers": 2, "num_attention_heads": 4}),
    )
    .unwrap();
    assert!(gemma2.tie_word_embeddings);
    assert_eq!(gemma2.logit_softcap(), Some(30.0));
}

#[test]
fn the_schema_refuses_what_cannot_plan() {
    let mut no_decoder: Map<String, Value> = serde_json::from_str(GEMMA3_12B).unwrap();
    no_decoder.remove("text_config");
    let err = inline(&Value::Object(no_decoder)).unwrap_err();
    assert!(err.contains("anyOf"), "{err}");
    let mut v: Value = serde_json::from_str(GEMMA3_12B).unwrap();
    v["text_config"]
        .as_object_mut()
        .unwrap()
        .remove("hidden_size");
    let err = inline(&v).unwrap_err();
    assert!(
        err.contains("text_config") && err.contains("hidden_size"),
        "{err}"
    );
    let mut v: Value = serde_json::from_str(GEMMA3_12B).unwrap();
    v["text_config"]["num_hidden_layers"] = json!("48");
    let err = inline(&v).unwrap_err();
    assert!(err.contains("text_config.num_hidden_layers"), "{err}");
    let err = inline(
        &json!({"model_type": "gpt2", "vocab_size": 96, "hidden_size": 64,
        "intermediate_size": 112, "num_hidden_layers": 2, "num_attention_heads": 4}),
    )
    .unwrap_err();
    assert!(err.contains("gpt2"), "{err}");
}
