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

/// Sequences decoded step by step in turn (a server's interleaving), with their prompts fed in
/// chunks of 2, pick exactly the tokens `generate` picks for each alone, greedy and sampled.
#[test]
fn interleaved_chunked_decoding_equals_generate() {
    let lm = model();
    let prompts: [&[i64]; 3] = [&[3, 14, 15, 9, 26], &[7, 1], &[2, 41, 52, 51, 8, 28, 18]];
    let params = [GenerationParams::greedy(9), sampling(5), sampling(6)];
    let alone: Vec<Vec<i64>> = prompts
        .iter()
        .zip(&params)
        .map(|(p, g)| lm.generate(p, g, &[], |_| {}).unwrap())
        .collect();
    let mut states: Vec<_> = prompts
        .iter()
        .zip(&params)
        .map(|(p, g)| lm.start_decoding(p, g, Some(2)).unwrap())
        .collect();
    let mut out = vec![Vec::new(); prompts.len()];
    let mut prefill_steps = [0usize; 3];
    while (0..states.len()).any(|i| states[i].generated() < params[i].max_new_tokens) {
        for (i, state) in states.iter_mut().enumerate() {
            if state.generated() >= params[i].max_new_tokens {
                continue;
            }
            match lm.decode_step(state).unwrap() {
                Some(t) => out[i].push(t),
                None => prefill_steps[i] += 1,
            }
        }
    }
    assert_eq!(out, alone);
    // ceil(len / 2) chunks, the last of which also picks the first token.
    assert_eq!(prefill_steps, [2, 0, 3]);
}
