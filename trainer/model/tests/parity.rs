//! Forward and greedy-generation parity with transformers (fp32, CPU) for every supported
//! architecture variant. One Python invocation builds all the reference models.

mod common;

use lf_api::training::FlashAttn;
use lf_model::{CausalLm, GenerationParams, LoadOptions};
use tch::{Device, Kind};

#[test]
fn logits_and_greedy_generation_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    common::reference("forward", dir.path());
    for name in [
        "llama",
        "mistral",
        "qwen2",
        "llama_tied",
        "llama3_rope",
        "llama_linear",
        "llama_bias",
    ] {
        let mut lm = CausalLm::load(
            &dir.path().join(name).join("model"),
            &LoadOptions::new(Device::Cpu, Kind::Float),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(lm
            .load_report()
            .is_some_and(|r| r.bytes > 0 && r.files == 1));
        let r = common::read_all(&dir.path().join(name).join("reference.safetensors"));
        let ids = &r["input_ids"];
        let logits = tch::no_grad(|| lm.forward_logits(ids));
        let sdpa = common::rel_diff(&logits, &r["logits"]);
        println!("{name}: sdpa logits max rel diff {sdpa:.2e}");
        assert!(
            sdpa <= 1e-5,
            "{name}: logits differ from transformers by {sdpa:e} (relative)"
        );

        let prompt: Vec<i64> = Vec::try_from(ids.get(0).narrow(0, 0, 6)).unwrap();
        let want: Vec<i64> = Vec::try_from(&r["generated"]).unwrap();
        let mut streamed = Vec::new();
        let got = lm
            .generate(&prompt, &GenerationParams::greedy(8), &[], |t| {
                streamed.push(t)
            })
            .unwrap();
        assert_eq!(
            got, want,
            "{name}: greedy generation differs from transformers"
        );
        assert_eq!(streamed, got);

        lm.set_attention(FlashAttn::Eager);
        let eager = common::rel_diff(&tch::no_grad(|| lm.forward_logits(ids)), &r["logits"]);
        println!("{name}: eager logits max rel diff {eager:.2e}");
        assert!(
            eager <= 1e-5,
            "{name}: eager logits differ from transformers by {eager:e}"
        );
        let got = lm
            .generate(&prompt, &GenerationParams::greedy(8), &[], |_| {})
            .unwrap();
        assert_eq!(got, want, "{name}: eager greedy generation differs");
    }
}
