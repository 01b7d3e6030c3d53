//! Helpers of the suites that run the shipped playbooks on a lab (shipped_install, ha_install, resume_changes, and
//! the VM suites, which include this file alone).

#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::{Path, PathBuf};

/// The secrets the shipped inventories name, set to random values for this run.
pub fn secrets() -> Vec<(&'static str, String)> {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut value = |prefix: &str| {
        let tail: String = (0..20)
            .map(|_| char::from(b"abcdefghijkmnopqrstuvwxyz23456789"[rng.random_range(0..33)]))
            .collect();
        format!("{prefix}-{tail}")
    };
    vec![
        ("KUBEBOOT_S3_ACCESS_KEY", value("s3access")),
        ("KUBEBOOT_S3_SECRET_KEY", value("s3secret")),
        ("KUBEBOOT_GRAFANA_ADMIN_PASSWORD", value("grafana")),
        ("KUBEBOOT_OPENSEARCH_ADMIN_PASSWORD", value("opensearch")),
    ]
}

/// Every regular file below a folder (symbolic links are not followed).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            match entry.file_type() {
                Ok(ft) if ft.is_dir() => todo.push(p),
                Ok(ft) if ft.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}
