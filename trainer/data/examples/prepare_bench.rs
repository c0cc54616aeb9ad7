//! Measures `prepare` throughput on generated alpaca data (not a test):
//! `cargo run -p lf-data --example prepare_bench -- MODEL_DIR [RECORDS] [TEMPLATE]`.
//! Tokenises once (cache miss), then again (cache hit), and prints records/s and tokens/s.

use std::time::Instant;

use lf_api::training::TrainingConfig;
use lf_data::{load_tokenizer, prepare, DataContext};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .ok_or("usage: prepare_bench MODEL_DIR [RECORDS] [TEMPLATE]")?;
    let n: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let template = args.get(3).cloned().unwrap_or_else(|| "chatml".into());
    let dir = std::env::temp_dir().join(format!("lf-data-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data"))?;
    let mut text = String::new();
    for i in 0..n {
        let record = serde_json::json!({
            "instruction": format!("Explain item {i} of the list in a few plain sentences, please."),
            "input": if i % 3 == 0 { format!("Context {i}: the quick brown fox jumps over the lazy dog.") } else { String::new() },
            "output": format!("Item {i} is an example answer that spans a couple of clauses, so tokenisation has real work to do."),
        });
        text.push_str(&record.to_string());
        text.push('\n');
    }
    std::fs::write(dir.join("data/bench.jsonl"), text)?;
    let tok = load_tokenizer(std::path::Path::new(model))?;
    let mut cfg = TrainingConfig::from_yaml_str(&format!(
        "dataset: bench\ntemplate: {template}\ncutoff_len: 1024"
    ))?;
    cfg.dataset_dir = dir.join("data").display().to_string();
    let ctx = DataContext {
        rank: 0,
        world_size: 1,
        cache_dir: dir.join("cache"),
    };
    let t = Instant::now();
    let miss = prepare(&cfg, &tok, &ctx)?;
    let miss_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let hit = prepare(&cfg, &tok, &ctx)?;
    let hit_s = t.elapsed().as_secs_f64();
    println!(
        "{n} records, {} tokens: tokenise {miss_s:.2}s ({:.0} records/s, {:.0} tokens/s, {} threads); cache hit {hit_s:.3}s (hit={})",
        miss.stats.train_tokens,
        n as f64 / miss_s,
        miss.stats.train_tokens as f64 / miss_s,
        rayon::current_num_threads(),
        hit.stats.cache_hit
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
