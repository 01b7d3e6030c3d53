//! `http:` and `s3_buckets:` tasks, which kubeboot runs itself on the jump host: real lab nodes (the tasks
//! still belong to a node), a small HTTP server in the test and moto's S3 server, all on loopback only.
//! Each lab has a loopback range of its own (tests/common).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{TestLab, files_under, free_port, run, start_lab, start_moto};
use kubeboot::lab::{self, InventoryOptions};
use serde_json::Value;

const WEB_PASSWORD: &str = "web-Pa55-never-shown-7c1d";
const S3_ACCESS_KEY: &str = "AKIAJUMPTEST00000001";
const S3_SECRET_KEY: &str = "jump-secret-key-never-shown-3f9a";

/// One request the test server saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    host: String,
    authorization: Option<String>,
}

/// A tiny HTTP/1.1 server on 127.0.0.1 answering by path, recording every request.
struct Web {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Web {
    fn start() -> Web {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let record = record.clone();
                std::thread::spawn(move || answer(stream, &record));
            }
        });
        Web { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn answer(stream: TcpStream, record: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut words = first.split_whitespace();
    let method = words.next().unwrap_or("GET").to_string();
    let target = words.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let host = headers.get("host").cloned().unwrap_or_default();
    let authorization = headers.get("authorization").cloned();
    let name = host.split(':').next().unwrap_or_default().to_string();
    let expected_auth = format!("Basic {}", STANDARD.encode(format!("admin:{WEB_PASSWORD}")));
    let (status, body) = match path.as_str() {
        "/ready" if name.starts_with("prometheus.") => ("200 OK", format!("Prometheus at {name} is Ready.")),
        "/ready" => ("404 Not Found", format!("no route for {name}")),
        "/secure" if authorization.as_deref() == Some(expected_auth.as_str()) => {
            ("200 OK", "{\n  \"status\": \"green\"\n}\n".to_string())
        }
        "/secure" => ("401 Unauthorized", "who are you".to_string()),
        "/down" => ("503 Service Unavailable", "upstream connect error".to_string()),
        // An S3 endpoint that refuses the keys, as MinIO does for unknown or wrong ones.
        p if p.starts_with("/locked") => (
            "403 Forbidden",
            "<Error><Code>InvalidAccessKeyId</Code></Error>".to_string(),
        ),
        _ => ("404 Not Found", "not here".to_string()),
    };
    if let Ok(mut seen) = record.lock() {
        seen.push(Seen {
            path,
            host,
            authorization,
        });
    }
    let mut stream = stream;
    let body = if method == "HEAD" { "" } else { body.as_str() };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// curl with S3 signing, to set up and inspect buckets independently of kubeboot.
fn s3_curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!("{S3_ACCESS_KEY}:{S3_SECRET_KEY}"))
        .args(args)
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lab's inventory plus the named secrets the jump-host tasks use (read from private files).
fn inventory_with_secrets(t: &TestLab) -> PathBuf {
    let opts = InventoryOptions {
        path: t.work().join("inventory.toml"),
        ..InventoryOptions::for_lab(&t.lab)
    };
    let inv = lab::write_inventory(&t.lab, &opts).expect("write the inventory");
    let mut text = fs::read_to_string(&inv).expect("read the inventory");
    text.push_str("\n[secrets]\n");
    for (name, value) in [
        ("web_password", WEB_PASSWORD),
        ("s3_access_key", S3_ACCESS_KEY),
        ("s3_secret_key", S3_SECRET_KEY),
    ] {
        let file = t.work().join(name);
        fs::write(&file, format!("{value}\n")).expect("write a secret");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
        text.push_str(&format!("{name} = {{ file = \"{}\" }}\n", file.display()));
    }
    fs::write(&inv, text).expect("write the inventory");
    inv
}

fn apply(t: &TestLab, inv: &Path, extra: &[&str]) -> common::Run {
    let mut args = vec!["apply", "--yes", "--output", "json"];
    args.extend_from_slice(extra);
    run(t.kubeboot_with(inv, &args))
}

/// The output lines of one node's task.
fn lines(run: &common::Run, node: &str, task: &str) -> Vec<String> {
    let mut current: Option<String> = None;
    let mut out = Vec::new();
    for e in run.events() {
        if e["node"] != node {
            continue;
        }
        match e["event"].as_str() {
            Some("task_started") => current = e["task"].as_str().map(str::to_string),
            Some("output") if current.as_deref() == Some(task) => {
                out.push(e["line"].as_str().unwrap_or_default().to_string())
            }
            _ => {}
        }
    }
    out
}

fn status(run: &common::Run, node: &str, task: &str) -> (String, String) {
    let e: Value = run
        .finished(node, task)
        .unwrap_or_else(|| panic!("{node}/{task} has no task_finished\n{run}"));
    (
        e["status"].as_str().unwrap_or_default().to_string(),
        e["reason"]
            .as_str()
            .or(e["error"].as_str())
            .unwrap_or_default()
            .to_string(),
    )
}

/// No byte kubeboot wrote (stdout, stderr, every file of the state dir) holds one of the secrets.
fn assert_no_secret_anywhere(t: &TestLab, runs: &[&common::Run]) {
    let secrets = [WEB_PASSWORD, S3_ACCESS_KEY, S3_SECRET_KEY];
    for r in runs {
        for s in secrets {
            assert!(
                !r.stdout.contains(s) && !r.stderr.contains(s),
                "a secret is in the output\n{r}"
            );
        }
    }
    let files = files_under(&t.state_dir());
    assert!(!files.is_empty(), "the state dir has a journal and logs");
    for (path, bytes) in files {
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "a secret is in {}",
                path.display()
            );
        }
    }
}

#[test]
fn http_checks_run_from_the_jump_host_once_per_node_and_resume_like_any_task() {
    let t = start_lab(2);
    let web = Web::start();
    let inv = inventory_with_secrets(&t);
    let playbook = |contains: &str| {
        format!(
            r#"name: checks
hosts: all
become: true
tasks:
  - name: prometheus by name
    http:
      url: "{ready}"
      host: "prometheus.{{{{ cluster.name }}}}.test"
      contains: {contains}
  - name: with basic auth
    http:
      url: "{secure}"
      user: admin
      password: "{{{{ secrets.web_password }}}}"
      contains: ['"status": "green"']
  - name: only on edge clusters
    when: "{{{{ cluster.role == 'edge' }}}}"
    http:
      url: "{ready}"
      host: "prometheus.edge.test"
"#,
            ready = web.url("/ready"),
            secure = web.url("/secure"),
        )
    };
    t.write_playbook("00-checks.yaml", &playbook("Ready"));

    let first = apply(&t, &inv, &[]);
    first.assert_code(0);
    for (node, cluster) in [("node-1", "lab-01"), ("node-2", "lab-02")] {
        assert_eq!(status(&first, node, "prometheus by name").0, "ok", "{first}");
        let out = lines(&first, node, "prometheus by name");
        assert_eq!(
            out.first().map(String::as_str),
            Some(
                format!(
                    "GET {} (Host: prometheus.{cluster}.test) -> HTTP 200 OK",
                    web.url("/ready")
                )
                .as_str()
            ),
            "{first}"
        );
        assert!(out.contains(&"body contains 'Ready'".to_string()), "{out:?}");
        assert_eq!(status(&first, node, "with basic auth").0, "ok", "{first}");
    }
    assert_eq!(
        status(&first, "node-1", "only on edge clusters"),
        ("skipped".into(), "condition".into())
    );
    assert_eq!(status(&first, "node-2", "only on edge clusters").0, "ok");

    // Each node's check asked its own cluster's name, at the address in the URL.
    let seen = web.requests();
    let mut hosts: Vec<String> = seen
        .iter()
        .filter(|s| s.path == "/ready")
        .map(|s| s.host.split(':').next().unwrap_or_default().to_string())
        .collect();
    hosts.sort();
    assert_eq!(
        hosts,
        [
            "prometheus.edge.test",
            "prometheus.lab-01.test",
            "prometheus.lab-02.test"
        ]
    );
    assert!(
        seen.iter()
            .filter(|s| s.path == "/secure")
            .all(|s| s.authorization.is_some()),
        "basic auth was sent"
    );

    // Resume: finished jump-host tasks are done, and nothing is asked again.
    let again = apply(&t, &inv, &[]);
    again.assert_code(0);
    for node in ["node-1", "node-2"] {
        assert_eq!(
            status(&again, node, "prometheus by name"),
            ("skipped".into(), "done".into())
        );
        assert_eq!(
            status(&again, node, "with basic auth"),
            ("skipped".into(), "done".into())
        );
    }
    assert_eq!(web.requests().len(), seen.len(), "a resumed run sent requests again");

    // An edited check is a new task: it runs again, the others stay done.
    t.write_playbook("00-checks.yaml", &playbook("is Ready"));
    let edited = apply(&t, &inv, &[]);
    edited.assert_code(0);
    assert_eq!(status(&edited, "node-1", "prometheus by name").0, "ok", "{edited}");
    assert_eq!(
        status(&edited, "node-1", "with basic auth"),
        ("skipped".into(), "done".into())
    );

    // The plan shows where it runs and never the password.
    let plan = run(t.kubeboot_with(&inv, &["apply", "--dry-run", "--fresh"]));
    plan.assert_code(0);
    assert!(
        plan.stdout
            .contains(&format!("GET {} (from the jump host)", web.url("/secure"))),
        "{plan}"
    );
    assert!(
        plan.stdout.contains("basic auth admin, password secrets.web_password"),
        "{plan}"
    );
    assert_no_secret_anywhere(&t, &[&first, &again, &edited, &plan]);
}

#[test]
fn failing_jump_host_tasks_say_what_answered_and_what_to_check() {
    let t = start_lab(4);
    let web = Web::start();
    let inv = inventory_with_secrets(&t);
    let closed = format!("http://127.0.0.1:{}", free_port());
    let stage = |node: &str, task: &str| format!("name: {node}-check\nhosts: {node}\ntasks:\n{task}");
    t.write_playbook(
        "00-a.yaml",
        &stage(
            "node-1",
            &format!(
                "  - name: down\n    retries: 1\n    delay: 1s\n    http: {{ url: \"{}\" }}\n",
                web.url("/down")
            ),
        ),
    );
    t.write_playbook(
        "00-b.yaml",
        &stage(
            "node-2",
            &format!(
                "  - name: wrong body\n    http: {{ url: \"{}\", host: prometheus.x, contains: [Ready, Grafana] }}\n",
                web.url("/ready")
            ),
        ),
    );
    t.write_playbook(
        "00-c.yaml",
        &stage(
            "node-3",
            &format!("  - name: nobody there\n    timeout: 5s\n    http: {{ url: \"{closed}/\" }}\n"),
        ),
    );
    t.write_playbook(
        "00-d.yaml",
        &stage(
            "node-4",
            &format!(
                "  - name: buckets\n    s3_buckets:\n      endpoint: \"{closed}\"\n      region: us-east-1\n      buckets: [a]\n      access_key: \"{{{{ secrets.s3_access_key }}}}\"\n      secret_key: \"{{{{ secrets.s3_secret_key }}}}\"\n"
            ),
        ),
    );

    let r = apply(&t, &inv, &[]);
    r.assert_code(1);
    let (s, error) = status(&r, "node-1", "down");
    assert_eq!(s, "failed");
    assert_eq!(
        error,
        format!("GET {} answered HTTP 503, expected 200", web.url("/down"))
    );
    assert_eq!(r.events_of("task_retrying").len(), 1, "{r}");
    assert!(
        lines(&r, "node-1", "down").contains(&"body: upstream connect error".to_string()),
        "{r}"
    );

    let (s, error) = status(&r, "node-2", "wrong body");
    assert_eq!(s, "failed");
    assert!(error.ends_with("its body does not contain 'Grafana'"), "{error}");

    let (s, error) = status(&r, "node-3", "nobody there");
    assert_eq!(s, "failed");
    assert!(
        error.starts_with(&format!("GET {closed}/ did not answer from the jump host: ")),
        "{error}"
    );
    assert!(error.contains("refused"), "{error}");
    assert!(error.contains("check DNS, routing and firewalls"), "{error}");

    let (s, error) = status(&r, "node-4", "buckets");
    assert_eq!(s, "failed");
    assert!(
        error.starts_with(&format!("S3 endpoint {closed} did not answer from the jump host")),
        "{error}"
    );
    assert_no_secret_anywhere(&t, &[&r]);
}

#[test]
fn s3_buckets_creates_the_missing_ones_keeps_existing_data_and_never_shows_the_keys() {
    let t = start_lab(1);
    let (_moto, endpoint) = start_moto();
    let inv = inventory_with_secrets(&t);
    s3_curl(&["-X", "PUT", &format!("{endpoint}/existing")]);
    let object = format!("{endpoint}/existing/01HBLOCK/meta.json");
    s3_curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        "block",
        &object,
    ]);
    assert_eq!(s3_curl(&[&object]), "block", "the test object was not stored");

    let keys = "      access_key: \"{{ secrets.s3_access_key }}\"\n      secret_key: \"{{ secrets.s3_secret_key }}\"\n";
    t.write_playbook(
        "00-buckets.yaml",
        &format!(
            "name: buckets\nhosts: all\ntasks:\n  - name: us buckets\n    s3_buckets:\n      endpoint: \"{endpoint}\"\n      region: us-east-1\n      buckets: [existing, thanos-bucket, opensearch-logs]\n{keys}  - name: eu bucket\n    s3_buckets:\n      endpoint: \"{endpoint}\"\n      region: eu-west-1\n      buckets: [longhorn-backups]\n{keys}"
        ),
    );

    let first = apply(&t, &inv, &[]);
    first.assert_code(0);
    assert_eq!(
        lines(&first, "node-1", "us buckets"),
        [
            "bucket existing: exists",
            "bucket thanos-bucket: created",
            "bucket opensearch-logs: created"
        ]
    );
    assert_eq!(status(&first, "node-1", "us buckets").0, "changed");
    // Outside us-east-1 the bucket needs its LocationConstraint, which moto checks.
    assert_eq!(
        lines(&first, "node-1", "eu bucket"),
        ["bucket longhorn-backups: created"]
    );
    let listing = s3_curl(&[&format!("{endpoint}/")]);
    for b in ["existing", "thanos-bucket", "opensearch-logs", "longhorn-backups"] {
        assert!(
            listing.contains(&format!("<Name>{b}</Name>")),
            "{b} missing:\n{listing}"
        );
    }
    assert_eq!(s3_curl(&[&object]), "block", "existing data was touched");

    // Resume: done. Fresh: every bucket now exists, nothing changes.
    let again = apply(&t, &inv, &[]);
    again.assert_code(0);
    assert_eq!(
        status(&again, "node-1", "us buckets"),
        ("skipped".into(), "done".into())
    );
    let fresh = apply(&t, &inv, &["--fresh"]);
    fresh.assert_code(0);
    assert_eq!(status(&fresh, "node-1", "us buckets").0, "ok");
    assert!(
        lines(&fresh, "node-1", "us buckets")
            .iter()
            .all(|l| l.ends_with(": exists")),
        "{fresh}"
    );
    assert_eq!(s3_curl(&[&object]), "block", "a re-run touched existing data");

    let plan = run(t.kubeboot_with(&inv, &["plan"]));
    let dry = run(t.kubeboot_with(&inv, &["apply", "--dry-run", "--fresh"]));
    assert!(
        dry.stdout.contains(&format!(
            "S3 buckets existing, thanos-bucket, opensearch-logs at {endpoint} (from the jump host)"
        )),
        "{dry}"
    );
    assert!(
        dry.stdout
            .contains("keys secrets.s3_access_key / secrets.s3_secret_key"),
        "{dry}"
    );
    assert_no_secret_anywhere(&t, &[&first, &again, &fresh, &plan, &dry]);
}

#[test]
fn s3_access_denied_names_the_key_settings() {
    let t = start_lab(1);
    // moto refuses keys only for header-signed requests (a presigned one makes it fail with 500), so the
    // refusing endpoint is the test's own server answering 403 like MinIO does.
    let web = Web::start();
    let endpoint = web.url("");
    let inv = inventory_with_secrets(&t);
    t.write_playbook(
        "00-buckets.yaml",
        &format!(
            "name: buckets\nhosts: all\ntasks:\n  - name: buckets\n    s3_buckets:\n      endpoint: \"{endpoint}\"\n      region: us-east-1\n      buckets: [locked-bucket]\n      access_key: \"{{{{ secrets.s3_access_key }}}}\"\n      secret_key: \"{{{{ secrets.s3_secret_key }}}}\"\n"
        ),
    );
    let r = apply(&t, &inv, &[]);
    r.assert_code(1);
    let (s, error) = status(&r, "node-1", "buckets");
    assert_eq!(s, "failed");
    let secret_files = format!(
        "{} / {}",
        t.work().join("s3_access_key").display(),
        t.work().join("s3_secret_key").display()
    );
    assert_eq!(
        error,
        format!("S3 at {endpoint}: access denied for bucket locked-bucket — check {secret_files}")
    );
    assert_no_secret_anywhere(&t, &[&r]);
}

#[test]
fn a_lab_modelled_on_the_shipped_inventory_never_makes_jump_host_requests() {
    let repo = common::repo();
    let t = common::start_lab_like(&repo.join("inventory.toml"), 4);
    let text = fs::read_to_string(t.inventory()).expect("the lab inventory");
    let inv: toml::Table = text.parse().expect("TOML");
    assert_eq!(inv["vars"]["jump_checks"].as_bool(), Some(false), "{text}");

    // Every jump-host task of the shipped playbooks is skipped by its condition.
    let plan = run({
        let mut c = Command::new(common::bin());
        c.arg("-i")
            .arg(t.inventory())
            .arg("-p")
            .arg(repo.join("playbooks"))
            .arg("--state-dir")
            .arg(t.state_dir())
            .arg("plan");
        c
    });
    plan.assert_code(0);
    let jump: Vec<&str> = plan
        .stdout
        .lines()
        .filter(|l| l.contains("(from the jump host)"))
        .collect();
    // Four checks in every node's plan (prometheus, grafana, thanos, opensearch), plus s3-buckets on the central one.
    assert_eq!(jump.len(), 4 * 4 + 1, "{plan}");
    assert!(
        jump.iter().all(|l| l.contains("[skip: condition]")),
        "{}",
        jump.join("\n")
    );
}
