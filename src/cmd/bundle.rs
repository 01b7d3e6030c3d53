//! `kubeboot bundle --out DIR` / `--check DIR`: the core gathers and verifies; this draws the
//! progress bars (indicatif lives only in the binary) and maps the outcome to an exit code.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{Exit, Failure};
use crate::bundle::collect::{self, BundleEvent};
use crate::bundle::{charts, dnf, images, kubeadm, packages};
use crate::cli::{BundleArgs, Cli};
use crate::facts::Facts;
use crate::inventory;

/// Runs `kubeboot bundle`.
pub(crate) async fn bundle(cli: &Cli, args: &BundleArgs) -> Result<Exit, Failure> {
    if let Some(dir) = &args.check {
        let (manifest, damaged) = collect::check(dir).map_err(|e| Failure::Other(e.to_string()))?;
        for d in &damaged {
            eprintln!("DAMAGED {}: {}", d.path, d.reason);
        }
        if damaged.is_empty() {
            println!("bundle {}: {} files, all intact", dir.display(), manifest.items.len());
            return Ok(Exit::Ok);
        }
        eprintln!(
            "bundle {}: {} of {} files damaged — copy them again (or run kubeboot bundle --out on it again)",
            dir.display(),
            damaged.len(),
            manifest.items.len()
        );
        return Ok(Exit::BadInput);
    }
    let inv = inventory::load(&cli.inventory)?;
    let facts = os_facts(&args.os)?;
    for note in other_families(&inv, &facts) {
        eprintln!("note: {note}");
    }
    if inv.sources.bundle.is_some() && !args.list {
        // With `bundle` set every unset source is the bundle's own folder: nothing to download from.
        return Err(Failure::BadInput(
            crate::diag::Diagnostic::at(
                &cli.inventory,
                inv.sources.line.max(1),
                1,
                "[sources] bundle is set: `kubeboot bundle --out` downloads from the sources, not from a bundle",
            )
            .with_hint(
                "build the bundle from the inventory without `bundle`; on site, use `kubeboot apply --bundle DIR`",
            )
            .into(),
        ));
    }
    // The nodes are not asked for their facts: the bundle is built away from them (x86_64 assumed).
    let wanted = collect::wanted(&inv, &Facts::assumed());
    // The images are the ones the plan's rendered files name (every node, as `apply` would render them).
    let assets = cli
        .assets
        .clone()
        .unwrap_or_else(|| super::input::default_assets(&cli.playbooks));
    let books = crate::playbook::load(&cli.playbooks, &assets)?;
    let mut plans = Vec::new();
    for node in &inv.nodes {
        plans.push(crate::plan::plan_node(
            &inv,
            &books,
            &node.name,
            &facts,
            &crate::journal::Progress::empty(),
            &crate::secrets::Digests::none(),
            &crate::plan::Selection::default(),
        )?);
    }
    let images = images::in_plans(&plans);
    let repos = packages::in_plans(&inv, &plans, &facts);
    let dnf_repos = dnf::in_plans(&inv, &plans, &facts);
    let (charts, refused) = charts::in_plans(&plans);
    if let Some(r) = refused.first() {
        return Err(refusal(cli, &assets, r));
    }
    let configs = kubeadm::in_plans(&inv, &plans, &facts);
    let sandbox = kubeadm::sandbox_images(&inv, &facts);
    let Some(out) = args.out.as_ref().filter(|_| !args.list) else {
        for w in &wanted {
            println!("release\t{}\t{}", w.name, w.url);
        }
        for i in &images::merge(images.clone(), sandbox.clone()) {
            let clusters: Vec<&str> = i.clusters.iter().map(String::as_str).collect();
            println!("image\t{}\t{}", i.reference, clusters.join(","));
        }
        for c in &charts {
            let clusters: Vec<&str> = c.clusters.iter().map(String::as_str).collect();
            println!("chart\t{} {}\t{}\t{}", c.name, c.version, c.repo, clusters.join(","));
        }
        for r in &repos {
            let names: Vec<&str> = r.packages.iter().map(String::as_str).collect();
            println!("packages\t{}\t{} (with their dependencies)", r.dir, names.join(" "));
            for pin in &r.pins {
                let names: Vec<&str> = pin.packages.iter().map(String::as_str).collect();
                println!(
                    "packages\t{}\t{} at the first {} version that starts with {} (with their dependencies)",
                    r.dir,
                    names.join(" "),
                    pin.listed,
                    pin.prefix
                );
            }
        }
        for r in &dnf_repos {
            let names: Vec<String> = r
                .asks
                .iter()
                .map(|a| match &a.version {
                    Some(v) => format!("{}-{v}", a.name),
                    None => a.name.clone(),
                })
                .collect();
            println!("packages\t{}\t{} (with their dependencies)", r.dir, names.join(" "));
        }
        if !charts.is_empty() {
            println!(
                "(and the images of the charts' objects: each helmCharts entry rendered with the bundle's helm as kustomize renders it, once the charts and helm are downloaded)"
            );
        }
        for c in &configs {
            println!(
                "(and kubeadm's images for {} (cluster {}): `kubeadm config images list` of the kubeadm {}* package, once it is downloaded)",
                c.node, c.cluster, c.package_prefix
            );
        }
        return Ok(Exit::Ok);
    };
    let bars = Bars::new(std::io::stderr().is_terminal());
    let report = |e: BundleEvent| bars.show(e);
    let previous = collect::previous(out);
    let mut errors = Vec::new();
    let mut manifest = match collect::collect(&wanted, out, &report).await {
        Ok(manifest) => manifest,
        Err(e) => {
            errors.push(e);
            collect::Manifest::default()
        }
    };
    let (items, chart_images, failed) = charts::collect(&inv, &charts, &manifest.items, out, &report).await;
    manifest.items.extend(items);
    errors.extend(failed);
    let images = images::merge(images, chart_images);
    let (mut items, failed) = packages::collect(&repos, out, &report);
    errors.extend(failed);
    let (rpms, failed) = dnf::collect(&dnf_repos, out, &report).await;
    items.extend(rpms);
    errors.extend(failed);
    // kubeadm's own images: what the kubeadm just collected (.deb or .rpm) names for the plan's configurations.
    let (kubeadm_images, failed) = kubeadm::images(&configs, &items, out);
    errors.extend(failed);
    for m in kubeadm::sandbox_mismatches(&kubeadm_images, &sandbox) {
        errors.push(collect::BundleError::Io(m));
    }
    manifest.items.extend(items);
    let images = images::merge(images, images::merge(kubeadm_images, sandbox));
    let (items, failed) = images::collect(&inv, &images, out, &previous.items, &report).await;
    manifest.items.extend(items);
    errors.extend(failed);
    // The packages an earlier run collected for another release (`--os debian-12`, then `--os rocky-9`) stay
    // in the bundle and in its manifest.
    let dirs: Vec<&str> = repos
        .iter()
        .map(|r| r.dir.as_str())
        .chain(dnf_repos.iter().map(|r| r.dir.as_str()))
        .collect();
    manifest.items.extend(
        previous
            .items
            .iter()
            .filter(|i| other_release(i, &dirs) && out.join(&i.path).is_file())
            .cloned(),
    );
    if let Err(e) = collect::write_manifest(out, &manifest) {
        errors.push(e);
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("run the same command again: finished files are kept, an interrupted one continues");
        return Ok(Exit::NodesFailed);
    }
    println!(
        "bundle {}: {} files ({} charts, {} images), manifest {}",
        out.display(),
        manifest.items.len(),
        charts.len(),
        images.len(),
        collect::MANIFEST
    );
    Ok(Exit::Ok)
}

/// A `helmCharts` entry the bundle cannot render as kustomize does, located in the file it comes
/// from: the asset (or playbook, for `content:`) holding the key, else the file as the node gets it.
fn refusal(cli: &Cli, assets: &std::path::Path, r: &charts::Refused) -> Failure {
    let (file, line) = source_of(&[assets, &cli.playbooks], &r.dest, &r.key)
        .unwrap_or_else(|| (std::path::PathBuf::from(&r.dest), r.line.max(1)));
    Failure::BadInput(
        crate::diag::Diagnostic::at(
            &file,
            line,
            1,
            format!(
                "helmCharts entry `{}` ({} / {}): {}",
                r.chart, r.stage, r.task, r.reason
            ),
        )
        .with_hint(
            "kubeboot bundle renders each chart with helm exactly as kustomize does on the node, to know its images",
        )
        .into(),
    )
}

/// The file below `roots` that the rendered `dest` comes from and the line of `key:` in it: the
/// YAML file holding `key:` whose path is the longest tail of `dest`'s (a playbook's `content:`
/// matches on the key alone).
fn source_of(roots: &[&std::path::Path], dest: &str, key: &str) -> Option<(std::path::PathBuf, usize)> {
    let mut best: Option<(usize, std::path::PathBuf, usize)> = None;
    let mut stack: Vec<std::path::PathBuf> = roots.iter().map(|r| r.to_path_buf()).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Some(line) = text
                .lines()
                .position(|l| l.trim_start().trim_start_matches("- ").starts_with(&format!("{key}:")))
            else {
                continue;
            };
            let tail = path
                .components()
                .rev()
                .zip(std::path::Path::new(dest).components().rev())
                .take_while(|(a, b)| a == b)
                .count();
            if best
                .as_ref()
                .is_none_or(|(t, p, _)| tail > *t || (tail == *t && path < *p))
            {
                best = Some((tail, path, line + 1));
            }
        }
    }
    best.map(|(_, p, l)| (p, l))
}

/// A package of another distribution release's folder than those collected now (`apt/debian-12/...`
/// while `dirs` are `dnf/rocky-9`).
fn other_release(item: &collect::Item, dirs: &[&str]) -> bool {
    let mut parts = item.path.splitn(3, '/');
    let dir = match (parts.next(), parts.next()) {
        (Some(family), Some(release)) => format!("{family}/{release}"),
        _ => return false,
    };
    item.kind == "package" && !dirs.contains(&dir.as_str())
}

/// Nodes whose inventory variables (own, cluster's, [vars]) say they are of another family than
/// `--os`: their packages are not in this run's bundle; another run with their `--os` adds them.
fn other_families(inv: &inventory::Inventory, facts: &Facts) -> Vec<String> {
    let mut out = Vec::new();
    for node in &inv.nodes {
        let cluster = inv.clusters.iter().find(|c| Some(&c.name) == node.cluster.as_ref());
        let var = |k: &str| {
            node.vars
                .get(k)
                .or_else(|| cluster.and_then(|c| c.vars.get(k)))
                .or_else(|| inv.vars.get(k))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (family, id) = (var("os_family"), var("os_id"));
        let theirs = match id.as_str() {
            "rhel" | "rocky" | "almalinux" | "centos" => "redhat",
            "debian" | "ubuntu" => "debian",
            _ => family.as_str(),
        };
        if !theirs.is_empty() && theirs != facts.os_family {
            let example = if theirs == "redhat" { "rocky-9" } else { "debian-12" };
            out.push(format!(
                "node {} is a {theirs}-family node (os_family = \"{family}\", os_id = \"{id}\"): this run collects \
                 {}-{}'s packages only; run it again with its --os (like --os {example}) and the same --out to add them",
                node.name, facts.os_id, facts.os_version
            ));
        }
    }
    out
}

/// The facts of `--os ID-VERSION` (x86_64): what the plan renders and the packages are downloaded for.
fn os_facts(os: &str) -> Result<Facts, Failure> {
    let bad = || {
        Failure::BadInput(
            crate::diag::Diagnostic::at("command line", 1, 1, format!("--os {os}: not ID-VERSION"))
                .with_hint("for example --os debian-12, --os ubuntu-24.04 or --os rhel-9")
                .into(),
        )
    };
    let (id, version) = os.split_once('-').ok_or_else(bad)?;
    let major = version.split('.').next().and_then(|m| m.parse().ok()).ok_or_else(bad)?;
    let family = match id {
        "debian" | "ubuntu" => "debian",
        "rhel" | "rocky" | "almalinux" | "centos" => "redhat",
        _ => return Err(bad()),
    };
    Ok(Facts {
        os_family: family.into(),
        os_id: id.into(),
        os_version: version.into(),
        os_version_major: major,
        ..Facts::assumed()
    })
}

/// One bar per download on a terminal; one line per file otherwise.
struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new(terminal: bool) -> Bars {
        Bars {
            multi: terminal.then(MultiProgress::new),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn show(&self, e: BundleEvent) {
        let Ok(mut bars) = self.bars.lock() else { return };
        match (e, &self.multi) {
            (BundleEvent::Started { name, from, total }, Some(multi)) => {
                let bar = multi.add(ProgressBar::new(total.unwrap_or(0)));
                if let Ok(style) =
                    ProgressStyle::with_template("{msg:12} {bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
                {
                    bar.set_style(style);
                }
                bar.set_message(name.clone());
                bar.set_position(from);
                bars.insert(name, bar);
            }
            (BundleEvent::Progress { name, done }, Some(_)) => {
                if let Some(bar) = bars.get(&name) {
                    bar.set_position(done);
                }
            }
            (BundleEvent::Finished { name, size }, _) => {
                if let Some(bar) = bars.remove(&name) {
                    bar.finish();
                }
                eprintln!("ok {name} ({size} bytes, sha256 checked)");
            }
            (BundleEvent::Present { name }, _) => eprintln!("present {name} (sha256 checked, not downloaded again)"),
            (BundleEvent::Started { name, from, .. }, None) if from > 0 => {
                eprintln!("resuming {name} at byte {from}")
            }
            _ => {}
        }
    }
}
