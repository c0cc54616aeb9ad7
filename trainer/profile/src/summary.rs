//! A profiled window on one screen: the operators that took the most time (self time, from the
//! Chrome trace libtorch wrote), the share of the step spent waiting for data, in the optimizer and
//! in collectives, and a hint naming what dominates.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde_json::Value;

/// Seconds the profiled steps spent in each phase, as the training loop measures them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PhaseSplit {
    pub data: f64,
    pub forward_backward: f64,
    pub optimizer: f64,
}

impl PhaseSplit {
    fn total(&self) -> f64 {
        self.data + self.forward_backward + self.optimizer
    }
}

/// One operator's time over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct OpStat {
    pub name: String,
    pub calls: u64,
    /// Microseconds in the operator itself, its child operators excluded.
    pub self_us: f64,
    /// Microseconds including child operators.
    pub total_us: f64,
}

/// What dominates the profiled steps.
#[derive(Debug, Clone, PartialEq)]
pub enum Bottleneck {
    DataLoading { share: f64 },
    Communication { share: f64 },
    Optimizer { share: f64 },
    Operator { name: String, share: f64 },
}

/// Shares at or above which a phase is called dominant.
const DOMINANT: f64 = 0.25;
/// Rows of the operator table.
const TOP: usize = 12;

/// The window's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// `ProfilerStep#N` ranges found in the trace.
    pub steps: usize,
    pub ops: Vec<OpStat>,
    /// Microseconds in collectives (c10d/NCCL/Gloo operators), inclusive.
    pub communication_us: f64,
    /// Microseconds inside the step ranges.
    pub stepped_us: f64,
    pub split: PhaseSplit,
    pub bottleneck: Bottleneck,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the trace {path}: {message}")]
pub struct TraceError {
    pub path: String,
    pub message: String,
}

/// Reads the trace at `path` and summarises it with the loop's `split` of the same steps.
pub fn summarize_file(path: &Path, split: PhaseSplit) -> Result<Summary, TraceError> {
    let error = |message: String| TraceError {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let trace: Value = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
    let events = trace["traceEvents"]
        .as_array()
        .ok_or_else(|| error("no traceEvents array".into()))?;
    Ok(summarize(events, split))
}

/// One complete (`"ph": "X"`) event.
struct Span<'a> {
    name: &'a str,
    cat: &'a str,
    thread: String,
    ts: f64,
    dur: f64,
}

fn spans(events: &[Value]) -> Vec<Span<'_>> {
    events
        .iter()
        .filter(|e| e["ph"] == "X")
        .filter_map(|e| {
            Some(Span {
                name: e["name"].as_str()?,
                cat: e["cat"].as_str().unwrap_or(""),
                thread: format!("{}/{}", e["pid"], e["tid"]),
                ts: e["ts"].as_f64()?,
                dur: e["dur"].as_f64().unwrap_or(0.0),
            })
        })
        .collect()
}

fn is_communication(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("c10d::")
        || n.contains("nccl")
        || n.contains("gloo")
        || n.starts_with("record_param_comms")
}

/// Summarises `events` (a Chrome trace's `traceEvents`).
pub fn summarize(events: &[Value], split: PhaseSplit) -> Summary {
    let spans = spans(events);
    let steps: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("ProfilerStep#"))
        .collect();
    let stepped_us: f64 = steps.iter().map(|s| s.dur).sum();
    let mut ops: Vec<&Span> = spans.iter().filter(|s| s.cat == "cpu_op").collect();
    // Self time: per thread, an operator's children are the operators that start inside it.
    ops.sort_by(|a, b| {
        (a.thread.as_str(), a.ts, -a.dur)
            .partial_cmp(&(b.thread.as_str(), b.ts, -b.dur))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut self_us = vec![0.0; ops.len()];
    let mut stack: Vec<usize> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        self_us[i] = op.dur;
        while let Some(&top) = stack.last() {
            let parent = ops[top];
            if parent.thread == op.thread && op.ts < parent.ts + parent.dur {
                break;
            }
            stack.pop();
        }
        if let Some(&parent) = stack.last() {
            self_us[parent] -= op.dur;
        }
        stack.push(i);
    }
    let mut by_name: HashMap<&str, OpStat> = HashMap::new();
    for (op, own) in ops.iter().zip(&self_us) {
        let stat = by_name.entry(op.name).or_insert_with(|| OpStat {
            name: op.name.to_string(),
            calls: 0,
            self_us: 0.0,
            total_us: 0.0,
        });
        stat.calls += 1;
        stat.self_us += own.max(0.0);
        stat.total_us += op.dur;
    }
    let communication_us: f64 = by_name
        .values()
        .filter(|s| is_communication(&s.name))
        .map(|s| s.self_us)
        .sum();
    let mut ops: Vec<OpStat> = by_name.into_values().collect();
    ops.sort_by(|a, b| b.self_us.total_cmp(&a.self_us).then(a.name.cmp(&b.name)));
    let bottleneck = bottleneck(&split, communication_us, stepped_us, &ops);
    Summary {
        steps: steps.len(),
        ops,
        communication_us,
        stepped_us,
        split,
        bottleneck,
    }
}

/// What dominates: data waits, collectives or the optimizer when one takes a quarter of the step
/// or more (in that order), else the operator with the most self time.
pub fn bottleneck(
    split: &PhaseSplit,
    communication_us: f64,
    stepped_us: f64,
    ops: &[OpStat],
) -> Bottleneck {
    let total = split.total();
    let share = |part: f64, whole: f64| if whole > 0.0 { part / whole } else { 0.0 };
    let data = share(split.data, total);
    let communication = share(communication_us, stepped_us);
    let optimizer = share(split.optimizer, total);
    if data >= DOMINANT {
        return Bottleneck::DataLoading { share: data };
    }
    if communication >= DOMINANT {
        return Bottleneck::Communication {
            share: communication,
        };
    }
    if optimizer >= DOMINANT {
        return Bottleneck::Optimizer { share: optimizer };
    }
    let op_total: f64 = ops.iter().map(|o| o.self_us).sum();
    match ops.first() {
        Some(top) => Bottleneck::Operator {
            name: top.name.clone(),
            share: share(top.self_us, op_total),
        },
        None => Bottleneck::Operator {
            name: "(no operators recorded)".into(),
            share: 0.0,
        },
    }
}

impl Bottleneck {
    /// One line: what dominates and what to try.
    pub fn advice(&self) -> String {
        match self {
            Bottleneck::DataLoading { share } => format!(
                "data loading dominates: the step waited {:.0}% of its time for batches; pre-tokenise once (the \
                 dataset cache in output_dir), raise preprocessing_num_workers, and check the data volume's read \
                 throughput",
                share * 100.0
            ),
            Bottleneck::Communication { share } => format!(
                "communication dominates: collectives take {:.0}% of the profiled steps; use the lowest ZeRO stage \
                 that fits, more gradient accumulation (fewer reductions per example), and compare the pre-flight \
                 bus bandwidth in status.progress with the interconnect's",
                share * 100.0
            ),
            Bottleneck::Optimizer { share } => format!(
                "the optimizer dominates: {:.0}% of the step; with offload_optimizer the CPU does it (expected to be \
                 slow), otherwise too many parameters are trainable for the batch (LoRA instead of full, or a larger \
                 micro-batch)",
                share * 100.0
            ),
            Bottleneck::Operator { name, share } => format!(
                "compute-bound: {name} takes {:.0}% of the operators' own time; bf16, flash_attn: sdpa and a larger \
                 micro-batch make the kernels more efficient",
                share * 100.0
            ),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.split.total().max(1e-12);
        writeln!(
            f,
            "profiled {} steps: data {:.1}%  forward+backward {:.1}%  optimizer {:.1}%  collectives {:.1}% of the steps",
            self.steps,
            self.split.data / total * 100.0,
            self.split.forward_backward / total * 100.0,
            self.split.optimizer / total * 100.0,
            if self.stepped_us > 0.0 { (self.communication_us / self.stepped_us * 100.0).max(0.0) } else { 0.0 },
        )?;
        let op_total: f64 = self.ops.iter().map(|o| o.self_us).sum::<f64>().max(1e-12);
        writeln!(
            f,
            "{:<44} {:>7} {:>12} {:>7} {:>12}",
            "operator", "calls", "self ms", "self %", "total ms"
        )?;
        for op in self.ops.iter().take(TOP) {
            let name: String = op.name.chars().take(44).collect();
            writeln!(
                f,
                "{name:<44} {:>7} {:>12.3} {:>6.1}% {:>12.3}",
                op.calls,
                op.self_us / 1000.0,
                op.self_us / op_total * 100.0,
                op.total_us / 1000.0
            )?;
        }
        write!(f, "hint: {}", self.bottleneck.advice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(name: &str, ts: f64, dur: f64) -> Value {
        json!({"ph": "X", "cat": "cpu_op", "name": name, "pid": 1, "tid": 1, "ts": ts, "dur": dur})
    }

    #[test]
    fn self_time_excludes_children_and_collectives_are_counted() {
        let events = vec![
            json!({"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "pid": 1, "tid": 1, "ts": 0.0, "dur": 1000.0}),
            op("aten::linear", 0.0, 600.0),
            op("aten::mm", 10.0, 500.0),
            op("aten::linear", 700.0, 100.0),
            op("aten::mm", 710.0, 80.0),
            op("c10d::allreduce_", 850.0, 100.0),
        ];
        let s = summarize(
            &events,
            PhaseSplit {
                data: 0.0,
                forward_backward: 1.0,
                optimizer: 0.1,
            },
        );
        assert_eq!(s.steps, 1);
        let mm = s.ops.iter().find(|o| o.name == "aten::mm").unwrap();
        assert_eq!((mm.calls, mm.self_us), (2, 580.0));
        let linear = s.ops.iter().find(|o| o.name == "aten::linear").unwrap();
        assert_eq!((linear.self_us, linear.total_us), (120.0, 700.0));
        assert_eq!(s.communication_us, 100.0);
        assert_eq!(s.ops[0].name, "aten::mm");
        assert_eq!(
            s.bottleneck,
            Bottleneck::Operator {
                name: "aten::mm".into(),
                share: 580.0 / 800.0
            }
        );
        let text = s.to_string();
        assert!(text.contains("hint: compute-bound: aten::mm"), "{text}");
    }

    #[test]
    fn the_dominant_phase_is_named() {
        let ops = [OpStat {
            name: "aten::mm".into(),
            calls: 1,
            self_us: 1.0,
            total_us: 1.0,
        }];
        let slow_data = PhaseSplit {
            data: 3.0,
            forward_backward: 1.0,
            optimizer: 0.1,
        };
        assert!(matches!(
            bottleneck(&slow_data, 0.0, 1.0, &ops),
            Bottleneck::DataLoading { .. }
        ));
        let split = PhaseSplit {
            data: 0.0,
            forward_backward: 1.0,
            optimizer: 0.1,
        };
        assert!(matches!(
            bottleneck(&split, 400.0, 1000.0, &ops),
            Bottleneck::Communication { .. }
        ));
        let slow_opt = PhaseSplit {
            data: 0.0,
            forward_backward: 1.0,
            optimizer: 1.0,
        };
        assert!(matches!(
            bottleneck(&slow_opt, 0.0, 1.0, &ops),
            Bottleneck::Optimizer { .. }
        ));
        assert!(bottleneck(&slow_data, 0.0, 1.0, &ops)
            .advice()
            .starts_with("data loading dominates: the step waited 73%"));
    }
}
