//! `kubeboot bundle --out DIR` collects the container images the plan's rendered files name, from
//! a real OCI registry on loopback: Debian's `docker-registry` (the distribution registry), with
//! two tiny images this test builds and pushes itself. The inventory mirrors `quay.io` to it, so
//! nothing leaves 127.0.0.1. An interrupted layer download resumes; a second run pulls no blob;
//! each image is an OCI image layout archive `ctr images import` names by its annotation. Charts are
//! rendered by a stand-in helm (tests/fixtures/helm-standin.sh, packed as the bundle's helm release)
//! that records the arguments kustomize's would get.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{kubeboot, text};
use common::http::FileServer;
use common::sha256;

const REGISTRY: &str = "/usr/bin/docker-registry";

struct Registry {
    port: u16,
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &Path) -> Registry {
    start_registry_with(dir, "")
}

/// The same with more of the registry's configuration (`auth:`); the storage is the folder's, so
/// what an earlier registry of this folder held is served again.
fn start_registry_with(dir: &Path, extra: &str) -> Registry {
    assert!(
        Path::new(REGISTRY).exists(),
        "{REGISTRY} is missing: apt-get install docker-registry (.ci/run installs it)"
    );
    let port = common::free_port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
            dir.join("storage").display()
        ),
    )
    .expect("the registry's config");
    let child = Command::new(REGISTRY)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry starts");
    let registry = Registry { port, child };
    let deadline = Instant::now() + Duration::from_secs(20);
    // 401 from a registry that asks for credentials is an answer too.
    while !matches!(http(port, "GET", "/v2/", &[], b"").map(|r| r.0), Some(200 | 401)) {
        assert!(
            Instant::now() < deadline,
            "the registry does not answer on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    registry
}

/// One HTTP/1.1 request to 127.0.0.1:port: (status, headers in lower case, body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).ok()?;
    let split = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&all[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head, all[split + 4..].to_vec()))
}

/// A tiny image (one layer of `size` pseudo-random bytes) pushed as `repo:tag`; its manifest's bytes.
fn push_image(port: u16, repo: &str, tag: &str, seed: u32, size: usize) -> (Vec<u8>, Vec<u8>) {
    let layer: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
        sha256(&layer)
    )
    .into_bytes();
    for blob in [&layer, &config] {
        upload(port, repo, blob);
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}}]}}"#,
        sha256(&config),
        config.len(),
        sha256(&layer),
        layer.len()
    )
    .into_bytes();
    let (status, head, body) = http(
        port,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
        &manifest,
    )
    .expect("the manifest is pushed");
    assert_eq!(status, 201, "{head}\n{}", String::from_utf8_lossy(&body));
    (layer, manifest)
}

/// A monolithic blob upload (POST, then PUT with the digest), as the distribution spec describes.
fn upload(port: u16, repo: &str, bytes: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let req = format!(
        "POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut all = String::new();
    s.read_to_string(&mut all).expect("read");
    // The Location header keeps its case (its upload state is case-sensitive).
    let location = all
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no Location in {all}"));
    let path = &location[location.find("/v2/").expect("a /v2/ path")..];
    let sep = if path.contains('?') { '&' } else { '?' };
    let put = format!("{path}{sep}digest=sha256:{}", sha256(bytes));
    let (status, head, _) = http(
        port,
        "PUT",
        &put,
        &[("content-type", "application/octet-stream")],
        bytes,
    )
    .expect("the blob is pushed");
    assert_eq!(status, 201, "{head}");
}

/// A playbook whose rendered files name the images: a manifest's `image:` and an image a container
/// is given in its environment.
fn playbooks(dir: &Path) -> PathBuf {
    let books = dir.join("playbooks");
    std::fs::create_dir_all(&books).expect("a playbook folder");
    std::fs::write(
        books.join("10-app.yaml"),
        r#"name: app
hosts: all
tasks:
  - name: manifests
    copy:
      content: |
        apiVersion: apps/v1
        kind: Deployment
        spec:
          template:
            spec:
              containers:
                - name: tiny
                  image: "{{ tiny_image }}"
      dest: /etc/app/deploy.yaml
      template: true
  - name: job
    copy:
      content: |
        apiVersion: batch/v1
        kind: Job
        spec:
          template:
            spec:
              containers:
                - name: runner
                  image: "{{ tiny_image }}"
                  env:
                    - name: SIDECAR_IMAGE
                      value: quay.io/kubeboot-test/tiny:2
      dest: /etc/app/job.yaml
"#,
    )
    .expect("a stage");
    books
}

fn inventory(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("inventory.toml");
    let text = format!(
        "[vars]\ntiny_image = \"quay.io/kubeboot-test/tiny:1\"\n\n[[nodes]]\nname = \"n1\"\naddress = \"127.0.0.1\"\n\n[sources.registries.\"quay.io\"]\nmirror = \"http://127.0.0.1:{port}\"\n"
    );
    std::fs::write(&path, text).expect("write the inventory");
    path
}

#[test]
fn images_named_by_the_rendered_files_are_pulled_into_oci_archives_and_resume() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let registry = start_registry(dir.path());
    let (layer1, manifest1) = push_image(registry.port, "kubeboot-test/tiny", "1", 1, 300_000);
    push_image(registry.port, "kubeboot-test/tiny", "2", 2, 40_000);
    let inv = inventory(dir.path(), registry.port).display().to_string();
    let books = playbooks(dir.path()).display().to_string();
    let out = dir.path().join("bundle");
    let out_s = out.display().to_string();

    // An interrupted earlier run left the first part of image 1's layer.
    let blobs = out.join("images/.blobs");
    std::fs::create_dir_all(&blobs).expect("the blob folder");
    std::fs::write(blobs.join(format!("{}.part", sha256(&layer1))), &layer1[..100_000]).expect("a partial blob");

    let r = kubeboot(&["-i", &inv, "-p", &books, "bundle", "--out", &out_s]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(
        text(&r).contains("resuming quay.io/kubeboot-test/tiny:1 at byte 100000"),
        "{}",
        text(&r)
    );
    assert!(!blobs.exists(), "the blob cache is gone once every archive is written");

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).expect("a manifest")).expect("JSON");
    let items = manifest["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{manifest:#}");
    let one = &items[0];
    assert_eq!(one["kind"], "image");
    assert_eq!(one["name"], "quay.io/kubeboot-test/tiny:1");
    assert_eq!(one["version"], "1");
    assert_eq!(one["path"], "images/quay.io_kubeboot-test_tiny_1.tar");
    assert_eq!(
        one["source"],
        format!("http://127.0.0.1:{}/kubeboot-test/tiny:1", registry.port).as_str()
    );
    assert_eq!(one["digest"], format!("sha256:{}", sha256(&manifest1)).as_str());
    let archive = out.join("images/quay.io_kubeboot-test_tiny_1.tar");
    let bytes = std::fs::read(&archive).expect("the archive");
    assert_eq!(one["sha256"], sha256(&bytes).as_str());
    assert_eq!(one["size"], bytes.len() as u64);
    assert_eq!(items[1]["name"], "quay.io/kubeboot-test/tiny:2");
    assert_eq!(
        std::fs::read_to_string(out.join("images/index.txt")).expect("the image list"),
        "quay.io/kubeboot-test/tiny:1\tquay.io_kubeboot-test_tiny_1.tar\nquay.io/kubeboot-test/tiny:2\tquay.io_kubeboot-test_tiny_2.tar\n"
    );

    // The archive is an OCI image layout naming the image as containerd does.
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).expect("a folder");
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .expect("tar runs");
    assert!(st.success());
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(unpacked.join("index.json")).expect("index.json")).expect("JSON");
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        "quay.io/kubeboot-test/tiny:1"
    );
    assert_eq!(
        index["manifests"][0]["digest"],
        format!("sha256:{}", sha256(&manifest1)).as_str()
    );
    assert!(unpacked.join("oci-layout").is_file());
    assert_eq!(
        std::fs::read(unpacked.join(format!("blobs/sha256/{}", sha256(&layer1)))).expect("the layer"),
        layer1
    );
    assert_eq!(
        std::fs::read(unpacked.join(format!("blobs/sha256/{}", sha256(&manifest1)))).expect("the manifest"),
        manifest1
    );

    // Again: both archives are kept as they are (same manifest digest, same sha256), no blob pulled.
    let r = kubeboot(&["-i", &inv, "-p", &books, "bundle", "--out", &out_s]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(
        text(&r).contains("present quay.io/kubeboot-test/tiny:1"),
        "{}",
        text(&r)
    );
    assert!(
        text(&r).contains("present quay.io/kubeboot-test/tiny:2"),
        "{}",
        text(&r)
    );
    assert!(!text(&r).contains("ok quay.io"), "{}", text(&r));

    // A copy checks out; a damaged archive is named, exit 2.
    let r = kubeboot(&["bundle", "--check", &out_s]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let mut damaged = bytes.clone();
    damaged[bytes.len() / 2] ^= 0xff;
    std::fs::write(&archive, damaged).expect("damage it");
    let r = kubeboot(&["bundle", "--check", &out_s]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert!(
        text(&r).contains("DAMAGED images/quay.io_kubeboot-test_tiny_1.tar: sha256"),
        "{}",
        text(&r)
    );
}

#[test]
fn an_image_the_registry_does_not_have_is_named_and_the_others_are_still_collected() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let registry = start_registry(dir.path());
    // Only tag 2 exists; tag 1 (the manifest's) does not.
    push_image(registry.port, "kubeboot-test/tiny", "2", 2, 1000);
    let inv = inventory(dir.path(), registry.port).display().to_string();
    let books = playbooks(dir.path()).display().to_string();
    let out = dir.path().join("bundle");
    let r = kubeboot(&["-i", &inv, "-p", &books, "bundle", "--out", &out.display().to_string()]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(
        text(&r).contains("quay.io/kubeboot-test/tiny:1: cannot download"),
        "{}",
        text(&r)
    );
    assert!(
        out.join("images/quay.io_kubeboot-test_tiny_2.tar").is_file(),
        "{}",
        text(&r)
    );
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `helm-v3.19.0-linux-amd64.tar.gz` as get.helm.sh lays it out (`linux-amd64/helm`), with the
/// stand-in helm of tests/fixtures in it; written into `repo`. Its sha256.
fn helm_release(dir: &Path, repo: &Path) -> String {
    let tree = dir.join("helm-release/linux-amd64");
    std::fs::create_dir_all(&tree).expect("a folder");
    std::fs::copy(fixtures().join("helm-standin.sh"), tree.join("helm")).expect("the stand-in helm");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(repo.join("helm-v3.19.0-linux-amd64.tar.gz"))
        .arg("-C")
        .arg(dir.join("helm-release"))
        .arg("linux-amd64")
        .status()
        .expect("tar runs");
    assert!(st.success());
    sha256(&std::fs::read(repo.join("helm-v3.19.0-linux-amd64.tar.gz")).expect("the release"))
}

const CHART_STAGE: &str = r#"name: chart
hosts: all
tasks:
  - name: kustomization
    copy:
      content: |
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        helmCharts:
          - name: tiny
            repo: "{{ sources.charts['tiny'].repo }}"
            version: 0.1.0
            releaseName: tiny
            namespace: apps
            valuesFile: values.yaml
            additionalValuesFiles:
              - more/values.yaml
            apiVersions:
              - monitoring.coreos.com/v1
            kubeVersion: "1.34.1"
            includeCRDs: true
            skipTests: true
            skipHooks: true
      dest: /etc/app/kustomization.yaml
      template: true
  - name: values
    copy:
      content: |
        extraEnabled: false
        # Not read by the chart: a values scan would have taken it for an image.
        unused:
          image:
            repository: quay.io/kubeboot-test/unused
            tag: "1"
      dest: /etc/app/values.yaml
  - name: more values
    copy:
      content: |
        helper: kubeboot-test/helper:5
      dest: /etc/app/more/values.yaml
"#;

#[test]
fn charts_come_from_their_index_and_their_images_from_helm_template_as_kustomize_runs_it() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let registry = start_registry(dir.path());
    // What the stand-in renders with the site's values: the operator (the chart's appVersion as its tag),
    // the reloader it is given as a flag, the helper of its environment (Docker Hub, from the site's
    // additional values file). Not the extra component the site turns off, nor `unused`.
    push_image(registry.port, "kubeboot-test/tiny", "7", 3, 5000);
    push_image(registry.port, "kubeboot-test/reloader", "4", 4, 3000);
    push_image(registry.port, "kubeboot-test/helper", "5", 5, 3000);

    // A chart repository the way `helm repo index` leaves one: index.yaml and the archive.
    let src = dir.path().join("chart-src/tiny");
    std::fs::create_dir_all(src.join("files")).expect("a chart folder");
    let st = Command::new("cp")
        .arg("-r")
        .arg(fixtures().join("charts/tiny"))
        .arg(dir.path().join("chart-src"))
        .status()
        .expect("cp runs");
    assert!(st.success());
    let filler: Vec<u8> = (0..60_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(src.join("files/filler.bin"), filler).expect("a filler file");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("the repository folder");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(repo.join("tiny-0.1.0.tgz"))
        .arg("-C")
        .arg(dir.path().join("chart-src"))
        .arg("tiny")
        .status()
        .expect("tar runs");
    assert!(st.success());
    let archive = std::fs::read(repo.join("tiny-0.1.0.tgz")).expect("the archive");
    std::fs::write(
        repo.join("index.yaml"),
        format!(
            "apiVersion: v1\nentries:\n  tiny:\n    - apiVersion: v2\n      name: tiny\n      version: 0.1.0\n      appVersion: \"7\"\n      digest: {}\n      urls:\n        - tiny-0.1.0.tgz\ngenerated: \"2026-01-01T00:00:00Z\"\n",
            sha256(&archive)
        ),
    )
    .expect("index.yaml");
    let helm_sha = helm_release(dir.path(), &repo);
    let charts = FileServer::start("/charts/", &repo);
    let charts_port = charts.port;

    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).expect("a playbook folder");
    std::fs::write(books.join("10-chart.yaml"), CHART_STAGE).expect("a stage");
    let inv = dir.path().join("inventory.toml");
    std::fs::write(
        &inv,
        format!(
            "[[nodes]]\nname = \"n1\"\naddress = \"127.0.0.1\"\n\n[sources.charts]\ntiny = {{ repo = \"http://127.0.0.1:{charts_port}/charts\" }}\n\n\
             [sources.releases.helm]\nurl = \"http://127.0.0.1:{charts_port}/charts/helm-v3.19.0-linux-amd64.tar.gz\"\nsha256 = \"{helm_sha}\"\n\n\
             [sources.registries.\"quay.io\"]\nmirror = \"http://127.0.0.1:{port}\"\n\n[sources.registries.\"docker.io\"]\nmirror = \"http://127.0.0.1:{port}\"\n",
            port = registry.port
        ),
    )
    .expect("the inventory");
    let out = dir.path().join("bundle");
    // An interrupted earlier run left the first part of the archive.
    std::fs::create_dir_all(out.join("charts")).expect("the charts folder");
    std::fs::write(out.join("charts/tiny-0.1.0.tgz.part"), &archive[..1000]).expect("a partial archive");
    let log = dir.path().join("helm.log");

    let args = [
        "-i",
        &inv.display().to_string(),
        "-p",
        &books.display().to_string(),
        "bundle",
        "--out",
        &out.display().to_string(),
    ]
    .map(|s| s.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_kubeboot"))
            .args(&args)
            .env("KUBEBOOT_HELM_LOG", &log)
            .output()
            .expect("kubeboot runs")
    };
    let r = run();
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(text(&r).contains("resuming tiny at byte 1000"), "{}", text(&r));
    assert_eq!(
        std::fs::read(out.join("charts/tiny-0.1.0.tgz")).expect("the chart"),
        archive
    );

    // helm was asked exactly what kustomize v5.8.1 asks it on the node (HelmChartInflationGenerator:
    // `version --short`, then AsHelmArgs with the chart at <chartHome>/<name>-<version>/<name> and the
    // values file copied to <tmp>/<name>-kustomize-values.yaml), with kustomize's HELM_* folders.
    let work = out.join(".helm");
    let render = work.join("render/tiny-0.1.0-1");
    let home = render.join("helm").display().to_string();
    assert_eq!(
        std::fs::read_to_string(&log).expect("the stand-in's log"),
        format!(
            "version --short\n\
             template tiny {chart} --namespace apps -f {values} -f {more} --api-versions monitoring.coreos.com/v1 --kube-version 1.34.1 --include-crds --skip-tests --no-hooks\n\
             env HELM_CONFIG_HOME={home} HELM_CACHE_HOME={home}/.cache HELM_DATA_HOME={home}/.data\n",
            chart = work.join("charts/tiny-0.1.0/tiny").display(),
            values = render.join("tmp/tiny-kustomize-values.yaml").display(),
            more = render.join("root/more/values.yaml").display(),
        )
    );
    assert_eq!(
        std::fs::read_to_string(render.join("tmp/tiny-kustomize-values.yaml")).expect("the values kustomize passes"),
        "extraEnabled: false\n# Not read by the chart: a values scan would have taken it for an image.\nunused:\n  image:\n    repository: quay.io/kubeboot-test/unused\n    tag: \"1\"\n"
    );
    assert!(
        std::fs::read_to_string(render.join("rendered.yaml"))
            .expect("helm's output, kept")
            .contains("name: tiny-operator")
    );

    let index: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(out.join("charts/index.yaml")).expect("the bundle's own chart index"),
    )
    .expect("YAML");
    assert_eq!(index["entries"]["tiny"][0]["version"], "0.1.0");
    assert_eq!(index["entries"]["tiny"][0]["urls"][0], "tiny-0.1.0.tgz");
    assert_eq!(index["entries"]["tiny"][0]["digest"], sha256(&archive).as_str());

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).expect("a manifest")).expect("JSON");
    let items = manifest["items"].as_array().expect("items");
    let chart = items.iter().find(|i| i["kind"] == "chart").expect("the chart's entry");
    assert_eq!(chart["name"], "tiny");
    assert_eq!(chart["version"], "0.1.0");
    assert_eq!(chart["path"], "charts/tiny-0.1.0.tgz");
    assert_eq!(chart["sha256"], sha256(&archive).as_str());
    assert_eq!(
        chart["source"],
        format!("http://127.0.0.1:{charts_port}/charts/tiny-0.1.0.tgz").as_str()
    );
    // The images of the rendered objects, normalised, each once; nothing the values only mention.
    assert_eq!(
        std::fs::read_to_string(out.join("images/index.txt")).expect("the image list"),
        "docker.io/kubeboot-test/helper:5\tdocker.io_kubeboot-test_helper_5.tar\n\
         quay.io/kubeboot-test/reloader:4\tquay.io_kubeboot-test_reloader_4.tar\n\
         quay.io/kubeboot-test/tiny:7\tquay.io_kubeboot-test_tiny_7.tar\n"
    );
    assert!(out.join("images/quay.io_kubeboot-test_tiny_7.tar").is_file());

    // A chart archive whose bytes are not the index's digest is refused and removed.
    let mut damaged = archive.clone();
    damaged[500] ^= 0xff;
    std::fs::remove_file(out.join("charts/tiny-0.1.0.tgz")).expect("remove the chart");
    std::fs::write(dir.path().join("repo/tiny-0.1.0.tgz"), damaged).expect("damage the served chart");
    let r = run();
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(
        text(&r).contains("tiny:") && text(&r).contains("has sha256"),
        "{}",
        text(&r)
    );
    assert!(!out.join("charts/tiny-0.1.0.tgz").exists());
}

/// The fixture chart packed as `helm package` would (`tiny/...` in a .tgz, with a filler so that a
/// resume has bytes to skip); its bytes.
fn pack_chart(dir: &Path) -> Vec<u8> {
    let src = dir.join("chart-src");
    std::fs::create_dir_all(&src).expect("a folder");
    let st = Command::new("cp")
        .arg("-r")
        .arg(fixtures().join("charts/tiny"))
        .arg(&src)
        .status()
        .expect("cp runs");
    assert!(st.success());
    std::fs::create_dir_all(src.join("tiny/files")).expect("a folder");
    let filler: Vec<u8> = (0..60_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(src.join("tiny/files/filler.bin"), filler).expect("a filler file");
    let tgz = dir.join("tiny-0.1.0.tgz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&src)
        .arg("tiny")
        .status()
        .expect("tar runs");
    assert!(st.success());
    std::fs::read(&tgz).expect("the archive")
}

/// `archive` pushed as `helm push` does: an OCI manifest with helm's config and the chart layer.
fn push_chart(port: u16, repo: &str, tag: &str, archive: &[u8]) {
    let config = br#"{"apiVersion":"v2","name":"tiny","version":"0.1.0","appVersion":"7"}"#;
    upload(port, repo, config);
    upload(port, repo, archive);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{{"mediaType":"application/vnd.cncf.helm.chart.content.v1.tar+gzip","digest":"sha256:{}","size":{}}}]}}"#,
        sha256(config),
        config.len(),
        sha256(archive),
        archive.len()
    );
    let (status, head, body) = http(
        port,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
        manifest.as_bytes(),
    )
    .expect("the manifest is pushed");
    assert_eq!(status, 201, "{head}\n{}", String::from_utf8_lossy(&body));
}

#[test]
fn an_oci_chart_comes_from_its_registry_through_the_mirror_resumed_and_checked_by_its_digest() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let registry = start_registry(dir.path());
    push_image(registry.port, "kubeboot-test/tiny", "7", 3, 5000);
    push_image(registry.port, "kubeboot-test/reloader", "4", 4, 3000);
    push_image(registry.port, "kubeboot-test/helper", "5", 5, 3000);
    let archive = pack_chart(dir.path());
    push_chart(registry.port, "kb/tiny", "0.1.0", &archive);
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("a folder");
    let helm_sha = helm_release(dir.path(), &site);
    let site_port = FileServer::start("/charts/", &site).port;

    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).expect("a playbook folder");
    std::fs::write(books.join("10-chart.yaml"), CHART_STAGE).expect("a stage");
    let inv = dir.path().join("inventory.toml");
    // charts.example.test is never asked: its mirror is the loopback registry.
    std::fs::write(
        &inv,
        format!(
            "[[nodes]]\nname = \"n1\"\naddress = \"127.0.0.1\"\n\n[sources.charts]\ntiny = {{ repo = \"oci://charts.example.test/kb\" }}\n\n\
             [sources.releases.helm]\nurl = \"http://127.0.0.1:{site_port}/charts/helm-v3.19.0-linux-amd64.tar.gz\"\nsha256 = \"{helm_sha}\"\n\n\
             [sources.registries.\"charts.example.test\"]\nmirror = \"http://127.0.0.1:{port}\"\n\n\
             [sources.registries.\"quay.io\"]\nmirror = \"http://127.0.0.1:{port}\"\n\n[sources.registries.\"docker.io\"]\nmirror = \"http://127.0.0.1:{port}\"\n",
            port = registry.port
        ),
    )
    .expect("the inventory");
    let out = dir.path().join("bundle");
    let blobs = out.join("charts/.blobs");
    std::fs::create_dir_all(&blobs).expect("the blob folder");
    let part = blobs.join(format!("{}.part", sha256(&archive)));
    // An interrupted earlier run left the first part of the chart layer.
    std::fs::write(&part, &archive[..1000]).expect("a partial layer");
    let (inv_s, books_s, out_s) = (
        inv.display().to_string(),
        books.display().to_string(),
        out.display().to_string(),
    );
    let args = ["-i", &inv_s, "-p", &books_s, "bundle", "--out", &out_s];
    let r = kubeboot(&args);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(
        text(&r).contains("resuming charts.example.test/kb/tiny:0.1.0 at byte 1000"),
        "{}",
        text(&r)
    );
    assert_eq!(
        std::fs::read(out.join("charts/tiny-0.1.0.tgz")).expect("the chart"),
        archive
    );
    assert!(!blobs.exists(), "the blob cache is gone");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).expect("a manifest")).expect("JSON");
    let chart = manifest["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["kind"] == "chart")
        .cloned()
        .expect("the chart's entry");
    assert_eq!(chart["path"], "charts/tiny-0.1.0.tgz");
    assert_eq!(chart["version"], "0.1.0");
    assert_eq!(chart["sha256"], sha256(&archive).as_str());
    assert_eq!(
        chart["source"],
        format!("http://127.0.0.1:{}/kb/tiny:0.1.0", registry.port).as_str()
    );
    let index: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(out.join("charts/index.yaml")).expect("the bundle's own chart index"),
    )
    .expect("YAML");
    assert_eq!(index["entries"]["tiny"][0]["urls"][0], "tiny-0.1.0.tgz");
    assert_eq!(index["entries"]["tiny"][0]["digest"], sha256(&archive).as_str());
    // Rendered like a chart from an index: the same images.
    assert_eq!(
        std::fs::read_to_string(out.join("images/index.txt")).expect("the image list"),
        "docker.io/kubeboot-test/helper:5\tdocker.io_kubeboot-test_helper_5.tar\n\
         quay.io/kubeboot-test/reloader:4\tquay.io_kubeboot-test_reloader_4.tar\n\
         quay.io/kubeboot-test/tiny:7\tquay.io_kubeboot-test_tiny_7.tar\n"
    );

    // A partial layer that is not the chart's first bytes: the whole does not match the digest, so it
    // is named (exit 1) and removed; the next run takes it whole.
    std::fs::remove_file(out.join("charts/tiny-0.1.0.tgz")).expect("remove the chart");
    std::fs::create_dir_all(&blobs).expect("the blob folder");
    std::fs::write(&part, vec![0u8; 1000]).expect("a wrong partial layer");
    let r = kubeboot(&args);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(text(&r).contains("has sha256"), "{}", text(&r));
    assert!(!part.exists() && !out.join("charts/tiny-0.1.0.tgz").exists());
    let r = kubeboot(&args);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert_eq!(
        std::fs::read(out.join("charts/tiny-0.1.0.tgz")).expect("the chart"),
        archive
    );
}

#[test]
fn values_inline_is_refused_at_its_line_before_anything_is_downloaded() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).expect("a playbook folder");
    let stage = CHART_STAGE.replace(
        "            skipHooks: true\n",
        "            skipHooks: true\n            valuesInline:\n              extraEnabled: true\n",
    );
    std::fs::write(books.join("10-chart.yaml"), &stage).expect("a stage");
    let line = stage
        .lines()
        .position(|l| l.contains("valuesInline:"))
        .expect("the line")
        + 1;
    let inv = dir.path().join("inventory.toml");
    // Nothing answers on this port: the refusal comes before any download.
    std::fs::write(
        &inv,
        "[[nodes]]\nname = \"n1\"\naddress = \"127.0.0.1\"\n\n[sources.charts]\ntiny = { repo = \"http://127.0.0.1:9/charts\" }\n",
    )
    .expect("the inventory");
    let out = dir.path().join("bundle");
    for extra in [&["--list"][..], &["--out", &out.display().to_string()][..]] {
        let mut args = vec![
            "-i".to_string(),
            inv.display().to_string(),
            "-p".to_string(),
            books.display().to_string(),
            "bundle".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = kubeboot(&args);
        assert_eq!(r.status.code(), Some(2), "{}", text(&r));
        assert!(
            text(&r).contains(&format!("10-chart.yaml:{line}:")) && text(&r).contains("valuesInline is not supported"),
            "{}",
            text(&r)
        );
        assert!(text(&r).contains("valuesFile"), "{}", text(&r));
    }
    assert!(!out.join("charts").exists(), "nothing downloaded");
}

/// A .deb (dpkg-deb) holding one executable `usr/bin/NAME` with `script` as its text.
fn deb_with_program(dir: &Path, name: &str, version: &str, script: &str) {
    let root = dir.join(format!("build-{name}-{version}"));
    std::fs::create_dir_all(root.join("DEBIAN")).expect("DEBIAN");
    std::fs::create_dir_all(root.join("usr/bin")).expect("usr/bin");
    let program = root.join(format!("usr/bin/{name}"));
    std::fs::write(&program, script).expect("the program");
    let st = Command::new("chmod")
        .arg("0755")
        .arg(&program)
        .status()
        .expect("chmod runs");
    assert!(st.success());
    std::fs::write(
        root.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: kubeboot tests <tests@localhost>\nDescription: a stand-in\n"),
    )
    .expect("control");
    let st = Command::new("dpkg-deb")
        .args(["--build", "-Znone", "--root-owner-group"])
        .arg(&root)
        .arg(dir.join(format!("{name}_{version}_amd64.deb")))
        .output()
        .expect("dpkg-deb runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    std::fs::remove_dir_all(&root).expect("clean up");
}

/// A stand-in for kubeadm's `config images list --config FILE`: the list kubeadm v1.34.x prints, from
/// the file's kubernetesVersion and imageRepository, without kube-proxy when `proxy: disabled: true`
/// (kubeadm app/images/images.go GetControlPlaneImages), coredns below `coredns/` only for the default
/// repository (GetDNSImage). The etcd tag differs per package version, as it does between kubeadm patches.
fn kubeadm_standin(etcd: &str) -> String {
    format!(
        r#"#!/bin/sh
set -eu
[ "$1 $2 $3 $4" = "config images list --config" ] || {{ echo "stand-in: unexpected arguments $*" >&2; exit 1; }}
kv="$(sed -n 's/^kubernetesVersion: "\(.*\)"$/\1/p' "$5")"
repo="$(sed -n 's/^imageRepository: "\(.*\)"$/\1/p' "$5")"
[ -n "$kv" ] && [ -n "$repo" ] || {{ echo "stand-in: no kubernetesVersion/imageRepository in $5" >&2; exit 1; }}
for c in kube-apiserver kube-controller-manager kube-scheduler; do echo "$repo/$c:$kv"; done
grep -A1 '^proxy:' "$5" | grep -q 'disabled: true' || echo "$repo/kube-proxy:$kv"
if [ "$repo" = registry.k8s.io ]; then echo "$repo/coredns/coredns:v1.12.1"; else echo "$repo/coredns:v1.12.1"; fi
echo "$repo/pause:3.10.1"
echo "$repo/etcd:{etcd}"
"#
    )
}

#[test]
fn kubeadms_own_images_are_the_ones_the_bundled_kubeadm_names_for_the_shipped_configuration() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let registry = start_registry(dir.path());
    // An apt repository with two kubeadm releases whose etcd differs; the inventory pins 1.34.1.
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("the repository folder");
    deb_with_program(&repo, "kubeadm", "1.34.1-1.1", &kubeadm_standin("3.6.4-0"));
    deb_with_program(&repo, "kubeadm", "1.34.2-1.1", &kubeadm_standin("3.6.5-0"));
    for name in ["kubelet", "kubectl"] {
        for version in ["1.34.1-1.1", "1.34.2-1.1"] {
            deb_with_program(&repo, name, version, "#!/bin/sh\n");
        }
    }
    for (args, file) in [(&["packages", "."][..], "Packages"), (&["release", "."][..], "Release")] {
        let out = Command::new("apt-ftparchive")
            .args(args)
            .current_dir(&repo)
            .output()
            .expect("apt-ftparchive runs (apt-utils)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(repo.join(file), out.stdout).expect("the index");
    }
    let apt_port = FileServer::start("/charts/", &repo).port;
    // The site's registry, under the path the inventory's image_repository names.
    let wanted = [
        ("k8s/kube-apiserver", "v1.34.1"),
        ("k8s/kube-controller-manager", "v1.34.1"),
        ("k8s/kube-scheduler", "v1.34.1"),
        ("k8s/coredns", "v1.12.1"),
        ("k8s/pause", "3.10.1"),
        ("k8s/etcd", "3.6.4-0"),
    ];
    for (i, (name, tag)) in wanted.iter().enumerate() {
        push_image(registry.port, name, tag, 10 + i as u32, 2000);
    }

    // The shipped stage 40-kubeadm-init (its configuration: imageRepository, proxy.disabled), and the
    // kubernetes stage's install as stage 30 renders it.
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).expect("a playbook folder");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/40-kubeadm-init.yaml"),
        books.join("40-kubeadm-init.yaml"),
    )
    .expect("the shipped stage");
    // Its kube-vip files are copied only in a cluster of several nodes: an empty folder serves here. Its kubeadm
    // files (the configuration's template, whose render the bundle hands to kubeadm) are the shipped ones.
    std::fs::create_dir_all(dir.path().join("assets/kube-vip")).expect("an assets folder");
    let kubeadm_assets = dir.path().join("assets/kubeadm");
    std::fs::create_dir_all(&kubeadm_assets).expect("an assets folder");
    for file in ["kubeadm-config.yaml", "write-config.sh"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/kubeadm").join(file),
            kubeadm_assets.join(file),
        )
        .expect("a shipped kubeadm asset");
    }
    std::fs::write(
        books.join("30-kubernetes.yaml"),
        r#"name: kubernetes
hosts: all
tasks:
  - name: kubelet kubeadm kubectl (apt)
    run: |
      ver="$(apt-cache madison kubeadm | awk -v want='{{ kubernetes_package_version ~ "-" if kubernetes_package_version else kubernetes_version ~ "." }}' 'index($3, want) == 1 { print $3; exit }')"
      apt-get install -y "kubelet=$ver" "kubeadm=$ver" "kubectl=$ver"
"#,
    )
    .expect("a stage");
    let apt = format!("http://127.0.0.1:{apt_port}/charts/");
    let mut text_inv = format!(
        "[vars]\nkubernetes_version = \"1.34\"\nkubernetes_package_version = \"1.34.1\"\nsandbox_image = \"harbor.test:5000/k8s/pause:3.10.1\"\npod_cidr = \"10.244.0.0/16\"\nservice_cidr = \"10.96.0.0/12\"\n\n\
         [[clusters]]\nname = \"c1\"\nrole = \"central\"\nlb_ip = \"192.168.101.210\"\ndomain = \"c1.test\"\n\n\
         [[nodes]]\nname = \"n1\"\naddress = \"127.0.0.1\"\ncluster = \"c1\"\n\n\
         [sources]\nimage_repository = \"harbor.test:5000/k8s\"\n\n\
         [sources.registries.\"harbor.test:5000\"]\nmirror = \"http://127.0.0.1:{}\"\n",
        registry.port
    );
    for name in ["distro", "kubernetes", "containerd"] {
        text_inv.push_str(&format!(
            "\n[sources.apt.{name}]\nurl = \"{apt}\"\nsuite = \"/\"\ncomponents = \"\"\nkey = \"\"\n"
        ));
    }
    let inv = dir.path().join("inventory.toml");
    std::fs::write(&inv, text_inv).expect("the inventory");
    let out = dir.path().join("bundle");
    let (inv, books, out_s) = (
        inv.display().to_string(),
        books.display().to_string(),
        out.display().to_string(),
    );

    let list = kubeboot(&["-i", &inv, "-p", &books, "bundle", "--os", "debian-12", "--list"]);
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    assert!(
        text(&list).contains("kubeadm's images for n1 (cluster c1)")
            && text(&list).contains("image\tharbor.test:5000/k8s/pause:3.10.1\tc1"),
        "{}",
        text(&list)
    );
    let r = kubeboot(&["-i", &inv, "-p", &books, "bundle", "--os", "debian-12", "--out", &out_s]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let index = std::fs::read_to_string(out.join("images/index.txt")).expect("the image list");
    let names: Vec<&str> = index.lines().filter_map(|l| l.split('\t').next()).collect();
    // kubeadm 1.34.1's (etcd 3.6.4-0, not 1.34.2's 3.6.5-0), from image_repository, no kube-proxy
    // (the shipped configuration disables it), the sandbox image once.
    assert_eq!(
        names,
        [
            "harbor.test:5000/k8s/coredns:v1.12.1",
            "harbor.test:5000/k8s/etcd:3.6.4-0",
            "harbor.test:5000/k8s/kube-apiserver:v1.34.1",
            "harbor.test:5000/k8s/kube-controller-manager:v1.34.1",
            "harbor.test:5000/k8s/kube-scheduler:v1.34.1",
            "harbor.test:5000/k8s/pause:3.10.1",
        ],
        "{}",
        text(&r)
    );
    for name in &names {
        let archive = out
            .join("images")
            .join(format!("{}.tar", name.replace(['/', ':'], "_")));
        assert!(archive.is_file(), "{} missing", archive.display());
    }
    // n1, the control plane, imports every one of them: its own list is the whole index.
    assert_eq!(
        std::fs::read_to_string(out.join("images/nodes/n1.txt")).expect("n1's list"),
        index
    );
    let config = std::fs::read_to_string(out.join(".kubeadm/n1-v1.34.1.yaml")).expect("the configuration kubeadm read");
    assert!(
        config.contains("kubernetesVersion: \"v1.34.1\"")
            && config.contains("imageRepository: \"harbor.test:5000/k8s\""),
        "{config}"
    );

    // A sandbox image that is not kubeadm's pause is named (exit 1), with what to set.
    let inv_text = std::fs::read_to_string(&inv).expect("the inventory");
    std::fs::write(
        &inv,
        inv_text.replace("harbor.test:5000/k8s/pause:3.10.1", "harbor.test:5000/k8s/pause:3.10"),
    )
    .expect("write");
    let r = kubeboot(&["-i", &inv, "-p", &books, "bundle", "--os", "debian-12", "--out", &out_s]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(
        text(&r).contains("cluster c1: sandbox_image is harbor.test:5000/k8s/pause:3.10 but its kubeadm uses harbor.test:5000/k8s/pause:3.10.1"),
        "{}",
        text(&r)
    );
}

/// The text of a `KEY: |` block of the shipped task `task` in `stage` (its lines, dedented).
fn shipped_block(stage: &str, task: &str, key: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks").join(stage))
        .expect("the shipped stage");
    let start = text.find(&format!("  - name: {task}\n")).expect("the task");
    let rest = &text[start..];
    let block = rest.find(&format!("    {key}: |\n")).expect("the block") + key.len() + 8;
    rest[block..]
        .lines()
        .take_while(|l| l.starts_with("      ") || l.is_empty())
        .map(|l| l.get(6..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn a_node_fetches_only_its_own_list_once_and_a_resumed_run_sends_nothing_again() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("nodes")).expect("the bundle's image folder");
    for name in ["a", "b", "c"] {
        std::fs::write(images.join(format!("{name}.tar")), format!("archive {name}")).expect("an archive");
    }
    std::fs::write(images.join("index.txt"), "x/a:1\ta.tar\nx/b:1\tb.tar\nx/c:1\tc.tar\n").expect("index.txt");
    std::fs::write(images.join("nodes/w1.txt"), "x/a:1\ta.tar\nx/b:1\tb.tar\n").expect("w1's list");
    let served = FileServer::start("/images/", &images);
    let port = served.port;
    // A stand-in ctr: `images ls -q` prints what was imported, `images import F` records the image the
    // archive holds (here: its text) and fails on `b` the first time, as a cut connection would.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("a bin folder");
    let state = dir.path().join("imported");
    std::fs::write(
        bin.join("ctr"),
        format!(
            "#!/bin/sh\nstate='{}'\ntouch \"$state\"\ncase \"$3 $4\" in\n  'images ls') cat \"$state\" ;;\n  'images import')\n    name=\"x/$(sed 's/^archive //' \"$5\"):1\"\n    if [ \"$name\" = x/b:1 ] && [ ! -f \"$state.failed\" ]; then touch \"$state.failed\"; exit 1; fi\n    echo \"$name\" >> \"$state\" ;;\n  *) exit 2 ;;\nesac\n",
            state.display()
        ),
    )
    .expect("ctr");
    let st = Command::new("chmod")
        .arg("0755")
        .arg(bin.join("ctr"))
        .status()
        .expect("chmod");
    assert!(st.success());
    let render = |block: &str, node: &str| {
        block
            .replace("{{ sources.images_url }}", &format!("http://127.0.0.1:{port}/images/"))
            .replace("{{ node.name }}", node)
    };
    let run = shipped_block("20-containerd.yaml", "images from the bundle", "run");
    let unless = shipped_block("20-containerd.yaml", "images from the bundle", "unless");
    assert!(
        !render(&run, "w1").contains("{{") && !render(&unless, "w1").contains("{{"),
        "only these two templates:\n{run}\n{unless}"
    );
    let sh = |script: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .expect("sh runs")
    };
    let archives = |seen: &[String]| -> Vec<String> { seen.iter().filter(|p| p.ends_with(".tar")).cloned().collect() };

    // Node w1: its own list only (a and b, never c); b's import is cut off.
    let first = sh(&render(&run, "w1"));
    let said = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(
        !first.status.success(),
        "the cut import fails the task: {}",
        said(&first)
    );
    assert_eq!(archives(&served.paths()), ["/images/a.tar", "/images/b.tar"]);
    assert_ne!(sh(&render(&unless, "w1")).status.code(), Some(0), "not done yet");
    // The retry (or a resumed run) sends only b; then the guard says done and nothing more travels.
    served.clear();
    let second = sh(&render(&run, "w1"));
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(archives(&served.paths()), ["/images/b.tar"]);
    assert_eq!(sh(&render(&unless, "w1")).status.code(), Some(0));
    served.clear();
    let third = sh(&render(&run, "w1"));
    assert!(third.status.success());
    assert!(archives(&served.paths()).is_empty(), "nothing travels again");
    assert_eq!(std::fs::read_to_string(&state).expect("imported"), "x/a:1\nx/b:1\n");

    // A node the bundle has no list for (added later) takes every image of index.txt.
    std::fs::write(&state, "").expect("a fresh node");
    std::fs::write(format!("{}.failed", state.display()), "").expect("no cut this time");
    served.clear();
    let other = sh(&render(&run, "n9"));
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    assert_eq!(
        archives(&served.paths()),
        ["/images/a.tar", "/images/b.tar", "/images/c.tar"]
    );
}

/// A bcrypt entry for an htpasswd file (`user:$2b$...`), made by Python's crypt module with the
/// password on its standard input (never on a command line).
fn htpasswd_entry(user: &str, password: &str) -> String {
    let mut child = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt, sys; print(crypt.crypt(sys.stdin.read(), crypt.mksalt(crypt.METHOD_BLOWFISH)))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (its crypt module makes the registry's bcrypt entry)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(password.as_bytes())
        .expect("the password reaches python3");
    let out = child.wait_with_output().expect("python3 ends");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && hash.starts_with("$2"),
        "no bcrypt hash from python3's crypt module: {hash}"
    );
    format!("{user}:{hash}\n")
}

#[test]
fn an_oci_chart_from_a_registry_with_a_password_needs_the_right_one_and_no_secret_is_written() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    // Pushed while the registry is open, then served by the same storage with htpasswd auth.
    let open = start_registry(dir.path());
    push_image(open.port, "kubeboot-test/tiny", "7", 3, 5000);
    push_image(open.port, "kubeboot-test/reloader", "4", 4, 3000);
    push_image(open.port, "kubeboot-test/helper", "5", 5, 3000);
    let archive = pack_chart(dir.path());
    push_chart(open.port, "kb/tiny", "0.1.0", &archive);
    drop(open);
    let password = "kb-Registry-Secret-4711";
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, htpasswd_entry("kb-bundle", password)).expect("the htpasswd file");
    let registry = start_registry_with(
        dir.path(),
        &format!(
            "auth:\n  htpasswd:\n    realm: kubeboot-test\n    path: {}\n",
            htpasswd.display()
        ),
    );
    assert_eq!(
        http(registry.port, "GET", "/v2/kb/tiny/manifests/0.1.0", &[], b"").map(|r| r.0),
        Some(401),
        "the registry asks for credentials"
    );
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("a folder");
    let helm_sha = helm_release(dir.path(), &site);
    let site_port = FileServer::start("/charts/", &site).port;
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).expect("a playbook folder");
    std::fs::write(books.join("10-chart.yaml"), CHART_STAGE).expect("a stage");
    let inv = dir.path().join("inventory.toml");
    let mut text_inv = format!(
        "[[nodes]]\nname = \"n1\"\naddress = \"127.0.0.1\"\n\n[sources.charts]\ntiny = {{ repo = \"oci://charts.example.test/kb\" }}\n\n\
         [sources.releases.helm]\nurl = \"http://127.0.0.1:{site_port}/charts/helm-v3.19.0-linux-amd64.tar.gz\"\nsha256 = \"{helm_sha}\"\n"
    );
    for upstream in ["charts.example.test", "quay.io", "docker.io"] {
        text_inv.push_str(&format!(
            "\n[sources.registries.\"{upstream}\"]\nmirror = \"http://127.0.0.1:{}\"\nusername_env = \"KB_REGISTRY_USER\"\npassword_env = \"KB_REGISTRY_PASSWORD\"\n",
            registry.port
        ));
    }
    std::fs::write(&inv, text_inv).expect("the inventory");
    let run = |out: &Path, password: &str| {
        Command::new(env!("CARGO_BIN_EXE_kubeboot"))
            .args(["-i", &inv.display().to_string(), "-p", &books.display().to_string()])
            .args(["bundle", "--out", &out.display().to_string()])
            .env("KB_REGISTRY_USER", "kb-bundle")
            .env("KB_REGISTRY_PASSWORD", password)
            .output()
            .expect("kubeboot runs")
    };

    // The right credentials: the chart and the images it renders come through.
    let out = dir.path().join("bundle");
    let r = run(&out, password);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert_eq!(
        std::fs::read(out.join("charts/tiny-0.1.0.tgz")).expect("the chart"),
        archive
    );
    assert!(out.join("images/quay.io_kubeboot-test_tiny_7.tar").is_file());
    // No secret in what was printed, nor in any file of the bundle (the manifest included).
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("kb-bundle:{password}"));
    assert!(
        !text(&r).contains(password) && !text(&r).contains(&basic),
        "{}",
        text(&r)
    );
    let mut stack = vec![out.clone()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("a bundle folder").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).expect("a bundle file");
            seen += 1;
            assert!(
                !common::contains_bytes(&bytes, password.as_bytes())
                    && !common::contains_bytes(&bytes, basic.as_bytes()),
                "the registry password is in {}",
                p.display()
            );
        }
    }
    assert!(seen > 5, "the bundle's files were read ({seen})");

    // The wrong password: refused, named with the registry and where its credentials come from.
    let out = dir.path().join("bundle-wrong");
    let r = run(&out, "not-the-password");
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(
        text(&r).contains(&format!(
            "the registry 127.0.0.1:{} (the mirror of charts.example.test) refused the credentials of [sources.registries.\"charts.example.test\"]",
            registry.port
        )),
        "{}",
        text(&r)
    );
    assert!(!text(&r).contains("not-the-password"), "{}", text(&r));
    assert!(!out.join("charts/tiny-0.1.0.tgz").exists());
}
