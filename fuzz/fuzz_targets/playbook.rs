//! Any bytes as a playbook file: a stage or diagnostics, never a panic, a hang or a blow-up
//! (YAML alias bombs included).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let dir = std::env::temp_dir();
        let _ = kubeboot::playbook::parse(std::path::Path::new("fuzz.yaml"), text, &dir);
    }
});
