//! The human-readable plan (`lf-operator plan -o table`).

use std::fmt::Write;

use lf_api::Plan;

use crate::search::{group_digits, PlanSearch};

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes as GiB with one decimal (`91.2 GiB`), for one-line messages.
pub fn format_gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB)
}

fn gib2(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / GIB)
}

/// The plan as a table: the model and method, the chosen configuration with its per-GPU breakdown
/// (GiB), and every option tried with its verdict (`*` marks the chosen one).
pub fn format_table(search: &PlanSearch) -> String {
    let mut out = String::new();
    for line in &search.description {
        let _ = writeln!(out, "{line}");
    }
    out.push('\n');
    match &search.chosen {
        Some(plan) => {
            let _ = writeln!(out, "CHOSEN  {}", headline(plan));
            out.push('\n');
            breakdown(&mut out, plan);
        }
        None => {
            let _ = writeln!(out, "NO CONFIGURATION FITS");
            if let Some(closest) = search.options.iter().min_by_key(|o| o.peak_bytes) {
                let _ = writeln!(out, "closest: {}", headline(&closest.plan));
                out.push('\n');
                breakdown(&mut out, &closest.plan);
            }
        }
    }
    out.push('\n');
    let _ = writeln!(out, "options tried");
    let _ = writeln!(
        out,
        "     {:>4}  {:>4}  {:<7}  {:>5}  {:>5}  {:>8}  verdict",
        "GPUs", "ZeRO", "offload", "micro", "accum", "peak GiB"
    );
    for o in &search.options {
        let label_end = o.verdict.find(", micro-batch").map(|i| i + 2).unwrap_or(0);
        let _ = writeln!(
            out,
            "  {}  {:>4}  {:>4}  {:<7}  {:>5}  {:>5}  {:>8}  {}",
            if o.chosen { "*" } else { " " },
            o.gpus,
            o.zero_stage,
            if o.offload_optimizer { "cpu" } else { "no" },
            o.micro_batch_size,
            o.plan.gradient_accumulation_steps,
            gib2(o.peak_bytes),
            &o.verdict[label_end..]
        );
    }
    out
}

/// One line describing a plan, for conditions, events and logs.
pub fn plan_summary(plan: &Plan) -> String {
    format!(
        "{} GPU{} ({} node{} × {}), ZeRO-{}{}, micro-batch {} × {} accumulation; predicted peak {} of {} per GPU",
        plan.gpus,
        if plan.gpus == 1 { "" } else { "s" },
        plan.nodes,
        if plan.nodes == 1 { "" } else { "s" },
        plan.gpus_per_node,
        plan.zero_stage,
        if plan.offload_optimizer { ", optimizer offloaded" } else { "" },
        plan.micro_batch_size,
        plan.gradient_accumulation_steps,
        format_gib(plan.per_gpu.peak_bytes),
        format_gib(plan.gpu_memory_bytes),
    )
}

fn headline(plan: &Plan) -> String {
    format!(
        "{} GPU{} ({} node{} × {}), ZeRO-{}, {}, micro-batch {} × {} accumulation = global batch {}",
        plan.gpus,
        if plan.gpus == 1 { "" } else { "s" },
        plan.nodes,
        if plan.nodes == 1 { "" } else { "s" },
        plan.gpus_per_node,
        plan.zero_stage,
        if plan.offload_optimizer { "optimizer offloaded to CPU" } else { "no offload" },
        plan.micro_batch_size,
        plan.gradient_accumulation_steps,
        plan.global_batch()
    )
}

fn breakdown(out: &mut String, plan: &Plan) {
    let b = &plan.per_gpu;
    let rows: [(&str, u64, &str); 7] = [
        ("weights", b.weights_bytes, ""),
        ("gradients", b.gradients_bytes, ""),
        (
            "optimizer states",
            b.optimizer_bytes,
            "moments (+ fp32 master weights: full/freeze under AMP)",
        ),
        (
            "activations",
            b.activations_bytes,
            "checkpoints + one layer's working set",
        ),
        (
            "logits / loss",
            b.logits_bytes,
            "not live together with the layer working set",
        ),
        (
            "buffers",
            b.buffers_bytes,
            "gradient buckets, ZeRO-3 gathered layers",
        ),
        (
            "overhead",
            b.overhead_bytes,
            "CUDA context + allocator fragmentation",
        ),
    ];
    let _ = writeln!(out, "  {:<18} {:>8}", "per GPU", "GiB");
    for (name, bytes, note) in rows {
        let line = format!("  {name:<18} {:>8}  {note}", gib2(bytes));
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(
        out,
        "  {:<18} {:>8}  static + the larger transient phase (not the sum of the rows)",
        "peak",
        gib2(b.peak_bytes)
    );
    let _ = writeln!(out, "  {:<18} {:>8}", "headroom", gib2(plan.headroom_bytes));
    let _ = writeln!(
        out,
        "  {:<18} {:>8}  of {} GiB per GPU ({})",
        "needed",
        gib2(b.peak_bytes + plan.headroom_bytes),
        gib2(plan.gpu_memory_bytes),
        if plan.fits { "fits" } else { "does not fit" }
    );
    let _ = writeln!(
        out,
        "  {:<18} {} total, {} trainable",
        "parameters",
        group_digits(plan.model_params),
        group_digits(plan.trainable_params)
    );
}
