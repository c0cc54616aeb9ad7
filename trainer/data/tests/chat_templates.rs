//! Golden tests: our rendering and tokenisation of chat templates against `transformers`'
//! `apply_chat_template` (tests/reference/data_chat_templates.py), for Llama 2, Llama 3, Mistral,
//! Qwen2.5, Qwen3, Gemma 3, Phi-3.5, Phi-4 and plain ChatML templates, both as `template: auto` (the model's own Jinja template
//! through minijinja) and as the LLaMA-Factory named template of the same family.

use std::path::{Path, PathBuf};
use std::process::Command;

use lf_data::{load_tokenizer, ChatTemplate, EncodeOptions, TokenizerBundle, IGNORE_INDEX};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    std::env::var_os("LF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

/// Runs the reference script once into a temporary directory.
fn golden() -> (tempfile::TempDir, Vec<Value>) {
    let py = python();
    assert!(py.exists(), "Python reference interpreter {} is missing: set LF_PYTHON or run the reference install script", py.display());
    let dir = tempfile::tempdir().expect("tempdir");
    let script = repo_root().join("tests/reference/data_chat_templates.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("golden.json")).expect("golden.json");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("golden json");
    assert_eq!(cases.len(), 27);
    (dir, cases)
}

struct Case {
    template: String,
    system: Option<String>,
    turns: Vec<(String, String)>,
    text: String,
    ids: Vec<u32>,
    prompt_text: String,
    prompt_ids: Vec<u32>,
}

fn parse(v: &Value) -> Case {
    let ids = |k: &str| {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    Case {
        template: v["template"].as_str().unwrap().to_string(),
        system: v["system"].as_str().map(str::to_string),
        turns: v["turns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t[0].as_str().unwrap().to_string(),
                    t[1].as_str().unwrap().to_string(),
                )
            })
            .collect(),
        text: v["text"].as_str().unwrap().to_string(),
        ids: ids("ids"),
        prompt_text: v["prompt_text"].as_str().unwrap().to_string(),
        prompt_ids: ids("prompt_ids"),
    }
}

fn full_ids(t: &ChatTemplate, tok: &TokenizerBundle, c: &Case) -> Vec<u32> {
    t.encode_pairs(tok, c.system.as_deref(), &c.turns)
        .unwrap()
        .into_iter()
        .flat_map(|(p, r)| p.into_iter().chain(r))
        .collect()
}

fn history(c: &Case) -> (&[(String, String)], &str) {
    let (last, hist) = c.turns.split_last().unwrap();
    (hist, last.0.as_str())
}

/// Qwen3's own template writes an empty `<think>` block on the response after the last user
/// message only, so a conversation's rendering does not extend the rendering of its first turns:
/// `auto` renders it and its generation prompts exactly, but refuses to locate the responses for
/// training (naming the named template to use). LLaMA-Factory's `qwen3` (a reasoning template)
/// opens every response with the empty thought: Qwen3's text with the block on every turn.
fn check_qwen3_multi_turn(c: &Case, tok: &TokenizerBundle, ctx: &str) {
    let auto = ChatTemplate::resolve(Some("auto"), tok).unwrap();
    assert_eq!(
        auto.render_conversation(tok, c.system.as_deref(), &c.turns)
            .unwrap(),
        c.text,
        "{ctx}: auto text"
    );
    let (hist, user) = history(c);
    assert_eq!(
        auto.encode_prompt(tok, c.system.as_deref(), hist, user)
            .unwrap(),
        c.prompt_ids,
        "{ctx}: auto prompt ids"
    );
    let err = auto
        .encode_pairs(tok, c.system.as_deref(), &c.turns)
        .unwrap_err()
        .to_string();
    assert!(err.contains("prefix-consistent"), "{ctx}: {err}");
    let thought = "<think>\n\n</think>\n\n";
    let header = "<|im_start|>assistant\n";
    let every_turn = c
        .text
        .replace(&format!("{header}{thought}"), header)
        .replace(header, &format!("{header}{thought}"));
    let named = ChatTemplate::resolve(Some("qwen3"), tok).unwrap();
    assert_eq!(
        named
            .render_conversation(tok, c.system.as_deref(), &c.turns)
            .unwrap(),
        every_turn,
        "{ctx}: named text"
    );
    assert_eq!(
        named
            .encode_prompt(tok, c.system.as_deref(), hist, user)
            .unwrap(),
        c.prompt_ids,
        "{ctx}: named prompt ids"
    );
}

/// Phi-3's own template ends a whole conversation with EOS (`<|endoftext|>`) but not its turns, so a
/// conversation's rendering does not extend the rendering of its first turns: `auto` renders it
/// and its generation prompts exactly, but refuses to locate the responses of a multi-turn
/// conversation for training (naming the named template to use). LLaMA-Factory's `phi` is the
/// same text without that final EOS (its EOS is `<|end|>`, which ends every turn).
fn check_phi_multi_turn(c: &Case, tok: &TokenizerBundle, ctx: &str) {
    let auto = ChatTemplate::resolve(Some("auto"), tok).unwrap();
    assert_eq!(
        auto.render_conversation(tok, c.system.as_deref(), &c.turns)
            .unwrap(),
        c.text,
        "{ctx}: auto text"
    );
    let (hist, user) = history(c);
    assert_eq!(
        auto.encode_prompt(tok, c.system.as_deref(), hist, user)
            .unwrap(),
        c.prompt_ids,
        "{ctx}: auto prompt ids"
    );
    let err = auto
        .encode_pairs(tok, c.system.as_deref(), &c.turns)
        .unwrap_err()
        .to_string();
    assert!(err.contains("prefix-consistent"), "{ctx}: {err}");
    check_phi_named(c, tok, ctx);
}

/// LLaMA-Factory's `phi`: Phi-3's text and ids without the conversation's final EOS; the same
/// generation prompts.
fn check_phi_named(c: &Case, tok: &TokenizerBundle, ctx: &str) {
    let named = ChatTemplate::resolve(Some("phi"), tok).unwrap();
    let text = c
        .text
        .strip_suffix("<|endoftext|>")
        .expect("Phi-3's template ends a conversation with EOS");
    assert_eq!(
        named
            .render_conversation(tok, c.system.as_deref(), &c.turns)
            .unwrap(),
        text,
        "{ctx}: named text"
    );
    let eos = tok.token_id("<|endoftext|>").unwrap();
    let (last, ids) = c.ids.split_last().unwrap();
    assert_eq!(*last, eos, "{ctx}");
    assert_eq!(full_ids(&named, tok, c), ids, "{ctx}: named ids");
    let (hist, user) = history(c);
    assert_eq!(
        named
            .encode_prompt(tok, c.system.as_deref(), hist, user)
            .unwrap(),
        c.prompt_ids,
        "{ctx}: named prompt ids"
    );
}

#[test]
fn auto_and_named_templates_match_transformers() {
    let (dir, cases) = golden();
    let mut checked = 0;
    for v in &cases {
        let c = parse(v);
        let tok = load_tokenizer(&dir.path().join(&c.template)).unwrap();
        let ctx = format!("{} conversation {}", c.template, v["conversation"]);
        if c.template == "qwen3" && c.turns.len() > 1 {
            check_qwen3_multi_turn(&c, &tok, &ctx);
            checked += 1;
            continue;
        }
        if c.template == "phi" && c.turns.len() > 1 {
            check_phi_multi_turn(&c, &tok, &ctx);
            checked += 1;
            continue;
        }

        // `auto` (also what an unset template resolves to, since the tokenizer has one).
        let auto = ChatTemplate::resolve(None, &tok).unwrap();
        assert_eq!(auto.name(), "auto");
        assert_eq!(
            auto.render_conversation(&tok, c.system.as_deref(), &c.turns)
                .unwrap(),
            c.text,
            "{ctx}: auto text"
        );
        assert_eq!(full_ids(&auto, &tok, &c), c.ids, "{ctx}: auto ids");
        let (hist, user) = history(&c);
        assert_eq!(
            auto.render_prompt(&tok, c.system.as_deref(), hist, user)
                .unwrap(),
            c.prompt_text,
            "{ctx}: auto prompt text"
        );
        assert_eq!(
            auto.encode_prompt(&tok, c.system.as_deref(), hist, user)
                .unwrap(),
            c.prompt_ids,
            "{ctx}: auto prompt ids"
        );

        // Every response is trained, every prompt masked; responses decode to the answer text.
        let opts = EncodeOptions {
            cutoff_len: 4096,
            train_on_prompt: false,
            mask_history: false,
        };
        let (ids, labels) = auto
            .encode_conversation(&tok, c.system.as_deref(), &c.turns, opts)
            .unwrap();
        assert_eq!(ids, c.ids);
        let trained: Vec<u32> = labels
            .iter()
            .filter(|&&l| l != IGNORE_INDEX)
            .map(|&l| l as u32)
            .collect();
        let trained_text = tok.decode(&trained, false).unwrap();
        for (u, a) in &c.turns {
            let first_word = a
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches(['.', ',', ';']);
            assert!(
                trained_text.contains(first_word),
                "{ctx}: answer `{a}` not in trained text `{trained_text}`"
            );
            let user_word = u.split_whitespace().next().unwrap();
            assert!(
                !trained_text.contains(user_word),
                "{ctx}: prompt `{u}` leaked into trained text `{trained_text}`"
            );
        }
        assert!(!auto.stop_token_ids(&tok).is_empty());

        checked += 1;
        if c.template == "phi" {
            check_phi_named(&c, &tok, &ctx);
            continue;
        }
        // The LLaMA-Factory template of the same family.
        let named = ChatTemplate::resolve(Some(&c.template), &tok).unwrap();
        let text = named
            .render_conversation(&tok, c.system.as_deref(), &c.turns)
            .unwrap();
        let ids = full_ids(&named, &tok, &c);
        let prompt_ids = named
            .encode_prompt(&tok, c.system.as_deref(), hist, user)
            .unwrap();
        if matches!(c.template.as_str(), "llama2" | "mistral") {
            // LLaMA-Factory's llama2/mistral formats differ from the official Jinja templates only in
            // spaces around [INST]/[/INST] and the answer (invisible to SentencePiece's "▁" merging);
            // everything else must agree.
            let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            let is_ws = |id: &u32| {
                tok.tokenizer
                    .id_to_token(*id)
                    .is_some_and(|t| t.trim().is_empty())
            };
            let strip = |v: &[u32]| v.iter().copied().filter(|i| !is_ws(i)).collect::<Vec<_>>();
            assert_eq!(squash(&text), squash(&c.text), "{ctx}: named text");
            assert_eq!(strip(&ids), strip(&c.ids), "{ctx}: named ids");
            assert_eq!(
                strip(&prompt_ids),
                strip(&c.prompt_ids),
                "{ctx}: named prompt ids"
            );
        } else {
            assert_eq!(text, c.text, "{ctx}: named text");
            assert_eq!(ids, c.ids, "{ctx}: named ids");
            assert_eq!(prompt_ids, c.prompt_ids, "{ctx}: named prompt ids");
        }
    }
    assert_eq!(checked, 27);
}

#[test]
fn stop_tokens_include_the_turn_end_marker() {
    let (dir, _) = golden();
    let tok = load_tokenizer(&dir.path().join("llama3")).unwrap();
    let eot = tok.token_id("<|eot_id|>").unwrap();
    assert!(ChatTemplate::resolve(Some("auto"), &tok)
        .unwrap()
        .stop_token_ids(&tok)
        .contains(&eot));
    assert!(ChatTemplate::resolve(Some("llama3"), &tok)
        .unwrap()
        .stop_token_ids(&tok)
        .contains(&eot));
    let tok = load_tokenizer(&dir.path().join("chatml")).unwrap();
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert_eq!(
        ChatTemplate::resolve(Some("auto"), &tok)
            .unwrap()
            .stop_token_ids(&tok),
        vec![im_end]
    );
    let tok = load_tokenizer(&dir.path().join("gemma")).unwrap();
    let end_of_turn = tok.token_id("<end_of_turn>").unwrap();
    assert!(ChatTemplate::resolve(Some("gemma"), &tok)
        .unwrap()
        .stop_token_ids(&tok)
        .contains(&end_of_turn));
    // Phi-3 ends turns with <|end|> (its EOS is <|endoftext|>); Phi-4 with <|im_end|>.
    let tok = load_tokenizer(&dir.path().join("phi")).unwrap();
    let end = tok.token_id("<|end|>").unwrap();
    for name in ["auto", "phi"] {
        assert!(
            ChatTemplate::resolve(Some(name), &tok)
                .unwrap()
                .stop_token_ids(&tok)
                .contains(&end),
            "{name}"
        );
    }
    let tok = load_tokenizer(&dir.path().join("phi4")).unwrap();
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert!(ChatTemplate::resolve(Some("phi4"), &tok)
        .unwrap()
        .stop_token_ids(&tok)
        .contains(&im_end));
}
