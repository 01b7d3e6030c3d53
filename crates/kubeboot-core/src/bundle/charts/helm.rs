//! Rendering a bundle's charts as kustomize would on the node: the bundle's own helm (unpacked and
//! checked), the `helm template` arguments of each `helmCharts` entry, and the images of the objects
//! helm prints.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{Render, WORK, WantedChart, join_clean};
use crate::bundle::collect::Item;
use crate::bundle::images::Found;

impl Render {
    /// The arguments kustomize gives `helm template` for this entry: `chart` is the unpacked chart
    /// (`<chartHome>/<name>-<version>/<name>`), `values` the copy of the values file kustomize makes
    /// (`<tmp>/<name>-kustomize-values.yaml`), `root` the kustomization's folder.
    // checked: kustomize v5.8.1 api/types/helmchartargs.go AsHelmArgs (this order), and
    // api/internal/builtins/HelmChartInflationGenerator.go: validateArgs (valuesFile defaults to the
    // chart's values.yaml, additionalValuesFiles joined to the kustomization root), copyValuesFile
    // (the values file copied to <tmp>/<name>-kustomize-values.yaml, always passed as `-f`).
    pub fn helm_args(&self, chart: &Path, values: &Path, root: &Path) -> Vec<String> {
        let mut args = vec!["template".to_string()];
        if self.release_name.is_empty() {
            args.push("--generate-name".into());
        } else {
            args.push(self.release_name.clone());
        }
        args.push(chart.display().to_string());
        if !self.namespace.is_empty() {
            args.extend(["--namespace".into(), self.namespace.clone()]);
        }
        if !self.name_template.is_empty() {
            args.extend(["--name-template".into(), self.name_template.clone()]);
        }
        args.extend(["-f".into(), values.display().to_string()]);
        for (file, _) in &self.additional {
            args.extend(["-f".into(), root.join(file).display().to_string()]);
        }
        for v in &self.api_versions {
            args.extend(["--api-versions".into(), v.clone()]);
        }
        if !self.kube_version.is_empty() {
            args.extend(["--kube-version".into(), self.kube_version.clone()]);
        }
        for (on, flag) in [
            (self.include_crds, "--include-crds"),
            (self.skip_tests, "--skip-tests"),
            (self.skip_hooks, "--no-hooks"),
            (self.debug, "--debug"),
            (self.devel, "--devel"),
        ] {
            if on {
                args.push(flag.into());
            }
        }
        args
    }
}

/// The helm the nodes run (the bundle's `helm` release archive), unpacked into `.helm/bin/`, and
/// checked to be helm 3 or 4 as kustomize checks (`helm version --short`).
pub(super) fn helm_binary(out: &Path, releases: &[Item]) -> Result<PathBuf, String> {
    let release = releases
        .iter()
        .find(|i| i.kind == "release" && i.name == "helm")
        .ok_or_else(|| {
            "the bundle has no helm release to render the charts with (the images are read from what \
             `helm template` makes of each chart): set helm_version and helm_sha256_amd64 in [vars], or \
             [sources.releases.helm] url and sha256"
                .to_string()
        })?;
    let dir = absolute(
        &out.join(WORK)
            .join("bin")
            .join(&release.sha256[..16.min(release.sha256.len())]),
    )?;
    let binary = dir.join("helm");
    if !binary.is_file() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let archive = out.join(&release.path);
        let open = std::fs::File::open(&archive).map_err(|e| format!("cannot read {}: {e}", archive.display()))?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(open));
        let mut found = false;
        for entry in tar.entries().map_err(|e| format!("{}: {e}", release.path))? {
            let mut entry = entry.map_err(|e| format!("{}: {e}", release.path))?;
            let is_helm = entry
                .path()
                .ok()
                .is_some_and(|p| p.file_name().is_some_and(|n| n == "helm"));
            if is_helm && entry.header().entry_type().is_file() {
                let part = dir.join("helm.part");
                entry
                    .unpack(&part)
                    .map_err(|e| format!("cannot unpack helm from {}: {e}", release.path))?;
                set_executable(&part)?;
                std::fs::rename(&part, &binary).map_err(|e| format!("cannot move helm into place: {e}"))?;
                found = true;
                break;
            }
        }
        if !found {
            return Err(format!("{} holds no `helm` program", release.path));
        }
    }
    let run = Command::new(&binary)
        .args(["version", "--short"])
        .envs(helm_env(&dir.join("home")))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let said = String::from_utf8_lossy(&run.stdout);
    // checked: kustomize v5.8.1 HelmChartInflationGenerator.go checkHelmVersion (helm 3 or 4)
    let major = said.trim().trim_start_matches('v').split('.').next().unwrap_or("");
    if !run.status.success() || !(major == "3" || major == "4") {
        return Err(format!(
            "{} version --short said `{}`{}: kustomize needs helm 3 or 4",
            binary.display(),
            said.trim(),
            String::from_utf8_lossy(&run.stderr).trim()
        ));
    }
    Ok(binary)
}

#[cfg(unix)]
fn set_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot make {} executable: {e}", path.display()))
}

#[cfg(not(unix))]
fn set_executable(_: &Path) -> Result<(), String> {
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The environment kustomize gives helm: its own config, cache and data folders.
// checked: kustomize v5.8.1 HelmChartInflationGenerator.go runHelmCommand (HELM_CONFIG_HOME,
// HELM_CACHE_HOME={ConfigHome}/.cache, HELM_DATA_HOME={ConfigHome}/.data, on top of its own environment)
fn helm_env(home: &Path) -> Vec<(String, String)> {
    let home = home.display().to_string();
    vec![
        ("HELM_CONFIG_HOME".into(), home.clone()),
        ("HELM_CACHE_HOME".into(), format!("{home}/.cache")),
        ("HELM_DATA_HOME".into(), format!("{home}/.data")),
    ]
}

/// Renders `chart` (its archive unpacked below `.helm/charts/<name>-<version>/`) as kustomize would
/// on the node and returns the images of the objects helm printed. The render's folder
/// `.helm/render/<name>-<version>-<n>/` keeps its values and `rendered.yaml` for inspection.
pub(super) fn render_images(
    helm: &Path,
    out: &Path,
    archive: &Path,
    chart: &WantedChart,
    n: usize,
    render: &Render,
) -> Result<Vec<String>, String> {
    let work = absolute(&out.join(WORK))?;
    let home = work.join("charts").join(format!("{}-{}", chart.name, chart.version));
    if !home.join(&chart.name).join("Chart.yaml").is_file() {
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
        let open = std::fs::File::open(archive).map_err(|e| format!("cannot read {}: {e}", archive.display()))?;
        tar::Archive::new(flate2::read::GzDecoder::new(open))
            .unpack(&home)
            .map_err(|e| format!("cannot unpack {}: {e}", archive.display()))?;
    }
    let chart_dir = home.join(&chart.name);
    if !chart_dir.join("Chart.yaml").is_file() {
        return Err(format!(
            "{} has no {}/Chart.yaml (helm pull --untar would put the chart there)",
            archive.display(),
            chart.name
        ));
    }
    let dir = work
        .join("render")
        .join(format!("{}-{}-{n}", chart.name, chart.version));
    let _ = std::fs::remove_dir_all(&dir);
    let (tmp, root) = (dir.join("tmp"), dir.join("root"));
    for d in [&tmp, &root] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let values = match &render.values {
        Some(v) => v.clone(),
        None => std::fs::read(chart_dir.join("values.yaml"))
            .map_err(|e| format!("no valuesFile, and the chart's values.yaml cannot be read: {e}"))?,
    };
    let values_path = tmp.join(format!("{}-kustomize-values.yaml", chart.name));
    std::fs::write(&values_path, values).map_err(|e| format!("cannot write {}: {e}", values_path.display()))?;
    for (file, text) in &render.additional {
        let path = PathBuf::from(join_clean(&root.display().to_string(), file));
        if !path.starts_with(&root) {
            return Err(format!("additionalValuesFiles `{file}` is outside the kustomization"));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let args = render.helm_args(&chart_dir, &values_path, &root);
    let run = Command::new(helm)
        .args(&args)
        .envs(helm_env(&dir.join("helm")))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", helm.display()))?;
    if !run.status.success() {
        return Err(format!(
            "`helm {}` failed ({}): {}",
            args.join(" "),
            run.status,
            String::from_utf8_lossy(&run.stderr).trim()
        ));
    }
    let _ = std::fs::write(dir.join("rendered.yaml"), &run.stdout);
    let text = String::from_utf8_lossy(&run.stdout);
    // kustomize drops what helm printed before the first `---` when the whole is not YAML.
    let objects = if serde_saphyr::from_multiple::<Value>(&text).is_ok() {
        text.to_string()
    } else {
        match text.find("\n---") {
            Some(i) if serde_saphyr::from_multiple::<Value>(&text[i + 1..]).is_ok() => text[i + 1..].to_string(),
            _ => return Err(format!("`helm {}` printed no YAML objects", args.join(" "))),
        }
    };
    let mut found = Found::with_renames(render.renames.clone());
    found.scan(&objects);
    Ok(found.images())
}
