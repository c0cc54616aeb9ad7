//! The restart policy: after an attempt failed, whether the job fails for good or a new attempt
//! starts (and with which plan), as a pure function of what was observed, the status and
//! `spec.runPolicy`. The reconciler only carries out the [`Decision`].
//!
//! In order, the first that applies:
//! 1. the Job controller stopped the attempt at `activeDeadlineSeconds`: fail (`DeadlineExceeded`);
//! 2. `ConfigError`, `NonFinite` or `OutputVolumeFull`: fail at once (retrying repeats it);
//! 3. a counted failure (anything but `Preempted`) with `maxRestarts` restarts used: fail
//!    (`RestartLimitExceeded`); a preemption with [`MAX_FREE_RESTARTS`] free restarts used: fail
//!    (`PreemptionLimitExceeded`), so that no job restarts forever;
//! 4. `OutOfMemory`: re-plan with less memory per GPU; nothing fits: fail (`DoesNotFit`);
//! 5. otherwise (`Runtime`, `Communication`, `Preempted`): restart, from the latest checkpoint.

use lf_api::crd::RunPolicy;
use lf_api::runtime::FailureReason;
use lf_api::status::FailureRecord;
use lf_api::{FineTuneJobStatus, Plan};

/// Free restarts (after preemptions, evictions for node pressure, node drains) a job gets at most:
/// a job preempted this often is better failed with a clear reason than restarted forever.
pub const MAX_FREE_RESTARTS: u32 = 20;

/// A failed attempt, as observed.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The attempt that failed.
    pub attempt: u32,
    /// Its classified failure.
    pub failure: &'a FailureRecord,
    /// The Job controller stopped it at `spec.runPolicy.activeDeadlineSeconds`.
    pub deadline: bool,
}

impl Observation<'_> {
    /// `attempt 2 failed (OutOfMemory, pod demo-2-0): CUDA out of memory`.
    pub fn describe(&self) -> String {
        let f = self.failure;
        format!(
            "attempt {} failed ({:?}{}): {}",
            self.attempt,
            f.reason,
            f.pod
                .as_ref()
                .map(|p| format!(", pod {p}"))
                .unwrap_or_default(),
            f.message
        )
    }
}

/// What to do about a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The job fails for good: the `Failed` condition's reason and message.
    Fail {
        reason: &'static str,
        message: String,
    },
    /// Attempt `attempt` starts, from the latest checkpoint.
    Restart {
        attempt: u32,
        /// Whether it uses the restart budget (preemptions do not).
        counted: bool,
        /// The new plan, when re-planning after running out of memory changed it.
        replanned: Option<Plan>,
    },
}

/// Decides about a failed attempt (see the module docs). `replan` is asked only after an
/// out-of-memory failure within the budget; it returns a plan needing less memory per GPU, or why
/// there is none.
pub fn decide(
    observed: &Observation,
    status: &FineTuneJobStatus,
    policy: &RunPolicy,
    plan: &Plan,
    replan: impl FnOnce() -> Result<Plan, String>,
) -> Decision {
    let what = observed.describe();
    let fail = |reason, message: String| Decision::Fail { reason, message };
    let reason = observed.failure.reason;
    let counted = reason != FailureReason::Preempted;
    let max = policy.max_restarts;
    if observed.deadline {
        return fail(
            "DeadlineExceeded",
            format!("{what}; spec.runPolicy.activeDeadlineSeconds was reached"),
        );
    }
    let mut replanned = None;
    match reason {
        FailureReason::ConfigError => {
            return fail(
                "ConfigError",
                format!("{what}; not retried: fix the configuration, model or data"),
            )
        }
        FailureReason::NonFinite => {
            return fail(
                "NonFinite",
                format!("{what}; not retried: the loss diverged (lower learning_rate)"),
            )
        }
        FailureReason::OutputVolumeFull => {
            return fail(
                "OutputVolumeFull",
                format!("{what}; not retried: free space on the output volume or enlarge its PersistentVolumeClaim, then create the job again (it resumes from its last checkpoint)"),
            )
        }
        _ if counted && status.counted_restarts() >= max => {
            return fail(
                "RestartLimitExceeded",
                format!("{what}; spec.runPolicy.maxRestarts ({max}) restarts used"),
            )
        }
        _ if !counted && status.restart_totals().free >= MAX_FREE_RESTARTS => {
            return fail(
                "PreemptionLimitExceeded",
                format!("{what}; {MAX_FREE_RESTARTS} restarts after preemptions or evictions already: check the cluster's priorities and capacity"),
            )
        }
        FailureReason::OutOfMemory => match replan() {
            Ok(p) => replanned = (p != *plan).then_some(p),
            Err(msg) => {
                return fail(
                    "DoesNotFit",
                    format!("{what}; re-planning with more headroom found nothing: {msg}"),
                )
            }
        },
        FailureReason::Runtime | FailureReason::Communication | FailureReason::Preempted => {}
    }
    Decision::Restart {
        attempt: observed.attempt + 1,
        counted,
        replanned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use lf_api::status::RestartRecord;
    use FailureReason::*;

    fn failure(reason: FailureReason) -> FailureRecord {
        FailureRecord {
            reason,
            rank: Some(0),
            pod: Some("demo-2-0".into()),
            node: None,
            exit_code: Some(1),
            message: "boom".into(),
            hint: None,
        }
    }

    fn plan(micro_batch: u32) -> Plan {
        Plan {
            model_params: 8_030_261_248,
            trainable_params: 41_943_040,
            gpus: 1,
            nodes: 1,
            gpus_per_node: 1,
            zero_stage: 0,
            offload_optimizer: false,
            micro_batch_size: micro_batch,
            gradient_accumulation_steps: 8 / micro_batch,
            gpu_memory_bytes: 24 << 30,
            headroom_bytes: 1 << 30,
            fits: true,
            per_gpu: lf_api::MemoryBreakdown::default(),
            host_memory_bytes: 5 << 30,
            checkpoint_bytes: 500 << 20,
            recomputation: None,
            summary: String::new(),
        }
    }

    /// A status with `counted` counted restarts and one preemption.
    fn status(counted: u32) -> FineTuneJobStatus {
        let restart = |counted: bool, reason| RestartRecord {
            attempt: 2,
            reason,
            resumed_from_step: None,
            counted,
            at: Time("2026-01-01T00:00:00Z".parse().unwrap()),
        };
        let mut restarts = vec![restart(false, Preempted)];
        restarts.extend((0..counted).map(|_| restart(true, Runtime)));
        FineTuneJobStatus {
            restarts,
            ..Default::default()
        }
    }

    fn policy(max_restarts: u32) -> RunPolicy {
        RunPolicy {
            max_restarts,
            ..RunPolicy::default()
        }
    }

    /// What `decide` says, in short: `Fail(reason)` or `Restart(attempt, counted, new micro-batch)`.
    #[derive(Debug, PartialEq)]
    enum Short {
        Fail(&'static str),
        Restart(u32, bool, Option<u32>),
    }

    fn run(
        reason: FailureReason,
        deadline: bool,
        used: u32,
        max: u32,
        replan: Result<Plan, String>,
    ) -> Short {
        let f = failure(reason);
        let observed = Observation {
            attempt: 2,
            failure: &f,
            deadline,
        };
        let asked = std::cell::Cell::new(false);
        let decision = decide(&observed, &status(used), &policy(max), &plan(2), || {
            asked.set(true);
            replan
        });
        assert_eq!(
            asked.get(),
            reason == OutOfMemory && !deadline && used < max,
            "re-planning is asked for only after an OOM within the budget"
        );
        match decision {
            Decision::Fail { reason, message } => {
                assert!(
                    message.starts_with("attempt 2 failed (") && message.contains("pod demo-2-0"),
                    "{message}"
                );
                Short::Fail(reason)
            }
            Decision::Restart {
                attempt,
                counted,
                replanned,
            } => Short::Restart(attempt, counted, replanned.map(|p| p.micro_batch_size)),
        }
    }

    /// `(reason, deadline reached, restarts used, maxRestarts, re-plan result, decision)`.
    type Row = (FailureReason, bool, u32, u32, Result<Plan, String>, Short);

    #[test]
    fn every_failure_class() {
        let fits = || Ok(plan(1));
        let same = || Ok(plan(2));
        let nothing = || Err("no configuration fits".to_string());
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            // reason      deadline used max replan     decision
            (ConfigError,   false, 0, 3, fits(),    Short::Fail("ConfigError")),
            (NonFinite,     false, 0, 3, fits(),    Short::Fail("NonFinite")),
            (OutputVolumeFull, false, 0, 3, fits(), Short::Fail("OutputVolumeFull")),
            (Runtime,       false, 0, 3, fits(),    Short::Restart(3, true, None)),
            (Runtime,       false, 2, 3, fits(),    Short::Restart(3, true, None)),
            (Runtime,       false, 3, 3, fits(),    Short::Fail("RestartLimitExceeded")),
            (Communication, false, 0, 3, fits(),    Short::Restart(3, true, None)),
            (Communication, false, 3, 3, fits(),    Short::Fail("RestartLimitExceeded")),
            // A preemption never counts, even with the budget used up.
            (Preempted,     false, 0, 3, fits(),    Short::Restart(3, false, None)),
            (Preempted,     false, 0, 0, fits(),    Short::Restart(3, false, None)),
            (OutOfMemory,   false, 0, 3, fits(),    Short::Restart(3, true, Some(1))),
            (OutOfMemory,   false, 0, 3, same(),    Short::Restart(3, true, None)),
            (OutOfMemory,   false, 0, 3, nothing(), Short::Fail("DoesNotFit")),
            (OutOfMemory,   false, 3, 3, fits(),    Short::Fail("RestartLimitExceeded")),
            // The deadline ends the job whatever the pods said.
            (Runtime,       true,  0, 3, fits(),    Short::Fail("DeadlineExceeded")),
            (Preempted,     true,  0, 3, fits(),    Short::Fail("DeadlineExceeded")),
            (OutOfMemory,   true,  0, 3, fits(),    Short::Fail("DeadlineExceeded")),
        ];
        for (reason, deadline, used, max, replan, want) in table {
            assert_eq!(
                run(reason, deadline, used, max, replan),
                want,
                "{reason:?}, deadline {deadline}, {used} of {max} restarts used"
            );
        }
    }

    #[test]
    fn free_restarts_are_capped_and_totals_outlive_the_kept_records() {
        let f = failure(Preempted);
        let observed = Observation {
            attempt: 1,
            failure: &f,
            deadline: false,
        };
        let mut st = FineTuneJobStatus::default();
        let mut restarts = 0;
        let reason = loop {
            match decide(&observed, &st, &policy(3), &plan(1), || unreachable!()) {
                Decision::Restart { counted, .. } => {
                    assert!(!counted);
                    restarts += 1;
                    st.record_restart(RestartRecord {
                        attempt: restarts + 1,
                        reason: Preempted,
                        resumed_from_step: None,
                        counted,
                        at: Time("2026-01-01T00:00:00Z".parse().unwrap()),
                    });
                }
                Decision::Fail { reason, message } => {
                    assert!(
                        message.contains("20 restarts after preemptions"),
                        "{message}"
                    );
                    break reason;
                }
            }
            assert!(restarts <= MAX_FREE_RESTARTS, "preempted forever");
        };
        assert_eq!(
            (reason, restarts),
            ("PreemptionLimitExceeded", MAX_FREE_RESTARTS)
        );
        assert_eq!(st.restarts.len(), lf_api::status::RESTART_RECORDS_KEPT);
        assert_eq!(
            st.restarts.last().map(|r| r.attempt),
            Some(MAX_FREE_RESTARTS + 1)
        );
        let totals = st.restart_totals();
        assert_eq!((totals.counted, totals.free), (0, MAX_FREE_RESTARTS));
        // Emptying the records (as a forged status write would) does not reset the totals.
        st.restarts.clear();
        assert_eq!(st.restart_totals().free, MAX_FREE_RESTARTS);
    }

    #[test]
    fn messages_say_why_and_what_to_do() {
        let f = failure(OutOfMemory);
        let observed = Observation {
            attempt: 1,
            failure: &f,
            deadline: false,
        };
        let Decision::Fail { message, .. } =
            decide(&observed, &status(0), &policy(3), &plan(1), || {
                Err("nothing fits in 24 GiB".into())
            })
        else {
            panic!("an OOM with nothing smaller fails")
        };
        assert_eq!(
            message,
            "attempt 1 failed (OutOfMemory, pod demo-2-0): boom; \
             re-planning with more headroom found nothing: nothing fits in 24 GiB"
        );
        let Decision::Fail { message, .. } = decide(
            &Observation {
                failure: &failure(Runtime),
                ..observed
            },
            &status(1),
            &policy(1),
            &plan(1),
            || unreachable!(),
        ) else {
            panic!("the budget is used up")
        };
        assert!(
            message.ends_with("spec.runPolicy.maxRestarts (1) restarts used"),
            "{message}"
        );
    }
}
