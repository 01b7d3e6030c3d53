//! `kubeboot bundle --out DIR --os rocky-9` collects the RPM packages the plan's commands install
//! (`dnf install NAME`, `"NAME-$v"` at the version the command sets), with their dependencies
//! resolved from the repositories' own metadata (repomd.xml -> primary), against two loopback dnf
//! repositories (BaseOS and AppStream, one gzip and one xz metadata) this test builds from real
//! .rpm files (`rpmbuild`, `createrepo_c`). An interrupted download continues; a package that does
//! not match the repository's sha256 is refused; the bundle's own repository is createrepo_c's;
//! `bundle --check` finds a damaged .rpm (exit 2). Nothing but 127.0.0.1 is asked.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{kubeboot, text};
use common::http::{FileServer, Request};
use common::sha256;

/// A real .rpm built with rpmbuild: `size` pseudo-random bytes in /usr/share/NAME/data, the
/// given `Requires:` and files (an executable `/usr/bin/...` each), no automatic dependencies.
fn rpm(dir: &Path, name: &str, version: &str, requires: &[&str], bins: &[&str], size: usize) -> PathBuf {
    let top = dir.join(format!(".rpmbuild-{name}-{version}"));
    std::fs::create_dir_all(&top).expect("the build folder");
    let payload: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_add(name.len() as u32).wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    let data = top.join("data");
    std::fs::write(&data, payload).expect("the payload");
    let mut spec = format!(
        "Name: {name}\nVersion: {version}\nRelease: 1\nSummary: a test package\nLicense: MIT\nBuildArch: x86_64\nAutoReqProv: no\n"
    );
    for r in requires {
        spec.push_str(&format!("Requires: {r}\n"));
    }
    spec.push_str(&format!(
        "%description\nA test package.\n%install\nmkdir -p %{{buildroot}}/usr/share/{name} %{{buildroot}}/usr/bin\ncp {} %{{buildroot}}/usr/share/{name}/data\n",
        data.display()
    ));
    for b in bins {
        spec.push_str(&format!(
            "printf '#!/bin/sh\\n' > %{{buildroot}}{b}\nchmod 0755 %{{buildroot}}{b}\n"
        ));
    }
    spec.push_str(&format!("%files\n/usr/share/{name}/data\n"));
    for b in bins {
        spec.push_str(&format!("{b}\n"));
    }
    let spec_file = top.join(format!("{name}.spec"));
    std::fs::write(&spec_file, spec).expect("the spec");
    let out = Command::new("rpmbuild")
        .args(["-bb", "--nodeps", "--quiet"])
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .args([
            "--define",
            "_build_id_links none",
            "--define",
            "debug_package %{nil}",
            "--define",
            "__os_install_post %{nil}",
        ])
        .arg(&spec_file)
        .output()
        .expect("rpmbuild runs (Debian's rpm package)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = format!("{name}-{version}-1.x86_64.rpm");
    let dest = dir.join(&file);
    std::fs::rename(top.join("RPMS/x86_64").join(&file), &dest).expect("the built package");
    std::fs::remove_dir_all(&top).expect("clean up");
    dest
}

fn createrepo(dir: &Path, compression: &str) {
    let out = Command::new("createrepo_c")
        .args(["--quiet", "--no-database", "--general-compress-type", compression])
        .arg(dir)
        .output()
        .expect("createrepo_c runs (Debian's createrepo-c package)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The stage the test plans: base packages, and one installed at the version the command picks,
/// as stage 30-kubernetes does (`v='1.34.*'`, `"kubelet-$v"`).
const STAGE: &str = r#"name: os
hosts: all
tasks:
  - name: packages
    run: |
      set -eu
      dnf install -y kb-tool
  - name: pinned
    run: |
      set -eu
      v='1.*'
      dnf install -y --disableexcludes=kubernetes "kb-pinned-$v"
"#;

struct Site {
    dir: tempfile::TempDir,
    server: FileServer,
    inventory: PathBuf,
    books: PathBuf,
}

/// BaseOS (gzip metadata) and AppStream (xz metadata) below one loopback server, and an
/// inventory whose [sources.dnf.distro] names both.
fn site() -> Site {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let base = dir.path().join("mirror/BaseOS");
    let app = dir.path().join("mirror/AppStream");
    std::fs::create_dir_all(base.join("Packages")).expect("BaseOS");
    std::fs::create_dir_all(app.join("Packages")).expect("AppStream");
    let pool = base.join("Packages");
    rpm(
        &pool,
        "kb-tool",
        "1.0",
        &["kb-lib >= 2.0", "/usr/bin/kb-sh"],
        &[],
        20_000,
    );
    rpm(&pool, "kb-lib", "1.0", &[], &[], 1000);
    rpm(&pool, "kb-lib", "2.0", &[], &[], 200_000);
    rpm(&pool, "kb-shell", "1.0", &[], &["/usr/bin/kb-sh"], 1000);
    rpm(&pool, "kb-unrelated", "1.0", &[], &[], 1000);
    createrepo(&base, "gz");
    let pool = app.join("Packages");
    rpm(&pool, "kb-pinned", "1.5", &["kb-lib"], &[], 1000);
    rpm(&pool, "kb-pinned", "2.0", &[], &[], 1000);
    createrepo(&app, "xz");
    let server = FileServer::start("/rocky/", &dir.path().join("mirror"));
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).expect("a playbook folder");
    std::fs::write(books.join("10-os.yaml"), STAGE).expect("a stage");
    let url = |repo: &str| format!("http://127.0.0.1:{}/rocky/{repo}/", server.port);
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "[[nodes]]\nname = \"n1\"\naddress = \"127.0.0.1\"\n\n[sources.dnf.distro]\nurl = \"{} {}\"\n\
             [sources.dnf.kubernetes]\nurl = \"\"\n[sources.dnf.containerd]\nurl = \"\"\n",
            url("BaseOS"),
            url("AppStream")
        ),
    )
    .expect("the inventory");
    Site {
        dir,
        server,
        inventory,
        books,
    }
}

fn bundle_args(site: &Site, out: &Path) -> Vec<String> {
    [
        "-i",
        &site.inventory.display().to_string(),
        "-p",
        &site.books.display().to_string(),
        "bundle",
        "--os",
        "rocky-9",
        "--out",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn rpms_come_with_their_dependencies_into_a_dnf_repository_resumed_and_checked() {
    let site = site();
    let out = site.dir.path().join("bundle");
    let lib = std::fs::read(site.dir.path().join("mirror/BaseOS/Packages/kb-lib-2.0-1.x86_64.rpm")).expect("kb-lib");

    // --list names what the commands install.
    let mut list = bundle_args(&site, &out);
    list.truncate(list.len() - 2);
    list.push("--list".into());
    let r = kubeboot(&list.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(
        text(&r).contains("packages\tdnf/rocky-9\tkb-pinned-1.* kb-tool (with their dependencies)"),
        "{}",
        text(&r)
    );

    // An interrupted earlier run left part of kb-lib 2.0.
    let pool = out.join("dnf/rocky-9/Packages");
    std::fs::create_dir_all(&pool).expect("the package folder");
    let half = lib.len() / 2;
    std::fs::write(pool.join("kb-lib-2.0-1.x86_64.rpm.part"), &lib[..half]).expect("a partial package");

    let args = bundle_args(&site, &out);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = kubeboot(&args);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let seen = site.server.seen();
    let lib_requests: Vec<&Request> = seen
        .iter()
        .filter(|r| r.path.ends_with("kb-lib-2.0-1.x86_64.rpm"))
        .collect();
    assert_eq!(lib_requests.len(), 1, "{seen:?}");
    assert_eq!(
        lib_requests[0].range,
        format!("bytes={half}-"),
        "the partial file was resumed: {seen:?}"
    );
    assert!(
        seen.iter().any(|r| r.path == "/rocky/AppStream/repodata/repomd.xml"),
        "both repositories were read: {seen:?}"
    );

    let mut files: Vec<String> = std::fs::read_dir(&pool)
        .expect("the packages")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "kb-lib-2.0-1.x86_64.rpm",
            "kb-pinned-1.5-1.x86_64.rpm",
            "kb-shell-1.0-1.x86_64.rpm",
            "kb-tool-1.0-1.x86_64.rpm"
        ],
        "the asked packages, the newest kb-lib (>= 2.0), the provider of /usr/bin/kb-sh, kb-pinned 1.*: nothing else"
    );
    assert_eq!(
        std::fs::read(pool.join("kb-lib-2.0-1.x86_64.rpm")).expect("kb-lib"),
        lib
    );

    // The bundle's repository: createrepo_c's repomd.xml naming a primary that lists the four.
    let repodata = out.join("dnf/rocky-9/repodata");
    let repomd = std::fs::read_to_string(repodata.join("repomd.xml")).expect("repomd.xml");
    let primary = repomd
        .split("href=\"repodata/")
        .filter_map(|s| s.split('"').next())
        .find(|f| f.contains("primary.xml"))
        .unwrap_or_else(|| panic!("no primary in {repomd}"));
    let unzipped = Command::new("gzip")
        .arg("-dc")
        .arg(repodata.join(primary))
        .output()
        .expect("gzip runs");
    let primary = String::from_utf8_lossy(&unzipped.stdout);
    assert!(primary.contains("packages=\"4\""), "{primary}");
    assert!(
        primary.contains("<location href=\"Packages/kb-tool-1.0-1.x86_64.rpm\"/>"),
        "{primary}"
    );

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).expect("a manifest")).expect("JSON");
    let items: Vec<&serde_json::Value> = manifest["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["kind"] == "package")
        .collect();
    assert_eq!(items.len(), 4, "{manifest:#}");
    let kb_lib = items
        .iter()
        .find(|i| i["name"] == "kb-lib")
        .expect("kb-lib in the manifest");
    assert_eq!(kb_lib["version"], "2.0-1");
    assert_eq!(kb_lib["path"], "dnf/rocky-9/Packages/kb-lib-2.0-1.x86_64.rpm");
    assert_eq!(kb_lib["sha256"], sha256(&lib).as_str());

    // Again: every package is already there with its sha256; none is downloaded.
    site.server.clear();
    let r = kubeboot(&args);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let paths = site.server.paths();
    assert!(!paths.iter().any(|p| p.ends_with(".rpm")), "{paths:?}");

    // A copied bundle is checked; a damaged .rpm is named, exit 2.
    let r = kubeboot(&["bundle", "--check", &out.display().to_string()]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let tool = pool.join("kb-tool-1.0-1.x86_64.rpm");
    let mut bytes = std::fs::read(&tool).expect("kb-tool");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&tool, bytes).expect("damage it");
    let r = kubeboot(&["bundle", "--check", &out.display().to_string()]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(
        text(&r).contains("DAMAGED dnf/rocky-9/Packages/kb-tool-1.0-1.x86_64.rpm: sha256"),
        "{}",
        text(&r)
    );
}

#[test]
fn an_rpm_that_does_not_match_the_repositorys_sha256_is_refused_and_removed() {
    let site = site();
    // The mirror's file changed after its metadata was written.
    let served = site.dir.path().join("mirror/BaseOS/Packages/kb-shell-1.0-1.x86_64.rpm");
    let mut bytes = std::fs::read(&served).expect("kb-shell");
    bytes[200] ^= 0xff;
    std::fs::write(&served, bytes).expect("corrupt it");
    let out = site.dir.path().join("bundle");
    let args = bundle_args(&site, &out);
    let r = kubeboot(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(
        text(&r).contains("kb-shell: http://127.0.0.1:")
            && text(&r).contains("/rocky/BaseOS/Packages/kb-shell-1.0-1.x86_64.rpm has sha256"),
        "{}",
        text(&r)
    );
    let pool = out.join("dnf/rocky-9/Packages");
    assert!(!pool.join("kb-shell-1.0-1.x86_64.rpm").exists(), "not kept");
    assert!(!pool.join("kb-shell-1.0-1.x86_64.rpm.part").exists(), "not kept");
    assert!(
        !out.join("dnf/rocky-9/repodata").exists(),
        "no repository without all its packages"
    );
}

#[test]
fn a_dependency_no_repository_provides_is_named_and_a_node_of_another_family_noted() {
    let site = site();
    let out = site.dir.path().join("bundle");
    // Only AppStream: kb-pinned needs kb-lib, which is in BaseOS; kb-tool is not there at all.
    let text_inv = std::fs::read_to_string(&site.inventory).expect("the inventory");
    let port = site.server.port;
    std::fs::write(
        &site.inventory,
        text_inv.replace(&format!("http://127.0.0.1:{port}/rocky/BaseOS/ "), "")
            + "\n[[nodes]]\nname = \"n2\"\naddress = \"127.0.0.2\"\nvars = { os_id = \"ubuntu\" }\n",
    )
    .expect("the inventory");
    let args = bundle_args(&site, &out);
    let r = kubeboot(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(
        text(&r).contains("no package kb-tool in the repositories"),
        "{}",
        text(&r)
    );
    assert!(
        text(&r).contains("note: node n2 is a debian-family node") && text(&r).contains("--os debian-12"),
        "{}",
        text(&r)
    );
    let paths = site.server.paths();
    assert!(paths.iter().all(|p| p.starts_with("/rocky/AppStream/")), "{paths:?}");
}
