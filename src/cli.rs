//! The command line (clap definitions only).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Bootstrap Kubernetes clusters over SSH: every node in parallel, live progress, and
/// resume after a failure.
///
/// kubeboot reads the inventory (nodes, clusters, variables) and the playbooks (one YAML file
/// per stage, run in file-name order), connects to every node over SSH and works through the
/// stages node by node. Finished tasks are remembered in the state dir, so running `apply`
/// again after a failure continues where it stopped.
#[derive(Debug, Parser)]
#[command(name = "kubeboot", version, max_term_width = 100)]
pub struct Cli {
    /// The inventory file.
    #[arg(
        short = 'i',
        long,
        global = true,
        default_value = "inventory.toml",
        value_name = "FILE"
    )]
    pub inventory: PathBuf,
    /// The playbooks folder (one YAML file per stage).
    #[arg(short = 'p', long, global = true, default_value = "playbooks", value_name = "DIR")]
    pub playbooks: PathBuf,
    /// The assets folder `copy` tasks read from [default: `assets` next to the playbooks folder].
    #[arg(long, global = true, value_name = "DIR")]
    pub assets: Option<PathBuf>,
    /// Where the journal, the lock and the logs live.
    #[arg(long, global = true, default_value = ".kubeboot", value_name = "DIR")]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the playbooks (a terminal UI on a terminal; headless with --yes or without a terminal).
    Apply(ApplyArgs),
    /// Print the stages and tasks per node, marking what a resume would skip. Connects to nothing.
    Plan(PlanArgs),
    /// Print the remembered progress per node: last finished task, failed task and error, what is left.
    Status(StatusArgs),
    /// Preflight only: SSH reachability, login, sudo, OS facts and resources (runs the `preflight` stage).
    Check(CheckArgs),
    /// A local lab of real OpenSSH nodes on loopback addresses, to try kubeboot without machines (needs root).
    Lab(LabArgs),
    /// Fetch each cluster's admin kubeconfig into one file on the jump host (one context per cluster, 0600).
    Kubeconfig(KubeconfigArgs),
    /// Gather what the install downloads into one folder (--out DIR), or verify a copied one (--check DIR).
    Bundle(BundleArgs),
    /// Take an etcd snapshot of each cluster and keep it on the jump host (never overwriting an older one).
    Backup(RunArgs),
    /// Tear the selected clusters down to before kubeadm (etcd snapshot first); needs typed confirmation.
    Reset(ResetArgs),
    /// Upgrade Kubernetes by one minor version to the inventory's kubernetes_version (etcd snapshot first).
    Upgrade(RunArgs),
    /// Renew the control-plane certificates (kubeadm certs renew all) and restart the control-plane pods.
    RenewCerts(RunArgs),
    /// Write one archive (tar.gz) for a support ticket: logs, journal, status, inventory, playbooks; secrets masked.
    Report(ReportArgs),
}

/// `kubeboot report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the archive here [default: kubeboot-report-<time>.tar.gz in the current folder].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// What every day-two command takes: which clusters, how to show progress.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Do not ask; show headless progress (for scripts and CI).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Headless output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Only these clusters or nodes (comma list) [default: all].
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub limit: Vec<String>,
    /// At most N nodes at once [default: all].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub forks: Option<u32>,
    /// Show every command that would run (the runbook); connect to nothing, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Accept and record host keys never seen before (a CHANGED key is always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

/// `kubeboot kubeconfig`.
#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Write the kubeconfig here [default: kubeconfig.yaml in the state dir].
    #[arg(long, value_name = "FILE", conflicts_with = "merge")]
    pub out: Option<PathBuf>,
    /// Merge the contexts into ~/.kube/config instead (other contexts are kept as they are).
    #[arg(long)]
    pub merge: bool,
}

/// `kubeboot reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The names of the clusters to reset, typed out (with --yes: every selected cluster must be named).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub confirm: Vec<String>,
    /// Also remove the kubelet, kubeadm and kubectl packages (kept by default).
    #[arg(long)]
    pub purge_packages: bool,
}

/// Which nodes and stages.
#[derive(Debug, Clone, Args)]
pub struct SelectArgs {
    /// Only these nodes or clusters (comma list).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub limit: Vec<String>,
    /// Only these stages (comma list of stage names).
    #[arg(long, value_delimiter = ',', value_name = "STAGES", conflicts_with = "from")]
    pub only: Vec<String>,
    /// Start at this stage and run it and every later one.
    #[arg(long, value_name = "STAGE")]
    pub from: Option<String>,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line on stdout.
    Json,
}

/// `kubeboot apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Do not ask; show headless progress (for scripts and CI).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Headless output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Ignore remembered progress and run every selected task again.
    #[arg(long)]
    pub fresh: bool,
    /// At most N nodes at once (a sliding window) [default: all].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub forks: Option<u32>,
    /// Show every command that would run; connect to nothing, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Accept and record host keys never seen before (a CHANGED key is always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Serve this bundle folder to the nodes over their SSH connections (overrides `[sources] bundle`).
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
}

/// `kubeboot plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Plan as if nothing had finished before.
    #[arg(long)]
    pub fresh: bool,
    /// Show the rendered command (or file, or wait condition) under each task.
    #[arg(long)]
    pub commands: bool,
    /// Also connect and run the `unless` guards of the tasks recorded done (guards only, nothing is changed):
    /// reports which would run again because the node no longer matches. Exit 1 when one does.
    #[arg(long)]
    pub check: bool,
    /// With --check: accept and record host keys never seen before (a CHANGED key is always refused).
    #[arg(long, requires = "check")]
    pub accept_new_host_keys: bool,
}

/// `kubeboot status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

/// `kubeboot check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Only these nodes or clusters (comma list).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub limit: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Accept and record host keys never seen before (a CHANGED key is always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

/// `kubeboot lab`.
#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

/// Lab actions.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start N sshd nodes on loopback and write an inventory for them (DIR/inventory.toml).
    Up {
        /// How many nodes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// The lab's folder (keys, configs, node roots, inventory).
        #[arg(long, default_value = ".lab")]
        dir: PathBuf,
        /// Address of the first node; the others follow (default 127.0.10.1, .2, ...; with --vm a free
        /// range is claimed unless this or --first-port is given).
        #[arg(long)]
        first_address: Option<Ipv4Addr>,
        /// Port of the first node; the others follow (default 2201).
        #[arg(long)]
        first_port: Option<u16>,
        /// Give each node a private view of /etc, /var/lib, /usr/local, /opt, /root and /home and
        /// recording stand-ins for apt, dnf, systemctl, kubeadm, kubectl, ... so the shipped
        /// playbooks run end to end without changing this machine.
        #[arg(long)]
        isolated: bool,
        /// Model the lab's inventory on this one: its node names, clusters, vars and secrets, with
        /// lab addresses (--nodes is then ignored).
        #[arg(long, value_name = "INVENTORY")]
        like: Option<PathBuf>,
        /// Real Debian 12 VMs under qemu instead of sshd processes: own kernel, systemd, sshd, password
        /// sudo, no outbound network (the image is built once and cached; see the guide).
        #[arg(long, conflicts_with = "isolated")]
        vm: bool,
        /// Make this node look like RHEL 9 (isolated: dnf, SELinux enforcing, firewalld; --vm: RHEL's
        /// sudo secure_path without /usr/local/bin); repeatable.
        #[arg(long, value_name = "NODE")]
        rhel: Vec<String>,
        /// Give this node containerd 1.7 (its default config has `version = 2`); repeatable.
        #[arg(long = "containerd-1-7", value_name = "NODE", requires = "isolated")]
        containerd_1_7: Vec<String>,
    },
    /// Stop every node of the lab.
    Down {
        /// The lab's folder.
        #[arg(long, default_value = ".lab")]
        dir: PathBuf,
    },
    /// Stop one node (its sshd and every session on it), as if it were shut down.
    Stop(LabNodeArgs),
    /// Freeze one node (SIGSTOP to its sshd and every session): it stops answering, like a hung machine.
    Freeze(LabNodeArgs),
    /// Start one stopped node again, or thaw a frozen one.
    Start(LabNodeArgs),
}

/// One node of a lab.
#[derive(Debug, Args)]
pub struct LabNodeArgs {
    /// The node's name (as in the lab's inventory).
    pub node: String,
    /// The lab's folder.
    #[arg(long, default_value = ".lab")]
    pub dir: PathBuf,
}

/// `kubeboot bundle`.
#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Download everything the inventory's [sources] name into this folder (resumes an interrupted run).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["check", "list"], required_unless_present_any = ["check", "list"])]
    pub out: Option<PathBuf>,
    /// Verify every file of a copied bundle against its manifest (a damaged file: exit 2).
    #[arg(long, value_name = "DIR")]
    pub check: Option<PathBuf>,
    /// Print what --out would collect (release binaries, images and the clusters needing them); download nothing.
    #[arg(long, conflicts_with = "check")]
    pub list: bool,
    /// The nodes' distribution release the bundle is made for (`debian-12`, `ubuntu-24.04`, `rhel-9`...).
    #[arg(long, value_name = "ID-VERSION", default_value = "ubuntu-24.04")]
    pub os: String,
}
