//! The scalars of one `trainer_log.jsonl` record, named as the trackers show them: every number of
//! the record (nested objects flattened with `/`), under `train/` except the evaluation metrics
//! (`eval_*` → `eval/*`). New metrics of the record (preference rewards, system metrics) reach
//! every tracker without a change here.

use serde_json::Value;

/// The record's keys that count steps rather than measure them (the step is the x axis).
const NOT_SCALARS: [&str; 3] = ["current_steps", "total_steps", "percentage"];

/// `(name, value)` for every finite number in `record`, sorted by name.
pub fn scalars_of(record: &Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    if let Value::Object(fields) = record {
        for (key, value) in fields {
            if NOT_SCALARS.contains(&key.as_str()) {
                continue;
            }
            let name = match key.strip_prefix("eval_") {
                Some(rest) => format!("eval/{rest}"),
                None if key.contains('/') => key.clone(),
                None => format!("train/{key}"),
            };
            flatten(&name, value, &mut out);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn flatten(name: &str, value: &Value, out: &mut Vec<(String, f64)>) {
    match value {
        Value::Number(n) => {
            if let Some(v) = n.as_f64().filter(|v| v.is_finite()) {
                out.push((name.to_string(), v));
            }
        }
        Value::Object(fields) => {
            for (key, v) in fields {
                flatten(&format!("{name}/{key}"), v, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_number_of_a_record() {
        let record = serde_json::json!({
            "current_steps": 5, "total_steps": 10, "loss": 1.5, "eval_loss": 1.75, "lr": 1e-4,
            "epoch": 0.5, "percentage": 50.0, "elapsed_time": "0:00:05",
            "step_time": {"data": 0.25, "forward_backward": 1.0},
            "rewards/chosen": 0.125, "grad_norm": f64::NAN,
        });
        let names: Vec<(String, f64)> = scalars_of(&record);
        assert_eq!(
            names,
            vec![
                ("eval/loss".to_string(), 1.75),
                ("rewards/chosen".to_string(), 0.125),
                ("train/epoch".to_string(), 0.5),
                ("train/loss".to_string(), 1.5),
                ("train/lr".to_string(), 1e-4),
                ("train/step_time/data".to_string(), 0.25),
                ("train/step_time/forward_backward".to_string(), 1.0),
            ]
        );
    }
}
