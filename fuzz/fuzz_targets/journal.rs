//! Any bytes as a journal (a crash can leave anything at the end): it always loads.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let progress = kubeboot::journal::Progress::read(data);
    assert!(progress.is_ok(), "reading from memory cannot fail");
});
