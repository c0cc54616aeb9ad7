//! The bundled AdaLoRA example (`examples/quickstart/adalora.yaml`) through the real `lf-trainer`
//! binary: it trains, reallocates ranks to the budget (an average of 4 from 12 over the model's 28
//! linears), saves PEFT's ADALORA format with the pruned ranks dropped, and answers held-out
//! questions; `eval` and `export` load the adapter. The kept ranks per linear and the held-out exact
//! match are printed (`--nocapture`).

use std::path::Path;

use serde_json::Value;

#[path = "support/lf_trainer_cli.rs"]
mod lf_trainer_cli;

use lf_trainer_cli::run as lf_trainer;

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_adalora_example_prunes_to_its_budget_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adalora");
    let config = "examples/quickstart/adalora.yaml".to_string();
    let output = format!("output_dir={}", out.display());
    lf_trainer(&["train".into(), config.clone(), output.clone()]);

    let trained = json(&out.join("all_results.json"));
    println!(
        "train_loss {}, eval_loss {}",
        trained["train_loss"], trained["eval_loss"]
    );
    let adapter = json(&out.join("adapter_config.json"));
    assert_eq!(adapter["peft_type"], "ADALORA");
    assert_eq!(adapter["total_step"], 150);
    let pattern = adapter["rank_pattern"].as_object().unwrap();
    let kept: Vec<(String, usize)> = pattern
        .iter()
        .map(|(k, v)| {
            let n = v
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b.as_bool() == Some(true))
                .count();
            (
                k.trim_start_matches("model.layers.")
                    .trim_end_matches(".lora_E")
                    .to_string(),
                n,
            )
        })
        .collect();
    assert_eq!(kept.len(), 28, "4 layers × 7 linears");
    let total: usize = kept.iter().map(|(_, n)| n).sum();
    println!("ranks kept per linear (budget {}):", 4 * kept.len());
    for (module, n) in &kept {
        println!("  {module:<24} {n:>2} of 12");
    }
    assert_eq!(
        total,
        4 * kept.len(),
        "the final mask keeps exactly the target budget"
    );
    assert!(
        kept.iter().any(|(_, n)| *n != 4),
        "ranks were reallocated, not cut evenly"
    );
    // The saved tensors hold only the kept ranks.
    let weights =
        lf_model::safetensors_io::MappedFile::open(&out.join("adapter_model.safetensors")).unwrap();
    for (module, n) in &kept {
        let name = format!("base_model.model.model.layers.{module}.lora_E");
        let e = weights.load(&name, None, tch::Device::Cpu).unwrap();
        assert_eq!(e.size(), [*n as i64, 1], "{name}");
    }

    let results = dir.path().join("eval");
    let stdout = lf_trainer(&[
        "eval".into(),
        config.clone(),
        format!("adapter_name_or_path={}", out.display()),
        format!("output_dir={}", results.display()),
        "--exact-match".into(),
    ]);
    let all = json(&results.join("all_results.json"));
    println!("held-out: {}", stdout.trim());
    let accuracy = all
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.contains("exact_match"))
        .and_then(|(_, v)| v.as_f64())
        .unwrap_or_else(|| panic!("no exact-match result in {all}"));
    assert!(
        accuracy > 0.0,
        "the AdaLoRA adapter answers no held-out question ({all})"
    );

    let export = dir.path().join("merged");
    lf_trainer(&[
        "export".into(),
        config,
        format!("adapter_name_or_path={}", out.display()),
        format!("export_dir={}", export.display()),
    ]);
    assert!(export.join("config.json").is_file());
}
