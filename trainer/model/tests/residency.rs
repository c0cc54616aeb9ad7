//! The residency contract ZeRO-3 builds on, with one process: the loader hands over every unit
//! as soon as it is loaded (embedding, each layer, head, in order), and a model whose tensors are
//! emptied between uses and restored only between `gather` and `release` computes exactly what a
//! whole model computes — loss, gradients (each unit's complete when it is released with
//! `gradients_ready`), evaluation — provided layers are recomputed in backward.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;

use lf_api::training::TrainingConfig;
use lf_model::{CausalLm, LoadOptions, Residency, Unit};
use tch::{Device, Kind, Tensor};

/// Keeps a copy of every tensor and empties the model's own; `gather` puts the values back.
#[derive(Default)]
struct Stash {
    whole: RefCell<HashMap<String, (Tensor, Tensor)>>,
    units: RefCell<HashMap<Unit, Vec<String>>>,
    /// Units gathered now, and the most ever whole at once.
    live: RefCell<Vec<Unit>>,
    max_live: RefCell<usize>,
    /// Gradients collected at `release(_, true)`, by name (summed).
    grads: RefCell<HashMap<String, Tensor>>,
    calls: RefCell<Vec<(Unit, &'static str)>>,
}

impl Stash {
    fn adopt(&self, unit: Unit, tensors: Vec<(String, Tensor)>) {
        let mut names = Vec::new();
        for (name, mut t) in tensors {
            let copy = t.detach().copy();
            t.set_data(&Tensor::empty([0], (t.kind(), t.device())));
            self.whole
                .borrow_mut()
                .entry(name.clone())
                .or_insert((t, copy));
            names.push(name);
        }
        self.units
            .borrow_mut()
            .entry(unit)
            .or_default()
            .extend(names);
    }

    fn complete(&self, lm: &CausalLm) {
        for unit in lm.units() {
            let fresh: Vec<(String, Tensor)> = lm
                .unit_tensors(unit)
                .into_iter()
                .filter(|(n, _)| !self.whole.borrow().contains_key(n))
                .collect();
            self.adopt(unit, fresh);
            let names: Vec<String> = lm.unit_tensors(unit).into_iter().map(|(n, _)| n).collect();
            let mut units = self.units.borrow_mut();
            let list = units.entry(unit).or_default();
            for n in names {
                if !list.contains(&n) {
                    list.push(n);
                }
            }
        }
    }
}

impl Residency for Stash {
    type Error = Infallible;

    fn gather(&self, unit: Unit) -> Result<(), Infallible> {
        self.calls.borrow_mut().push((unit, "gather"));
        for name in self.units.borrow().get(&unit).cloned().unwrap_or_default() {
            let whole = self.whole.borrow();
            let (t, copy) = &whole[&name];
            t.shallow_clone().set_data(copy);
        }
        self.live.borrow_mut().push(unit);
        let n = self.live.borrow().len();
        let mut max = self.max_live.borrow_mut();
        *max = (*max).max(n);
        Ok(())
    }

    fn release(&self, unit: Unit, gradients_ready: bool) -> Result<(), Infallible> {
        self.calls.borrow_mut().push((unit, "release"));
        for name in self.units.borrow().get(&unit).cloned().unwrap_or_default() {
            let whole = self.whole.borrow();
            let (t, _) = &whole[&name];
            if gradients_ready {
                let g = t.grad();
                if g.defined() {
                    let mut grads = self.grads.borrow_mut();
                    let sum = match grads.remove(&name) {
                        Some(prev) => prev + g.copy(),
                        None => g.copy(),
                    };
                    grads.insert(name.clone(), sum);
                    t.shallow_clone().zero_grad();
                }
            }
            t.shallow_clone()
                .set_data(&Tensor::empty([0], (t.kind(), t.device())));
        }
        self.live.borrow_mut().retain(|u| *u != unit);
        Ok(())
    }

    fn lockstep(&self) -> bool {
        true
    }

    fn needs_recomputation(&self) -> bool {
        true
    }
}

fn write_model(dir: &std::path::Path, tied: bool) {
    let arch = common::tiny_arch(tied);
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": 80, "hidden_size": 48, "intermediate_size": 96,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": tied
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let weights = {
        let _rng = common::rng_lock();
        common::random_weights(&arch, 21)
    };
    Tensor::write_safetensors(&weights, dir.join("model.safetensors")).unwrap();
}

fn training(lm: &mut CausalLm, yaml: &str, residency: Option<&Stash>) {
    let cfg = TrainingConfig::from_yaml_str(yaml).unwrap();
    let _rng = common::rng_lock();
    match residency {
        Some(r) => lm.apply_method_with(&cfg, 5, r).unwrap(),
        None => lm.apply_method(&cfg, 5).unwrap(),
    }
    lm.set_training(true);
}

#[test]
fn a_model_gathered_unit_by_unit_computes_what_a_whole_model_does() {
    for (tied, yaml) in [
        (
            true,
            "lora_rank: 4\nlora_target: all\ngradient_checkpointing: true\nuse_dora: true",
        ),
        (
            false,
            "finetuning_type: full\ngradient_checkpointing: true\nloss_chunk_size: 7",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path(), tied);
        let opts = LoadOptions::new(Device::Cpu, Kind::Float);

        let mut whole = CausalLm::load(dir.path(), &opts).unwrap();
        training(&mut whole, yaml, None);

        let stash = Stash::default();
        let mut order = Vec::new();
        let mut parted = CausalLm::load_into(dir.path(), &opts, &mut |unit, tensors| {
            order.push(unit);
            stash.adopt(unit, tensors);
            Ok(())
        })
        .unwrap();
        let mut expected = vec![Unit::Embedding];
        expected.extend((0..3).map(Unit::Layer));
        expected.push(Unit::Head);
        assert_eq!(order, expected, "units are handed over in load order");
        assert_eq!(parted.weight_bytes(), 0, "every loaded tensor was emptied");
        training(&mut parted, yaml, Some(&stash));
        stash.complete(&parted);
        assert_eq!(parted.weight_bytes(), 0);

        let (ids, labels) = {
            let _rng = common::rng_lock();
            common::batch(80, 2, 9, 3)
        };
        let a = whole.loss_sum_and_backward(&ids, &labels, 0.1).unwrap();
        let b = parted
            .loss_sum_and_backward_with(&ids, &labels, 0.1, &stash)
            .unwrap();
        assert!((a - b).abs() < 1e-9, "{yaml}: loss {a} vs {b}");
        assert_eq!(*stash.max_live.borrow(), 1, "one unit whole at a time");
        let grads = stash.grads.borrow();
        let params = whole.trainable_parameters();
        assert!(!params.is_empty());
        for (name, p) in params {
            let g = grads
                .get(&name)
                .unwrap_or_else(|| panic!("{yaml}: no gradient for {name} at its release"));
            let d = common::rel_diff(g, &p.grad());
            assert!(d < 1e-6, "{yaml}: gradient of {name} differs by {d}");
        }
        // Every gather has its release, and backward released each unit with gradients.
        {
            let calls = stash.calls.borrow();
            let gathers = calls.iter().filter(|(_, k)| *k == "gather").count();
            assert_eq!(gathers * 2, calls.len());
        }
        drop(grads);

        parted.set_training(false);
        whole.set_training(false);
        let ea = tch::no_grad(|| whole.loss_sum(&ids, &labels)).double_value(&[]);
        let Ok(eb) = tch::no_grad(|| parted.loss_sum_with(&ids, &labels, &stash));
        assert!(
            (ea - eb.double_value(&[])).abs() < 1e-9,
            "{yaml}: eval loss"
        );
    }
}

/// Without layer recomputation a partitioned model cannot train (autograd would keep the
/// gathered weights): a clear error, not wrong gradients.
#[test]
fn a_partitioned_model_needs_layer_recomputation() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), true);
    let opts = LoadOptions::new(Device::Cpu, Kind::Float);
    let stash = Stash::default();
    let mut lm = CausalLm::load_into(dir.path(), &opts, &mut |unit, tensors| {
        stash.adopt(unit, tensors);
        Ok(())
    })
    .unwrap();
    training(
        &mut lm,
        "lora_rank: 2\ngradient_checkpointing: false",
        Some(&stash),
    );
    stash.complete(&lm);
    let (ids, labels) = {
        let _rng = common::rng_lock();
        common::batch(80, 2, 9, 3)
    };
    let err = lm
        .loss_sum_and_backward_with(&ids, &labels, 1.0, &stash)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer recomputation"), "{err}");
    lm.force_layer_recomputation();
    lm.loss_sum_and_backward_with(&ids, &labels, 1.0, &stash)
        .unwrap();
}
