//! kubeadm's own images for a bundle (kube-apiserver, kube-controller-manager, kube-scheduler,
//! etcd, coredns, pause; kube-proxy only when the configuration keeps it). Their tags depend on the
//! exact kubeadm release (etcd's follows kubeadm's `SupportedEtcdVersion`, which patch releases
//! change), so kubeboot does not keep a table of its own: it asks the kubeadm the nodes will run —
//! the binary from the kubeadm package the bundle collected — `kubeadm config images list` for the
//! very configuration stage 40-kubeadm-init writes (its `imageRepository`, `proxy.disabled`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::collect::{BundleError, Item};
use super::images::WantedImage;
use crate::facts::Facts;
use crate::inventory::Inventory;
use crate::plan::{Action, Decision, NodePlan};
use crate::playbook::template::Context;

/// Where the configuration's kubernetesVersion goes: stage 40-kubeadm-init copies
/// `assets/kubeadm/kubeadm-config.yaml` to the node with this word in it, and its `write-config.sh`
/// puts in the exact version of the installed kubeadm.
pub const VERSION_PLACEHOLDER: &str = "@KUBERNETES_VERSION@";

/// One kubeadm configuration the plan writes on a first control plane, its version still open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedConfig {
    pub node: String,
    pub cluster: String,
    /// The YAML as the copy puts it on the node (with [`VERSION_PLACEHOLDER`]).
    pub text: String,
    /// The kubeadm package version the node installs: its version must start with this
    /// (`1.34.2-` pinned, `1.34.` the newest of the minor), as stage 30-kubernetes picks it.
    pub package_prefix: String,
}

/// The kubeadm configurations of the plans: a file a copy task puts on the node that holds a
/// `ClusterConfiguration` with [`VERSION_PLACEHOLDER`] (stage 40-kubeadm-init's `kubeadm config files`).
pub fn in_plans(inv: &Inventory, plans: &[NodePlan], facts: &Facts) -> Vec<WantedConfig> {
    let mut out = Vec::new();
    for plan in plans {
        for task in plan.tasks.iter().filter(|t| t.decision == Decision::Run) {
            let Action::Copy(copy) = &task.action else { continue };
            let Some(text) = copy.files.iter().find_map(|f| configuration(&f.content)) else {
                continue;
            };
            let Some(node) = inv.node(&plan.node) else { continue };
            let ctx = Context::for_node(inv, node, facts);
            let var = |name: &str| var(&ctx, name);
            let (pinned, minor) = (var("kubernetes_package_version"), var("kubernetes_version"));
            out.push(WantedConfig {
                node: plan.node.clone(),
                cluster: plan.cluster.clone().unwrap_or_else(|| plan.node.clone()),
                text,
                package_prefix: if pinned.is_empty() {
                    format!("{minor}.")
                } else {
                    format!("{pinned}-")
                },
            });
        }
    }
    out
}

/// A text variable of the node's context ("" when unset).
fn var(ctx: &Context, name: &str) -> String {
    ctx.get(name)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The file's text when it is a kubeadm configuration with its version still open.
fn configuration(content: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(content).ok()?;
    (text.contains("kind: ClusterConfiguration") && text.contains(VERSION_PLACEHOLDER)).then(|| text.to_string())
}

/// The images kubeadm names for each configuration, with the clusters needing them; each kubeadm
/// binary is unpacked from the bundle's kubeadm package (`packages`, this run's items) into
/// `out/.kubeadm/<version>/`. A configuration without a matching package is an error.
pub fn images(configs: &[WantedConfig], packages: &[Item], out: &Path) -> (Vec<WantedImage>, Vec<BundleError>) {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut errors = Vec::new();
    for config in configs {
        match one(config, packages, out) {
            Ok(list) => {
                for image in list {
                    found.entry(image).or_default().insert(config.cluster.clone());
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let images = found
        .into_iter()
        .map(|(reference, clusters)| WantedImage {
            reference,
            clusters,
            control_plane: true,
        })
        .collect();
    (images, errors)
}

fn one(config: &WantedConfig, packages: &[Item], out: &Path) -> Result<Vec<String>, BundleError> {
    let fail = |reason: String| BundleError::Download {
        name: format!("kubeadm's images for {}", config.node),
        url: "kubeadm config images list".into(),
        reason,
    };
    let package = packages
        .iter()
        .filter(|i| i.kind == "package" && i.name == "kubeadm" && i.version.starts_with(&config.package_prefix))
        .max_by_key(|i| numbers(&i.version))
        .ok_or_else(|| {
            fail(format!(
                "no kubeadm package {}* in the bundle to ask (the images are the ones that kubeadm names; \
                 bundle --os debian-N/ubuntu-N/rocky-N collects it)",
                config.package_prefix
            ))
        })?;
    // The package version's upstream part is the Kubernetes release: 1.34.2-1.1 (or -150500.1.1) -> v1.34.2.
    let upstream = package.version.split('-').next().unwrap_or(&package.version);
    let kv = format!("v{upstream}");
    let kubeadm = unpack(out, package).map_err(&fail)?;
    let file = out.join(".kubeadm").join(format!("{}-{kv}.yaml", config.node));
    std::fs::write(&file, config.text.replace(VERSION_PLACEHOLDER, &kv))
        .map_err(|e| fail(format!("cannot write {}: {e}", file.display())))?;
    // checked: kubeadm cmd/kubeadm/app/cmd/config.go (`config images list --config`, one image a line)
    // and app/images/images.go GetControlPlaneImages (kube-proxy left out when proxy.disabled).
    let run = Command::new(&kubeadm)
        .args(["config", "images", "list", "--config"])
        .arg(&file)
        .output()
        .map_err(|e| fail(format!("cannot run {}: {e}", kubeadm.display())))?;
    if !run.status.success() {
        return Err(fail(format!(
            "{} config images list failed ({}): {}",
            kubeadm.display(),
            run.status,
            String::from_utf8_lossy(&run.stderr).trim()
        )));
    }
    let list: Vec<String> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if list.is_empty() {
        return Err(fail(format!("{} named no image", kubeadm.display())));
    }
    Ok(list)
}

/// A Debian version as its numbers, for ordering (`1.34.10-1.1` after `1.34.9-1.1`).
fn numbers(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// `usr/bin/kubeadm` of the package, unpacked once per version (`dpkg-deb -x`; an .rpm's payload read here).
fn unpack(out: &Path, package: &Item) -> Result<PathBuf, String> {
    let dir = out.join(".kubeadm").join(&package.version);
    let binary = dir.join("usr/bin/kubeadm");
    if binary.is_file() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if package.path.ends_with(".rpm") {
        let bytes =
            rpm_file(&out.join(&package.path), "usr/bin/kubeadm").map_err(|e| format!("{}: {e}", package.path))?;
        std::fs::create_dir_all(dir.join("usr/bin")).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        std::fs::write(&binary, bytes).map_err(|e| format!("cannot write {}: {e}", binary.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot make {} executable: {e}", binary.display()))?;
        return Ok(binary);
    }
    let run = Command::new("dpkg-deb")
        .arg("-x")
        .arg(out.join(&package.path))
        .arg(&dir)
        .output()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    if !run.status.success() {
        return Err(format!(
            "dpkg-deb -x {} failed: {}",
            package.path,
            String::from_utf8_lossy(&run.stderr).trim()
        ));
    }
    if !binary.is_file() {
        return Err(format!("{} has no usr/bin/kubeadm", package.path));
    }
    Ok(binary)
}

/// One file of an .rpm (`usr/bin/kubeadm`): past the lead and the two headers, the payload is a
/// compressed cpio archive (newc) whose entries are named `./usr/bin/...`.
// checked: rpm's docs/manual/format.md (96-byte lead; signature header padded to 8 bytes; header
// structure magic 8e ad e8 01, index count and data size as big-endian u32) and cpio(5) "New ASCII".
fn rpm_file(path: &Path, wanted: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let header_end = |at: usize| -> Result<usize, String> {
        let h = bytes.get(at..at + 16).ok_or("cut short")?;
        if h[..4] != [0x8e, 0xad, 0xe8, 0x01] {
            return Err("not an rpm header".into());
        }
        let n = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as usize;
        Ok(at + 16 + n(8) * 16 + n(12))
    };
    if bytes.get(..4) != Some(&[0xed, 0xab, 0xee, 0xdb][..]) {
        return Err("not an rpm package (no lead)".into());
    }
    let signature_end = header_end(96)?;
    let payload_at = header_end(signature_end.div_ceil(8) * 8)?;
    let payload = bytes.get(payload_at..).ok_or("cut short")?;
    let kind = match payload {
        [0x1f, 0x8b, ..] => "payload.gz",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "payload.zst",
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => "payload.xz",
        _ => "payload (unknown compression)",
    };
    let cpio = super::rpmmd::decompress(kind, payload)?;
    let mut at = 0;
    while let Some(head) = cpio.get(at..at + 110) {
        if &head[..6] != b"070701" {
            return Err("the payload is not a cpio (newc) archive".into());
        }
        let field = |i: usize| {
            std::str::from_utf8(&head[6 + i * 8..14 + i * 8])
                .ok()
                .and_then(|h| usize::from_str_radix(h, 16).ok())
                .unwrap_or(0)
        };
        let (size, name_size) = (field(6), field(11));
        let name = cpio
            .get(at + 110..at + 110 + name_size.saturating_sub(1))
            .unwrap_or_default();
        let data = (at + 110 + name_size).div_ceil(4) * 4;
        if name == b"TRAILER!!!" {
            break;
        }
        if name.strip_prefix(b"./").unwrap_or(name) == wanted.as_bytes() {
            return cpio
                .get(data..data + size)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| "cut short".into());
        }
        at = (data + size).div_ceil(4) * 4;
    }
    Err(format!("no {wanted} in it"))
}

/// The `sandbox_image` each node's containerd is configured with ([vars]), with the clusters of
/// those nodes: containerd runs every pod's sandbox from it, so every node needs it.
pub fn sandbox_images(inv: &Inventory, facts: &Facts) -> Vec<WantedImage> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in &inv.nodes {
        let image = var(&Context::for_node(inv, node, facts), "sandbox_image");
        if image.is_empty() || image.contains("{{") {
            continue;
        }
        let cluster = node.cluster.clone().unwrap_or_else(|| node.name.clone());
        found.entry(image).or_default().insert(cluster);
    }
    found
        .into_iter()
        .map(|(reference, clusters)| WantedImage {
            reference,
            clusters,
            control_plane: false,
        })
        .collect()
}

/// A cluster whose containerd sandbox image is not the pause image its kubeadm names: kubeadm
/// warns in preflight and the bundle would carry two pause images. One message per cluster.
pub fn sandbox_mismatches(kubeadm: &[WantedImage], sandbox: &[WantedImage]) -> Vec<String> {
    let mut out = Vec::new();
    for pause in kubeadm.iter().filter(|i| is_pause(&i.reference)) {
        for cluster in &pause.clusters {
            let Some(configured) = sandbox.iter().find(|s| s.clusters.contains(cluster)) else {
                continue;
            };
            if configured.reference != pause.reference {
                out.push(format!(
                    "cluster {cluster}: sandbox_image is {} but its kubeadm uses {}: set sandbox_image = \"{}\" in the inventory's [vars]",
                    configured.reference, pause.reference, pause.reference
                ));
            }
        }
    }
    out
}

fn is_pause(reference: &str) -> bool {
    // The last path component without its tag or digest (a registry's port is before the last `/`).
    let last = reference.rsplit('/').next().unwrap_or(reference);
    last.split([':', '@']).next() == Some("pause")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_is_the_copied_file_holding_a_cluster_configuration_with_its_version_open() {
        let open =
            "kind: InitConfiguration\n---\nkind: ClusterConfiguration\nkubernetesVersion: \"@KUBERNETES_VERSION@\"\n";
        assert_eq!(configuration(open.as_bytes()).as_deref(), Some(open));
        let pinned = open.replace(VERSION_PLACEHOLDER, "v1.34.2");
        assert_eq!(
            configuration(pinned.as_bytes()),
            None,
            "a version already in is not kubeboot's template"
        );
        assert_eq!(configuration(b"set -eu\nsed s/@KUBERNETES_VERSION@/v1/ x\n"), None);
        assert_eq!(configuration(&[0xff, 0xfe]), None);
    }

    #[test]
    fn a_sandbox_image_other_than_kubeadms_pause_is_named() {
        let image = |r: &str, c: &str| WantedImage {
            reference: r.into(),
            clusters: BTreeSet::from([c.to_string()]),
            control_plane: false,
        };
        let kubeadm = [
            image("registry.k8s.io/pause:3.10.1", "c1"),
            image("registry.k8s.io/etcd:3.6.5-0", "c1"),
        ];
        assert!(sandbox_mismatches(&kubeadm, &[image("registry.k8s.io/pause:3.10.1", "c1")]).is_empty());
        assert!(is_pause("harbor.test:5000/k8s/pause:3.10.1") && !is_pause("harbor.test:5000/k8s/etcd:3.6.5-0"));
        let wrong = sandbox_mismatches(&kubeadm, &[image("registry.k8s.io/pause:3.10", "c1")]);
        assert_eq!(wrong.len(), 1);
        assert!(
            wrong[0].contains(
                "sandbox_image is registry.k8s.io/pause:3.10 but its kubeadm uses registry.k8s.io/pause:3.10.1"
            )
        );
    }
}
