//! The FineTuneJob reference as Markdown, generated from the CRD's own schema so the README cannot
//! drift from the code (a test compares the README's section with this output).

use serde_json::Value;

use crate::crd::FineTuneJob;

/// Markers around the generated section in README.md.
pub const BEGIN_MARKER: &str =
    "<!-- BEGIN GENERATED: finetunejob-reference (UPDATE_GOLDEN=1 cargo test -p lf-api) -->";
pub const END_MARKER: &str = "<!-- END GENERATED: finetunejob-reference -->";

/// Two tables: the spec fields (camelCase) and the training config keys (LLaMA-Factory names).
pub fn reference_markdown() -> String {
    let crd = FineTuneJob::definition();
    let schema = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    let spec = &schema["properties"]["spec"];
    let mut rows = Vec::new();
    walk(spec, "spec", &mut rows, true);
    let mut out = String::new();
    out.push_str("| field | type | default | description |\n|---|---|---|---|\n");
    for r in &rows {
        out.push_str(r);
    }
    out.push_str("\n`spec.training` keys (LLaMA-Factory names; unknown keys are rejected with a suggestion):\n\n");
    out.push_str("| key | type | default | description |\n|---|---|---|---|\n");
    let mut training = Vec::new();
    walk(&spec["properties"]["training"], "", &mut training, false);
    for r in &training {
        out.push_str(r);
    }
    out.push_str(&compat_markdown());
    out
}

/// The LLaMA-Factory option lists: aliases of supported keys, options accepted as no-ops,
/// options rejected with the reason, and what a `deepspeed` config maps onto.
fn compat_markdown() -> String {
    use crate::training::{ACCEPTED, ALIASES, DEEPSPEED_MAPPING, REJECTED, REJECTED_VALUES};
    let cell = |s: &str| s.replace('|', "\\|");
    let values = |vs: &[&str]| {
        vs.iter()
            .map(|v| match *v {
                "*" => "any".to_string(),
                "" => "`''`".to_string(),
                v => format!("`{v}`"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    out.push_str("\nAlso accepted: ");
    let aliases: Vec<String> = ALIASES
        .iter()
        .map(|(alias, key)| format!("`{alias}` (for `{key}`)"))
        .collect();
    out.push_str(&aliases.join(", "));
    out.push_str(".\n");

    out.push_str(&format!("\nLLaMA-Factory options accepted because lf-trainer already does what they ask, or they change nothing for it ({} keys; a value with a notice is accepted and the notice logged, any other value is rejected with the reason). \"from\" is LLaMA-Factory's argument class (`training`: transformers' `Seq2SeqTrainingArguments`):\n\n", ACCEPTED.len()));
    out.push_str("| key | from | accepted quietly | accepted with the notice | notice | other values are rejected because |\n|---|---|---|---|---|---|\n");
    for o in ACCEPTED {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            o.key,
            o.source.name(),
            values(o.quiet),
            values(o.noted),
            cell(o.notice),
            cell(o.rejected)
        ));
    }
    out.push_str(&format!("\nLLaMA-Factory options rejected because lf-trainer does not have the feature ({} keys, and values of {} supported keys; the listed values, which turn the feature off, are accepted):\n\n", REJECTED.len(), REJECTED_VALUES.len()));
    out.push_str("| key | from | accepted | why, and what to use instead |\n|---|---|---|---|\n");
    for (key, vals, why) in REJECTED_VALUES {
        out.push_str(&format!(
            "| `{key}`: {} | supported key | its other values | {} |\n",
            values(vals),
            cell(why)
        ));
    }
    for o in REJECTED {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            o.key,
            o.source.name(),
            values(o.quiet),
            cell(o.rejected)
        ));
    }
    out.push_str("\n`deepspeed` (a DeepSpeed JSON file, or its keys inline) maps onto these keys; `\"auto\"` follows the training config, a key set differently in both is an error, bucket sizes and keys with no meaning for lf-trainer are listed in notices, and parameter or NVMe offload and the other features lf-trainer does not have are errors with the reason:\n\n");
    out.push_str("| DeepSpeed key | training-config key |\n|---|---|\n");
    for (from, to) in DEEPSPEED_MAPPING {
        out.push_str(&format!("| {} | {} |\n", cell(from), cell(to)));
    }
    out
}

fn walk(node: &Value, path: &str, rows: &mut Vec<String>, skip_training: bool) {
    let Some(props) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = node
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, prop) in props {
        let full = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        let is_training = skip_training && full == "spec.training";
        let ty = type_of(prop);
        let default = prop
            .get("default")
            .map(|d| format!("`{d}`"))
            .unwrap_or_else(|| {
                if required.contains(&name.as_str()) {
                    "required".to_string()
                } else {
                    String::new()
                }
            });
        let mut desc = prop
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .replace('\n', " ")
            .replace('|', "\\|");
        if let Some(values) = prop.get("enum").and_then(Value::as_array) {
            let vals: Vec<String> = values
                .iter()
                .filter(|v| !v.is_null())
                .map(|v| format!("`{}`", plain(v)))
                .collect();
            desc = format!("{desc} One of {}.", vals.join(", "))
                .trim()
                .to_string();
        }
        if is_training {
            desc = "The training config: see the table below.".to_string();
        }
        rows.push(format!("| `{full}` | {ty} | {default} | {desc} |\n"));
        if is_training || is_kubernetes_type(&full) {
            continue;
        }
        walk(prop, &full, rows, skip_training);
        if let Some(items) = prop.get("items") {
            walk(items, &format!("{full}[]"), rows, skip_training);
        }
    }
}

/// Kubernetes' own types are documented upstream; do not expand them.
fn is_kubernetes_type(path: &str) -> bool {
    path.ends_with(".tolerations") || path.ends_with(".affinity") || path.contains(".architecture.")
}

fn plain(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

fn type_of(prop: &Value) -> String {
    match prop.get("type").and_then(Value::as_str) {
        Some("array") => {
            let inner = prop
                .get("items")
                .map(type_of)
                .unwrap_or_else(|| "any".into());
            format!("[]{inner}")
        }
        Some("object") if prop.get("additionalProperties").is_some() => "map".into(),
        Some(t) => t.to_string(),
        None if prop.get("enum").is_some() => "string".into(),
        None => "object".into(),
    }
}

/// Replaces the generated section of a README text; `None` when the markers are missing.
pub fn splice_into(readme: &str) -> Option<String> {
    let start = readme.find(BEGIN_MARKER)? + BEGIN_MARKER.len();
    let end = readme.find(END_MARKER)?;
    if end < start {
        return None;
    }
    Some(format!(
        "{}\n{}{}",
        &readme[..start],
        reference_markdown(),
        &readme[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_spec_and_training_fields() {
        let md = reference_markdown();
        assert!(md.contains("| `spec.resources.gpuMemoryGib` |"), "{md}");
        assert!(md.contains("| `lora_rank` |"), "{md}");
        assert!(md.contains("| `spec.distributed.zeroStage` |"), "{md}");
    }

    /// The README's reference section is exactly what the schema generates. Regenerate with
    /// `UPDATE_GOLDEN=1 cargo test -p lf-api`.
    #[test]
    fn readme_reference_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let Ok(readme) = std::fs::read_to_string(path) else {
            panic!("README.md not found at {path}");
        };
        let expected =
            splice_into(&readme).expect("README.md lacks the generated reference markers");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &expected).expect("cannot write README.md");
            return;
        }
        assert!(expected == readme, "README.md's FineTuneJob reference is stale: run `UPDATE_GOLDEN=1 cargo test -p lf-api`");
    }
}
