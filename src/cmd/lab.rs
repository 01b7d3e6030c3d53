//! `kubeboot lab`: the local lab of real sshd nodes (or VMs) for trying kubeboot out; the lab itself is the
//! `kubeboot-lab` crate.

use super::{Exit, Failure};
use crate::cli::{LabArgs, LabCommand};
use crate::diag::{Diagnostic, Diagnostics};
use crate::lab;

/// Runs one `lab` subcommand.
pub(super) fn lab(args: &LabArgs) -> Result<Exit, Failure> {
    match &args.command {
        LabCommand::Up {
            nodes,
            dir,
            first_address,
            first_port,
            isolated,
            vm,
            like,
            rhel,
            containerd_1_7,
        } => {
            if *vm {
                return vm_lab_up(*nodes, dir, *first_address, *first_port, like, rhel);
            }
            if !rhel.is_empty() && !*isolated {
                return Err(Diagnostics::from(
                    Diagnostic::file("command line", "--rhel needs --isolated or --vm")
                        .with_hint("an sshd lab node shares this machine's own system and cannot look like RHEL"),
                )
                .into());
            }
            let mut opts = lab::LabOptions {
                dir: dir.clone(),
                nodes: *nodes,
                first_address: first_address.unwrap_or(std::net::Ipv4Addr::new(127, 0, 10, 1)),
                first_port: first_port.unwrap_or(2201),
                isolated: *isolated,
                kinds: Vec::new(),
                like: like.clone(),
                private_tmp: false,
            };
            opts.kinds = lab_node_kinds(&opts, rhel, containerd_1_7)?;
            let lab = lab::up(&opts).map_err(|e| Failure::Other(e.to_string()))?;
            let what = if *isolated { " isolated" } else { "" };
            println!("lab up: {}{what} node(s) as user {}", lab.nodes.len(), lab.user);
            for n in &lab.nodes {
                let kind = n.kind.map(|k| format!("  ({k})")).unwrap_or_default();
                println!("  {}  {}:{}{kind}", n.name, n.address, n.port);
            }
            println!("inventory: {}", lab.inventory.display());
            println!("stop it with: kubeboot lab down --dir {}", dir.display());
            Ok(Exit::Ok)
        }
        LabCommand::Down { dir } => {
            lab::down(dir).map_err(|e| Failure::Other(e.to_string()))?;
            println!("lab down: {}", dir.display());
            Ok(Exit::Ok)
        }
        // Only the lab's own processes: each acts on the sshd recorded in the node's PID file
        // (checked to be an sshd) and on what runs under it.
        LabCommand::Stop(n) => {
            lab::stop_node(&n.dir, &n.node).map_err(|e| Failure::Other(e.to_string()))?;
            println!(
                "lab stop: {} (start it again with: kubeboot lab start {} --dir {})",
                n.node,
                n.node,
                n.dir.display()
            );
            Ok(Exit::Ok)
        }
        LabCommand::Freeze(n) => {
            lab::pause_node(&n.dir, &n.node).map_err(|e| Failure::Other(e.to_string()))?;
            println!(
                "lab freeze: {} (thaw it with: kubeboot lab start {} --dir {})",
                n.node,
                n.node,
                n.dir.display()
            );
            Ok(Exit::Ok)
        }
        LabCommand::Start(n) => {
            lab::resume_node(&n.dir, &n.node)
                .and_then(|()| lab::start_node(&n.dir, &n.node))
                .map_err(|e| Failure::Other(e.to_string()))?;
            println!("lab start: {}", n.node);
            Ok(Exit::Ok)
        }
    }
}

/// `lab up --vm`: boots the VMs and prints where they are and what it took.
fn vm_lab_up(
    nodes: usize,
    dir: &std::path::Path,
    first_address: Option<std::net::Ipv4Addr>,
    first_port: Option<u16>,
    like: &Option<std::path::PathBuf>,
    rhel: &[String],
) -> Result<Exit, Failure> {
    let mut opts = lab::vm::VmOptions::new(dir);
    opts.nodes = nodes;
    opts.like = like.clone();
    opts.first_address = first_address;
    opts.first_port = first_port;
    opts.rhel_like = rhel.to_vec();
    let lab = lab::vm::up(&opts).map_err(|e| Failure::Other(e.to_string()))?;
    println!(
        "lab up: {} VM(s) as user {} (image {:.0?}, boot {:.0?}, {:?})",
        lab.nodes.len(),
        lab.user,
        lab.image_time,
        lab.boot_time,
        opts.accel
    );
    for n in &lab.nodes {
        let rhel = if n.rhel_like { "  (RHEL-like sudo)" } else { "" };
        println!("  {}  ssh {}  switch {}{rhel}", n.name, n.ssh, n.address);
    }
    println!("inventory: {}", lab.inventory.display());
    println!("stop it with: kubeboot lab down --dir {}", dir.display());
    Ok(Exit::Ok)
}

/// The per-node look of an isolated lab from `--rhel` and `--containerd-1-7`, by node name.
fn lab_node_kinds(
    opts: &lab::LabOptions,
    rhel: &[String],
    containerd_1_7: &[String],
) -> Result<Vec<lab::NodeKind>, Failure> {
    if rhel.is_empty() && containerd_1_7.is_empty() {
        return Ok(Vec::new());
    }
    let names = lab::planned_node_names(opts).map_err(|e| Failure::Other(e.to_string()))?;
    for asked in rhel.iter().chain(containerd_1_7) {
        if !names.contains(asked) {
            let flag = if rhel.contains(asked) {
                "--rhel"
            } else {
                "--containerd-1-7"
            };
            return Err(Diagnostics::from(
                Diagnostic::file(
                    "command line",
                    format!("{flag} {asked}: the lab has no node named `{asked}`"),
                )
                .with_hint(format!("its nodes are {}", names.join(", "))),
            )
            .into());
        }
    }
    Ok(names
        .iter()
        .map(|name| lab::NodeKind {
            os: if rhel.contains(name) {
                lab::NodeOs::Rhel
            } else {
                lab::NodeOs::Ubuntu
            },
            containerd: if containerd_1_7.contains(name) {
                lab::ContainerdLayout::V2
            } else {
                lab::ContainerdLayout::V3
            },
        })
        .collect())
}
