//! Kubeconfig files on the jump host (`kubeboot kubeconfig`): each cluster's fetched admin.conf renamed to the
//! cluster's name and pointed at the right server, all of them in one file, or merged into an existing one.
//!
//! Pure: text in, text out. Parsed with serde (serde-saphyr) into JSON values, so fields kubeboot does not know
//! (extensions, preferences, exec plugins, proxy settings) are kept exactly as they were.

use serde_json::{Map, Value};

/// A problem with a kubeconfig file's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KubeconfigError(pub String);

fn bad(message: impl Into<String>) -> KubeconfigError {
    KubeconfigError(message.into())
}

/// Parses kubeconfig YAML (an empty file is an empty config).
pub fn parse(text: &str) -> Result<Value, KubeconfigError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let v: Value = serde_saphyr::from_str(text).map_err(|e| bad(format!("not valid YAML: {e}")))?;
    match v {
        Value::Object(_) => Ok(v),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err(bad(
            "a kubeconfig must be a mapping (apiVersion, clusters, contexts, users)",
        )),
    }
}

/// Writes a kubeconfig as YAML.
pub fn to_yaml(config: &Value) -> Result<String, KubeconfigError> {
    serde_saphyr::to_string(config).map_err(|e| bad(format!("cannot write YAML: {e}")))
}

fn list<'a>(config: &'a Value, key: &str) -> Vec<&'a Value> {
    config
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn named<'a>(config: &'a Value, key: &str, name: &str) -> Option<&'a Value> {
    list(config, key)
        .into_iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
}

/// `scheme://HOST:port/path` with the host replaced (IPv6 hosts bracketed), the rest kept.
fn with_host(server: &str, host: &str) -> Result<String, KubeconfigError> {
    let mut url = url::Url::parse(server).map_err(|e| bad(format!("the server `{server}` is not a URL ({e})")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let wanted = if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    url.set_host(Some(&wanted))
        .map_err(|e| bad(format!("cannot point the server at `{host}` ({e})")))?;
    // Url adds a trailing `/` to a bare authority; kubeconfigs are written without it.
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// One cluster's admin.conf as a kubeconfig with one cluster, one user and one context, all named `name`, the
/// server pointed at `server_host` (its scheme, port and path kept).
pub fn rename(admin_conf: &str, name: &str, server_host: &str) -> Result<Value, KubeconfigError> {
    let config = parse(admin_conf)?;
    let current = config.get("current-context").and_then(Value::as_str);
    let context = match current.and_then(|c| named(&config, "contexts", c)) {
        Some(c) => c,
        None => list(&config, "contexts")
            .into_iter()
            .next()
            .ok_or_else(|| bad("the file has no context"))?,
    };
    let refs = context.get("context").cloned().unwrap_or(Value::Object(Map::new()));
    let cluster_name = refs
        .get("cluster")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("its context names no cluster"))?;
    let user_name = refs
        .get("user")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("its context names no user"))?;
    let mut cluster = named(&config, "clusters", cluster_name).cloned().ok_or_else(|| {
        bad(format!(
            "its context names cluster `{cluster_name}`, which is not in the file"
        ))
    })?;
    let mut user = named(&config, "users", user_name).cloned().ok_or_else(|| {
        bad(format!(
            "its context names user `{user_name}`, which is not in the file"
        ))
    })?;
    let server = cluster
        .pointer("/cluster/server")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("cluster `{cluster_name}` has no server")))?
        .to_string();
    let server = with_host(&server, server_host)?;
    if let Some(c) = cluster.get_mut("cluster").and_then(Value::as_object_mut) {
        c.insert("server".into(), Value::String(server));
    }
    let mut context = context.clone();
    for (entry, key) in [(&mut cluster, None), (&mut user, None), (&mut context, Some(()))] {
        if let Some(m) = entry.as_object_mut() {
            m.insert("name".into(), Value::String(name.to_string()));
            if key.is_some()
                && let Some(c) = m.get_mut("context").and_then(Value::as_object_mut)
            {
                c.insert("cluster".into(), Value::String(name.to_string()));
                c.insert("user".into(), Value::String(name.to_string()));
            }
        }
    }
    let mut out = Map::new();
    out.insert(
        "apiVersion".into(),
        config.get("apiVersion").cloned().unwrap_or(Value::String("v1".into())),
    );
    out.insert("kind".into(), Value::String("Config".into()));
    out.insert("clusters".into(), Value::Array(vec![cluster]));
    out.insert("contexts".into(), Value::Array(vec![context]));
    out.insert("users".into(), Value::Array(vec![user]));
    out.insert("current-context".into(), Value::String(name.to_string()));
    Ok(Value::Object(out))
}

/// `into` with every cluster, user and context of `from` added; entries of the same name are replaced, all
/// others (and every other field) kept. `current-context` is set only when `into` has none.
pub fn merge(into: &Value, from: &Value) -> Value {
    let mut out = match into {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    out.entry("apiVersion").or_insert(Value::String("v1".into()));
    out.entry("kind").or_insert(Value::String("Config".into()));
    for key in ["clusters", "users", "contexts"] {
        let mut entries: Vec<Value> = out.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
        for new in list(from, key) {
            let name = new.get("name").and_then(Value::as_str);
            match entries
                .iter_mut()
                .find(|e| e.get("name").and_then(Value::as_str) == name)
            {
                Some(old) => *old = new.clone(),
                None => entries.push(new.clone()),
            }
        }
        out.insert(key.into(), Value::Array(entries));
    }
    let has_current = out
        .get("current-context")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty());
    if !has_current && let Some(c) = from.get("current-context") {
        out.insert("current-context".into(), c.clone());
    }
    Value::Object(out)
}

/// The context names of a kubeconfig, in file order.
pub fn contexts(config: &Value) -> Vec<String> {
    list(config, "contexts")
        .into_iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0E=
    server: https://192.168.101.194:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
kind: Config
preferences: {}
users:
- name: kubernetes-admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
";

    #[test]
    fn rename_names_everything_after_the_cluster_and_points_the_server() {
        let c = rename(ADMIN, "cluster-01", "10.0.0.5").unwrap();
        assert_eq!(c.pointer("/clusters/0/name").unwrap(), "cluster-01");
        assert_eq!(
            c.pointer("/clusters/0/cluster/server").unwrap(),
            "https://10.0.0.5:6443"
        );
        assert_eq!(
            c.pointer("/clusters/0/cluster/certificate-authority-data").unwrap(),
            "Q0E="
        );
        assert_eq!(c.pointer("/users/0/name").unwrap(), "cluster-01");
        assert_eq!(c.pointer("/users/0/user/client-key-data").unwrap(), "S0VZ");
        assert_eq!(c.pointer("/contexts/0/context/cluster").unwrap(), "cluster-01");
        assert_eq!(c.pointer("/contexts/0/context/user").unwrap(), "cluster-01");
        assert_eq!(contexts(&c), ["cluster-01"]);
        let v6 = rename(ADMIN, "c", "fd00::1").unwrap();
        assert_eq!(
            v6.pointer("/clusters/0/cluster/server").unwrap(),
            "https://[fd00::1]:6443"
        );
        let text = to_yaml(&c).unwrap();
        assert_eq!(parse(&text).unwrap(), c, "round trip:\n{text}");
    }

    #[test]
    fn merge_keeps_other_contexts_and_unknown_fields() {
        let mine = "apiVersion: v1\nkind: Config\ncurrent-context: prod\nclusters:\n- name: prod\n  cluster: {server: 'https://prod:6443', extensions: [{name: x, extension: {a: 1}}]}\n- name: cluster-01\n  cluster: {server: 'https://old:6443'}\ncontexts:\n- name: prod\n  context: {cluster: prod, user: me, namespace: web}\nusers:\n- name: me\n  user: {exec: {command: aws, args: [eks, get-token]}}\npreferences: {colors: true}\n";
        let existing = parse(mine).unwrap();
        let new = rename(ADMIN, "cluster-01", "10.0.0.5").unwrap();
        let merged = merge(&existing, &new);
        assert_eq!(contexts(&merged), ["prod", "cluster-01"]);
        assert_eq!(
            merged["current-context"], "prod",
            "the operator's current context stays"
        );
        assert_eq!(
            merged.pointer("/clusters/0/cluster/extensions/0/extension/a").unwrap(),
            1
        );
        assert_eq!(
            merged.pointer("/clusters/1/cluster/server").unwrap(),
            "https://10.0.0.5:6443"
        );
        assert_eq!(merged.pointer("/users/0/user/exec/command").unwrap(), "aws");
        assert_eq!(merged.pointer("/preferences/colors").unwrap(), true);
        assert_eq!(
            merged["clusters"].as_array().unwrap().len(),
            2,
            "replaced, not added twice"
        );
        let empty = merge(&parse("").unwrap(), &new);
        assert_eq!(empty["current-context"], "cluster-01");
    }

    #[test]
    fn broken_files_are_errors_not_panics() {
        assert!(rename("kind: Config\n", "c", "h").is_err());
        assert!(rename("[1, 2]", "c", "h").is_err());
        assert!(rename(": : :", "c", "h").is_err());
        let no_user = "clusters: [{name: k, cluster: {server: 'https://a:1'}}]\ncontexts: [{name: x, context: {cluster: k, user: u}}]\n";
        assert!(rename(no_user, "c", "h").unwrap_err().0.contains("user `u`"));
    }
}
