//! dnf repository metadata (rpm-md) as a bundle reads it: `repodata/repomd.xml` names the
//! `primary` file (gzip, zstd or xz), which lists every package with its version, checksum,
//! location, provides, requires and the files dependencies are usually written against. The
//! packages a plan installs are resolved against it with their dependencies, as dnf would on an
//! empty system. Pure: bytes in, packages out; the downloads are [`super::dnf`]'s.
//!
//! What is not followed (said in the README): modular streams (RHEL 8 AppStream's packages are all
//! seen, the newest wins), weak dependencies (Recommends, which dnf skips when missing), conflicts
//! and obsoletes. A conditional rich dependency (`(A if B)`) is left out; `(A or B)` takes the
//! first that can be had.
//!
//! One job (what dnf would install from these repositories: their metadata, rpm's version order and
//! the resolution, all pure), kept in one file past ~600 lines.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};

use quick_xml::events::{BytesStart, Event};

/// A version relation of a dependency (`flags="GE"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

/// An epoch:version-release; empty parts are left out of comparisons where rpm leaves them out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evr {
    pub epoch: String,
    pub ver: String,
    pub rel: String,
}

/// One `rpm:entry` of provides or requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    pub name: String,
    pub flag: Option<Flag>,
    pub evr: Evr,
}

/// One package of a repository's primary metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub arch: String,
    pub evr: Evr,
    /// `(type, hex)` of the package file (`sha256`).
    pub checksum: (String, String),
    /// The file below the repository's URL (`Packages/k/kubeadm-1.34.2-150500.1.1.x86_64.rpm`).
    pub href: String,
    pub size: u64,
    pub provides: Vec<Dep>,
    pub requires: Vec<Dep>,
    pub files: Vec<String>,
    /// Which of the repositories it comes from (index into the caller's list).
    pub repo: usize,
}

impl Package {
    /// `VERSION-RELEASE` (the epoch left out), as the bundle's manifest and `rpm -q` print it.
    pub fn version(&self) -> String {
        format!("{}-{}", self.evr.ver, self.evr.rel)
    }
}

/// The `(href, checksum type, checksum)` of the primary metadata `repomd.xml` names.
pub fn primary_location(repomd: &[u8]) -> Result<(String, String, String), String> {
    let mut reader = quick_xml::Reader::from_reader(repomd);
    reader.config_mut().trim_text(true);
    let mut buf = Vec::new();
    let (mut in_primary, mut in_checksum) = (false, false);
    let (mut href, mut kind, mut sum) = (String::new(), String::new(), String::new());
    loop {
        match reader.read_event_into(&mut buf) {
            Err(e) => return Err(format!("repomd.xml is not XML: {e}")),
            Ok(Event::Eof) => break,
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => match e.name().as_ref() {
                "data" => in_primary = attr(&e, "type").as_deref() == Some("primary"),
                "location" if in_primary => href = attr(&e, "href").unwrap_or_default(),
                "checksum" if in_primary => {
                    kind = attr(&e, "type").unwrap_or_default();
                    in_checksum = true;
                }
                _ => {}
            },
            Ok(Event::Text(t)) if in_checksum => sum = t.xml10_content().trim().to_string(),
            Ok(Event::End(e)) => match e.name().as_ref() {
                "checksum" => in_checksum = false,
                "data" if in_primary && !href.is_empty() => return Ok((href, kind, sum)),
                _ => {}
            },
            _ => {}
        }
        buf.clear();
    }
    Err("repomd.xml names no primary metadata (<data type=\"primary\">)".into())
}

/// The bytes of a metadata file as stored, decompressed by its name's ending.
pub fn decompress(name: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let fail = |e: String| format!("cannot decompress {name}: {e}");
    if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| fail(e.to_string()))?;
    } else if name.ends_with(".zst") {
        ruzstd::decoding::StreamingDecoder::new(bytes)
            .map_err(|e| fail(e.to_string()))?
            .read_to_end(&mut out)
            .map_err(|e| fail(e.to_string()))?;
    } else if name.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut BufReader::new(bytes), &mut out).map_err(|e| fail(e.to_string()))?;
    } else if name.ends_with(".xml") {
        out = bytes.to_vec();
    } else {
        return Err(format!(
            "{name}: compression not supported (gzip, zstd and xz are; createrepo_c writes gzip by default)"
        ));
    }
    Ok(out)
}

/// Every package of a primary metadata file (decompressed), marked as coming from `repo`.
pub fn parse_primary(xml: impl BufRead, repo: usize) -> Result<Vec<Package>, String> {
    #[derive(PartialEq)]
    enum In {
        Nothing,
        Provides,
        Requires,
        Other,
    }
    let mut reader = quick_xml::Reader::from_reader(xml);
    reader.config_mut().trim_text(true);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut pkg: Option<Package> = None;
    let mut list = In::Nothing;
    // The element whose text is being read (name, arch, checksum, file) and the text so far.
    let mut text_of: Option<String> = None;
    let mut text = String::new();
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| {
            format!(
                "primary metadata is not XML (at byte {}): {e}",
                reader.buffer_position()
            )
        })?;
        match event {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) if pkg.is_some() => {
                let Some(p) = pkg.as_mut() else { continue };
                match e.name().as_ref() {
                    "name" | "arch" | "file" => {
                        text_of = Some(e.name().as_ref().to_string());
                        text.clear();
                    }
                    "checksum" => {
                        p.checksum.0 = attr(&e, "type").unwrap_or_default();
                        text_of = Some("checksum".to_string());
                        text.clear();
                    }
                    "version" => p.evr = evr_of(&e),
                    "location" => p.href = attr(&e, "href").unwrap_or_default(),
                    "size" => p.size = attr(&e, "package").and_then(|s| s.parse().ok()).unwrap_or(0),
                    "rpm:provides" => list = In::Provides,
                    "rpm:requires" => list = In::Requires,
                    "rpm:conflicts" | "rpm:obsoletes" | "rpm:recommends" | "rpm:suggests" | "rpm:supplements"
                    | "rpm:enhances" => list = In::Other,
                    "rpm:entry" => {
                        let dep = Dep {
                            name: attr(&e, "name").unwrap_or_default(),
                            flag: attr(&e, "flags").and_then(|f| flag(&f)),
                            evr: evr_of(&e),
                        };
                        match list {
                            In::Provides => p.provides.push(dep),
                            In::Requires => p.requires.push(dep),
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            Event::Start(e) if e.name().as_ref() == "package" => {
                pkg = Some(Package {
                    repo,
                    ..Package::default()
                });
            }
            Event::Text(t) if text_of.is_some() => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if text_of.is_some() => match r.resolve_char_ref() {
                Ok(Some(c)) => text.push(c),
                _ => text.push_str(match &*r {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                }),
            },
            Event::End(e) => match e.name().as_ref() {
                "package" => {
                    if let Some(p) = pkg.take() {
                        out.push(p);
                    }
                }
                "rpm:provides" | "rpm:requires" | "rpm:conflicts" | "rpm:obsoletes" | "rpm:recommends"
                | "rpm:suggests" | "rpm:supplements" | "rpm:enhances" => list = In::Nothing,
                name if text_of.as_deref() == Some(name) => {
                    if let Some(p) = pkg.as_mut() {
                        let value = std::mem::take(&mut text);
                        match name {
                            "name" => p.name = value,
                            "arch" => p.arch = value,
                            "checksum" => p.checksum.1 = value,
                            "file" => p.files.push(value),
                            _ => {}
                        }
                    }
                    text_of = None;
                }
                _ => {}
            },
            _ => {}
        }
        buf.clear();
    }
    Ok(out)
}

fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.try_get_attribute(name).ok().flatten().and_then(|a| {
        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .ok()
            .map(|v| v.into_owned())
    })
}

fn evr_of(e: &BytesStart<'_>) -> Evr {
    Evr {
        epoch: attr(e, "epoch").unwrap_or_default(),
        ver: attr(e, "ver").unwrap_or_default(),
        rel: attr(e, "rel").unwrap_or_default(),
    }
}

fn flag(f: &str) -> Option<Flag> {
    Some(match f {
        "EQ" => Flag::Eq,
        "LT" => Flag::Lt,
        "LE" => Flag::Le,
        "GT" => Flag::Gt,
        "GE" => Flag::Ge,
        _ => return None,
    })
}

/// rpm's version comparison (rpmvercmp): alphanumeric segments, numbers numerically, `~` sorts
/// before anything (pre-releases), `^` after the version it follows but before the next.
// checked: rpm's rpmio/rpmvercmp.c (segments, tilde, caret, "the one with characters left wins")
pub fn vercmp(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let sep = |c: u8| !c.is_ascii_alphanumeric() && c != b'~' && c != b'^';
    loop {
        while a.first().is_some_and(|&c| sep(c)) {
            a = &a[1..];
        }
        while b.first().is_some_and(|&c| sep(c)) {
            b = &b[1..];
        }
        if a.first() == Some(&b'~') || b.first() == Some(&b'~') {
            if a.first() != Some(&b'~') {
                return Ordering::Greater;
            }
            if b.first() != Some(&b'~') {
                return Ordering::Less;
            }
            (a, b) = (&a[1..], &b[1..]);
            continue;
        }
        if a.first() == Some(&b'^') || b.first() == Some(&b'^') {
            if a.is_empty() {
                return Ordering::Less;
            }
            if b.is_empty() {
                return Ordering::Greater;
            }
            if a[0] != b'^' {
                return Ordering::Greater;
            }
            if b[0] != b'^' {
                return Ordering::Less;
            }
            (a, b) = (&a[1..], &b[1..]);
            continue;
        }
        if a.is_empty() || b.is_empty() {
            break;
        }
        let numeric = a[0].is_ascii_digit();
        let kind = |c: &u8| {
            if numeric {
                c.is_ascii_digit()
            } else {
                c.is_ascii_alphabetic()
            }
        };
        let la = a.iter().take_while(|c| kind(c)).count();
        let lb = b.iter().take_while(|c| kind(c)).count();
        if lb == 0 {
            // Segments of different kinds: the numeric one is newer.
            return if numeric { Ordering::Greater } else { Ordering::Less };
        }
        let (mut sa, mut sb) = (&a[..la], &b[..lb]);
        let order = if numeric {
            while sa.len() > 1 && sa[0] == b'0' {
                sa = &sa[1..];
            }
            while sb.len() > 1 && sb[0] == b'0' {
                sb = &sb[1..];
            }
            sa.len().cmp(&sb.len()).then_with(|| sa.cmp(sb))
        } else {
            sa.cmp(sb)
        };
        if order != Ordering::Equal {
            return order;
        }
        (a, b) = (&a[la..], &b[lb..]);
    }
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        _ => Ordering::Greater,
    }
}

/// Compares two EVRs; a release left out of `want` (a dependency on `>= 1.0`) is not compared.
fn evr_cmp(have: &Evr, want: &Evr) -> Ordering {
    let epoch = |e: &str| e.parse::<u64>().unwrap_or(0);
    epoch(&have.epoch)
        .cmp(&epoch(&want.epoch))
        .then_with(|| vercmp(&have.ver, &want.ver))
        .then_with(|| {
            if want.rel.is_empty() || have.rel.is_empty() {
                Ordering::Equal
            } else {
                vercmp(&have.rel, &want.rel)
            }
        })
}

/// Whether a provide satisfies a requirement of the same name (an unversioned one, either way, does).
fn satisfies(provide: &Dep, want: &Dep) -> bool {
    let (Some(_), Some(flag)) = (provide.flag, want.flag) else {
        return true;
    };
    let o = evr_cmp(&provide.evr, &want.evr);
    match flag {
        Flag::Eq => o == Ordering::Equal,
        Flag::Lt => o == Ordering::Less,
        Flag::Le => o != Ordering::Greater,
        Flag::Gt => o == Ordering::Greater,
        Flag::Ge => o != Ordering::Less,
    }
}

/// A package the plan asks for: by name, and optionally by a dnf version pattern (`1.34.*`,
/// `1.34.2`) matched against `VERSION` or `VERSION-RELEASE`, as `dnf install NAME-PATTERN` does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ask {
    pub name: String,
    pub version: Option<String>,
}

/// The packages to download for `asks` on an empty system of `arch`: each asked package (the
/// newest that matches) and, transitively, a provider of each of their requirements.
pub fn resolve(packages: &[Package], asks: &[Ask], arch: &str) -> Result<Vec<usize>, String> {
    let usable: Vec<usize> = (0..packages.len())
        .filter(|&i| packages[i].arch == arch || packages[i].arch == "noarch")
        .collect();
    // Every package provides its own name at its version (rpmbuild writes it; an index may not).
    let selves: Vec<Dep> = packages
        .iter()
        .map(|p| Dep {
            name: p.name.clone(),
            flag: Some(Flag::Eq),
            evr: p.evr.clone(),
        })
        .collect();
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut provides: HashMap<&str, Vec<(usize, &Dep)>> = HashMap::new();
    let mut files: HashMap<&str, Vec<usize>> = HashMap::new();
    for &i in &usable {
        let p = &packages[i];
        by_name.entry(&p.name).or_default().push(i);
        provides.entry(&selves[i].name).or_default().push((i, &selves[i]));
        for d in &p.provides {
            provides.entry(&d.name).or_default().push((i, d));
        }
        for f in &p.files {
            files.entry(f).or_default().push(i);
        }
    }
    let newest = |a: usize, b: usize| evr_cmp(&packages[a].evr, &packages[b].evr);
    let mut chosen: BTreeSet<usize> = BTreeSet::new();
    let mut queue: Vec<usize> = Vec::new();
    for ask in asks {
        let pick = by_name
            .get(ask.name.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|&i| ask.version.as_deref().is_none_or(|v| version_matches(&packages[i], v)))
            .max_by(|&a, &b| newest(a, b));
        // A name dnf would also take as a provide (`dnf install /usr/bin/jq`, a virtual name).
        let pick = pick.or_else(|| {
            ask.version
                .is_none()
                .then(|| providers(&ask_dep(&ask.name), &provides, &files))
                .and_then(|c| best(packages, &c))
        });
        match pick {
            Some(i) => {
                if chosen.insert(i) {
                    queue.push(i);
                }
            }
            None => {
                return Err(match &ask.version {
                    Some(v) => format!("no package {}-{v} in the repositories", ask.name),
                    None => format!("no package {} in the repositories", ask.name),
                });
            }
        }
    }
    while let Some(i) = queue.pop() {
        for want in &packages[i].requires {
            if want.name.starts_with("rpmlib(") {
                continue;
            }
            let alternatives = match rich(&want.name) {
                Some(alts) => alts,
                None => vec![want.clone()],
            };
            let mut satisfied = false;
            let mut first_possible = None;
            for alt in &alternatives {
                let candidates = providers(alt, &provides, &files);
                if candidates.iter().any(|c| chosen.contains(c)) {
                    satisfied = true;
                    break;
                }
                if first_possible.is_none() && !candidates.is_empty() {
                    first_possible = best(packages, &candidates);
                }
            }
            if satisfied || alternatives.is_empty() {
                continue;
            }
            match first_possible {
                Some(p) => {
                    if chosen.insert(p) {
                        queue.push(p);
                    }
                }
                None => {
                    let p = &packages[i];
                    return Err(format!(
                        "{}-{} requires {}, which no package in the repositories provides",
                        p.name,
                        p.version(),
                        describe(want)
                    ));
                }
            }
        }
    }
    Ok(chosen.into_iter().collect())
}

fn ask_dep(name: &str) -> Dep {
    Dep {
        name: name.to_string(),
        flag: None,
        evr: Evr::default(),
    }
}

/// The packages providing `want` (by a provide, or by a file for a path).
fn providers(
    want: &Dep,
    provides: &HashMap<&str, Vec<(usize, &Dep)>>,
    files: &HashMap<&str, Vec<usize>>,
) -> Vec<usize> {
    let mut out: Vec<usize> = provides
        .get(want.name.as_str())
        .into_iter()
        .flatten()
        .filter(|(_, d)| satisfies(d, want))
        .map(|(i, _)| *i)
        .collect();
    if want.name.starts_with('/') {
        out.extend(files.get(want.name.as_str()).into_iter().flatten().copied());
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Of several providers: the shortest package name (`libcurl` before `libcurl-minimal`,
/// `coreutils` before `coreutils-single`), then the newest version.
fn best(packages: &[Package], candidates: &[usize]) -> Option<usize> {
    candidates.iter().copied().min_by(|&a, &b| {
        let (pa, pb) = (&packages[a], &packages[b]);
        pa.name
            .len()
            .cmp(&pb.name.len())
            .then_with(|| pa.name.cmp(&pb.name))
            .then_with(|| evr_cmp(&pb.evr, &pa.evr))
    })
}

/// The alternatives of a rich dependency (`(a or b)`; `(a if b)` -> none: conditional, left
/// out), or None for a plain one.
fn rich(name: &str) -> Option<Vec<Dep>> {
    let inner = name.strip_prefix('(')?.strip_suffix(')')?;
    if inner.contains(" if ") || inner.contains(" unless ") || inner.contains('(') {
        return Some(Vec::new());
    }
    // `(a and b)` and `(a with b)`: only `a` is followed (rare in the distributions' requires).
    let parts: Vec<&str> = inner
        .split(" or ")
        .filter_map(|p| p.split(" with ").next())
        .filter_map(|p| p.split(" and ").next())
        .collect();
    Some(
        parts
            .iter()
            .map(|p| {
                let words: Vec<&str> = p.split_whitespace().collect();
                match words.as_slice() {
                    [n, op, v] => Dep {
                        name: n.to_string(),
                        flag: match *op {
                            "=" => Some(Flag::Eq),
                            "<" => Some(Flag::Lt),
                            "<=" => Some(Flag::Le),
                            ">" => Some(Flag::Gt),
                            ">=" => Some(Flag::Ge),
                            _ => None,
                        },
                        evr: parse_evr(v),
                    },
                    _ => ask_dep(words.first().copied().unwrap_or("")),
                }
            })
            .filter(|d| !d.name.is_empty())
            .collect(),
    )
}

fn parse_evr(text: &str) -> Evr {
    let (epoch, rest) = match text.split_once(':') {
        Some((e, r)) => (e.to_string(), r),
        None => (String::new(), text),
    };
    let (ver, rel) = match rest.split_once('-') {
        Some((v, r)) => (v.to_string(), r.to_string()),
        None => (rest.to_string(), String::new()),
    };
    Evr { epoch, ver, rel }
}

fn describe(d: &Dep) -> String {
    let op = match d.flag {
        None => return d.name.clone(),
        Some(Flag::Eq) => "=",
        Some(Flag::Lt) => "<",
        Some(Flag::Le) => "<=",
        Some(Flag::Gt) => ">",
        Some(Flag::Ge) => ">=",
    };
    let rel = if d.evr.rel.is_empty() {
        String::new()
    } else {
        format!("-{}", d.evr.rel)
    };
    format!("{} {op} {}{rel}", d.name, d.evr.ver)
}

/// `dnf install NAME-PATTERN`'s match of the version part: a glob (`*`, `?`) against `VERSION`
/// or `VERSION-RELEASE`.
fn version_matches(p: &Package, pattern: &str) -> bool {
    glob(pattern.as_bytes(), p.evr.ver.as_bytes()) || glob(pattern.as_bytes(), p.version().as_bytes())
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..])),
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(a), Some(b)) if a == b => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_rpm_compares_them() {
        use Ordering::*;
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0", "2.0", Less),
            ("2.0.1", "2.0", Greater),
            ("1.34.10", "1.34.9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0^git1", "1.0", Greater),
            ("1.0^git1", "1.0.1", Less),
            ("1.0a", "1.0", Greater),
            ("1.0", "1.0a", Less),
            ("1.01", "1.1", Equal),
            ("5.el9", "5.el9_4", Less),
            ("1.0.a", "1.0.1", Less),
        ] {
            assert_eq!(vercmp(a, b), want, "{a} vs {b}");
        }
    }

    fn pkg(name: &str, ver: &str, provides: &[&str], requires: &[(&str, Option<Flag>, &str)]) -> Package {
        Package {
            name: name.into(),
            arch: "x86_64".into(),
            evr: Evr {
                epoch: "0".into(),
                ver: ver.into(),
                rel: "1".into(),
            },
            provides: provides.iter().map(|p| ask_dep(p)).collect(),
            requires: requires
                .iter()
                .map(|(n, f, v)| Dep {
                    name: n.to_string(),
                    flag: *f,
                    evr: parse_evr(v),
                })
                .collect(),
            ..Package::default()
        }
    }

    #[test]
    fn dependencies_are_followed_by_provides_files_and_versions() {
        let mut sh = pkg("bash", "5.1", &[], &[]);
        sh.files.push("/bin/sh".into());
        let packages = vec![
            pkg(
                "tool",
                "1.0",
                &[],
                &[("libx", Some(Flag::Ge), "2"), ("/bin/sh", None, "")],
            ),
            pkg("libx", "1.5", &["libx"], &[]),
            pkg("libx", "2.1", &["libx"], &[]),
            pkg("libx-minimal", "2.1", &["libx"], &[]),
            sh,
            pkg("kubelet", "1.34.2", &[], &[]),
            pkg("kubelet", "1.35.0", &[], &[]),
            pkg(
                "other",
                "1.0",
                &[],
                &[("(tool if bash)", None, ""), ("(nope or libx)", None, "")],
            ),
        ];
        let ask = |n: &str, v: Option<&str>| Ask {
            name: n.into(),
            version: v.map(str::to_string),
        };
        let got = resolve(
            &packages,
            &[ask("tool", None), ask("kubelet", Some("1.34.*")), ask("other", None)],
            "x86_64",
        )
        .unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|&i| format!("{}-{}", packages[i].name, packages[i].evr.ver))
            .collect();
        assert_eq!(
            names,
            ["tool-1.0", "libx-2.1", "bash-5.1", "kubelet-1.34.2", "other-1.0"]
        );
        let err = resolve(&packages, &[ask("kubelet", Some("1.33.*"))], "x86_64").unwrap_err();
        assert!(err.contains("kubelet-1.33.*"), "{err}");
        let broken = vec![pkg("tool", "1.0", &[], &[("libz", Some(Flag::Ge), "2-3")])];
        let err = resolve(&broken, &[ask("tool", None)], "x86_64").unwrap_err();
        assert_eq!(
            err,
            "tool-1.0-1 requires libz >= 2-3, which no package in the repositories provides"
        );
    }

    #[test]
    fn primary_metadata_is_read_as_createrepo_writes_it() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="1">
<package type="rpm">
  <name>kb-tool</name>
  <arch>x86_64</arch>
  <version epoch="0" ver="1.0" rel="1"/>
  <checksum type="sha256" pkgid="YES">4aa7</checksum>
  <summary>a &amp; b</summary>
  <size package="8163" installed="2000" archive="2260"/>
  <location href="Packages/kb-tool-1.0-1.x86_64.rpm"/>
  <format>
    <rpm:provides>
      <rpm:entry name="kb-tool" flags="EQ" epoch="0" ver="1.0" rel="1"/>
    </rpm:provides>
    <rpm:requires>
      <rpm:entry name="/usr/bin/kb-sh"/>
      <rpm:entry name="kb-lib" flags="GE" epoch="0" ver="1.0"/>
    </rpm:requires>
    <rpm:conflicts><rpm:entry name="kb-old"/></rpm:conflicts>
    <file>/usr/bin/kb&amp;tool</file>
  </format>
</package>
</metadata>"#;
        let got = parse_primary(xml.as_bytes(), 3).unwrap();
        assert_eq!(got.len(), 1);
        let p = &got[0];
        assert_eq!(
            (p.name.as_str(), p.arch.as_str(), p.version()),
            ("kb-tool", "x86_64", "1.0-1".into())
        );
        assert_eq!(p.checksum, ("sha256".into(), "4aa7".into()));
        assert_eq!(
            (p.href.as_str(), p.size, p.repo),
            ("Packages/kb-tool-1.0-1.x86_64.rpm", 8163, 3)
        );
        assert_eq!(p.provides.len(), 1);
        assert_eq!(p.requires.len(), 2);
        assert_eq!(p.requires[1].flag, Some(Flag::Ge));
        assert_eq!(p.files, ["/usr/bin/kb&tool"]);
        let repomd = br#"<repomd><data type="other"><location href="repodata/o.xml.gz"/></data>
<data type="primary"><checksum type="sha256">abc</checksum><location href="repodata/p.xml.zst"/></data></repomd>"#;
        assert_eq!(
            primary_location(repomd).unwrap(),
            ("repodata/p.xml.zst".into(), "sha256".into(), "abc".into())
        );
    }
}
