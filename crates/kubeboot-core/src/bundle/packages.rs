//! OS packages for a bundle (Debian and Ubuntu): the packages the plan's rendered commands install
//! (`apt-get ... install NAME...`), with every dependency, downloaded by apt itself into a flat
//! repository `apt/<os_id>-<os_version>/` that stage 05-sources and the later stages read with a
//! bundle. apt runs with a private configuration (its own sources naming the inventory's
//! `[sources.apt]` repositories, its own lists and cache, an empty dpkg status so every dependency
//! is downloaded) and never touches this machine's /etc/apt. `apt-ftparchive` writes the index.
//! dnf (RHEL) is not collected here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::collect::{BundleError, BundleEvent, Item, sha256_file};
use crate::facts::Facts;
use crate::inventory::Inventory;
use crate::plan::{Action, Decision, NodePlan};
use crate::playbook::template::Context;

/// One flat apt repository of the bundle: the packages one distribution release needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedRepo {
    /// `apt/ubuntu-24.04` (as [`crate::inventory::sources::layout::APT`] names it).
    pub dir: String,
    pub packages: BTreeSet<String>,
    /// Packages the commands install at one chosen version (`"kubelet=$ver"`), as the node chooses it.
    pub pins: BTreeSet<Pin>,
    /// The repositories apt downloads from: (name, url, suite, components, key).
    pub sources: Vec<(String, String, String, String, String)>,
}

/// Packages a command installs at the version it picks from `apt-cache madison NAME` (the first one
/// that starts with `prefix`, as the command's `awk -v want='PREFIX'` does): the bundle picks the same.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pin {
    /// The package whose versions are listed (`kubeadm`).
    pub listed: String,
    /// What the version must start with: `1.34.2-` (a pinned patch) or `1.34.` (the newest of the minor).
    pub prefix: String,
    /// The packages installed at that version (`kubelet`, `kubeadm`, `kubectl`).
    pub packages: BTreeSet<String>,
}

/// The packages the plans' commands install with apt, per distribution release (`facts` are the
/// release the bundle is made for), and the `[sources.apt]` repositories they come from.
pub fn in_plans(inv: &Inventory, plans: &[NodePlan], facts: &Facts) -> Vec<WantedRepo> {
    if facts.os_family != "debian" {
        return Vec::new();
    }
    let mut packages = BTreeSet::new();
    let mut pins = BTreeSet::new();
    let mut sources = BTreeMap::new();
    for plan in plans {
        for task in plan.tasks.iter().filter(|t| t.decision == Decision::Run) {
            if let Action::Run(run) = &task.action {
                let (plain, versioned) = apt_installs(&run.command);
                packages.extend(plain);
                match (versioned.is_empty(), madison_pick(&run.command)) {
                    (true, _) => {}
                    (false, Some((listed, prefix))) => {
                        pins.insert(Pin {
                            listed,
                            prefix,
                            packages: versioned.into_iter().collect(),
                        });
                    }
                    // A version from somewhere the bundle cannot follow: the newest, as before.
                    (false, None) => packages.extend(versioned),
                }
            }
        }
        let Some(node) = inv.node(&plan.node) else { continue };
        let ctx = Context::for_node(inv, node, facts);
        let Some(apt) = ctx.get("sources").and_then(|s| s.get_attr("apt").ok()) else {
            continue;
        };
        for name in crate::inventory::sources::REPOS {
            let Ok(repo) = apt.get_attr(name) else { continue };
            let text = |k: &str| {
                repo.get_attr(k)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            let url = text("url");
            if url.is_empty() || url.contains("{{") {
                continue;
            }
            sources.entry((name.to_string(), url.clone())).or_insert((
                name.to_string(),
                url,
                text("suite"),
                text("components"),
                text("key"),
            ));
        }
    }
    if packages.is_empty() && pins.is_empty() {
        return Vec::new();
    }
    vec![WantedRepo {
        dir: format!("apt/{}-{}", facts.os_id, facts.os_version),
        packages,
        pins,
        sources: sources.into_values().collect(),
    }]
}

/// Package names of every `apt-get ... install ...` in a shell command (options and shell words
/// left out): the plain ones, and those installed at a version the command chose (`"kubelet=$ver"`).
fn apt_installs(command: &str) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut versioned = Vec::new();
    for word in super::install_words(command, &["apt-get", "apt"]) {
        let word = word.as_str();
        let (name, chosen) = match word.split_once('=') {
            Some((name, version)) if version.contains('$') => (name, true),
            Some(_) => (word, false),
            None => (word, false),
        };
        if name.contains('$') || name.contains('{') {
            continue;
        }
        if chosen {
            versioned.push(name.to_string());
        } else {
            out.push(name.to_string());
        }
    }
    (out, versioned)
}

/// `(NAME, PREFIX)` of a command that picks its version as the shipped kubernetes stage does:
/// `apt-cache madison NAME | awk -v want='PREFIX' 'index($3, want) == 1 ...'`.
fn madison_pick(command: &str) -> Option<(String, String)> {
    let line = command.lines().find(|l| l.contains("apt-cache madison "))?;
    let listed = line.split("apt-cache madison ").nth(1)?.split_whitespace().next()?;
    let prefix = line.split("want='").nth(1)?.split('\'').next()?;
    (!prefix.is_empty() && !prefix.contains('{')).then(|| (listed.to_string(), prefix.to_string()))
}

/// The first version `apt-cache madison` lists for `pin.listed` that starts with the pin's prefix.
fn resolve(config: &Path, pin: &Pin) -> Result<String, String> {
    let out = Command::new("apt-cache")
        .args(["madison", &pin.listed])
        .env("APT_CONFIG", config)
        .output()
        .map_err(|e| format!("cannot run apt-cache: {e}"))?;
    // checked: apt-cache(8) madison prints `NAME | VERSION | SOURCE` a line, as the node's awk reads it ($3).
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('|').nth(1).map(str::trim))
        .find(|v| v.starts_with(&pin.prefix))
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "no {} version starting with {} in the repositories (what kubernetes_package_version/kubernetes_version ask for)",
                pin.listed, pin.prefix
            )
        })
}

/// Downloads every repository's packages with apt into `out/<dir>/` and indexes it; one item per
/// `.deb`. `work` keeps apt's lists and cache between runs (an interrupted run continues: apt keeps
/// what it downloaded and resumes a partial file).
pub fn collect(
    repos: &[WantedRepo],
    out: &Path,
    progress: &(dyn Fn(BundleEvent) + Send + Sync),
) -> (Vec<Item>, Vec<BundleError>) {
    let (mut items, mut errors) = (Vec::new(), Vec::new());
    for repo in repos {
        match one(repo, out, progress) {
            Ok(mut got) => items.append(&mut got),
            Err(e) => errors.push(e),
        }
    }
    (items, errors)
}

fn one(
    repo: &WantedRepo,
    out: &Path,
    progress: &(dyn Fn(BundleEvent) + Send + Sync),
) -> Result<Vec<Item>, BundleError> {
    let fail = |reason: String| BundleError::Download {
        name: repo.dir.clone(),
        url: repo.sources.iter().map(|s| s.1.as_str()).collect::<Vec<_>>().join(" "),
        reason,
    };
    let io = |what: String| move |e: std::io::Error| BundleError::Io(format!("{what}: {e}"));
    if repo.sources.is_empty() {
        return Err(fail(
            "no [sources.apt] repository has a URL: set [sources.apt.distro] url (the distribution's mirror)".into(),
        ));
    }
    // Below the bundle, but not part of it (not in the manifest; the nodes never read it).
    let work = out.join(".apt").join(repo.dir.replace('/', "_"));
    for d in [
        "sources",
        "keys",
        "lists/partial",
        "archives/partial",
        "cache",
        "preferences",
    ] {
        std::fs::create_dir_all(work.join(d)).map_err(io(format!("cannot create {}", work.join(d).display())))?;
    }
    let mut list = String::new();
    for (name, url, suite, components, key) in &repo.sources {
        let mut opts = "trusted=yes".to_string();
        if !key.is_empty() {
            // checked: sources.list(5) signed-by takes an ASCII-armored key file named *.asc (apt >= 2.4)
            let file = work.join("keys").join(format!("{name}.asc"));
            fetch_key(key, &file).map_err(|e| fail(format!("the key of [sources.apt.{name}] ({key}): {e}")))?;
            opts = format!("signed-by={}", file.display());
        }
        // A flat repository (suite "/") is named by its URL alone, with "./" as the suite; apt reads
        // the URL's own Release/Packages. Otherwise: URL, suite (empty = the bundle's release), components.
        let line = match suite.as_str() {
            "/" | "./" => format!("deb [{opts}] {url} /\n"),
            s => {
                let suite = if s.is_empty() {
                    codename(&repo.dir)
                } else {
                    s.to_string()
                };
                format!("deb [{opts}] {url} {suite} {components}\n")
            }
        };
        list.push_str(&line);
    }
    std::fs::write(work.join("sources/bundle.list"), list).map_err(io("cannot write apt's sources".into()))?;
    let status = work.join("status");
    std::fs::write(&status, "").map_err(io("cannot write an empty dpkg status".into()))?;
    let w = work.display();
    // checked: apt.conf(5) Dir::Etc::SourceList/SourceParts, Dir::State::Lists, Dir::State::status,
    // Dir::Cache::Archives; APT::Sandbox::User (downloads into a root-only folder)
    let conf = format!(
        "Dir::Etc::SourceList \"/dev/null\";\nDir::Etc::SourceParts \"{w}/sources\";\n\
         Dir::Etc::PreferencesParts \"{w}/preferences\";\nDir::Etc::Preferences \"/dev/null\";\n\
         Dir::State::Lists \"{w}/lists\";\nDir::State::status \"{}\";\nDir::Cache \"{w}/cache\";\n\
         Dir::Cache::Archives \"{w}/archives\";\nAPT::Install-Recommends \"false\";\n\
         APT::Sandbox::User \"root\";\nDebug::NoLocking \"true\";\n",
        status.display()
    );
    let config = work.join("apt.conf");
    std::fs::write(&config, conf).map_err(io("cannot write apt's configuration".into()))?;
    progress(BundleEvent::Started {
        name: repo.dir.clone(),
        from: 0,
        total: None,
    });
    apt_get(&config, &["-q", "update"]).map_err(&fail)?;
    // What an earlier run put in the bundle goes back into apt's cache: apt checks it and downloads only the rest.
    let dir = out.join(&repo.dir);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let to = work.join("archives").join(e.file_name());
            if e.path().extension().is_some_and(|x| x == "deb") && !to.exists() {
                let _ = std::fs::hard_link(e.path(), &to);
            }
        }
    }
    let mut installs: Vec<Vec<String>> = Vec::new();
    let pinned: BTreeSet<&String> = repo.pins.iter().flat_map(|p| &p.packages).collect();
    let plain: Vec<String> = repo.packages.iter().filter(|p| !pinned.contains(p)).cloned().collect();
    if !plain.is_empty() {
        installs.push(plain);
    }
    // Each pin on its own: two clusters may want two versions of the same package.
    for pin in &repo.pins {
        let version = resolve(&config, pin).map_err(&fail)?;
        installs.push(pin.packages.iter().map(|p| format!("{p}={version}")).collect());
    }
    for install in &installs {
        let mut args = vec!["-q", "-y", "--download-only", "install"];
        args.extend(install.iter().map(String::as_str));
        apt_get(&config, &args).map_err(&fail)?;
    }

    std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let mut items = Vec::new();
    let mut debs: Vec<PathBuf> = std::fs::read_dir(work.join("archives"))
        .map_err(io("cannot read apt's downloads".into()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    for deb in &debs {
        let Some(file) = deb.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            continue;
        };
        let dest = dir.join(&file);
        if std::fs::hard_link(deb, &dest).is_err() && !dest.exists() {
            std::fs::copy(deb, &dest).map_err(io(format!("cannot copy {file}")))?;
        }
        let sha256 = sha256_file(&dest).map_err(io(format!("cannot read {file}")))?;
        let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        // apt names its downloads NAME_VERSION_ARCH.deb (the version's ':' as %3a).
        let mut parts = file.trim_end_matches(".deb").splitn(3, '_');
        let name = parts.next().unwrap_or(&file).to_string();
        let version = parts.next().unwrap_or("").replace("%3a", ":");
        items.push(Item {
            kind: "package".into(),
            name,
            version,
            source: repo.sources.iter().map(|s| s.1.as_str()).collect::<Vec<_>>().join(" "),
            path: format!("{}/{file}", repo.dir),
            sha256,
            size,
            digest: None,
        });
    }
    index(&dir).map_err(&fail)?;
    // The bundle holds the packages now (apt's copies were hard links or duplicates): the work folder
    // keeps only its lists, so carrying the bundle does not carry every package twice.
    for deb in &debs {
        let _ = std::fs::remove_file(deb);
    }
    progress(BundleEvent::Finished {
        name: repo.dir.clone(),
        size: items.iter().map(|i| i.size).sum(),
    });
    Ok(items)
}

fn apt_get(config: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("apt-get")
        .args(args)
        .env("APT_CONFIG", config)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| {
            format!("cannot run apt-get: {e} (bundle needs apt on this machine for Debian/Ubuntu packages)")
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    Err(format!(
        "apt-get {} failed ({}): {}",
        args.join(" "),
        out.status,
        last[last.len().saturating_sub(4)..].join(" / ")
    ))
}

/// `Packages` and `Release` for the flat repository in `dir` (read as `deb [trusted=yes] URL ./`).
fn index(dir: &Path) -> Result<(), String> {
    let run = |args: &[&str]| -> Result<Vec<u8>, String> {
        let out = Command::new("apt-ftparchive")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("cannot run apt-ftparchive: {e} (install apt-utils)"))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!(
                "apt-ftparchive {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let packages = run(&["packages", "."])?;
    std::fs::write(dir.join("Packages"), packages).map_err(|e| format!("cannot write Packages: {e}"))?;
    let release = run(&["-o", "APT::FTPArchive::Release::Origin=kubeboot", "release", "."])?;
    std::fs::write(dir.join("Release"), release).map_err(|e| format!("cannot write Release: {e}"))
}

fn fetch_key(url: &str, file: &Path) -> Result<(), String> {
    let out = Command::new("curl")
        .args(["-fsSL", "--retry", "3", "-o"])
        .arg(file)
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The release code name of `apt/<os_id>-<os_version>` for a repository whose suite is left empty.
fn codename(dir: &str) -> String {
    match dir.trim_start_matches("apt/") {
        "debian-11" => "bullseye",
        "debian-12" => "bookworm",
        "debian-13" => "trixie",
        "ubuntu-22.04" => "jammy",
        "ubuntu-24.04" => "noble",
        _ => "stable",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_are_read_from_commands() {
        let cmd = "set -eu\napt-get -o DPkg::Lock::Timeout=300 install -y ca-certificates curl jq\n\
                   apt-get install -y --allow-downgrades \\\n  \"kubelet=$ver\" \"kubeadm=$ver\" >/dev/null\n\
                   apt-get update && apt-get install -y open-iscsi && echo done\napt-cache madison kubeadm\n";
        let (plain, versioned) = apt_installs(cmd);
        assert_eq!(plain, ["ca-certificates", "curl", "jq", "open-iscsi"]);
        assert_eq!(versioned, ["kubelet", "kubeadm"]);
    }

    #[test]
    fn the_version_a_command_picks_is_read_from_its_madison_line() {
        // As stage 30-kubernetes renders it with kubernetes_package_version = "1.34.2", and without.
        let pinned =
            "ver=\"$(apt-cache madison kubeadm | awk -v want='1.34.2-' 'index($3, want) == 1 { print $3; exit }')\"\n";
        assert_eq!(madison_pick(pinned), Some(("kubeadm".into(), "1.34.2-".into())));
        let minor = pinned.replace("1.34.2-", "1.34.");
        assert_eq!(madison_pick(&minor), Some(("kubeadm".into(), "1.34.".into())));
        assert_eq!(madison_pick("apt-get install -y \"kubelet=$ver\"\n"), None);
    }
}
