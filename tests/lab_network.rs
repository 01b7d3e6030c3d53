//! The lab's network: a lab reports up only when the sshd answering on its addresses is its own (the host key it
//! generated), and tests get their loopback ranges from `lab::net`, so labs started at the same time never share
//! addresses. Needs root and sshd; a missing one fails (never skips).

use kubeboot::lab::{self, LabGuard, LabOptions};

fn options(dir: &std::path::Path, net: &lab::net::Net) -> LabOptions {
    LabOptions {
        dir: dir.to_path_buf(),
        nodes: 1,
        first_address: net.first_address,
        first_port: net.first_port,
        ..LabOptions::default()
    }
}

#[test]
fn a_lab_whose_addresses_another_lab_answers_on_does_not_report_up() {
    let net = lab::net::claim(1).unwrap_or_else(|e| panic!("{e}"));
    let first_dir = tempfile::tempdir().expect("a temporary folder");
    let first = LabGuard(lab::up(&options(first_dir.path(), &net)).unwrap_or_else(|e| panic!("the first lab: {e}")));

    // A second lab on the same address and port: its sshd cannot listen there, the first lab's answers.
    let second_dir = tempfile::tempdir().expect("a temporary folder");
    let second = lab::up(&options(second_dir.path(), &net));
    let message = match &second {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    let second = second.map(LabGuard);
    assert!(
        second.is_err(),
        "the second lab reported up although the sshd answering on {}:{} is the first lab's",
        net.first_address,
        net.first_port
    );
    assert!(message.contains("sshd of node-1 did not start"), "{message}");

    // The first lab is untouched: its own node still answers with its own key.
    let again = lab::up(&options(first_dir.path(), &net));
    assert!(matches!(again, Err(lab::LabError::AlreadyRunning(_))), "{again:?}");
    lab::stop_node(&first.dir, "node-1").unwrap_or_else(|e| panic!("{e}"));
    lab::start_node(&first.dir, "node-1").unwrap_or_else(|e| panic!("the first lab's node restarts: {e}"));
}

#[test]
fn ranges_claimed_at_the_same_time_do_not_overlap() {
    let nets: Vec<lab::net::Net> = (0..3)
        .map(|_| lab::net::claim(4).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for (i, a) in nets.iter().enumerate() {
        for b in &nets[i + 1..] {
            assert_ne!(a.first_address, b.first_address);
        }
    }
}
