//! The FineTuneJob schema of an inline `config.json` (`spec.model.architecture`): what the API
//! server keeps, defaults and rejects before [`super::deserialize_inline`] reads the paste as a
//! file is read.
//!
//! Three things must stay true for a pasted file to plan as the file does:
//! - **No schema defaults.** The API server writes a property's `default` into every object that
//!   leaves the key out, before lf-api sees it; the family's own default (Gemma's tied head,
//!   Gemma 3's RoPE base, Phi-3's longrope `factor`) would then never apply.
//! - **A multimodal wrapper is a `config.json` too.** Gemma 3's `Gemma3ForConditionalGeneration`
//!   nests the decoder's keys in `text_config` ([`super::lift_text_config`]): the schema declares
//!   `text_config` as an object with the same decoder keys, and the top level needs either the
//!   decoder's keys or `text_config` (an `anyOf` of `required` lists, which a structural schema
//!   allows).
//! - **The file's other keys are kept, not refused.** A `config.json` carries many keys that do
//!   not change the math (`architectures`, `transformers_version`, `vision_config`, ...):
//!   `kubectl apply`'s strict field validation would refuse each as unknown, so both levels
//!   preserve unknown fields. Every key lf-api reads stays declared and typed: the schema is
//!   structural, not an open map.

use schemars::Schema;
use serde_json::{json, Map, Value};

/// The keys a decoder's `config.json` must give (the top level's without `text_config`).
const DECODER_REQUIRED: [&str; 6] = [
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
];

/// The keys `text_config` must give: `model_type` is `gemma3_text` and the vocabulary is
/// `Gemma3TextConfig`'s when the Hub's files leave them out.
const TEXT_CONFIG_REQUIRED: [&str; 4] = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
];

/// Rewrites the derived schema of [`super::ModelArchitecture`] into that of the inline
/// `config.json` (see the module docs).
/// `model_types`: the top level's accepted `model_type`s (the decoder families and the multimodal
/// wrappers).
pub(super) fn inline_config(schema: &mut Schema, model_types: &[&str]) {
    let Some(root) = schema.as_object_mut() else {
        return;
    };
    strip_defaults(root);
    let Some(decoder) = root.get("properties").and_then(Value::as_object).cloned() else {
        return;
    };
    let text_config = json!({
        "description": "The text decoder's keys of a multimodal `config.json` (Gemma 3's \
            `Gemma3ForConditionalGeneration`, `model_type: gemma3`), as the file nests them: the \
            trainer loads only the language model.",
        "type": "object",
        "properties": decoder,
        "required": TEXT_CONFIG_REQUIRED,
        "x-kubernetes-preserve-unknown-fields": true,
    });
    let mut props = decoder;
    props.insert("model_type".into(), model_type_schema(model_types));
    props.insert("text_config".into(), text_config);
    root.insert("properties".into(), Value::Object(props));
    root.insert("required".into(), json!(["model_type"]));
    root.insert(
        "anyOf".into(),
        json!([{"required": DECODER_REQUIRED}, {"required": ["text_config"]}]),
    );
    root.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
}

/// The top level's `model_type`: a decoder family, or a multimodal wrapper whose decoder is in
/// `text_config`.
fn model_type_schema(names: &[&str]) -> Value {
    json!({
        "description": "The decoder family, or the multimodal wrapper (`gemma3`) whose decoder \
            `text_config` holds.",
        "type": "string",
        "enum": names,
    })
}

/// Removes every `default` below `node`'s properties and items (see the module docs).
pub(super) fn strip_defaults(node: &mut Map<String, Value>) {
    if let Some(props) = node.get_mut("properties").and_then(Value::as_object_mut) {
        for prop in props.values_mut().filter_map(Value::as_object_mut) {
            prop.remove("default");
            strip_defaults(prop);
        }
    }
    if let Some(items) = node.get_mut("items").and_then(Value::as_object_mut) {
        items.remove("default");
        strip_defaults(items);
    }
}

/// [`super::RopeScaling`]'s schema: no defaults (its `factor` is Phi-3's to derive), and the
/// legacy spelling `type` (the Hub's Phi-3 files say `"type": "su"`) accepted beside `rope_type`.
pub(super) fn rope_scaling(schema: &mut Schema) {
    let Some(root) = schema.as_object_mut() else {
        return;
    };
    strip_defaults(root);
    if let Some(props) = root.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert(
            "type".into(),
            json!({"description": "`rope_type`'s legacy spelling.", "type": "string"}),
        );
    }
    root.remove("required");
    root.insert(
        "anyOf".into(),
        json!([{"required": ["rope_type"]}, {"required": ["type"]}]),
    );
}
