//! Golden renders: every `examples/*.yaml` renders to `examples/golden/<name>.rendered.yaml` and
//! every fixture to `tests/fixtures/<name>.rendered.yaml`, byte for byte. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p lf-render --test golden` and review the diff.

mod common;

use common::{all_cases, golden_context, GOLDEN_UID};

fn header(source: &str) -> String {
    format!(
        "# lf-render output for {source}: attempt 1, the plan in operator/render/tests/common/mod.rs,\n\
         # metadata.uid {GOLDEN_UID} unless the file sets one. Regenerate:\n\
         # UPDATE_GOLDEN=1 cargo test -p lf-render --test golden\n"
    )
}

#[test]
fn renders_match_goldens() {
    let root = common::repo_root();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    let cases = all_cases();
    assert!(
        cases.iter().any(|c| c.name == "quickstart"),
        "examples/quickstart.yaml is missing"
    );
    for case in &cases {
        let rendered = lf_render::render(&case.job, &case.plan, &golden_context())
            .unwrap_or_else(|e| panic!("{}: {e}", case.source.display()));
        let source = case
            .source
            .strip_prefix(&root)
            .unwrap_or(&case.source)
            .display()
            .to_string();
        let text = format!("{}{}", header(&source), rendered.to_yaml_stream());
        if update {
            std::fs::write(&case.golden, &text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", case.golden.display()));
            continue;
        }
        match std::fs::read_to_string(&case.golden) {
            Ok(expected) if expected == text => {}
            Ok(_) => stale.push(format!(
                "{} differs from the render of {source}",
                case.golden.display()
            )),
            Err(e) => stale.push(format!("{}: {e}", case.golden.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "stale goldens (UPDATE_GOLDEN=1 cargo test -p lf-render --test golden):\n{}",
        stale.join("\n")
    );
}
