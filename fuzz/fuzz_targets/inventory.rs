//! Any bytes as inventory.toml: an inventory or diagnostics, never a panic or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(d) = kubeboot::inventory::parse(std::path::Path::new("inventory.toml"), text) {
            // Every diagnostic must render with a position.
            let _ = d.to_string();
        }
    }
});
