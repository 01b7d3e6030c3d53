//! Bundles: every artifact an install downloads, gathered into one folder that can be carried to
//! an air-gapped site, and served from there to the nodes over their SSH connections.

pub mod charts;
pub mod collect;
pub mod dnf;
pub mod images;
pub mod kubeadm;
pub mod packages;
pub mod rpmmd;
pub mod serve;

use std::sync::Arc;

pub use serve::FileServer;

use crate::ssh::ForwardService;

/// The node-side address a bundle is forwarded to: only the node itself can reach it.
pub use crate::inventory::sources::BUNDLE_ADDRESS as LISTEN_ADDRESS;

/// The words after `install` in every `MANAGER ... install ...` of a shell command, MANAGER one of
/// `managers` (`apt-get`, `dnf`...): up to the end of that command (`&&`, `||`, `;`, `|`, a
/// redirection), quotes trimmed, options and empty words left out; a line continued with `\`
/// counts as one. What a word names is the package manager's own ([`packages`], [`dnf`]).
fn install_words(command: &str, managers: &[&str]) -> Vec<String> {
    let joined = command.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(manager) = words.iter().position(|w| managers.contains(w)) else {
            continue;
        };
        let Some(install) = words[manager..]
            .iter()
            .position(|w| *w == "install")
            .map(|i| i + manager)
        else {
            continue;
        };
        for word in &words[install + 1..] {
            if matches!(*word, "&&" | "||" | ";" | "|") || word.starts_with('>') || word.starts_with("2>") {
                break;
            }
            let word = word.trim_matches(['"', '\'']);
            if word.starts_with('-') || word.is_empty() {
                continue;
            }
            out.push(word.to_string());
        }
    }
    out
}

/// `server` as the service of a remote port forward: every connection a node opens is answered by it.
pub fn forward_service(server: FileServer) -> ForwardService {
    Arc::new(move |stream| {
        let server = server.clone();
        Box::pin(async move { server.serve(stream).await })
    })
}
