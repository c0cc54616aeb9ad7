//! Mixture-of-experts parity with transformers 5 (fp32, CPU): Mixtral (top-2, a sliding window
//! shorter than the sequence) and Qwen3-MoE (top-k with and without `norm_topk_prob`, dense
//! `mlp_only_layers`, `decoder_sparse_step`), each loaded from what `save_pretrained` writes
//! (per-expert tensors). Logits on a plain and a right-padded batch, every sparse layer's router
//! logits and chosen experts, the load-balancing loss with and without the attention mask, the
//! total loss transformers trains with, and greedy generation.

mod common;

use lf_model::{CausalLm, GenerationParams, LoadOptions};
use tch::{Device, Kind, Tensor};

#[test]
fn mixture_of_experts_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    common::reference("moe", dir.path());
    for name in ["mixtral", "qwen3_moe", "qwen3_moe_norm"] {
        let lm = CausalLm::load(
            &dir.path().join(name).join("model"),
            &LoadOptions::new(Device::Cpu, Kind::Float),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = common::read_all(&dir.path().join(name).join("reference.safetensors"));

        let out = tch::no_grad(|| lm.forward_routed(&r["input_ids"]));
        let logits = common::rel_diff(&out.logits, &r["logits"]);
        println!("{name}: logits max rel diff {logits:.2e}");
        assert!(logits <= 1e-5, "{name}: logits differ by {logits:e}");

        let router = Tensor::stack(&out.router_logits, 0);
        let router_diff = common::rel_diff(&router, &r["router_logits"]);
        println!(
            "{name}: {} sparse layers, router logits max rel diff {router_diff:.2e}",
            out.router_logits.len()
        );
        assert!(router_diff <= 1e-5, "{name}: router logits differ");
        let chosen: Vec<Tensor> = out
            .router_logits
            .iter()
            .map(|l| lm.chosen_experts(l))
            .collect();
        assert!(
            Tensor::stack(&chosen, 0).equal(&r["chosen"]),
            "{name}: chosen experts differ"
        );

        let aux = tch::no_grad(|| lm.router_aux_loss(&out.router_logits, None))
            .unwrap_or_else(|| panic!("{name}: a mixture of experts has an aux loss"));
        let aux_diff = common::rel_diff(&aux.reshape([1]), &r["aux_loss"]);
        println!(
            "{name}: aux loss {:.6} rel diff {aux_diff:.2e}",
            aux.double_value(&[])
        );
        assert!(aux_diff <= 1e-5, "{name}: aux loss differs by {aux_diff:e}");

        // Right padding with the attention mask: the real positions' logits, and the losses,
        // where the mask keeps padding out of the load-balancing statistics.
        let mask = &r["padded_mask"];
        let loss = tch::no_grad(|| lm.moe_loss(&r["padded_ids"], &r["labels"], Some(mask)));
        let padded = tch::no_grad(|| lm.forward_routed(&r["padded_ids"]).logits);
        let keep = mask.to_kind(Kind::Bool);
        let padded_diff = common::rel_diff(
            &padded.index(&[Some(keep.shallow_clone())]),
            &r["padded_logits"].index(&[Some(keep)]),
        );
        let aux_masked = common::rel_diff(&loss.aux.reshape([1]), &r["padded_aux_loss"]);
        let total = common::rel_diff(&loss.total.reshape([1]), &r["padded_loss"]);
        println!(
            "{name}: right-padded logits {padded_diff:.2e}, masked aux loss {aux_masked:.2e}, total loss {:.6} rel diff {total:.2e}",
            loss.total.double_value(&[])
        );
        assert!(padded_diff <= 1e-5, "{name}: padded logits differ");
        assert!(aux_masked <= 1e-5, "{name}: masked aux loss differs");
        assert!(total <= 1e-5, "{name}: total loss differs");
        // The masked statistics differ from the unmasked ones: the mask is not ignored.
        let unmasked = tch::no_grad(|| {
            let out = lm.forward_routed(&r["padded_ids"]);
            lm.router_aux_loss(&out.router_logits, None)
        });
        assert!(unmasked.is_some_and(|u| !u.allclose(&loss.aux, 1e-7, 1e-9, false)));

        let prompt: Vec<i64> = Vec::try_from(r["input_ids"].get(0).narrow(0, 0, 6)).unwrap();
        let want: Vec<i64> = Vec::try_from(&r["generated"]).unwrap();
        let got = lm
            .generate(&prompt, &GenerationParams::greedy(want.len()), &[], |_| {})
            .unwrap();
        assert_eq!(got, want, "{name}: greedy generation differs");
    }
}
