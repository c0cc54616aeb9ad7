//! Sampling is seeded and follows transformers' processors: the same seed gives the same tokens,
//! `top_k: 1` (or a tiny `top_p`) is greedy, stop tokens end generation, and the KV-cache decode
//! equals re-running the whole sequence.

mod common;

use lf_model::{CausalLm, GenerationParams, LoadOptions};
use tch::{Device, Kind, Tensor};

fn model() -> CausalLm {
    let arch = common::tiny_arch(true);
    let weights = {
        let _rng = common::rng_lock();
        common::random_weights(&arch, 4)
    };
    CausalLm::from_tensors(arch, weights, &LoadOptions::new(Device::Cpu, Kind::Float)).unwrap()
}

fn sampling(seed: u64) -> GenerationParams {
    GenerationParams {
        max_new_tokens: 12,
        do_sample: true,
        temperature: 1.3,
        top_p: 0.95,
        top_k: 40,
        repetition_penalty: 1.1,
        seed,
    }
}

#[test]
fn sampling_is_seeded_and_greedy_limits_hold() {
    let lm = model();
    let prompt = [3, 14, 15, 9, 26];
    let a = lm.generate(&prompt, &sampling(1), &[], |_| {}).unwrap();
    let b = lm.generate(&prompt, &sampling(1), &[], |_| {}).unwrap();
    assert_eq!(a, b, "same seed, same tokens");
    let others: Vec<Vec<i64>> = (2..6)
        .map(|s| lm.generate(&prompt, &sampling(s), &[], |_| {}).unwrap())
        .collect();
    assert!(
        others.iter().any(|o| *o != a),
        "different seeds never changed the sample"
    );

    let greedy = lm
        .generate(&prompt, &GenerationParams::greedy(12), &[], |_| {})
        .unwrap();
    let top1 = GenerationParams {
        top_k: 1,
        repetition_penalty: 1.0,
        ..sampling(9)
    };
    assert_eq!(lm.generate(&prompt, &top1, &[], |_| {}).unwrap(), greedy);
    let tiny_p = GenerationParams {
        top_k: 0,
        top_p: 1e-6,
        repetition_penalty: 1.0,
        ..sampling(9)
    };
    assert_eq!(lm.generate(&prompt, &tiny_p, &[], |_| {}).unwrap(), greedy);

    // Greedy with the cache equals greedy by re-running the full sequence each step.
    let mut seq = prompt.to_vec();
    for _ in 0..12 {
        let ids = Tensor::from_slice(&seq).unsqueeze(0);
        let logits = tch::no_grad(|| lm.forward_logits(&ids));
        seq.push(logits.get(0).get(-1).argmax(0, false).int64_value(&[]));
    }
    assert_eq!(&seq[prompt.len()..], &greedy[..]);

    // A stop token ends generation and is not returned.
    let stop = greedy[3];
    let first = greedy.iter().position(|&t| t == stop).unwrap();
    let stopped = lm
        .generate(&prompt, &GenerationParams::greedy(12), &[stop], |_| {})
        .unwrap();
    assert_eq!(stopped, greedy[..first].to_vec());

    let bad = GenerationParams {
        temperature: 0.0,
        ..sampling(1)
    };
    assert!(lm
        .generate(&prompt, &bad, &[], |_| {})
        .unwrap_err()
        .to_string()
        .contains("temperature"));
}
