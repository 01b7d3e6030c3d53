//! Any text as a task template, rendered for a real node context: a string or diagnostics.
#![no_main]
use std::sync::OnceLock;

use kubeboot::facts::Facts;
use kubeboot::inventory::Inventory;
use kubeboot::playbook::template::{Context, Renderer};
use kubeboot::playbook::{Location, Stage};
use libfuzzer_sys::fuzz_target;

const INVENTORY: &str = r#"
[[clusters]]
name = "c1"
role = "central"
lb_ip = "10.0.0.100"
[[nodes]]
name = "n1"
address = "10.0.0.1"
cluster = "c1"
[vars]
v = "x"
list = [1, 2, 3]
[secrets]
s = { env = "FUZZ_SECRET" }
"#;

const STAGE: &str = "name: s\nhosts: all\ntasks:\n  - name: t\n    run: \"true\"\n";

fn fixtures() -> &'static (Inventory, Stage) {
    static F: OnceLock<(Inventory, Stage)> = OnceLock::new();
    F.get_or_init(|| {
        let path = std::path::Path::new("inventory.toml");
        let inv = kubeboot::inventory::parse(path, INVENTORY).unwrap_or_else(|d| panic!("{d}"));
        let stage = kubeboot::playbook::parse(std::path::Path::new("s.yaml"), STAGE, &std::env::temp_dir())
            .unwrap_or_else(|d| panic!("{d}"));
        (inv, stage)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Repetition (`list * n`, `"s" * n`) is bounded by minijinja itself at 10^8 items, one template
    // step that can take minutes and gigabytes (found by this target, see fuzz/RESULTS.md); loops are
    // bounded by kubeboot's fuel limit. `*` is left out so the target keeps finding other faults.
    if text.contains('*') {
        return;
    }
    let (inv, stage) = fixtures();
    let ctx = Context::new(inv, &inv.nodes[0], stage, &Facts::assumed());
    let at = Location { file: "s.yaml".into(), line: 5, column: 10 };
    let renderer = Renderer::new();
    let _ = renderer.render(text, &at, "run", &ctx);
    let _ = renderer.condition(text, &at, &ctx);
});
