//! Mixture-of-experts parity with transformers 5 (fp32, CPU): Mixtral (top-2, a sliding window
//! shorter than the sequence) and Qwen3-MoE (top-k with and without `norm_topk_prob`, dense
//! `mlp_only_layers`, `decoder_sparse_step`), each loaded from what `save_pretrained` writes
//! (per-expert tensors). Logits on a plain and a right-padded batch, every sparse layer's router
//! logits and chosen experts, the load-balancing loss with and without the attention mask, the
//! total loss transformers trains with, a training step's gradients on the right-padded batch
//! given its mask, and greedy generation; the same losses and gradients on packed rows
//! (`packing`, `neat_packing`) as LLaMA-Factory builds them.

mod common;

use lf_model::{CausalLm, GenerationParams, LoadOptions};
use tch::{Device, Kind, Tensor};

/// DoRA on the attention (an adapter on a mixture of experts' parameters refuses DoRA, and `all`
/// reaches them on a model with dense layers).
const ATTENTION_DORA: &str = "lora_target: q_proj,k_proj,v_proj,o_proj\nuse_dora: true";

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

        // A training step on that batch given its mask (what LLaMA-Factory's collator passes):
        // every full fine-tuning gradient equals transformers', the load-balancing loss leaving
        // the padding out, with and without layer recomputation; without the mask (padding
        // counted) the routers' gradients differ.
        let dir_model = dir.path().join(name).join("model");
        let labels = &r["labels"];
        let n = labels
            .narrow(1, 1, labels.size()[1] - 1)
            .ne(-100)
            .sum(Kind::Int64)
            .int64_value(&[]) as f64;
        let step = |ckpt: bool, mask: Option<&Tensor>| {
            let mut lm =
                CausalLm::load(&dir_model, &LoadOptions::new(Device::Cpu, Kind::Float)).unwrap();
            let cfg = lf_api::TrainingConfig::from_yaml_str(&format!(
                "finetuning_type: full\ngradient_checkpointing: {ckpt}"
            ))
            .unwrap();
            lm.apply_method(&cfg, 1).unwrap();
            lm.set_training(true);
            let ids = &r["padded_ids"];
            match mask {
                Some(m) => lm.loss_sum_and_backward_masked(ids, labels, m, 1.0 / n),
                None => lm.loss_sum_and_backward(ids, labels, 1.0 / n),
            }
            .unwrap();
            transformers_grads(&lm)
        };
        for ckpt in [true, false] {
            let grads = step(ckpt, Some(mask));
            let mut worst = 0.0f64;
            for (hf, g) in &grads {
                let want = r
                    .get(&format!("grad.{hf}"))
                    .unwrap_or_else(|| panic!("{name}: transformers has no parameter {hf}"));
                worst = worst.max(common::rel_diff(g, want));
            }
            assert_eq!(
                grads.len(),
                r.keys().filter(|k| k.starts_with("grad.")).count(),
                "{name}: parameters"
            );
            println!(
                "{name}: masked training step (recompute {ckpt}), {} gradients, worst rel diff {worst:.2e}",
                grads.len()
            );
            assert!(worst <= 1e-5, "{name}: gradients differ by {worst:e}");
        }
        if loss_weighted(&r) {
            let unmasked = step(true, None);
            let router = unmasked
                .iter()
                .filter(|(hf, _)| hf.ends_with(".mlp.gate.weight"))
                .map(|(hf, g)| common::rel_diff(g, &r[&format!("grad.{hf}")]))
                .fold(0.0f64, f64::max);
            println!("{name}: padding counted: router gradients off by {router:.2e}");
            assert!(router > 1e-4, "{name}: the mask changes no router gradient");
        }

        let prompt: Vec<i64> = Vec::try_from(r["input_ids"].get(0).narrow(0, 0, 6)).unwrap();
        let want: Vec<i64> = Vec::try_from(&r["generated"]).unwrap();
        let got = lm
            .generate(&prompt, &GenerationParams::greedy(want.len()), &[], |_| {})
            .unwrap();
        assert_eq!(got, want, "{name}: greedy generation differs");
    }
}

/// Whether transformers adds the load-balancing loss to this reference's training loss (the
/// total loss differs from the cross-entropy alone).
fn loss_weighted(r: &std::collections::HashMap<String, Tensor>) -> bool {
    let logits = &r["padded_logits"];
    let v = logits.size()[2];
    let s = logits.size()[1];
    let ce = logits
        .narrow(1, 0, s - 1)
        .reshape([-1, v])
        .cross_entropy_loss::<Tensor>(
            &r["labels"].narrow(1, 1, s - 1).reshape([-1]),
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        );
    (ce - r["padded_loss"].get(0)).abs().double_value(&[]) > 1e-6
}

/// Every trainable parameter's gradient under transformers 5's names: Mixtral's
/// `block_sparse_moe` is `mlp`, and each sparse layer's experts are the fused
/// `mlp.experts.gate_up_proj` (`[E, 2·I, H]`, gate rows first) and `mlp.experts.down_proj`
/// (`[E, H, I]`).
fn transformers_grads(lm: &CausalLm) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    let mut experts: std::collections::BTreeMap<(String, &str), Vec<(usize, Tensor)>> =
        Default::default();
    for (name, p) in lm.trainable_parameters() {
        let name = name.replace(".block_sparse_moe.", ".mlp.");
        let g = p.grad().copy();
        let Some((block, rest)) = name.split_once(".experts.") else {
            out.push((name, g));
            continue;
        };
        let (e, linear) = rest.split_once('.').unwrap();
        let which = match linear {
            "w1.weight" | "gate_proj.weight" => "gate",
            "w3.weight" | "up_proj.weight" => "up",
            _ => "down",
        };
        experts
            .entry((block.to_string(), which))
            .or_default()
            .push((e.parse().unwrap(), g));
    }
    let stacked = |mut v: Vec<(usize, Tensor)>| {
        v.sort_by_key(|(e, _)| *e);
        Tensor::stack(&v.into_iter().map(|(_, t)| t).collect::<Vec<_>>(), 0)
    };
    let blocks: std::collections::BTreeSet<String> =
        experts.keys().map(|(b, _)| b.clone()).collect();
    for block in blocks {
        let mut take = |w| stacked(experts.remove(&(block.clone(), w)).unwrap());
        let (gate, up, down) = (take("gate"), take("up"), take("down"));
        out.push((
            format!("{block}.experts.gate_up_proj"),
            Tensor::cat(&[gate, up], 1),
        ));
        out.push((format!("{block}.experts.down_proj"), down));
    }
    out
}

/// QLoRA of a mixture of experts: every expert linear (and the attention's) stored as
/// double-quantised NF4, the router dense; the model computes what a dense twin holding the
/// dequantised weights computes, and LoRA/DoRA on the attention, and LoRA on the router and the
/// quantised experts (PEFT's `target_parameters`: the adapters' product is added to the
/// dequantised experts' output, the NF4 storage stays as it is), get the twin's gradients through
/// the routed experts, with and without layer recomputation.
#[test]
fn quantised_experts_match_their_dequantised_twin() {
    use lf_api::training::{QuantizationType, TrainingConfig};
    use lf_model::{QuantSettings, Unit};
    use lf_quant::QuantizedWeight;

    let (ids, labels) = {
        let _rng = common::rng_lock();
        common::batch(80, 2, 17, 2)
    };
    let dense_opts = LoadOptions::new(Device::Cpu, Kind::Float);
    let opts = LoadOptions {
        quantization: Some(QuantSettings {
            bits: 4,
            quant_type: QuantizationType::Nf4,
            double_quant: true,
        }),
        ..dense_opts.clone()
    };
    let linear = |n: &str| {
        n.ends_with("_proj.weight")
            || [".w1.weight", ".w2.weight", ".w3.weight"]
                .iter()
                .any(|s| n.ends_with(s))
    };
    for (extra, experts) in [
        (
            r#""model_type":"mixtral","num_local_experts":4,"num_experts_per_tok":2"#,
            "q_proj,gate,w1,w3,w2",
        ),
        (
            r#""model_type":"qwen3_moe","head_dim":16,"num_experts":5,"num_experts_per_tok":3,"moe_intermediate_size":40,"mlp_only_layers":[1]"#,
            "q_proj,gate,gate_up_proj,down_proj",
        ),
    ] {
        let arch = lf_api::ModelArchitecture::from_json_str(&format!(
            r#"{{{extra},"vocab_size":80,"hidden_size":48,"intermediate_size":96,"num_hidden_layers":2,
                "num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5}}"#
        ))
        .unwrap();
        let family = arch.model_type.name();
        let weights = {
            let _rng = common::rng_lock();
            common::random_weights(&arch, 8)
        };
        let twin_weights: Vec<_> = weights
            .iter()
            .map(|(n, t)| {
                let t = if linear(n) {
                    QuantizedWeight::quantize_4bit(t, QuantizationType::Nf4, true)
                        .unwrap()
                        .dequantize(Kind::Float)
                } else {
                    t.shallow_clone()
                };
                (n.clone(), t)
            })
            .collect();
        let mut quant = CausalLm::from_tensors(arch.clone(), weights, &opts).unwrap();
        let mut twin = CausalLm::from_tensors(arch.clone(), twin_weights, &dense_opts).unwrap();
        let stored: Vec<String> = quant
            .unit_tensors(Unit::Layer(0))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(
            stored
                .iter()
                .any(|n| n.contains(".experts.3.") && n.contains(".weight.")),
            "{family}: expert weights are not stored quantised: {stored:?}"
        );
        assert!(stored.iter().any(|n| n.ends_with(".gate.weight")));
        let d = common::rel_diff(
            &tch::no_grad(|| quant.forward_logits(&ids)),
            &tch::no_grad(|| twin.forward_logits(&ids)),
        );
        println!("{family}: NF4 experts, logits vs dequantised twin {d:.2e}");
        assert!(d <= 1e-6, "{family}: quantised forward differs by {d:e}");
        assert!(quant.weight_bytes() * 3 < twin.weight_bytes());
        for (ckpt, method) in [
            (true, ATTENTION_DORA.to_string()),
            (false, ATTENTION_DORA.to_string()),
            (true, format!("lora_target: {experts}")),
            (false, format!("lora_target: {experts}")),
        ] {
            let on_experts = method != ATTENTION_DORA;
            let grads = |lm: &mut CausalLm| {
                let cfg = TrainingConfig::from_yaml_str(&format!(
                    "lora_rank: 4\n{method}\ngradient_checkpointing: {ckpt}\nloss_chunk_size: 16"
                ))
                .unwrap();
                let _rng = common::rng_lock();
                lm.apply_method(&cfg, 3).unwrap();
                tch::no_grad(|| {
                    for (name, p) in lm.trainable_parameters() {
                        if name.ends_with("lora_B.weight") {
                            p.shallow_clone().copy_(
                                &(Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.2),
                            );
                        }
                    }
                });
                lm.set_training(true);
                lm.loss_sum_and_backward(&ids, &labels, 0.01).unwrap();
                lm.trainable_parameters()
                    .into_iter()
                    .map(|(n, p)| (n, p.grad().copy()))
                    .collect::<Vec<_>>()
            };
            let (g_quant, g_twin) = (grads(&mut quant), grads(&mut twin));
            if on_experts {
                // q_proj on both layers; the router and both expert parameters on the sparse
                // ones, each an A and a B; qwen3_moe's layer 1 is dense, and `down_proj` adapts
                // its linear too (PEFT 0.22).
                let (sparse, dense) = if family == "mixtral" { (2, 0) } else { (1, 1) };
                assert_eq!(
                    g_quant.len(),
                    2 * 2 + sparse * 3 * 2 + dense * 2,
                    "{family}: adapted tensors"
                );
                assert!(g_quant
                    .iter()
                    .any(|(n, g)| n.contains(".mlp.experts.base_layer.lora_A")
                        && g.abs().max().double_value(&[]) > 0.0));
            } else {
                // Attention only: q, k, v, o with A, B and the DoRA magnitude, on both layers.
                assert_eq!(g_quant.len(), 2 * 4 * 3, "{family}: adapted tensors");
            }
            for ((n, a), (_, b)) in g_quant.iter().zip(&g_twin) {
                assert!(
                    n.contains(".self_attn.") || on_experts,
                    "{family}: {n} is no attention adapter"
                );
                let scale = b.abs().max().double_value(&[]).max(1e-6);
                let d = (a - b).abs().max().double_value(&[]) / scale;
                assert!(
                    d <= 1e-5,
                    "{family} {n} ({method}, recompute {ckpt}): gradient differs from the twin by {d:e}"
                );
            }
        }
    }
}

/// The training step's backward includes `router_aux_loss_coef ×` the load-balancing loss when
/// `output_router_logits` is set: with layer recomputation (each layer's share added as it is
/// recomputed) and without (the whole loss at once), the adapters' gradients equal autograd of
/// `Σ CE + coef · aux` over one forward pass, and differ from the gradients without the term;
/// LLaMA-Factory's `moe_aux_loss_coef` turns the term on.
#[test]
fn training_backward_includes_the_load_balancing_loss() {
    use lf_api::training::TrainingConfig;

    let (ids, labels) = {
        let _rng = common::rng_lock();
        common::batch(80, 2, 17, 5)
    };
    let arch = |aux: bool| {
        lf_api::ModelArchitecture::from_json_str(&format!(
            r#"{{"model_type":"qwen3_moe","head_dim":16,"num_experts":4,"num_experts_per_tok":2,
                "moe_intermediate_size":40,"router_aux_loss_coef":0.5,"output_router_logits":{aux},
                "vocab_size":80,"hidden_size":48,"intermediate_size":96,"num_hidden_layers":2,
                "num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5}}"#
        ))
        .unwrap()
    };
    let weights = {
        let _rng = common::rng_lock();
        common::random_weights(&arch(true), 8)
    };
    let model = |aux: bool, ckpt: &str, extra: &str| {
        let copy: Vec<_> = weights.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
        let opts = LoadOptions::new(Device::Cpu, Kind::Float);
        let mut lm = CausalLm::from_tensors(arch(aux), copy, &opts).unwrap();
        let cfg = TrainingConfig::from_yaml_str(&format!(
            "lora_rank: 4\ngradient_checkpointing: {ckpt}\nloss_chunk_size: 8\n{extra}"
        ))
        .unwrap();
        let _rng = common::rng_lock();
        lm.apply_method(&cfg, 3).unwrap();
        tch::no_grad(|| {
            for (name, p) in lm.trainable_parameters() {
                if name.ends_with("lora_B.weight") {
                    p.shallow_clone()
                        .copy_(&(Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.3));
                }
            }
        });
        lm.set_training(true);
        lm
    };
    let grads = |lm: &CausalLm| -> Vec<Tensor> {
        lm.trainable_parameters()
            .into_iter()
            .map(|(_, p)| p.grad().copy())
            .collect()
    };
    let worst = |a: &[Tensor], b: &[Tensor]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| common::rel_diff(a, b))
            .fold(0.0f64, f64::max)
    };

    // Autograd of the whole loss over one forward pass.
    let reference = model(true, "false", "");
    let out = reference.forward_routed(&ids);
    let v = out.logits.size()[2];
    let ce = out
        .logits
        .narrow(1, 0, 16)
        .reshape([-1, v])
        .cross_entropy_loss::<Tensor>(
            &labels.narrow(1, 1, 16).reshape([-1]),
            None,
            tch::Reduction::Sum,
            -100,
            0.0,
        );
    let aux = reference.router_aux_loss(&out.router_logits, None).unwrap();
    (&ce + aux * 0.5).backward();
    let want = grads(&reference);

    // `auto` with layer 0 recomputed and layer 1 kept: the load-balancing loss reaches the kept
    // router through autograd and the recomputed one through its own share.
    for ckpt in ["true", "false", "auto\nrecompute_layers: 1"] {
        let lm = model(true, ckpt, "");
        let loss = lm.loss_sum_and_backward(&ids, &labels, 1.0).unwrap();
        assert!(
            (loss - ce.double_value(&[])).abs() <= 1e-4,
            "the reported loss is the CE sum"
        );
        let d = worst(&grads(&lm), &want);
        println!("recompute {ckpt}: gradients vs autograd of CE + coef·aux {d:.2e}");
        assert!(d <= 1e-5, "recompute {ckpt}: gradients differ by {d:e}");
    }
    let without = model(false, "true", "");
    without.loss_sum_and_backward(&ids, &labels, 1.0).unwrap();
    let d = worst(&grads(&without), &want);
    println!("without output_router_logits: {d:.2e} from the gradients with the term");
    assert!(
        d > 1e-3,
        "the load-balancing term changes no gradient ({d:e})"
    );
    // LLaMA-Factory's moe_aux_loss_coef turns the term on with its weight.
    let coef = model(false, "true", "moe_aux_loss_coef: 0.5");
    coef.loss_sum_and_backward(&ids, &labels, 1.0).unwrap();
    let d = worst(&grads(&coef), &want);
    println!("output_router_logits off, moe_aux_loss_coef 0.5: {d:.2e}");
    assert!(d <= 1e-5, "moe_aux_loss_coef: gradients differ by {d:e}");
}

/// The load-balancing loss on packed rows, against transformers on the rows LLaMA-Factory builds
/// (`tests/reference/moe_packing_reference.py`). `neat_packing`: the block-diagonal forward's
/// logits, the load-balancing loss over the real tokens (each counted once: LLaMA-Factory's
/// segment-index mask read as 0/1) and the total loss, and a training step's every gradient given
/// the rows' mask, with and without layer recomputation; the quirks transformers has with the
/// masks LLaMA-Factory builds are measured and left out (see `lf_model::moe`). `packing`: rows
/// that attend across their examples, masked as any right-padded batch.
#[test]
fn packed_rows_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    common::reference_script("moe_packing_reference.py", "packing", dir.path());
    let rel = |a: &Tensor, b: &Tensor| common::rel_diff(&a.reshape([1]), b);
    for name in ["mixtral", "qwen3_moe"] {
        let model_dir = dir.path().join(name).join("model");
        let opts = LoadOptions::new(Device::Cpu, Kind::Float);
        let lm = CausalLm::load(&model_dir, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = common::read_all(&dir.path().join(name).join("reference.safetensors"));
        let (ids, labels, pos, segments) = (
            &r["neat.ids"],
            &r["neat.labels"],
            &r["neat.position_ids"],
            &r["neat.segments"],
        );

        // neat_packing: the examples attend only to themselves.
        let out = tch::no_grad(|| lm.forward_routed_packed(ids, pos));
        let keep = segments.ne(0);
        let logits = common::rel_diff(
            &out.logits.index(&[Some(keep.shallow_clone())]),
            &r["neat.logits"].index(&[Some(keep)]),
        );
        assert!(logits <= 1e-5, "{name}: packed logits differ by {logits:e}");
        let loss = tch::no_grad(|| lm.moe_loss_packed(ids, labels, pos, Some(segments)));
        let aux = rel(&loss.aux, &r["neat.aux_loss"]);
        let total = rel(&loss.total, &r["neat.loss"]);
        println!(
            "{name}: neat_packing logits {logits:.2e}, aux loss {:.6} rel diff {aux:.2e}, total loss {:.6} rel diff {total:.2e}",
            loss.aux.double_value(&[]),
            loss.total.double_value(&[])
        );
        assert!(aux <= 1e-5, "{name}: packed aux loss differs by {aux:e}");
        assert!(
            total <= 1e-5,
            "{name}: packed total loss differs by {total:e}"
        );
        // transformers' quirks, measured: the raw segment indices weigh the k-th example k-fold;
        // without a mask the padding counts; a 4-D mask stops its forward.
        let by_segment = rel(&loss.aux, &r["neat.aux_loss_by_segment"]);
        let unmasked = rel(&loss.aux, &r["neat.aux_loss_unmasked"]);
        println!(
            "{name}: vs transformers given the segment indices {by_segment:.2e}, given no mask {unmasked:.2e}"
        );
        assert!(
            by_segment > 1e-4 && unmasked > 1e-4,
            "{name}: the masks make no difference"
        );
        assert_eq!(
            r["neat.four_d_mask_runs"].int64_value(&[0]),
            0,
            "{name}: transformers computes a load-balancing loss with a 4-D mask now: revisit lf_model::moe's docs"
        );

        // A training step on the packed rows given their mask: transformers' gradients of
        // CE + coef · aux; without the mask (padding counted) the routers' differ.
        let n = labels
            .narrow(1, 1, labels.size()[1] - 1)
            .ne(-100)
            .sum(Kind::Int64)
            .int64_value(&[]) as f64;
        let step = |ckpt: bool, mask: Option<&Tensor>| {
            let mut lm = CausalLm::load(&model_dir, &opts).unwrap();
            let cfg = lf_api::TrainingConfig::from_yaml_str(&format!(
                "finetuning_type: full\ngradient_checkpointing: {ckpt}"
            ))
            .unwrap();
            lm.apply_method(&cfg, 1).unwrap();
            lm.set_training(true);
            match mask {
                Some(m) => lm.loss_sum_and_backward_packed_masked(ids, labels, pos, m, 1.0 / n),
                None => lm.loss_sum_and_backward_packed(ids, labels, pos, 1.0 / n),
            }
            .unwrap();
            transformers_grads(&lm)
        };
        let worst_vs_reference = |grads: &[(String, Tensor)], routers_only: bool| {
            grads
                .iter()
                .filter(|(hf, _)| !routers_only || hf.ends_with(".mlp.gate.weight"))
                .map(|(hf, g)| {
                    let want = r
                        .get(&format!("neat.grad.{hf}"))
                        .unwrap_or_else(|| panic!("{name}: transformers has no parameter {hf}"));
                    common::rel_diff(g, want)
                })
                .fold(0.0f64, f64::max)
        };
        for ckpt in [true, false] {
            let grads = step(ckpt, Some(segments));
            assert_eq!(
                grads.len(),
                r.keys().filter(|k| k.starts_with("neat.grad.")).count(),
                "{name}: parameters"
            );
            let worst = worst_vs_reference(&grads, false);
            println!(
                "{name}: neat_packing training step (recompute {ckpt}), {} gradients, worst rel diff {worst:.2e}",
                grads.len()
            );
            assert!(
                worst <= 1e-5,
                "{name}: packed gradients differ by {worst:e}"
            );
        }
        let router = worst_vs_reference(&step(true, None), true);
        println!("{name}: packed step without the mask: router gradients off by {router:.2e}");
        assert!(router > 1e-4, "{name}: the mask changes no router gradient");

        // packing: right-padded rows whose examples see each other, masked 0 on the padding.
        let (ids, labels, mask) = (&r["pack.ids"], &r["pack.labels"], &r["pack.mask"]);
        let loss = tch::no_grad(|| lm.moe_loss(ids, labels, Some(mask)));
        let aux = rel(&loss.aux, &r["pack.aux_loss"]);
        let total = rel(&loss.total, &r["pack.loss"]);
        let marked = rel(&loss.aux, &r["pack.aux_loss_padding_marked"]);
        println!(
            "{name}: packing aux loss rel diff {aux:.2e}, total loss rel diff {total:.2e}; vs LLaMA-Factory's padding marked 1: {marked:.2e}"
        );
        assert!(aux <= 1e-5, "{name}: packing aux loss differs by {aux:e}");
        assert!(
            total <= 1e-5,
            "{name}: packing total loss differs by {total:e}"
        );
    }
}
