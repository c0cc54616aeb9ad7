//! End-to-end `prepare`: formats, dataset_info.json, masking, truncation, splits, packing, the
//! cache (hit, overwrite, rank protocol) and every bad-input path.

mod common;

use std::path::Path;

use common::*;
use lf_api::training::TrainingConfig;
use lf_data::{
    load_tokenizer, prepare, DataContext, DataError, Example, PreparedData, TokenizerBundle,
    IGNORE_INDEX,
};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_char_tokenizer(&dir.path().join("model"), serde_json::json!({}));
        Fixture { dir }
    }
    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
    fn tok(&self) -> TokenizerBundle {
        load_tokenizer(&self.dir.path().join("model")).unwrap()
    }
    fn cfg(&self, yaml: &str) -> TrainingConfig {
        let mut c = TrainingConfig::from_yaml_str(yaml).unwrap();
        c.dataset_dir = self.data().display().to_string();
        c
    }
    fn ctx(&self, rank: usize, world: usize) -> DataContext {
        DataContext {
            rank,
            world_size: world,
            cache_dir: self.dir.path().join("cache"),
        }
    }
    fn run(&self, yaml: &str) -> Result<PreparedData, DataError> {
        prepare(&self.cfg(yaml), &self.tok(), &self.ctx(0, 1))
    }
}

fn text(tok: &TokenizerBundle, ids: &[u32]) -> String {
    tok.decode(ids, false).unwrap().replace(' ', "")
}

/// The label positions as text (decoded trained tokens).
fn trained(tok: &TokenizerBundle, e: &Example) -> String {
    let ids: Vec<u32> = e
        .labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    text(tok, &ids)
}

const ALPACA: &str = r#"[
  {"instruction": "Say hi", "input": "", "output": "hi"},
  {"instruction": "Add", "input": "1+1", "output": "2", "history": [["q0", "a0"]]}
]"#;

const SHAREGPT: &str = r#"{"conversations": [{"from": "human", "value": "u1"}, {"from": "gpt", "value": "g1"}, {"from": "human", "value": "u2"}, {"from": "gpt", "value": "g2"}], "system": "S"}
{"conversations": [{"from": "system", "value": "T"}, {"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}
"#;

const OPENAI: &str = r#"{"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]}
"#;

fn write_standard(f: &Fixture) {
    write(&f.data().join("alpaca.json"), ALPACA);
    write(&f.data().join("chat.jsonl"), SHAREGPT);
    write(&f.data().join("oai.jsonl"), OPENAI);
}

#[test]
fn formats_detected_without_dataset_info_and_masks_prompts() {
    let f = Fixture::new();
    write_standard(&f);
    let tok = f.tok();
    let d = f
        .run("dataset: alpaca,chat,oai.jsonl\ntemplate: chatml")
        .unwrap();
    assert_eq!((d.train.len(), d.eval.len(), d.stats.records), (5, 0, 5));
    assert!(!d.stats.cache_hit);
    // alpaca with empty input: prompt is the instruction alone; only the answer is trained.
    let e = &d.train[0];
    assert_eq!(
        text(&tok, &e.input_ids),
        "<|im_start|>user\nSayhi<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>\n"
    );
    assert_eq!(trained(&tok, e), "hi<|im_end|>\n");
    // history answers are trained; instruction and input are joined with a newline.
    let e = &d.train[1];
    assert!(
        text(&tok, &e.input_ids).contains("user\nAdd\n1+1<|im_end|>"),
        "{}",
        text(&tok, &e.input_ids)
    );
    assert_eq!(trained(&tok, e), "a0<|im_end|>\n2<|im_end|>\n");
    // sharegpt: system column, multi-turn with every prompt masked.
    let e = &d.train[2];
    assert!(text(&tok, &e.input_ids).starts_with("<|im_start|>system\nS<|im_end|>"));
    assert_eq!(trained(&tok, e), "g1<|im_end|>\ng2<|im_end|>\n");
    // a leading system message; OpenAI-style messages.
    assert!(text(&tok, &d.train[3].input_ids).starts_with("<|im_start|>system\nT<|im_end|>"));
    assert_eq!(trained(&tok, &d.train[4]), "world<|im_end|>\n");
    for e in &d.train {
        assert_eq!(e.input_ids.len(), e.labels.len());
    }
}

#[test]
fn dataset_info_columns_tags_and_train_on_prompt() {
    let f = Fixture::new();
    write(
        &f.data().join("raw/q.jsonl"),
        "{\"question\": \"why\", \"answer\": \"because\", \"sys\": \"be brief\"}\n",
    );
    write(
        &f.data().join("raw/conv.json"),
        r#"[{"dialog": [{"speaker": "me", "text": "hey"}, {"speaker": "bot", "text": "yo"}]}]"#,
    );
    write(
        &f.data().join("dataset_info.json"),
        r#"{
      "qa": {"file_name": "raw/q.jsonl", "columns": {"prompt": "question", "response": "answer", "system": "sys"}},
      "conv": {"file_name": "raw/conv.json", "formatting": "sharegpt", "columns": {"messages": "dialog"},
               "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}}
    }"#,
    );
    let tok = f.tok();
    let d = f.run("dataset: qa, conv\ntemplate: default").unwrap();
    assert_eq!(d.train.len(), 2);
    assert_eq!(
        text(&tok, &d.train[0].input_ids),
        "System:bebrief</s>\nHuman:why</s>\nAssistant:because</s>\n"
    );
    assert_eq!(trained(&tok, &d.train[0]), "because</s>\n");
    assert_eq!(trained(&tok, &d.train[1]), "yo</s>\n");
    let d = f
        .run("dataset: qa\ntemplate: default\ntrain_on_prompt: true")
        .unwrap();
    assert_eq!(
        trained(&tok, &d.train[0]),
        text(&tok, &d.train[0].input_ids)
    );
    // An unknown name lists what exists.
    let err = f
        .run("dataset: nope\ntemplate: default")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("qa") && err.contains("dataset_info.json"),
        "{err}"
    );
}

#[test]
fn bad_records_name_file_line_and_column() {
    let f = Fixture::new();
    write(&f.data().join("bad.jsonl"), "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"a\", \"output\": }\n{\"instruction\": \"c\", \"output\": \"d\"}\n");
    let err = f
        .run("dataset: bad\ntemplate: empty")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.jsonl:2:"), "{err}");
    let d = f
        .run("dataset: bad\ntemplate: empty\nskip_bad_examples: true")
        .unwrap();
    assert_eq!((d.train.len(), d.stats.skipped_bad), (2, 1));
    assert!(
        d.stats.bad_examples[0].contains("bad.jsonl:2:"),
        "{:?}",
        d.stats.bad_examples
    );

    // A record missing its response column, in a JSON array: the record's own line.
    write(
        &f.data().join("miss.json"),
        "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n  {\"instruction\": \"x\"}\n]\n",
    );
    let err = f
        .run("dataset: miss\ntemplate: empty")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("miss.json:3") && err.contains("`output`"),
        "{err}"
    );

    // sharegpt turns out of order.
    write(&f.data().join("order.jsonl"), "{\"conversations\": [{\"from\": \"gpt\", \"value\": \"x\"}, {\"from\": \"human\", \"value\": \"y\"}]}\n");
    let err = f
        .run("dataset: order\ntemplate: empty")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("order.jsonl:1") && err.contains("role `gpt`"),
        "{err}"
    );

    // A syntax error inside a JSON array names its line and column.
    write(
        &f.data().join("arr.json"),
        "[\n {\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\" \"a\"}\n]",
    );
    let err = f
        .run("dataset: arr\ntemplate: empty")
        .unwrap_err()
        .to_string();
    assert!(err.contains("arr.json:3:"), "{err}");
}

#[test]
fn truncation_follows_infer_seqlen_and_unlabelled_examples_are_counted() {
    let f = Fixture::new();
    // empty template: prompt = user text, response = answer (one token per character).
    write(
        &f.data().join("long.jsonl"),
        &format!(
            "{{\"instruction\": \"{}\", \"output\": \"{}\"}}\n",
            "p".repeat(30),
            "r".repeat(4)
        ),
    );
    let d = f
        .run("dataset: long\ntemplate: empty\ncutoff_len: 10")
        .unwrap();
    let e = &d.train[0];
    // Short target (2·4 < 10) kept whole; the source gets the remaining 6.
    assert_eq!(e.input_ids.len(), 10);
    assert_eq!(e.labels.iter().filter(|&&l| l != IGNORE_INDEX).count(), 4);
    assert_eq!(d.stats.truncated, 1);

    // An empty answer under `empty` leaves nothing to train on: dropped, and counted.
    write(&f.data().join("hist.jsonl"), "{\"instruction\": \"qq\", \"output\": \"\", \"history\": []}\n{\"instruction\": \"a\", \"output\": \"b\"}\n");
    let d = f.run("dataset: hist\ntemplate: empty").unwrap();
    assert_eq!((d.train.len(), d.stats.dropped_no_label), (1, 1));
}

#[test]
fn val_size_max_samples_and_eval_dataset() {
    let f = Fixture::new();
    let lines: String = (0..20)
        .map(|i| format!("{{\"instruction\": \"q{i}\", \"output\": \"a{i}\"}}\n"))
        .collect();
    write(&f.data().join("many.jsonl"), &lines);
    let a = f
        .run("dataset: many\ntemplate: empty\nval_size: 0.25\nseed: 3")
        .unwrap();
    assert_eq!((a.train.len(), a.eval.len()), (15, 5));
    let b = f
        .run("dataset: many\ntemplate: empty\nval_size: 0.25\nseed: 3\noverwrite_cache: true")
        .unwrap();
    assert_eq!(a.eval, b.eval, "seed-deterministic split");
    let c = f
        .run("dataset: many\ntemplate: empty\nval_size: 0.25\nseed: 4")
        .unwrap();
    assert_ne!(a.eval, c.eval, "another seed, another split");
    let d = f
        .run("dataset: many\ntemplate: empty\nval_size: 3")
        .unwrap();
    assert_eq!((d.train.len(), d.eval.len()), (17, 3));
    let e = f
        .run("dataset: many,many\ntemplate: empty\nmax_samples: 4")
        .unwrap();
    assert_eq!(e.train.len(), 8, "first 4 of each dataset");
    assert_eq!(e.train[0], e.train[4]);
    write(
        &f.data().join("ev.jsonl"),
        "{\"instruction\": \"e\", \"output\": \"f\"}\n",
    );
    let g = f
        .run("dataset: many\neval_dataset: ev\ntemplate: empty")
        .unwrap();
    assert_eq!((g.train.len(), g.eval.len()), (20, 1));
    let err = f
        .run("dataset: many\neval_dataset: ev\nval_size: 0.1\ntemplate: empty")
        .unwrap_err()
        .to_string();
    assert!(err.contains("val_size"), "{err}");
}

#[test]
fn pretraining_appends_eos_and_packs_blocks() {
    let f = Fixture::new();
    write(
        &f.data().join("corpus.jsonl"),
        "{\"text\": \"abcdef\"}\n{\"text\": \"ghi\"}\n",
    );
    let tok = f.tok();
    let eos = tok.eos.as_ref().unwrap().1;
    let d = f
        .run("dataset: corpus\nstage: pt\ntemplate: empty\ncutoff_len: 4")
        .unwrap();
    assert!(d.stats.packed);
    let lens: Vec<usize> = d.train.iter().map(|e| e.input_ids.len()).collect();
    assert_eq!(
        lens,
        vec![4, 4, 3],
        "11 tokens (6+eos+3+eos) in blocks of 4, tail kept"
    );
    assert_eq!(
        d.train[1].input_ids,
        vec![
            tok.token_id("e").unwrap(),
            tok.token_id("f").unwrap(),
            eos,
            tok.token_id("g").unwrap()
        ]
    );
    assert!(d.train.iter().all(|e| e
        .labels
        .iter()
        .zip(&e.input_ids)
        .all(|(&l, &t)| l == t as i32)));
    let d = f
        .run("dataset: corpus\nstage: pt\ntemplate: empty\ncutoff_len: 5\npacking: false")
        .unwrap();
    assert_eq!(d.train[0].input_ids.len(), 5);
    assert_eq!(d.train[1].input_ids.last(), Some(&eos));
    assert_eq!(d.stats.truncated, 1);
    // `chatml` (like LLaMA-Factory's qwen) replaces EOS by its stop word.
    let d = f
        .run("dataset: corpus\nstage: pt\ntemplate: chatml\npacking: false")
        .unwrap();
    assert_eq!(
        d.train[1].input_ids.last(),
        Some(&tok.token_id("<|im_end|>").unwrap())
    );
}

#[test]
fn sft_packing_fills_cutoff_len_bins() {
    let f = Fixture::new();
    let lines: String = (0..6)
        .map(|i| format!("{{\"instruction\": \"q{i}\", \"output\": \"a{i}\"}}\n"))
        .collect();
    write(&f.data().join("six.jsonl"), &lines);
    let d = f
        .run("dataset: six\ntemplate: empty\npacking: true\ncutoff_len: 8")
        .unwrap();
    // Each example is 4 tokens ("qN" + "aN"): two per bin.
    assert_eq!(d.train.len(), 3);
    assert!(d
        .train
        .iter()
        .all(|e| e.input_ids.len() == 8
            && e.labels.iter().filter(|&&l| l != IGNORE_INDEX).count() == 4));
}

#[test]
fn cache_hits_on_repeat_and_misses_on_any_change() {
    let f = Fixture::new();
    write_standard(&f);
    let a = f.run("dataset: alpaca,chat\ntemplate: chatml").unwrap();
    assert!(!a.stats.cache_hit);
    let b = f.run("dataset: alpaca,chat\ntemplate: chatml").unwrap();
    assert!(b.stats.cache_hit);
    assert_eq!(
        (a.train.clone(), a.eval.clone()),
        (b.train.clone(), b.eval.clone())
    );
    assert_eq!(a.stats.train_tokens, b.stats.train_tokens);
    assert!(
        !f.run("dataset: alpaca,chat\ntemplate: chatml\noverwrite_cache: true")
            .unwrap()
            .stats
            .cache_hit
    );
    assert!(
        !f.run("dataset: alpaca,chat\ntemplate: chatml\ncutoff_len: 100")
            .unwrap()
            .stats
            .cache_hit
    );
    assert!(
        !f.run("dataset: alpaca,chat\ntemplate: default")
            .unwrap()
            .stats
            .cache_hit
    );
    // Changing a data file's contents changes the key.
    write(&f.data().join("chat.jsonl"), &SHAREGPT.replace("g2", "g3"));
    assert!(
        !f.run("dataset: alpaca,chat\ntemplate: chatml")
            .unwrap()
            .stats
            .cache_hit
    );
    // tokenized_path overrides the context's cache dir.
    let tp = f.dir.path().join("tok");
    let d = f
        .run(&format!(
            "dataset: alpaca\ntemplate: chatml\ntokenized_path: {}",
            tp.display()
        ))
        .unwrap();
    assert!(Path::new(&d.stats.cache_path).starts_with(&tp));
    // A corrupt cache file is re-tokenised (rank 0), not trusted.
    std::fs::write(&d.stats.cache_path, b"LFDATA\x01\x00garbage").unwrap();
    let e = f
        .run(&format!(
            "dataset: alpaca\ntemplate: chatml\ntokenized_path: {}",
            tp.display()
        ))
        .unwrap();
    assert!(!e.stats.cache_hit);
    assert_eq!(e.train, d.train);
}

#[test]
fn other_ranks_wait_for_rank_zero_and_never_tokenise() {
    let f = Fixture::new();
    write_standard(&f);
    let cfg = f.cfg("dataset: alpaca,chat\ntemplate: chatml\nddp_timeout: 30");
    let tok = f.tok();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| prepare(&cfg, &f.tok(), &f.ctx(1, 2)));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let zero = prepare(&cfg, &tok, &f.ctx(0, 2)).unwrap();
        let one = waiter.join().unwrap().unwrap();
        assert!(one.stats.cache_hit && !zero.stats.cache_hit);
        assert_eq!(zero.train, one.train);
    });
    // Nobody writes: a clear timeout error.
    let cfg = f.cfg("dataset: alpaca\ntemplate: empty\nddp_timeout: 1");
    let err = prepare(&cfg, &tok, &f.ctx(1, 2)).unwrap_err().to_string();
    assert!(
        err.contains("rank 1 waited 1s") && err.contains("ddp_timeout"),
        "{err}"
    );
    // Rank 0 fails on bad data: the waiting rank fails fast with rank 0's message.
    write(&f.data().join("broken.jsonl"), "{oops\n");
    let cfg = f.cfg("dataset: broken\ntemplate: empty\nddp_timeout: 60");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| prepare(&cfg, &f.tok(), &f.ctx(1, 2)));
        assert!(prepare(&cfg, &tok, &f.ctx(0, 2)).is_err());
        let started = std::time::Instant::now();
        let err = waiter.join().unwrap().unwrap_err().to_string();
        assert!(
            err.contains("rank 0 failed") && err.contains("broken.jsonl:1"),
            "{err}"
        );
        assert!(started.elapsed().as_secs() < 30);
    });
}

#[test]
fn auto_template_from_tokenizer_config_and_default_system() {
    let f = Fixture::new();
    write_char_tokenizer(
        &f.dir.path().join("model"),
        serde_json::json!({"chat_template": CHATML_JINJA}),
    );
    write_standard(&f);
    let tok = f.tok();
    let d = f.run("dataset: alpaca\ndefault_system: D").unwrap();
    assert_eq!(d.stats.template, "auto");
    assert_eq!(text(&tok, &d.train[0].input_ids), "<|im_start|>system\nD<|im_end|>\n<|im_start|>user\nSayhi<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>\n");
    assert_eq!(trained(&tok, &d.train[0]), "hi<|im_end|>\n");
    // Without a chat template, an unset template means `empty`, and `auto` is an error.
    let g = Fixture::new();
    write_standard(&g);
    assert_eq!(g.run("dataset: alpaca").unwrap().stats.template, "empty");
    let err = g
        .run("dataset: alpaca\ntemplate: auto")
        .unwrap_err()
        .to_string();
    assert!(err.contains("chat_template"), "{err}");
}

#[test]
fn mask_history_trains_only_the_last_answer() {
    let f = Fixture::new();
    write_standard(&f);
    let tok = f.tok();
    let d = f
        .run("dataset: chat\ntemplate: chatml\nmask_history: true")
        .unwrap();
    assert_eq!(trained(&tok, &d.train[0]), "g2<|im_end|>\n");
    let handle = lf_data::spawn_prepare(
        f.cfg("dataset: chat\ntemplate: chatml\nmask_history: true"),
        std::sync::Arc::new(f.tok()),
        f.ctx(0, 1),
    )
    .unwrap();
    let background = handle.join().unwrap().unwrap();
    assert!(background.stats.cache_hit);
    assert_eq!(background.train, d.train);
    let ctx = DataContext::from_config(&f.cfg("output_dir: /tmp/x"), 0, 1);
    assert_eq!(ctx.cache_dir, Path::new("/tmp/x/.tokenized"));
}

#[test]
fn ranking_datasets_give_pairs_with_the_prompt_masked_and_cutoff_shared() {
    let f = Fixture::new();
    write(
        &f.data().join("pref_alpaca.json"),
        r#"[{"instruction": "Q", "input": "", "chosen": "good", "rejected": "no", "history": [["h", "a"]]}]"#,
    );
    write(
        &f.data().join("pref_chat.jsonl"),
        concat!(
            r#"{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "u1"}, {"from": "gpt", "value": "g1"}, {"from": "human", "value": "u2"}], "#,
            r#""chosen": {"from": "gpt", "value": "yes"}, "rejected": {"from": "gpt", "value": "nope"}}"#,
            "\n"
        ),
    );
    write(
        &f.data().join("dataset_info.json"),
        r#"{
      "pa": {"file_name": "pref_alpaca.json", "ranking": true, "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected", "history": "history"}},
      "pc": {"file_name": "pref_chat.jsonl", "formatting": "sharegpt", "ranking": true},
      "sft": {"file_name": "pref_alpaca.json"}
    }"#,
    );
    let tok = f.tok();
    let d = f
        .run("stage: dpo\ndataset: pa,pc\ntemplate: chatml")
        .unwrap();
    assert_eq!(d.train.len(), 2);
    // alpaca: the history turn and the instruction are the (masked) prompt; only the answers train.
    let e = &d.train[0];
    let r = e.rejected.as_deref().unwrap();
    let prompt = "<|im_start|>user\nh<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        text(&tok, &e.input_ids),
        format!("{prompt}good<|im_end|>\n")
    );
    assert_eq!(text(&tok, &r.input_ids), format!("{prompt}no<|im_end|>\n"));
    assert_eq!(trained(&tok, e), "good<|im_end|>\n");
    assert_eq!(trained(&tok, r), "no<|im_end|>\n");
    assert!(r.rejected.is_none());
    // sharegpt: system message, earlier turns in the prompt, chosen/rejected messages.
    let e = &d.train[1];
    let r = e.rejected.as_deref().unwrap();
    assert!(text(&tok, &e.input_ids).starts_with("<|im_start|>system\nS<|im_end|>"));
    assert!(text(&tok, &e.input_ids).contains("g1<|im_end|>\n<|im_start|>user\nu2"));
    assert_eq!(trained(&tok, e), "yes<|im_end|>\n");
    assert_eq!(trained(&tok, r), "nope<|im_end|>\n");
    // The pairs survive the cache.
    let again = f
        .run("stage: dpo\ndataset: pa,pc\ntemplate: chatml")
        .unwrap();
    assert!(again.stats.cache_hit);
    assert_eq!(again.train, d.train);
    // cutoff_len: the prompt and the longer answer share it (infer_seqlen); both answers get
    // the same length. chosen "good<|im_end|>\n" = 6 tokens, prompt 43: 2·6 < 10 fails,
    // 2·43 < 10 fails ⇒ int(10·6/49) = 1 answer token, 9 prompt tokens.
    let d = f
        .run("stage: dpo\ndataset: pa\ntemplate: chatml\ncutoff_len: 10\noverwrite_cache: true")
        .unwrap();
    let e = &d.train[0];
    assert_eq!((e.input_ids.len(), trained(&tok, e).as_str()), (10, "g"));
    assert_eq!(trained(&tok, e.rejected.as_deref().unwrap()), "n");
    assert_eq!(d.stats.truncated, 1);
    // Ranking data need the preference stage, and the preference stage needs ranking data.
    let err = f
        .run("dataset: pa\ntemplate: chatml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("stage: dpo"), "{err}");
    let err = f
        .run("stage: dpo\ndataset: sft\ntemplate: chatml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ranking"), "{err}");
    // A ranking conversation must end with the user's message.
    write(
        &f.data().join("pref_chat.jsonl"),
        r#"{"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "g"}], "chosen": {"from": "gpt", "value": "y"}, "rejected": {"from": "gpt", "value": "n"}}"#,
    );
    let err = f
        .run("stage: dpo\ndataset: pc\ntemplate: chatml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("must end with a `human` message"), "{err}");
}

#[test]
fn kto_datasets_give_tagged_examples_with_kl_sequences_and_survive_the_cache() {
    let f = Fixture::new();
    write(
        &f.data().join("fb_alpaca.json"),
        r#"[{"instruction": "A", "output": "yes", "tag": true},
            {"instruction": "B", "output": "no", "tag": false},
            {"instruction": "C", "output": "ok", "tag": true}]"#,
    );
    write(
        &f.data().join("fb_chat.jsonl"),
        concat!(
            r#"{"conversations": [{"from": "human", "value": "u1"}, {"from": "gpt", "value": "g1"}, {"from": "human", "value": "u2"}, {"from": "gpt", "value": "g2"}], "kto_tag": false}"#,
            "\n"
        ),
    );
    write(
        &f.data().join("dataset_info.json"),
        r#"{
      "fa": {"file_name": "fb_alpaca.json", "columns": {"prompt": "instruction", "response": "output", "kto_tag": "tag"}},
      "fc": {"file_name": "fb_chat.jsonl", "formatting": "sharegpt", "columns": {"messages": "conversations", "kto_tag": "kto_tag"}},
      "sft": {"file_name": "fb_alpaca.json"}
    }"#,
    );
    let tok = f.tok();
    let cfg = "stage: kto\ndataset: fa,fc\ntemplate: chatml\nper_device_train_batch_size: 2";
    let d = f.run(cfg).unwrap();
    let tags: Vec<Option<bool>> = d.train.iter().map(|e| e.kto_tag).collect();
    assert_eq!(tags, [Some(true), Some(false), Some(true), Some(false)]);
    // Only the last answer trains; earlier sharegpt turns are the prompt.
    assert_eq!(trained(&tok, &d.train[0]), "yes<|im_end|>\n");
    assert_eq!(trained(&tok, &d.train[3]), "g2<|im_end|>\n");
    assert!(text(&tok, &d.train[3].input_ids).contains("g1<|im_end|>\n<|im_start|>user\nu2"));
    // KL sequences: chunks of 2 in dataset order, each prompt with the other's answer.
    let kl = |i: usize| d.train[i].rejected.as_deref().unwrap();
    let user = |q: &str| format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(
        text(&tok, &kl(0).input_ids),
        format!("{}no<|im_end|>\n", user("A"))
    );
    assert_eq!(trained(&tok, kl(1)), "yes<|im_end|>\n");
    assert_eq!(trained(&tok, kl(2)), "g2<|im_end|>\n");
    assert_eq!(trained(&tok, kl(3)), "ok<|im_end|>\n");
    // The tags survive the cache; the KL sequences follow the batch size, not the cache.
    let again = f
        .run("stage: kto\ndataset: fa,fc\ntemplate: chatml\nper_device_train_batch_size: 4")
        .unwrap();
    assert!(again.stats.cache_hit);
    assert_eq!(
        trained(&tok, again.train[0].rejected.as_deref().unwrap()),
        "g2<|im_end|>\n"
    );
    // A tagged dataset needs stage kto, and stage kto needs a tagged dataset.
    let err = f
        .run("dataset: fa\ntemplate: chatml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("stage: kto"), "{err}");
    let err = f
        .run("stage: kto\ndataset: sft\ntemplate: chatml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("kto_tag"), "{err}");
    // The tag must be a boolean.
    write(
        &f.data().join("fb_alpaca.json"),
        r#"[{"instruction": "A", "output": "yes", "tag": "yes"}]"#,
    );
    let err = f
        .run("stage: kto\ndataset: fa\ntemplate: chatml\noverwrite_cache: true")
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be true or false"), "{err}");
}
