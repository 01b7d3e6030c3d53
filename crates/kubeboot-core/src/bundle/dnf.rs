//! OS packages for a bundle (RHEL, Rocky, AlmaLinux, CentOS Stream): the packages the plan's
//! rendered commands install (`dnf install NAME...`, `"kubelet-$v"` at the version the command
//! sets), resolved with every dependency from the `[sources.dnf]` repositories' own metadata
//! ([`super::rpmmd`]), downloaded with their sha256 checked (an interrupted download continues),
//! and written as a dnf repository `dnf/<os_id>-<major>/` that stage 05-sources points the node at.
//! Its `repodata/` is written by createrepo_c (the tool the distributions use), on this machine
//! only: the nodes read it with their own dnf.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use super::collect::{self, BundleError, BundleEvent, Item, Wanted, sha256_file};
use super::rpmmd::{self, Ask, Package};
use crate::facts::Facts;
use crate::inventory::Inventory;
use crate::plan::{Action, Decision, NodePlan};
use crate::playbook::template::Context;

/// One dnf repository of the bundle: the packages one distribution major release needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedRepo {
    /// `dnf/rocky-9` (as [`crate::inventory::sources::layout::DNF`] names it).
    pub dir: String,
    /// What the commands install: a name, with the version pattern the command gives it.
    pub asks: BTreeSet<Ask>,
    /// The repositories the packages come from: (name in `[sources.dnf]`, URL), `$releasever`
    /// and `$basearch` already replaced.
    pub sources: Vec<(String, String)>,
    /// The architecture the packages are for (`x86_64`), besides `noarch`.
    pub arch: String,
}

/// The packages the plans' commands install with dnf, for the release `facts` name, and the
/// `[sources.dnf]` repositories they come from (a `url` may list several, space separated:
/// BaseOS and AppStream).
pub fn in_plans(inv: &Inventory, plans: &[NodePlan], facts: &Facts) -> Vec<WantedRepo> {
    if facts.os_family != "redhat" {
        return Vec::new();
    }
    let mut asks = BTreeSet::new();
    let mut sources = BTreeMap::new();
    for plan in plans {
        for task in plan.tasks.iter().filter(|t| t.decision == Decision::Run) {
            if let Action::Run(run) = &task.action {
                asks.extend(dnf_installs(&run.command));
            }
        }
        let Some(node) = inv.node(&plan.node) else { continue };
        let ctx = Context::for_node(inv, node, facts);
        let Some(dnf) = ctx.get("sources").and_then(|s| s.get_attr("dnf").ok()) else {
            continue;
        };
        for name in crate::inventory::sources::REPOS {
            let Ok(repo) = dnf.get_attr(name) else { continue };
            let url = repo
                .get_attr("url")
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            for (i, url) in url.split_whitespace().enumerate() {
                if url.contains("{{") {
                    continue;
                }
                // checked: dnf.conf(5) substitutes $releasever (the major release on RHEL-family) and $basearch.
                let url = url
                    .replace("$releasever", &facts.os_version_major.to_string())
                    .replace("$basearch", &facts.arch);
                let label = if i == 0 {
                    name.to_string()
                } else {
                    format!("{name}.{}", i + 1)
                };
                sources.entry(url.clone()).or_insert((label, url));
            }
        }
    }
    if asks.is_empty() {
        return Vec::new();
    }
    let mut sources: Vec<(String, String)> = sources.into_values().collect();
    sources.sort();
    vec![WantedRepo {
        dir: format!("dnf/{}-{}", facts.os_id, facts.os_version_major),
        asks,
        sources,
        arch: facts.arch.clone(),
    }]
}

/// What every `dnf ... install ...` (or yum's) of a shell command installs: names, and
/// `NAME-$VAR` with the version the command assigns to `VAR` (`v='1.34.*'`).
fn dnf_installs(command: &str) -> Vec<Ask> {
    let joined = command.replace("\\\n", " ");
    let assigned = |var: &str| -> Option<String> {
        joined.lines().find_map(|l| {
            let rest = l.trim().strip_prefix(&format!("{var}="))?;
            let value = rest.trim_matches(['"', '\'']);
            (!value.contains('$') && !value.contains(char::is_whitespace)).then(|| value.to_string())
        })
    };
    let mut out = Vec::new();
    for word in super::install_words(command, &["dnf", "yum"]) {
        if word.contains("{{") {
            continue;
        }
        match word.split_once("-$") {
            Some((name, var)) => {
                let var = var.trim_matches(['{', '}']);
                if let Some(version) = assigned(var) {
                    out.push(Ask {
                        name: name.to_string(),
                        version: Some(version),
                    });
                }
            }
            None if !word.contains('$') => out.push(Ask {
                name: word.to_string(),
                version: None,
            }),
            None => {}
        }
    }
    out
}

/// Resolves, downloads and indexes every repository into `out/<dir>/`; one item per `.rpm`.
pub async fn collect(
    repos: &[WantedRepo],
    out: &Path,
    progress: &(dyn Fn(BundleEvent) + Send + Sync),
) -> (Vec<Item>, Vec<BundleError>) {
    let (mut items, mut errors) = (Vec::new(), Vec::new());
    for repo in repos {
        match one(repo, out, progress).await {
            Ok(mut got) => items.append(&mut got),
            Err(mut e) => errors.append(&mut e),
        }
    }
    (items, errors)
}

async fn one(
    repo: &WantedRepo,
    out: &Path,
    progress: &(dyn Fn(BundleEvent) + Send + Sync),
) -> Result<Vec<Item>, Vec<BundleError>> {
    let all_urls = repo.sources.iter().map(|s| s.1.as_str()).collect::<Vec<_>>().join(" ");
    let fail = |reason: String| {
        vec![BundleError::Download {
            name: repo.dir.clone(),
            url: all_urls.clone(),
            reason,
        }]
    };
    if repo.sources.is_empty() {
        return Err(fail(
            "no [sources.dnf] repository has a URL: set [sources.dnf.distro] url (the distribution's mirror; \
             several space separated, like BaseOS and AppStream)"
                .into(),
        ));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(20))
        .build()
        .map_err(|e| fail(format!("cannot start an HTTP client: {e}")))?;
    let mut packages: Vec<Package> = Vec::new();
    for (i, (name, url)) in repo.sources.iter().enumerate() {
        let got = metadata(&client, url, i)
            .await
            .map_err(|reason| fail(format!("[sources.dnf.{name}] {url}: {reason}")))?;
        packages.extend(got);
    }
    let asks: Vec<Ask> = repo.asks.iter().cloned().collect();
    let chosen = rpmmd::resolve(&packages, &asks, &repo.arch).map_err(&fail)?;

    let dir = out.join(&repo.dir);
    let pool = dir.join("Packages");
    std::fs::create_dir_all(&pool)
        .map_err(|e| vec![BundleError::Io(format!("cannot create {}: {e}", pool.display()))])?;
    let mut items = Vec::new();
    let mut errors = Vec::new();
    let mut files = BTreeSet::new();
    for &i in &chosen {
        let p = &packages[i];
        let base = &repo.sources[p.repo].1;
        let file = p.href.rsplit('/').next().unwrap_or(&p.href).to_string();
        files.insert(file.clone());
        let (kind, sha256) = &p.checksum;
        if kind != "sha256" {
            errors.push(BundleError::Download {
                name: p.name.clone(),
                url: join(base, &p.href),
                reason: format!("the repository gives its checksum as {kind}, not sha256: it cannot be checked"),
            });
            continue;
        }
        let w = Wanted {
            name: p.name.clone(),
            url: join(base, &p.href),
            sha256: sha256.clone(),
            path: format!("{}/Packages/{file}", repo.dir),
        };
        let dest = out.join(&w.path);
        if dest.is_file() && sha256_file(&dest).ok().as_deref() == Some(sha256.as_str()) {
            progress(BundleEvent::Present { name: w.name.clone() });
        } else if let Err(e) = collect::download(&client, &w, &dest, progress).await {
            errors.push(e);
            continue;
        }
        let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        progress(BundleEvent::Finished {
            name: w.name.clone(),
            size,
        });
        items.push(Item {
            kind: "package".into(),
            name: p.name.clone(),
            version: p.version(),
            source: w.url.clone(),
            path: w.path.clone(),
            sha256: sha256.clone(),
            size,
            digest: None,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Packages an earlier run chose and this one does not (another version now): not in the index.
    if let Ok(entries) = std::fs::read_dir(&pool) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".rpm") && !files.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    createrepo(&dir).map_err(&fail)?;
    Ok(items)
}

/// The packages of one repository: its `repomd.xml`, then the primary metadata it names, checked
/// by the checksum repomd.xml gives.
async fn metadata(client: &reqwest::Client, url: &str, index: usize) -> Result<Vec<Package>, String> {
    let get = async |path: &str| -> Result<Vec<u8>, String> {
        let full = join(url, path);
        let r = client.get(&full).send().await.map_err(|e| format!("{full}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{full}: HTTP {}", r.status()));
        }
        r.bytes().await.map(|b| b.to_vec()).map_err(|e| format!("{full}: {e}"))
    };
    let repomd = get("repodata/repomd.xml").await?;
    let (href, kind, sum) = rpmmd::primary_location(&repomd)?;
    let bytes = get(&href).await?;
    if kind == "sha256" {
        use sha2::Digest;
        let got = hex::encode(sha2::Sha256::digest(&bytes));
        if got != sum {
            return Err(format!("{href} has sha256 {got}, repomd.xml says {sum}"));
        }
    }
    let xml = rpmmd::decompress(&href, &bytes)?;
    rpmmd::parse_primary(xml.as_slice(), index)
}

fn join(base: &str, path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
}

/// `repodata/` for the packages below `dir` (no sqlite databases: dnf reads the XML).
fn createrepo(dir: &Path) -> Result<(), String> {
    // checked: createrepo_c(8) --no-database, --quiet; gzip metadata is its default, read by dnf 4 on RHEL 8 and 9.
    let out = Command::new("createrepo_c")
        .args(["--quiet", "--no-database"])
        .arg(dir)
        .output()
        .map_err(|e| {
            format!("cannot run createrepo_c: {e} (install it on the machine building the bundle: apt-get install createrepo-c, or dnf install createrepo_c)")
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "createrepo_c {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_are_read_from_commands_with_the_versions_they_set() {
        let cmd = "set -eu\nv='1.34.*'\n# The repository's exclude line is the hold.\n\
                   dnf install -y --disableexcludes=kubernetes \"kubelet-$v\" \"kubeadm-$v\" kubectl-${v}\n\
                   dnf install -y ca-certificates gnupg2 tar\ncommand -v curl >/dev/null || dnf install -y curl\n\
                   rpm -q kubelet\n";
        let got: Vec<String> = dnf_installs(cmd)
            .into_iter()
            .map(|a| format!("{}{}", a.name, a.version.map(|v| format!("@{v}")).unwrap_or_default()))
            .collect();
        assert_eq!(
            got,
            [
                "kubelet@1.34.*",
                "kubeadm@1.34.*",
                "kubectl@1.34.*",
                "ca-certificates",
                "gnupg2",
                "tar",
                "curl"
            ]
        );
    }
}
