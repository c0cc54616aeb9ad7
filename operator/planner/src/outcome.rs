//! What a search returns: every configuration tried ([`PlanOption`]) and the chosen plan
//! ([`PlanSearch`]). The prose about them (table, failure message) is in `format`.

use lf_api::Plan;
use serde::{Deserialize, Serialize};

/// One configuration tried, with its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanOption {
    pub gpus: u32,
    pub zero_stage: u8,
    pub offload_optimizer: bool,
    /// The chosen micro-batch when it fits, else the smallest tried.
    pub micro_batch_size: u32,
    pub peak_bytes: u64,
    pub fits: bool,
    pub chosen: bool,
    /// One line: what was tried, the numbers, and what dominates.
    pub verdict: String,
    pub plan: Plan,
}

/// The result of a search: the chosen plan (if any) and every option tried, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSearch {
    /// The model and method, in words (for the table).
    pub description: Vec<String>,
    pub chosen: Option<Plan>,
    pub options: Vec<PlanOption>,
}

impl PlanSearch {
    /// The option with the lowest predicted peak: what to show when nothing fits.
    pub fn closest(&self) -> Option<&PlanOption> {
        self.options.iter().min_by_key(|o| o.peak_bytes)
    }
}
