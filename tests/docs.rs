//! The documentation's links hold: every relative link in README.md and
//! docs/ names a file that exists and, with `#anchor`, a heading of it (as
//! GitHub makes anchors); every `docs/….md` the code names exists, and
//! none is a dated benchmark output (code names docs/performance.md, which
//! quotes the current figure and indexes the runs).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use regex::Regex;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir` (recursively) whose name ends in one of `exts`.
fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, exts, out);
        } else if exts.iter().any(|x| p.to_string_lossy().ends_with(x)) {
            out.push(p);
        }
    }
}

/// The lines of a Markdown text outside fenced code blocks.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push((n + 1, line));
        }
    }
    out
}

/// `line` without its code spans, so that `[x](y)` inside backticks is no link.
fn without_code(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// The anchors GitHub gives a Markdown file's headings: lower case, only
/// letters, digits, spaces, `-` and `_` kept, spaces as `-`, `-1`, `-2` …
/// after a repeat.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (_, line) in prose(text) {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while seen.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        seen.insert(unique);
    }
    seen
}

/// Whether `file` (a path that exists) has the anchor `anchor`.
fn has_anchor(file: &Path, anchor: &str) -> bool {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    anchors(&text).contains(anchor)
}

fn markdown() -> Vec<PathBuf> {
    let mut md = vec![root().join("README.md")];
    files(&root().join("docs"), &[".md"], &mut md);
    md.sort();
    md
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let link = Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut broken = vec![];
    let mut checked = 0;
    for file in markdown() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        for (n, line) in prose(&text) {
            for cap in link.captures_iter(&without_code(line)) {
                let target = &cap[1];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target, None),
                };
                let dest = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().unwrap().join(path)
                };
                if !dest.exists() {
                    broken.push(format!("{name}:{n}: {target}: no such file"));
                } else if let Some(a) = anchor
                    && dest.extension().is_some_and(|x| x == "md")
                    && !has_anchor(&dest, a)
                {
                    broken.push(format!("{name}:{n}: {target}: no heading makes #{a}"));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} links found: is the parser right?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_code_names_docs_that_exist_and_no_dated_benchmark_output() {
    let mention = Regex::new(r"docs/[A-Za-z0-9_./-]*?\.md(#[A-Za-z0-9_-]+)?").unwrap();
    // Spelled in parts so that this file does not name them: the directory
    // of the dated runs, and where they were before it.
    let dated = [
        format!("{}/{}", "docs", "bench"),
        format!("{}/{}", "docs", "peers-"),
    ];
    let mut code = vec![root().join("Cargo.toml")];
    for dir in [
        "src",
        "scripts",
        "tests",
        "netns-tests",
        "fuzz",
        "benches",
        "docker",
        "dist",
        ".ci",
    ] {
        files(
            &root().join(dir),
            &[".rs", ".sh", ".toml", ".yaml", "Dockerfile", "run"],
            &mut code,
        );
    }
    let mut wrong = vec![];
    let mut checked = 0;
    for file in code {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            if dated.iter().any(|d| line.contains(d.as_str())) {
                wrong.push(format!(
                    "{name}:{n}: names a dated benchmark output; name docs/performance.md"
                ));
            }
            for m in mention.find_iter(line) {
                checked += 1;
                let (path, anchor) = match m.as_str().split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (m.as_str(), None),
                };
                let dest = root().join(path);
                if !dest.exists() {
                    wrong.push(format!("{name}:{n}: {}: no such file", m.as_str()));
                } else if let Some(a) = anchor
                    && !has_anchor(&dest, a)
                {
                    wrong.push(format!("{name}:{n}: {}: no heading makes #{a}", m.as_str()));
                }
            }
        }
    }
    assert!(
        checked > 10,
        "only {checked} mentions found: is the pattern right?"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Whether `weftd` takes `FLANNELD_<NAME>` for flag `name` (`iface`): the
/// translation of flanneld's command line picks it up, or, for the etcd
/// flags, the etcd options do.
fn reads_flanneld_variable(name: &str) -> bool {
    let var = weft::goflags::env_name("FLANNELD", name);
    if let Some(etcd) = name.strip_prefix("etcd-") {
        let value = match etcd {
            "endpoints" => "http://192.0.2.1:2379",
            "prefix" => "/x",
            _ => "x",
        };
        let set = |k: &str| (k == var).then(|| value.to_string());
        let opts = weft::store::etcd::EtcdOptions::default();
        return opts.resolve_with(set).ok() != opts.resolve_with(|_| None).ok();
    }
    let t = weft::goflags::translate(["weftd".into()], &|k: &str| (k == var).then(|| "1".into()))
        .unwrap();
    t.args.len() > 1 || !t.notes.is_empty()
}

#[test]
fn flags_md_lists_every_flag_and_variable_and_no_other() {
    use clap::CommandFactory;
    let doc = std::fs::read_to_string(root().join("docs/flags.md")).unwrap();
    let mut missing = vec![];
    let mut known = HashSet::new();
    let mut check = |prefix: &str, cmd: &clap::Command| {
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            known.insert(long.to_string());
            if !doc.contains(&format!("`{prefix}--{long}")) {
                missing.push(format!("`{prefix}--{long}`"));
            }
            if let Some(env) = arg.get_env()
                && !doc.contains(&format!("`{}`", env.to_string_lossy()))
            {
                missing.push(format!("{} (of --{long})", env.to_string_lossy()));
            }
            let flanneld = weft::goflags::env_name("FLANNELD", long);
            if prefix.is_empty()
                && reads_flanneld_variable(long)
                && !doc.contains(&format!("`{flanneld}`"))
            {
                missing.push(format!("{flanneld} (of --{long})"));
            }
        }
    };
    let weftd = weft::cli::Cli::command();
    check("", &weftd);
    for sub in weftd.get_subcommands() {
        // The doctor's flags are weftd's own, listed once.
        let prefix = format!("weftd {} ", sub.get_name());
        let own = sub
            .get_arguments()
            .filter(|a| weftd.get_arguments().all(|top| top.get_id() != a.get_id()))
            .cloned()
            .fold(clap::Command::new("own"), clap::Command::arg);
        check(&prefix, &own);
    }
    check("", &weft::cni::install::InstallArgs::command());
    assert!(
        missing.is_empty(),
        "docs/flags.md lacks: {}",
        missing.join(", ")
    );

    // And it names nothing that is not there.
    let row = Regex::new(r"(?m)^\| `(?:weftd [a-z]+ )?--([a-z0-9-]+)").unwrap();
    let variable = Regex::new(r"FLANNELD_([A-Z0-9_]+)").unwrap();
    let mut invented = vec![];
    for cap in row.captures_iter(&doc) {
        if !known.contains(&cap[1]) {
            invented.push(format!("--{}", &cap[1]));
        }
    }
    for cap in variable.captures_iter(&doc) {
        let flag = cap[1].to_lowercase().replace('_', "-");
        if !reads_flanneld_variable(&flag) {
            invented.push(format!("FLANNELD_{}", &cap[1]));
        }
    }
    assert!(
        invented.is_empty(),
        "docs/flags.md names what weft does not read: {}",
        invented.join(", ")
    );
}
