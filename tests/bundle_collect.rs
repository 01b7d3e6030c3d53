//! `kubeboot bundle --out DIR` and `--check DIR` against a loopback release-download site (a small
//! HTTP server in this test, with byte ranges): files checked by sha256, an interrupted download
//! resumed, a second run downloading nothing, a damaged copy named with exit 2. A fake release
//! archive stands in for helm's (the real one cannot be had here).

mod common;

use std::path::{Path, PathBuf};

use common::cli::{kubeboot, text};
use common::http::FileServer;
use common::sha256;

const FILE: &str = "helm-v3.19.0-linux-amd64.tar.gz";

/// A release-download site on 127.0.0.1: one file, GET with optional `Range: bytes=N-`.
struct Site {
    port: u16,
    server: FileServer,
    _dir: tempfile::TempDir,
}

impl Site {
    /// The Range header of every request ("" when none).
    fn ranges(&self) -> Vec<String> {
        self.server.seen().into_iter().map(|r| r.range).collect()
    }
}

fn start_site(body: Vec<u8>) -> Site {
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(dir.path().join(FILE), body).expect("the site's file");
    let server = FileServer::start("/helm/", dir.path());
    Site {
        port: server.port,
        server,
        _dir: dir,
    }
}

fn fake_archive() -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A playbook folder with one stage that copies nothing: no images, only the release binary.
fn playbooks(dir: &Path) -> String {
    let books = dir.join("playbooks");
    std::fs::create_dir_all(&books).expect("a playbook folder");
    std::fs::write(
        books.join("10-nothing.yaml"),
        "name: nothing\nhosts: all\ntasks:\n  - name: nothing\n    run: \"true\"\n",
    )
    .expect("a stage");
    books.display().to_string()
}

fn inventory(dir: &Path, site: &Site, sha: &str) -> PathBuf {
    let path = dir.join("inventory.toml");
    let text = format!(
        "[[nodes]]\nname = \"n1\"\naddress = \"127.0.0.1\"\n\n[sources.releases.helm]\nurl = \"http://127.0.0.1:{}/helm/{FILE}\"\nsha256 = \"{sha}\"\n",
        site.port
    );
    std::fs::write(&path, text).expect("write the inventory");
    path
}

#[test]
fn a_bundle_holds_checked_files_resumes_and_is_verified_after_copying() {
    let body = fake_archive();
    let site = start_site(body.clone());
    let dir = tempfile::tempdir().expect("a temporary folder");
    let inv = inventory(dir.path(), &site, &sha256(&body));
    let out = dir.path().join("bundle");
    let inv_s = inv.display().to_string();
    let out_s = out.display().to_string();

    // An interrupted earlier run left the first third of the file.
    let part = out.join(format!("releases/helm/{FILE}.part"));
    std::fs::create_dir_all(part.parent().expect("a folder")).expect("the folder");
    std::fs::write(&part, &body[..100_000]).expect("a partial download");

    let books = playbooks(dir.path());
    let r = kubeboot(&["-i", &inv_s, "-p", &books, "bundle", "--out", &out_s]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert_eq!(site.ranges().as_slice(), ["bytes=100000-"], "resumed where it stopped");
    let got = std::fs::read(out.join(format!("releases/helm/{FILE}"))).expect("the file is in the bundle");
    assert_eq!(got, body);
    assert!(!part.exists(), "no partial file left");

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).expect("a manifest")).expect("JSON");
    let item = &manifest["items"][0];
    assert_eq!(item["name"], "helm");
    assert_eq!(item["version"], "3.19.0");
    assert_eq!(item["sha256"], sha256(&body).as_str());
    assert_eq!(item["size"], body.len() as u64);
    assert_eq!(
        item["source"],
        format!("http://127.0.0.1:{}/helm/{FILE}", site.port).as_str()
    );

    // Again: nothing is downloaded.
    let r = kubeboot(&["-i", &inv_s, "-p", &books, "bundle", "--out", &out_s]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert_eq!(site.ranges().len(), 1, "a finished file is not fetched again");
    assert!(text(&r).contains("present helm"), "{}", text(&r));

    // A copy checks out; a damaged copy is named, exit 2.
    let r = kubeboot(&["bundle", "--check", &out_s]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let file = out.join(format!("releases/helm/{FILE}"));
    let mut damaged = std::fs::read(&file).expect("read");
    damaged[1234] ^= 0xff;
    std::fs::write(&file, damaged).expect("damage it");
    let r = kubeboot(&["bundle", "--check", &out_s]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(
        text(&r).contains(&format!("DAMAGED releases/helm/{FILE}: sha256")),
        "{}",
        text(&r)
    );
}

#[test]
fn a_download_that_does_not_match_its_sha256_is_refused_and_removed() {
    let body = fake_archive();
    let site = start_site(body);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let inv = inventory(dir.path(), &site, &"0".repeat(64));
    let out = dir.path().join("bundle");
    let r = kubeboot(&[
        "-i",
        &inv.display().to_string(),
        "-p",
        &playbooks(dir.path()),
        "bundle",
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(
        text(&r).contains("helm:") && text(&r).contains("has sha256"),
        "{}",
        text(&r)
    );
    assert!(!out.join(format!("releases/helm/{FILE}")).exists());
    assert!(!out.join(format!("releases/helm/{FILE}.part")).exists());
}

#[test]
fn an_inventory_that_already_names_a_bundle_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let inv = dir.path().join("inventory.toml");
    std::fs::write(
        &inv,
        format!(
            "[[nodes]]\nname = \"n1\"\naddress = \"127.0.0.1\"\n\n[sources]\nbundle = \"{}\"\n",
            dir.path().display()
        ),
    )
    .expect("write the inventory");
    let out = dir.path().join("bundle");
    let r = kubeboot(&[
        "-i",
        &inv.display().to_string(),
        "-p",
        &playbooks(dir.path()),
        "bundle",
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(
        text(&r).contains("inventory.toml:5:1") && text(&r).contains("[sources] bundle is set"),
        "{}",
        text(&r)
    );
    assert!(!out.exists(), "nothing was downloaded");
}
