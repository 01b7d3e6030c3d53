//! The guests' package repository: the Debian packages the shipped stages install, with every dependency,
//! downloaded once on this machine (which can reach Debian's mirror) and indexed as a flat apt repository.
//! The guests have no network; kubeboot serves this folder to them over their SSH connections.
//!
//! This is the lab's own small builder; `kubeboot bundle` (the air-gap work) gathers the same for any
//! inventory, and can take its place.
//!
//! Next to Debian's packages the repository holds stand-in `kubeadm`, `kubelet` and `kubectl` packages
//! ([`STANDIN_KUBERNETES_VERSION`]): real .debs built here with dpkg-deb from `standins/vm/`, which the shipped
//! stage 30-kubernetes installs and holds with the guest's real apt, since the real ones cannot be had here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::super::{LabError, io};
use super::host::{self, HostTools};
use super::lock_cache;

/// What the shipped node stages install on Debian (10-os-prep, 20-containerd with containerd from the
/// distribution, 60-longhorn-prereqs).
pub const STAGE_PACKAGES: &[&str] = &[
    "ca-certificates",
    "curl",
    "gpg",
    "tar",
    "socat",
    "conntrack",
    "ipset",
    "jq",
    "containerd",
    "open-iscsi",
    "nfs-common",
];

/// Where a bundle keeps the Debian 12 repository (flat: `Packages`, `Release` and the .debs side by side),
/// as `kubeboot bundle` lays it out (`apt/<os_id>-<os_version>/`).
pub const APT_DIR: &str = "apt/debian-12";

/// The version of the stand-in Kubernetes packages (the shipped inventories' `kubernetes_version` is 1.34).
pub const STANDIN_KUBERNETES_VERSION: &str = "1.34.2";
/// Their Debian version, as pkgs.k8s.io numbers its packages.
const STANDIN_DEB_VERSION: &str = "1.34.2-1.1";
const STANDIN_KUBE: &str = include_str!("../../standins/vm/kube.py");
const STANDIN_KUBE_VIP: &str = include_str!("../../standins/vm/kube-vip.py");
/// The kubelet's unit, as the kubelet package installs one (upstream: Restart=always, RestartSec=10).
const KUBELET_UNIT: &str = "[Unit]\nDescription=kubelet: The Kubernetes Node Agent (kubeboot VM lab stand-in)\n\
    Wants=network-online.target\nAfter=network-online.target\n\n[Service]\nExecStart=/usr/bin/kubelet\n\
    Restart=always\nStartLimitInterval=0\nRestartSec=10\n\n[Install]\nWantedBy=multi-user.target\n";

/// Builds the repository unless the cache has it; returns the bundle folder holding it in [`APT_DIR`].
pub fn ensure(cache: &Path) -> Result<PathBuf, LabError> {
    let tools = HostTools::ensure(cache)?;
    let mut h = Sha256::new();
    h.update(STAGE_PACKAGES.join(",").as_bytes());
    h.update(APT_DIR.as_bytes());
    let (debian, security) = host::mirror();
    h.update(debian.as_bytes());
    h.update(security.as_bytes());
    let key = format!("bookworm-{}", &hex::encode(h.finalize())[..16]);
    let dir = cache.join("repos").join(&key);
    let _lock = lock_cache(cache)?;
    if dir.join(APT_DIR).join("Release").exists() {
        no_images(&dir)?;
        standin_packages(&tools, &cache.join("repos"), &dir.join(APT_DIR))?;
        return Ok(dir);
    }
    let started = Instant::now();
    eprintln!("lab: building the guests' package repository {key}");
    let work = cache.join("repos").join(format!("{key}.build"));
    let _ = fs::remove_dir_all(&work);
    let pool = work.join(APT_DIR);
    fs::create_dir_all(&pool).map_err(io(format!("cannot create {}", pool.display())))?;
    // An empty dpkg status: apt then downloads every dependency, as for a machine that has nothing.
    let status = cache.join("apt").join("empty-status");
    fs::create_dir_all(cache.join("apt")).map_err(io("cannot create the lab's apt folder"))?;
    fs::write(&status, "").map_err(io("cannot write an empty dpkg status"))?;
    let config = host::apt_config(cache, "repo", Some(&status))?;
    host::apt_get(&config, &["-q", "update"])?;
    let mut args = vec!["-q", "-y", "--download-only", "install"];
    args.extend(STAGE_PACKAGES);
    host::apt_get(&config, &args)?;
    let archives = cache.join("apt").join("repo").join("archives");
    for e in fs::read_dir(&archives)
        .map_err(io("cannot read the downloaded packages"))?
        .flatten()
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "deb") {
            let to = pool.join(e.file_name());
            if fs::hard_link(&p, &to).is_err() {
                fs::copy(&p, &to).map_err(io(format!("cannot copy {}", p.display())))?;
            }
        }
    }
    index(&tools, &pool)?;
    no_images(&work)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&work, &dir).map_err(io(format!("cannot move the repository to {}", dir.display())))?;
    standin_packages(&tools, &cache.join("repos"), &dir.join(APT_DIR))?;
    eprintln!("lab: package repository built in {:.0?}", started.elapsed());
    Ok(dir)
}

/// One stand-in package: its name, what it depends on, and its files (path in the package, content, mode).
struct StandinPackage {
    name: &'static str,
    depends: &'static str,
    description: &'static str,
    files: Vec<(&'static str, String, u32)>,
    postinst: Option<&'static str>,
}

fn standin_set() -> Vec<StandinPackage> {
    let kube = STANDIN_KUBE.replace("@VERSION@", STANDIN_KUBERNETES_VERSION);
    vec![
        StandinPackage {
            name: "kubelet",
            depends: "python3, iproute2",
            description: "kubeboot VM lab stand-in for the kubelet (runs the API server and kube-vip static pods)",
            files: vec![
                ("usr/bin/kubelet", kube.clone(), 0o755),
                (
                    "usr/lib/kubeboot-standins/kube-vip",
                    STANDIN_KUBE_VIP.to_string(),
                    0o755,
                ),
                ("lib/systemd/system/kubelet.service", KUBELET_UNIT.to_string(), 0o644),
            ],
            postinst: Some(
                "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
            ),
        },
        StandinPackage {
            name: "kubeadm",
            depends: "python3, kubelet",
            description: "kubeboot VM lab stand-in for kubeadm (init, join, tokens, certificate keys)",
            files: vec![("usr/bin/kubeadm", kube.clone(), 0o755)],
            postinst: None,
        },
        StandinPackage {
            name: "kubectl",
            depends: "python3",
            description: "kubeboot VM lab stand-in for kubectl (apply, get, delete, rollout, wait, exec, taint)",
            files: vec![("usr/bin/kubectl", kube, 0o755)],
            postinst: None,
        },
    ]
}

/// Builds the stand-in Kubernetes .debs into `pool` and indexes it again, unless the ones there are of the
/// same sources (a digest in `pool/standins.sha256`). `work` is a scratch folder's parent.
fn standin_packages(tools: &HostTools, work: &Path, pool: &Path) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    let set = standin_set();
    let mut h = Sha256::new();
    h.update(STANDIN_DEB_VERSION.as_bytes());
    for p in &set {
        h.update(p.name.as_bytes());
        h.update(p.depends.as_bytes());
        for (path, content, mode) in &p.files {
            h.update(path.as_bytes());
            h.update(content.as_bytes());
            h.update(mode.to_le_bytes());
        }
        h.update(p.postinst.unwrap_or_default().as_bytes());
    }
    let digest = hex::encode(h.finalize());
    let marker = pool.join("standins.sha256");
    if fs::read_to_string(&marker).is_ok_and(|d| d.trim() == digest) {
        return Ok(());
    }
    let scratch = work.join("standins.build");
    let _ = fs::remove_dir_all(&scratch);
    for p in &set {
        let tree = scratch.join(p.name);
        let debian = tree.join("DEBIAN");
        fs::create_dir_all(&debian).map_err(io(format!("cannot create {}", debian.display())))?;
        let control = format!(
            "Package: {}\nVersion: {STANDIN_DEB_VERSION}\nArchitecture: amd64\nMaintainer: kubeboot VM lab <lab@kubeboot.invalid>\n\
             Depends: {}\nSection: admin\nPriority: optional\nDescription: {}\n Not the real program: see the script's header.\n",
            p.name, p.depends, p.description
        );
        fs::write(debian.join("control"), control).map_err(io("cannot write a stand-in's control file"))?;
        if let Some(script) = p.postinst {
            fs::write(debian.join("postinst"), script).map_err(io("cannot write a stand-in's postinst"))?;
            fs::set_permissions(debian.join("postinst"), fs::Permissions::from_mode(0o755))
                .map_err(io("cannot chmod a stand-in's postinst"))?;
        }
        for (path, content, mode) in &p.files {
            let to = tree.join(path);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
            }
            fs::write(&to, content).map_err(io(format!("cannot write {}", to.display())))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(*mode))
                .map_err(io(format!("cannot chmod {}", to.display())))?;
        }
        // Old builds of this package go: apt must see exactly one version.
        for e in fs::read_dir(pool).map_err(io("cannot read the repository"))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{}_", p.name)) {
                let _ = fs::remove_file(e.path());
            }
        }
        let deb = pool.join(format!("{}_{STANDIN_DEB_VERSION}_amd64.deb", p.name));
        let mut cmd = Command::new(&tools.dpkg_deb);
        cmd.args(["--root-owner-group", "--build"]).arg(&tree).arg(&deb);
        super::image::checked(cmd, "dpkg-deb --build (stand-in package)")?;
    }
    index(tools, pool)?;
    let _ = fs::remove_dir_all(&scratch);
    fs::write(&marker, format!("{digest}\n")).map_err(io("cannot write the stand-ins' digest"))?;
    eprintln!("lab: stand-in kubeadm, kubelet, kubectl {STANDIN_DEB_VERSION} built into the repository");
    Ok(())
}

/// The lab's bundle holds no container images (the node stages pull none): an empty `images/index.txt`, as
/// `kubeboot bundle` writes it, so containerd's "images from the bundle" finds nothing to import.
fn no_images(bundle: &Path) -> Result<(), LabError> {
    let index = bundle.join("images").join("index.txt");
    if index.exists() {
        return Ok(());
    }
    fs::create_dir_all(bundle.join("images")).map_err(io("cannot create the bundle's images folder"))?;
    fs::write(&index, "").map_err(io(format!("cannot write {}", index.display())))
}

/// Writes `Packages` and `Release` for the .debs in `dir` (a flat repository: `deb [trusted=yes] URL ./`).
pub(crate) fn index(tools: &HostTools, dir: &Path) -> Result<(), LabError> {
    let packages = ftparchive(tools, dir, &["packages", "."])?;
    fs::write(dir.join("Packages"), &packages).map_err(io("cannot write Packages"))?;
    let release = ftparchive(
        tools,
        dir,
        &["-o", "APT::FTPArchive::Release::Origin=kubeboot-lab", "release", "."],
    )?;
    fs::write(dir.join("Release"), &release).map_err(io("cannot write Release"))
}

fn ftparchive(tools: &HostTools, root: &Path, args: &[&str]) -> Result<Vec<u8>, LabError> {
    let out = Command::new(&tools.ftparchive)
        .args(args)
        .current_dir(root)
        .output()
        .map_err(io("cannot run apt-ftparchive"))?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("apt-ftparchive {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out.stdout)
}

/// The VM stand-ins' own rules, run with the host's python3 (the guests' is the same Debian 12 python3.11).
#[cfg(test)]
mod standin_tests {
    use std::process::Command;

    const KUBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/standins/vm/kube.py");

    /// Runs `body` with the kubectl/API server stand-in loaded as `k`; returns what it printed.
    fn python(body: &str) -> String {
        let script = format!(
            "import importlib.machinery, json\nk = importlib.machinery.SourceFileLoader('k', {KUBE:?}).load_module()\n{body}"
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn service(ns: &str, name: &str, annotations: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations:\n{annotations}\
             spec:\n  type: LoadBalancer\n  ports:\n  - port: {port}\n"
        )
    }

    /// Cilium LB-IPAM's sharing rules as the stand-in applies them (the first fault of issue 11): Services in two
    /// namespaces share the one pool address only when both carry the sharing key and name each other's
    /// namespace in sharing-cross-namespace.
    #[test]
    fn lb_ipam_shares_across_namespaces_only_when_both_services_allow_it() {
        let pool = "apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\nmetadata:\n  name: c1\n\
                    spec:\n  blocks:\n  - start: \"10.77.0.200\"\n    stop: \"10.77.0.200\"\n";
        let key = "    lbipam.cilium.io/sharing-key: \"c1\"\n    lbipam.cilium.io/ips: \"10.77.0.200\"\n";
        let ingress = service(
            "kube-system",
            "cilium-ingress",
            &format!("{key}    lbipam.cilium.io/sharing-cross-namespace: \"monitoring\"\n"),
            80,
        );
        let allowed = service(
            "monitoring",
            "sidecar",
            &format!("{key}    lbipam.cilium.io/sharing-cross-namespace: \"kube-system\"\n"),
            10901,
        );
        let not_allowed = service("monitoring", "sidecar", key, 10901);
        let allocate = |sidecar: &str| {
            python(&format!(
                "objects = {{}}\nfor i, doc in enumerate([{pool:?}, {ingress:?}, {sidecar:?}]):\n    \
                 o, _ = k.describe(doc)\n    o['created'] = i\n    objects[k.object_key(o['kind'], o['namespace'], o['name'])] = o\n\
                 k.RUNTIME.allocate(objects)\n\
                 print(json.dumps({{o['name']: o.get('lb_ip') for o in objects.values() if o['kind'] == 'Service'}}, sort_keys=True))\n"
            ))
        };
        assert_eq!(
            allocate(&allowed).trim(),
            r#"{"cilium-ingress": "10.77.0.200", "sidecar": "10.77.0.200"}"#
        );
        assert_eq!(
            allocate(&not_allowed).trim(),
            r#"{"cilium-ingress": "10.77.0.200", "sidecar": null}"#,
            "without sharing-cross-namespace on both, the sidecar must get no address"
        );
    }

    /// `kubectl diff` (the manifest stages' guards) against what the API server holds: nothing differs for the
    /// documents as applied, a changed Secret value or ConfigMap differs, an object never applied differs.
    #[test]
    fn diff_tells_what_differs_from_what_was_applied() {
        let secret = |v: &str| {
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: logging\ndata:\n  password: {v}\n"
            )
        };
        let config = |v: &str| {
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: logging\ndata:\n  a: {v}\n")
        };
        let applied = format!("---\n{}---\n{}", secret("c2VjcmV0LXZhbHVl"), config("one"));
        let diff = |text: &str| {
            python(&format!(
                "objects = {{}}\nfor doc in k.split_documents({applied:?}):\n    o, _ = k.describe(doc)\n    objects[k.object_key(o['kind'], o['namespace'], o['name'])] = o\n\
                 h = k.ApiHandler.__new__(k.ApiHandler)\n\
                 h.state = lambda: {{'objects': objects, 'applied_text': ''}}\n\
                 h.send = lambda status, body: print(status, json.dumps(body))\n\
                 h.diff({text:?})\n"
            ))
        };
        assert_eq!(diff(&applied).trim(), r#"200 {"differ": []}"#);
        assert_eq!(
            diff(&format!("---\n{}---\n{}", secret("b3RoZXI="), config("one"))).trim(),
            r#"200 {"differ": ["Secret/logging/s"]}"#
        );
        assert_eq!(
            diff(&config("two")).trim(),
            r#"200 {"differ": ["ConfigMap/logging/c"]}"#
        );
        assert_eq!(
            diff(&config("one").replace("name: c", "name: new")).trim(),
            r#"200 {"differ": ["ConfigMap/logging/new"]}"#
        );
        assert!(diff("").starts_with("400 "), "no documents is an error, as kubectl's");
    }

    /// A Secret's values never reach the API server's state: only their SHA-256.
    #[test]
    fn a_secret_is_kept_as_hashes() {
        let printed = python(
            "o, values = k.describe('apiVersion: v1\\nkind: Secret\\nmetadata:\\n  name: s\\n  namespace: logging\\n\
             data:\\n  password: c2VjcmV0LXZhbHVl\\n')\n\
             print(values['password'])\nprint(json.dumps(o))\n",
        );
        let mut lines = printed.lines();
        assert_eq!(lines.next(), Some("secret-value"));
        let kept = lines.next().unwrap_or_default();
        assert!(
            !kept.contains("secret-value") && !kept.contains("c2VjcmV0LXZhbHVl"),
            "{kept}"
        );
        assert!(
            kept.contains("31160254d1297393d2ad00e1c0"),
            "the value's SHA-256 is kept: {kept}"
        );
    }
}
