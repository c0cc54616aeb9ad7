//! Test fixtures: a character-level tokenizer written on the fly (one token per character, so
//! lengths are easy to reason about) and small dataset directories.

#![allow(dead_code)]

use std::path::Path;

use serde_json::json;

pub const SPECIALS: &[&str] = &[
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<|im_start|>",
    "<|im_end|>",
];

/// Writes `tokenizer.json` (+ `tokenizer_config.json` with `config_extra` merged in) to `dir`.
pub fn write_char_tokenizer(dir: &Path, config_extra: serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let mut vocab = serde_json::Map::new();
    for (i, s) in SPECIALS.iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    let chars: Vec<char> = (32u8..127).map(char::from).chain(['\n', 'é']).collect();
    for c in chars {
        let n = vocab.len();
        vocab.entry(c.to_string()).or_insert(json!(n));
    }
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated", "invert": false},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string(&tok).unwrap(),
    )
    .unwrap();
    let mut config = json!({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"});
    if let (Some(c), Some(extra)) = (config.as_object_mut(), config_extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
}

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

pub const CHATML_JINJA: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
