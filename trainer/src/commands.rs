//! The four commands: `train` (with `do_predict`, prediction), `eval`, `chat`, `export`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use lf_api::runtime::env;
use lf_api::training::{Stage, TrainingConfig};
use lf_model::GenerationParams;

use crate::adapters::{model_error, LmTrainee, OptimStep};
use crate::data_parallel::ReplicatedStep;
use crate::error::TrainerError;
use crate::grad_reduce::GradientReducer;
use crate::interfaces::{DataParallel, SingleProcess, StepOptimizer, TrainModel};
use crate::metrics::Metrics;
use crate::outputs::{merge_results, TrainerLog, LOSS_PLOT};
use crate::preference::PreferenceLoss;
use crate::resume::{resolve, Start};
use crate::setup;
use crate::status::{Sink, StatusReporter};
use crate::tracking::RunTrackers;
use crate::train_loop::{evaluate, train, RunContext, TrainData};
use crate::zero::ZeroOptimizer;
use crate::zero3::ParameterPartition;

/// Bytes of one export shard from `export_size` (GB).
fn shard_bytes(cfg: &TrainingConfig) -> u64 {
    (cfg.export_size.max(1) as u64) * 1_000_000_000
}

/// Bytes and timed iterations of the pre-flight all-reduce probe: big enough to measure bandwidth
/// rather than latency, small enough to take about a second on a slow (1 GB/s) network.
const PROBE_BYTES: usize = 32 << 20;
const PROBE_ITERS: usize = 3;

/// Before training, every rank runs a short all-reduce; rank 0 logs the bus bandwidth (and the
/// status shows it), so a misconfigured network shows at the start rather than as a slow job.
fn preflight_bandwidth(pg: &lf_dist::ProcessGroup) -> Result<f64, TrainerError> {
    let bw = lf_dist::bandwidth_probe(pg, PROBE_BYTES, PROBE_ITERS)
        .map_err(crate::data_parallel::dist_error)?;
    if pg.rank() == 0 {
        tracing::info!(
            world_size = bw.world_size,
            bus_bandwidth_gbps = format!("{:.2}", bw.bus_gbps),
            all_reduce_ms = format!("{:.1}", bw.seconds_per_iter * 1e3),
            bytes = bw.bytes,
            "pre-flight all-reduce bandwidth"
        );
    }
    Ok(bw.bus_gbps)
}

/// `lf-trainer train`: trains, then predicts with `do_predict` (or only predicts when nothing
/// trains).
pub fn run_train(cfg: &TrainingConfig) -> Result<(), TrainerError> {
    if !cfg.trains() {
        return crate::predict::predict_without_training(cfg);
    }
    let model_dir = setup::model_dir(cfg)?;
    let out = setup::output_dir(cfg)?;
    let device = setup::device();
    let timeout = std::time::Duration::from_secs(cfg.ddp_timeout.max(1));
    let joined = crate::data_parallel::join_from_env(device, timeout)?;
    let process_group = joined.as_ref().map(|g| g.process_group());
    let bus_bandwidth_gbps = match &process_group {
        Some(pg) => Some(preflight_bandwidth(pg)?),
        None => None,
    };
    let group: Box<dyn DataParallel> = match joined {
        Some(g) => Box::new(g),
        None => Box::new(SingleProcess),
    };
    let is_main = group.rank() == 0;
    let stop = setup::stop_flag()?;
    let start = resolve(cfg, &out, is_main)?;
    let trackers = if is_main {
        let resumed = start.checkpoint().is_some();
        RunTrackers::start(cfg, &out, resumed, |k| {
            crate::tracking::setting(k, |k| std::env::var(k).ok())
        })?
    } else {
        RunTrackers::none()
    };

    let tok = setup::tokenizer(&model_dir)?;
    let (train_examples, eval_examples) =
        setup::data(cfg, &tok, &out, group.rank(), group.world_size())?;
    let data = TrainData {
        train: Arc::new(train_examples),
        eval: eval_examples,
        pad_id: tok.pad_id(),
    };

    // ZeRO-3 partitions the parameters while the model loads (one unit whole at a time).
    let mut partition = match &process_group {
        Some(pg) if cfg.zero_stage >= 3 => Some(ParameterPartition::new(pg.clone())),
        _ => None,
    };
    let resolved = crate::recompute_budget::resolve(cfg, &model_dir, device)?;
    let cfg = &resolved;
    let lm = setup::model(cfg, &model_dir, device, true, partition.as_mut())?;
    let numeric_setup = setup::numeric_setup(cfg, &lm);
    tracing::info!(device = ?device, setup = %numeric_setup, "model ready");
    let mut trainee = LmTrainee::new(lm, model_dir.display().to_string());
    if cfg.stage == Stage::Rm {
        let head = setup::value_head(cfg, &model_dir, &trainee.lm, device)?;
        // Under ZeRO-3 the value head is partitioned with the head unit (its loss runs there).
        if let Some(p) = partition.as_mut() {
            p.adopt_marking_trainable(
                lf_model::Unit::Head,
                vec![(head.name.clone(), head.weight.shallow_clone())],
            )?;
        }
        trainee = trainee.with_value_head(head, tok.pad_id());
    }
    if cfg.keeps_reference_copy() {
        // The reference of a `full`/`freeze` preference run: the starting weights, frozen, and
        // under ZeRO-3 partitioned as they load (the planner counts them so).
        let mut reference_partition = partition
            .as_ref()
            .and(process_group.as_ref())
            .map(|pg| ParameterPartition::new(pg.clone()));
        let reference = setup::model(cfg, &model_dir, device, false, reference_partition.as_mut())?;
        trainee = trainee.with_reference(reference, reference_partition);
    }
    if let Some(pg) = &process_group {
        trainee.reduce_over(pg.clone());
    }
    let params = trainee.trainable_parameters();
    let trainable: usize = params
        .iter()
        .map(|(name, t)| match &partition {
            Some(p) => p.trainable(name).map_or(0, |(n, _)| n),
            None => t.numel(),
        })
        .sum();
    tracing::info!(
        trainable_params = trainable,
        tensors = params.len(),
        "trainable parameters"
    );
    let partition = partition.map(Rc::new);
    // `overlap_comm`: each unit's gradients start reducing as its backward finishes.
    let overlap_units = cfg
        .overlaps_comm(group.world_size())
        .then(|| trainee.unit_parameters());
    if group.world_size() > 1 && cfg.zero_stage < 3 {
        tracing::info!(overlap_comm = overlap_units.is_some(), "gradient reduction");
    }
    let mut optimizer: Box<dyn StepOptimizer> = match process_group {
        Some(pg) if cfg.zero_stage > 0 => {
            tracing::info!(zero_stage = cfg.zero_stage, "ZeRO partitioning");
            let zero = ZeroOptimizer::new(
                cfg,
                cfg.zero_stage,
                pg,
                &params,
                partition.clone(),
                overlap_units.as_ref(),
            )?;
            if let Some(reducer) = zero.gradient_reducer().filter(|r| r.overlaps()) {
                trainee.overlap_gradients(reducer);
            }
            if let Some(partition) = partition {
                if cfg.gradient_checkpointing != lf_api::training::GradientCheckpointing::On {
                    tracing::warn!(
                        "zero_stage 3 gathers each layer again for its recomputation in backward: gradient_checkpointing is turned on"
                    );
                }
                trainee.partition_parameters(partition);
            }
            Box::new(zero)
        }
        process_group => {
            let inner = Box::new(OptimStep(
                lf_optim::build(cfg, &params)
                    .map_err(|e| TrainerError::config(format!("optimizer: {e}")))?,
            ));
            match process_group {
                Some(pg) => {
                    let bucket = crate::gradients::bucket_elements();
                    let reducer = Rc::new(GradientReducer::replicated(
                        pg,
                        &params,
                        bucket,
                        overlap_units.as_ref(),
                    )?);
                    if reducer.overlaps() {
                        trainee.overlap_gradients(reducer.clone());
                    }
                    Box::new(ReplicatedStep { inner, reducer })
                }
                None => inner,
            }
        }
    };
    drop(params);

    let status = if is_main {
        Sink::from_env().map(StatusReporter::start)
    } else {
        None
    };
    let metrics = match std::env::var(env::METRICS_ADDR)
        .ok()
        .filter(|a| !a.is_empty())
    {
        Some(addr) if is_main => {
            let m = Metrics::new();
            let bound = m.serve(&addr)?;
            tracing::info!("metrics on http://{bound}/metrics");
            Some(m)
        }
        _ => None,
    };
    let ctx = RunContext {
        output_dir: out.clone(),
        device,
        stop,
        status: status.as_ref(),
        metrics: metrics.as_ref(),
        group: group.as_ref(),
        resume_from: start.checkpoint().map(Path::to_path_buf),
        resume_warning: match &start {
            Start::Fallback { warning, .. } => Some(warning.clone()),
            Start::Resume(_) | Start::Fresh => None,
        },
        numeric_setup,
        progress_bar: std::io::stderr().is_terminal(),
        bus_bandwidth_gbps,
        trackers: trackers.get(),
    };
    let result = train(cfg, &mut trainee, optimizer.as_mut(), &data, &ctx);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            if let Some(s) = status {
                s.close();
            }
            return Err(e);
        }
    };
    // `do_eval` without an evaluation schedule: every rank evaluates its share (ZeRO-3 needs all
    // of them for the gathers).
    let final_eval = if cfg.do_eval && summary.eval_loss.is_none() {
        evaluate(
            &mut trainee,
            &data.eval,
            cfg.per_device_eval_batch_size,
            data.pad_id,
            device,
            group.as_ref(),
            PreferenceLoss::from_config(cfg).as_ref(),
        )?
    } else {
        None
    };
    // Under ZeRO-3 rank 0 collects what it writes in host memory, unit by unit.
    trainee.gather_for_final_save(is_main)?;
    if is_main {
        let written = trainee.save_final(&out, &model_dir, shard_bytes(cfg))?;
        for p in &written {
            tracing::info!("wrote {}", p.display());
        }
        let mut results = summary.results();
        if let Some(e) = final_eval {
            results.insert("eval_loss".into(), e.into());
            results.insert("eval_perplexity".into(), e.exp().into());
        }
        merge_results(&out, results)?;
        trackers.succeeded(cfg, &written);
        if cfg.plot_loss {
            let log = TrainerLog::open(&out, false)?;
            let points: Vec<(u64, f64)> = log
                .read_all()
                .iter()
                .filter_map(|r| r.loss.map(|l| (r.current_steps, l)))
                .collect();
            let title = format!("training loss of {}", out.display());
            match crate::plot::plot_loss(&out.join(LOSS_PLOT), &title, &points) {
                Ok(_) => tracing::info!("wrote {}", out.join(LOSS_PLOT).display()),
                Err(e) => tracing::warn!("no loss plot: {e}"),
            }
        }
        tracing::info!(
            train_loss = summary.train_loss,
            steps = summary.global_step,
            seconds = summary.train_runtime,
            tokens_per_s = summary.tokens_per_second,
            "training finished"
        );
    }
    // Prediction loads what was saved (the training state is freed first); rank 0 only. Its
    // metrics go onto the FineTuneJob's status too.
    drop((trainee, optimizer));
    let predicted = (cfg.do_predict && is_main).then(|| {
        let config = crate::predict::trained_model_config(cfg, &out);
        crate::predict::run_predict(&config, &out)
    });
    if let (Some(Ok(metrics)), Some(s)) = (&predicted, &status) {
        let numbers = metrics
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)));
        s.predict(numbers.collect());
    }
    if let Some(s) = status {
        s.close();
    }
    predicted.transpose().map(drop)
}

/// `lf-trainer eval`: loss and perplexity on the evaluation split — or, with `exact_match`, the
/// greedy exact-match accuracy of the answers, stored as `eval_exact_match` (or
/// `eval_exact_match_<label>` when the label is not empty, e.g. `base`); for `stage: dpo`, the
/// preference accuracy of the pairs, `eval_preference_accuracy`.
pub fn run_eval(
    cfg: &TrainingConfig,
    exact_match: Option<&str>,
) -> Result<serde_json::Value, TrainerError> {
    if cfg.stage == Stage::Rm {
        return Err(TrainerError::config(
            "`lf-trainer eval` does not score a reward model yet: evaluate while training (`eval_dataset`, which logs eval_accuracy and eval_margin)",
        ));
    }
    let model_dir = setup::model_dir(cfg)?;
    let device = setup::device();
    let tok = setup::tokenizer(&model_dir)?;
    let scratch = cfg
        .output_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let (train_examples, eval_examples) = setup::data(cfg, &tok, &scratch, 0, 1)?;
    let examples = if !eval_examples.is_empty() {
        eval_examples
    } else if cfg.eval_dataset.is_none() && cfg.val_size == 0.0 {
        // No split asked for: evaluate on the whole `dataset`, as `do_eval` with `dataset` only.
        train_examples
    } else {
        return Err(TrainerError::config(
            "the evaluation split is empty: set eval_dataset or a larger val_size",
        ));
    };
    let lm = setup::model(cfg, &model_dir, device, false, None)?;
    if cfg.stage.is_pairwise() {
        let accuracy = crate::preference_eval::preference_accuracy(
            &lm,
            &examples,
            cfg.per_device_eval_batch_size,
            tok.pad_id(),
            device,
        )?
        .ok_or_else(|| TrainerError::config("the evaluation split holds no preference pairs"))?;
        let mut m = serde_json::Map::new();
        m.insert("eval_preference_accuracy".into(), accuracy.into());
        m.insert("eval_samples".into(), examples.len().into());
        save_eval_results(cfg, &m)?;
        return Ok(serde_json::Value::Object(m));
    }
    if let Some(label) = exact_match {
        let (_, stop) = setup::template_and_stops(cfg, &tok)?;
        let accuracy = crate::exact_match::exact_match(&lm, &tok, &examples, &stop)?;
        let key = if label.is_empty() {
            "eval_exact_match".to_string()
        } else {
            format!("eval_exact_match_{label}")
        };
        let mut m = serde_json::Map::new();
        m.insert(key, accuracy.into());
        save_eval_results(cfg, &m)?;
        return Ok(serde_json::Value::Object(m));
    }
    let mut trainee = LmTrainee::new(lm, model_dir.display().to_string());
    let loss = evaluate(
        &mut trainee,
        &examples,
        cfg.per_device_eval_batch_size,
        tok.pad_id(),
        device,
        &SingleProcess,
        None,
    )?
    .ok_or_else(|| TrainerError::config("the evaluation examples have no label tokens"))?;
    let mut m = serde_json::Map::new();
    m.insert("eval_loss".into(), loss.into());
    m.insert("eval_perplexity".into(), loss.exp().into());
    m.insert("eval_samples".into(), examples.len().into());
    save_eval_results(cfg, &m)?;
    Ok(serde_json::Value::Object(m))
}

/// Merges `m` into `output_dir`'s results files, when there is an `output_dir`.
fn save_eval_results(
    cfg: &TrainingConfig,
    m: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), TrainerError> {
    if let Some(out) = &cfg.output_dir {
        let out = Path::new(out);
        std::fs::create_dir_all(out).map_err(|e| TrainerError::io("create", out, e))?;
        merge_results(out, m.clone())?;
    }
    Ok(())
}

/// `lf-trainer export`: merges the adapter into the base weights as a Hugging Face model.
pub fn run_export(cfg: &TrainingConfig) -> Result<PathBuf, TrainerError> {
    let model_dir = setup::model_dir(cfg)?;
    let export_dir = cfg
        .export_dir
        .as_deref()
        .ok_or_else(|| TrainerError::config("export_dir is required for export"))?;
    if cfg.quantization_bit.is_some() {
        return Err(TrainerError::config("quantization_bit: merging into quantised base weights is not supported; export from the unquantised model"));
    }
    let lm = setup::model(cfg, &model_dir, tch::Device::Cpu, false, None)?;
    let out = PathBuf::from(export_dir);
    lm.export_merged(&out, &model_dir, shard_bytes(cfg))
        .map_err(|e| model_error("exporting the merged model", e))?;
    Ok(out)
}

/// `lf-trainer chat`: a REPL (or one answer with `prompt`) with the model's template.
pub fn run_chat(cfg: &TrainingConfig, prompt: Option<&str>) -> Result<(), TrainerError> {
    let model_dir = setup::model_dir(cfg)?;
    let device = setup::device();
    let tok = setup::tokenizer(&model_dir)?;
    let (template, stop) = setup::template_and_stops(cfg, &tok)?;
    let lm = setup::model(cfg, &model_dir, device, false, None)?;
    let params = GenerationParams::from_config(cfg);
    let system = cfg.default_system.as_deref();
    let mut history: Vec<(String, String)> = Vec::new();
    let answer = |user: &str, history: &[(String, String)]| -> Result<String, TrainerError> {
        let ids = template
            .encode_prompt(&tok, system, history, user)
            .map_err(setup::data_error)?;
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        let mut generated: Vec<u32> = Vec::new();
        let mut shown = 0usize;
        let mut stdout = std::io::stdout();
        lm.generate(&ids, &params, &stop, |t| {
            generated.push(t as u32);
            // Print what the newly decoded text settles (the server's rule: decoding the whole
            // answer keeps multi-token characters whole; an incomplete one waits).
            if let Ok(text) = tok.decode(&generated, true) {
                let (end, _) = lf_serve::text::emit_until(&text, shown, &[], false);
                if let Some(new) = text.get(shown..end) {
                    let _ = write!(stdout, "{new}");
                    let _ = stdout.flush();
                    shown = end;
                }
            }
        })
        .map_err(|e| model_error("generation", e))?;
        let answer = tok.decode(&generated, true).map_err(setup::data_error)?;
        println!("{}", answer.get(shown..).unwrap_or_default());
        Ok(answer)
    };
    if let Some(p) = prompt {
        answer(p, &history)?;
        return Ok(());
    }
    eprintln!(
        "chat with {} (template `{}`); `clear` forgets the history, `exit` quits",
        model_dir.display(),
        template.name()
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("User: ");
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| TrainerError::runtime(format!("reading stdin: {e}")))?
            == 0
        {
            return Ok(());
        }
        let user = line.trim();
        match user {
            "" => continue,
            "exit" | "quit" => return Ok(()),
            "clear" => {
                history.clear();
                eprintln!("History cleared.");
                continue;
            }
            _ => {}
        }
        eprint!("Assistant: ");
        let reply = answer(user, &history)?;
        history.push((user.to_string(), reply));
    }
}
