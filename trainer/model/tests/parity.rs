//! Forward and greedy-generation parity with transformers (fp32, CPU) for every supported
//! architecture variant, on a plain and a right-padded batch, with sliding windows shorter than
//! the sequence and the generation. One Python invocation builds all the reference models.

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
        "mistral_window",
        "qwen3",
        "qwen3_window",
        "qwen2_window",
        "gemma2",
        "gemma3",
        // Gemma3ForConditionalGeneration: the text decoder of a multimodal checkpoint, in the
        // Hub's layout and in transformers 5's.
        "gemma3_mm",
        "gemma3_mm_v5",
        "phi3",
        "phi3_window",
        "phi3_longrope",
        "phi3_su",
    ] {
        let mut lm = CausalLm::load(
            &dir.path().join(name).join("model"),
            &LoadOptions::new(Device::Cpu, Kind::Float),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(lm
            .load_report()
            .is_some_and(|r| r.bytes > 0 && r.files == 1));
        if name.starts_with("gemma3_mm") {
            // Only the language model was copied off the map: the vision tower stays on disk.
            let loaded = lm.load_report().map(|r| r.bytes);
            assert_eq!(loaded, Some(lm.weight_bytes()), "{name}: bytes loaded");
            assert!(lm.checkpoint_layout().is_multimodal());
        }
        let r = common::read_all(&dir.path().join(name).join("reference.safetensors"));
        let ids = &r["input_ids"];
        let logits = tch::no_grad(|| lm.forward_logits(ids));
        let sdpa = common::rel_diff(&logits, &r["logits"]);
        println!("{name}: sdpa logits max rel diff {sdpa:.2e}");
        assert!(
            sdpa <= 1e-5,
            "{name}: logits differ from transformers by {sdpa:e} (relative)"
        );

        let padded = padded_diff(&lm, &r);
        println!("{name}: sdpa right-padded logits max rel diff {padded:.2e}");
        assert!(
            padded <= 1e-5,
            "{name}: right-padded logits differ from transformers by {padded:e}"
        );

        let prompt: Vec<i64> = Vec::try_from(ids.get(0).narrow(0, 0, 6)).unwrap();
        let want: Vec<i64> = Vec::try_from(&r["generated"]).unwrap();
        let mut streamed = Vec::new();
        let got = lm
            .generate(&prompt, &GenerationParams::greedy(want.len()), &[], |t| {
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
        let padded = padded_diff(&lm, &r);
        println!("{name}: eager right-padded logits max rel diff {padded:.2e}");
        assert!(
            padded <= 1e-5,
            "{name}: eager right-padded logits differ from transformers by {padded:e}"
        );
        let got = lm
            .generate(&prompt, &GenerationParams::greedy(want.len()), &[], |_| {})
            .unwrap();
        assert_eq!(got, want, "{name}: eager greedy generation differs");
    }
}

/// Relative difference of our logits on the right-padded batch from transformers' (which had the
/// attention mask), over the positions that are not padding.
fn padded_diff(lm: &CausalLm, r: &std::collections::HashMap<String, tch::Tensor>) -> f64 {
    let logits = tch::no_grad(|| lm.forward_logits(&r["padded_ids"]));
    let keep = r["padded_mask"].to_kind(Kind::Bool);
    common::rel_diff(
        &logits.index(&[Some(keep.shallow_clone())]),
        &r["padded_logits"].index(&[Some(keep)]),
    )
}
