//! `neat_packing: true` trains on the same examples as without it, in packed rows: two optimiser
//! steps of 8 examples (varied lengths, masked prompts) give the same losses and adapter weights
//! as the padded rows, and the packed micro-batches hold fewer positions.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::{config, context, data, max_abs_diff, optimizer, trainee, weights};
use lf_trainer::batching::step_batches;
use lf_trainer::train_loop::train;

#[test]
fn neat_packing_trains_like_the_padded_batches() {
    let data = data(16, 0);
    let run = |extra: &str| {
        let out = tempfile::tempdir().unwrap();
        let cfg = config(&format!(
            "optim: sgd\nlearning_rate: 0.5\nmax_steps: 2\ncutoff_len: 32\nper_device_train_batch_size: 8\n{extra}"
        ));
        let mut t = trainee(&cfg);
        let mut o = optimizer(&cfg, &t);
        let s = train(
            &cfg,
            &mut t,
            &mut o,
            &data,
            &context(out.path(), Arc::new(AtomicBool::new(false)), None),
        )
        .unwrap();
        (weights(&t), s.train_loss)
    };
    let (w_packed, l_packed) = run("neat_packing: true\n");
    let (w_plain, l_plain) = run("");
    let start = weights(&trainee(&config("")));
    assert!(
        max_abs_diff(&w_plain, &start) > 1e-3,
        "the steps must change the adapter"
    );
    let d = max_abs_diff(&w_packed, &w_plain);
    println!("neat_packing vs padded: loss {l_packed} vs {l_plain}, weights differ by {d:.2e}");
    assert!(d < 1e-5, "weights differ by {d}");
    assert!(
        (l_packed - l_plain).abs() <= 1e-6 * l_plain.abs(),
        "losses {l_packed} vs {l_plain}"
    );

    // The packed micro-batches are smaller.
    let plan = lf_data::StepPlan {
        num_examples: 16,
        batch_size: 8,
        grad_accum: 1,
        seed: 42,
        world_size: 1,
        rank: 0,
    };
    for step in 0..2 {
        let plain = step_batches(&plan, &data.train, 0, None, step);
        let packed = step_batches(&plan, &data.train, 0, Some(32), step);
        let size = |s: &lf_trainer::batching::StepBatches| -> usize {
            s.micro.iter().map(|b| b.batch_size * b.seq_len).sum()
        };
        println!(
            "step {step}: {} padded positions vs {} packed",
            size(&plain),
            size(&packed)
        );
        assert!(size(&packed) < size(&plain));
    }
}
