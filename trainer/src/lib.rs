//! lf-trainer: the training loop and everything around it that every FineTuneJob pod runs.
//!
//! * [`batching`]: the background data thread (what each step trains on is lf-data's
//!   `StepPlan`, collation lf-data's `collate`).
//! * [`schedule`]: learning-rate schedules with Hugging Face's arithmetic.
//! * [`train_loop`]: the loop itself (exact gradient accumulation, clipping, evaluation,
//!   non-finite detection), a recipe over the modules below.
//! * [`interfaces`]: what the loop needs from a model, an optimiser and the data-parallel group;
//!   [`gradients`]: the gradient arithmetic they share.
//! * [`checkpoint`]: save and resume, and the stop-and-save protocol; [`checkpoint_dir`]: atomic
//!   checkpoint directories, verification, rotation and crash recovery; [`resume`]: which
//!   checkpoint a run starts from.
//! * [`report`]: one step record fanned out to every sink; [`outputs`], [`plot`]:
//!   `trainer_log.jsonl`, `all_results.json`, `training_loss.png`.
//! * [`memory_report`]: the model-state memory measured from the tensors, next to the planner's.
//! * [`status`], [`metrics`]: the FineTuneJob status (server-side apply or a local file) and the
//!   Prometheus endpoint.
//! * [`predict`]: batch prediction (`do_predict`) and LLaMA-Factory's BLEU/ROUGE.
//! * [`error`]: the error type and its mapping onto exit codes and termination messages.

pub mod adapters;
pub mod batching;
pub mod checkpoint;
pub mod checkpoint_dir;
pub mod commands;
pub mod data_parallel;
pub mod error;
pub mod exact_match;
pub mod grad_reduce;
pub mod gradients;
pub mod interfaces;
pub mod kto;
pub mod launch;
pub mod memory_report;
pub mod metrics;
pub mod outputs;
pub mod plot;
pub mod predict;
pub mod preference;
pub mod preference_eval;
pub mod profiling;
pub mod recompute_budget;
pub mod report;
pub mod resume;
pub mod reward;
pub mod schedule;
pub mod serve_command;
pub mod setup;
pub mod state;
pub mod status;
pub mod system;
pub mod tracking;
pub mod train_loop;
pub mod value_head;
pub mod zero;
pub mod zero3;

pub use error::TrainerError;
