//! `kubeboot bundle --out DIR --os debian-12` collects the Debian packages the plan's commands
//! install, with their dependencies, by running apt itself (a private configuration, an empty dpkg
//! status) against a loopback apt repository this test builds from real .debs (`dpkg-deb`,
//! `apt-ftparchive`) and serves over HTTP with byte ranges. An interrupted package download is
//! resumed by apt; the result is a flat repository with its own index; a second run downloads no
//! package again. Nothing but 127.0.0.1 is asked (every [sources.apt] repository points here).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{kubeboot, text};
use common::http::{FileServer, Request};
use common::sha256;

/// A real .deb built with dpkg-deb: one file of `size` pseudo-random bytes.
fn deb(dir: &Path, name: &str, depends: Option<&str>, size: usize) -> PathBuf {
    deb_at(dir, name, "1.0", depends, size)
}

/// The same at `version`.
fn deb_at(dir: &Path, name: &str, version: &str, depends: Option<&str>, size: usize) -> PathBuf {
    let root = dir.join(format!("build-{name}-{version}"));
    std::fs::create_dir_all(root.join("DEBIAN")).expect("DEBIAN");
    std::fs::create_dir_all(root.join(format!("usr/share/{name}"))).expect("a folder");
    let payload: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_add(name.len() as u32).wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    std::fs::write(root.join(format!("usr/share/{name}/data")), payload).expect("the payload");
    let mut control = format!(
        "Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: kubeboot tests <tests@localhost>\nDescription: a test package\n"
    );
    if let Some(d) = depends {
        control.push_str(&format!("Depends: {d}\n"));
    }
    std::fs::write(root.join("DEBIAN/control"), control).expect("control");
    let out = dir.join(format!("{name}_{version}_amd64.deb"));
    let st = Command::new("dpkg-deb")
        .args(["--build", "-Znone", "--root-owner-group"])
        .arg(&root)
        .arg(&out)
        .output()
        .expect("dpkg-deb runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    std::fs::remove_dir_all(&root).expect("clean up");
    out
}

fn ftparchive(dir: &Path, args: &[&str], file: &str) {
    let out = Command::new("apt-ftparchive")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("apt-ftparchive runs (apt-utils)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join(file), out.stdout).expect("the index");
}

#[test]
fn packages_the_commands_install_come_with_their_dependencies_into_a_flat_repository() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("the repository folder");
    deb(&repo, "kb-tool", Some("kb-lib (>= 1.0)"), 20_000);
    let lib = deb(&repo, "kb-lib", None, 200_000);
    deb(&repo, "kb-unrelated", None, 1000);
    ftparchive(&repo, &["packages", "."], "Packages");
    ftparchive(&repo, &["release", "."], "Release");
    let lib_bytes = std::fs::read(&lib).expect("the .deb");
    let served = FileServer::start("/debian/", &repo);
    let port = served.port;

    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).expect("a playbook folder");
    std::fs::write(
        books.join("10-os.yaml"),
        "name: os\nhosts: all\ntasks:\n  - name: packages\n    run: |\n      set -eu\n      apt-get -o DPkg::Lock::Timeout=300 install -y kb-tool\n",
    )
    .expect("a stage");
    let url = format!("http://127.0.0.1:{port}/debian/");
    let inv = dir.path().join("inventory.toml");
    let mut text_inv = "[[nodes]]\nname = \"n1\"\naddress = \"127.0.0.1\"\n".to_string();
    for name in ["distro", "kubernetes", "containerd"] {
        text_inv.push_str(&format!(
            "\n[sources.apt.{name}]\nurl = \"{url}\"\nsuite = \"/\"\ncomponents = \"\"\nkey = \"\"\n"
        ));
    }
    std::fs::write(&inv, text_inv).expect("the inventory");
    let out = dir.path().join("bundle");

    // An interrupted earlier run left part of kb-lib in apt's partial folder.
    let partial = out.join(".apt/apt_debian-12/archives/partial");
    std::fs::create_dir_all(&partial).expect("the partial folder");
    std::fs::write(partial.join("kb-lib_1.0_amd64.deb"), &lib_bytes[..50_000]).expect("a partial package");

    let args: Vec<String> = [
        "-i",
        &inv.display().to_string(),
        "-p",
        &books.display().to_string(),
        "bundle",
        "--os",
        "debian-12",
        "--out",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = kubeboot(&args);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    {
        let seen = served.seen();
        let lib_requests: Vec<&Request> = seen
            .iter()
            .filter(|r| r.path.ends_with("kb-lib_1.0_amd64.deb"))
            .collect();
        assert_eq!(lib_requests.len(), 1, "{seen:?}");
        assert_eq!(
            lib_requests[0].range, "bytes=50000-",
            "apt resumed the partial file: {seen:?}"
        );
    }

    let flat = out.join("apt/debian-12");
    assert_eq!(
        std::fs::read(flat.join("kb-lib_1.0_amd64.deb")).expect("kb-lib"),
        lib_bytes
    );
    assert!(flat.join("kb-tool_1.0_amd64.deb").is_file(), "the package itself");
    assert!(!flat.join("kb-unrelated_1.0_amd64.deb").exists(), "only what is needed");
    let packages = std::fs::read_to_string(flat.join("Packages")).expect("the index");
    assert!(
        packages.contains("Package: kb-tool") && packages.contains("Package: kb-lib"),
        "{packages}"
    );
    assert!(flat.join("Release").is_file());

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).expect("a manifest")).expect("JSON");
    let items: Vec<&serde_json::Value> = manifest["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["kind"] == "package")
        .collect();
    assert_eq!(items.len(), 2, "{manifest:#}");
    assert_eq!(items[0]["name"], "kb-lib");
    assert_eq!(items[0]["version"], "1.0");
    assert_eq!(items[0]["path"], "apt/debian-12/kb-lib_1.0_amd64.deb");
    assert_eq!(items[0]["sha256"], sha256(&lib_bytes).as_str());

    // Again: apt finds every package in its cache (from the bundle) and downloads none.
    served.clear();
    let r = kubeboot(&args);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let seen = served.paths();
    assert!(!seen.iter().any(|p| p.ends_with(".deb")), "{seen:?}");

    // And the bundle checks out.
    let r = kubeboot(&["bundle", "--check", &out.display().to_string()]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
}

/// The kubernetes stage's install, as stage 30-kubernetes renders it: the version is picked on the node
/// from `apt-cache madison kubeadm`, the first that starts with the pinned patch (or the minor).
const KUBERNETES_STAGE: &str = r#"name: kubernetes
hosts: all
tasks:
  - name: kubelet kubeadm kubectl (apt)
    run: |
      set -eu
      ver="$(apt-cache madison kubeadm | awk -v want='{{ kubernetes_package_version ~ "-" if kubernetes_package_version else kubernetes_version ~ "." }}' 'index($3, want) == 1 { print $3; exit }')"
      apt-get -o DPkg::Lock::Timeout=300 install -y --allow-change-held-packages --allow-downgrades \
        "kubelet=$ver" "kubeadm=$ver" "kubectl=$ver"
"#;

#[test]
fn the_pinned_kubernetes_package_version_is_collected_not_the_newest_of_the_minor() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("the repository folder");
    // A dependency without a version of its own: apt takes its newest, on the node as here.
    deb_at(&repo, "cri-tools", "1.34.0-1.1", None, 500);
    for version in ["1.34.1-1.1", "1.34.2-1.1", "1.35.0-1.1"] {
        for name in ["kubelet", "kubeadm", "kubectl"] {
            deb_at(&repo, name, version, Some("cri-tools"), 2000);
        }
    }
    ftparchive(&repo, &["packages", "."], "Packages");
    ftparchive(&repo, &["release", "."], "Release");
    let port = FileServer::start("/debian/", &repo).port;
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).expect("a playbook folder");
    std::fs::write(books.join("30-kubernetes.yaml"), KUBERNETES_STAGE).expect("a stage");
    let url = format!("http://127.0.0.1:{port}/debian/");
    let sources: String = ["distro", "kubernetes", "containerd"]
        .iter()
        .map(|name| format!("\n[sources.apt.{name}]\nurl = \"{url}\"\nsuite = \"/\"\ncomponents = \"\"\nkey = \"\"\n"))
        .collect();
    let run = |pin: &str, out: &Path| {
        let inv = dir.path().join(format!("inventory-{pin}.toml"));
        std::fs::write(
            &inv,
            format!(
                "[vars]\nkubernetes_version = \"1.34\"\nkubernetes_package_version = \"{pin}\"\n\n[[nodes]]\nname = \"n1\"\naddress = \"127.0.0.1\"\n{sources}"
            ),
        )
        .expect("the inventory");
        let (inv, books, out) = (
            inv.display().to_string(),
            books.display().to_string(),
            out.display().to_string(),
        );
        let list = kubeboot(&["-i", &inv, "-p", &books, "bundle", "--os", "debian-12", "--list"]);
        let r = kubeboot(&["-i", &inv, "-p", &books, "bundle", "--os", "debian-12", "--out", &out]);
        (text(&list), r)
    };
    let names = |out: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(out.join("apt/debian-12"))
            .expect("the flat repository")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".deb"))
            .collect();
        names.sort();
        names
    };

    // Pinned to 1.34.1: that patch, though 1.34.2 is newer in the same repository.
    let pinned = dir.path().join("pinned");
    let (list, r) = run("1.34.1", &pinned);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(
        list.contains("kubeadm kubectl kubelet at the first kubeadm version that starts with 1.34.1-"),
        "{list}"
    );
    assert_eq!(
        names(&pinned),
        [
            "cri-tools_1.34.0-1.1_amd64.deb",
            "kubeadm_1.34.1-1.1_amd64.deb",
            "kubectl_1.34.1-1.1_amd64.deb",
            "kubelet_1.34.1-1.1_amd64.deb",
        ]
    );

    // Not pinned: the newest of the minor (never the next minor's), as the node picks it.
    let newest = dir.path().join("newest");
    let (_, r) = run("", &newest);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let got = names(&newest);
    assert!(got.contains(&"kubeadm_1.34.2-1.1_amd64.deb".to_string()), "{got:?}");
    assert!(
        !got.iter().any(|n| n.contains("1.34.1") || n.contains("1.35.")),
        "{got:?}"
    );

    // A patch the repository does not have: named, exit 1.
    let missing = dir.path().join("missing");
    let (_, r) = run("1.34.9", &missing);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(
        text(&r).contains("no kubeadm version starting with 1.34.9-"),
        "{}",
        text(&r)
    );
}
