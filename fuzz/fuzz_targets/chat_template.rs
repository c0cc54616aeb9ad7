//! `lf_data::template::jinja::JinjaTemplate` compile + render on an arbitrary template and
//! conversation: never a panic, and every render ends (the fuel limit) within libFuzzer's -timeout
//! and -rss_limit_mb, with output under the cap.
#![no_main]

use lf_data::template::jinja::{JinjaTemplate, RenderVars, MAX_OUTPUT_BYTES};
use libfuzzer_sys::fuzz_target;

/// Separates the template from the messages, and the messages from each other.
const SEP: char = '\u{0}';

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split(SEP);
    let source = parts.next().unwrap_or_default();
    let Ok(tmpl) = JinjaTemplate::compile(source) else {
        return;
    };
    let roles = ["system", "user", "assistant"];
    let contents: Vec<&str> = parts.take(8).collect();
    let messages: Vec<(&str, &str)> = if contents.is_empty() {
        vec![("user", "Hi"), ("assistant", "Hello!")]
    } else {
        contents
            .iter()
            .enumerate()
            .map(|(i, c)| (roles[i % roles.len()], *c))
            .collect()
    };
    let vars = RenderVars {
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        unk_token: None,
        pad_token: None,
    };
    for add_generation_prompt in [false, true] {
        if let Ok(out) = tmpl.render(&messages, add_generation_prompt, &vars) {
            assert!(out.len() <= MAX_OUTPUT_BYTES);
        }
    }
});
