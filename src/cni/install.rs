//! `weft-cni install`: copies the plugin into a CNI bin dir and writes the
//! conflist, both atomically (a temporary file renamed into place), as a
//! DaemonSet's init container runs it. A running binary is never truncated:
//! the rename replaces it, so pods being set up keep the old one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The conflist written when none is given: delegate mode, as flannel's
/// `kube-flannel.yml` configures it (with `type` weft, and `portmap` for
/// hostPort), built-in when the reference plugins are not installed.
/// cniVersion 1.0.0: what podman 4.x, containerd 1.6 and portmap 1.1 accept.
pub const DEFAULT_CONFLIST: &str = r#"{
  "name": "cbr0",
  "cniVersion": "1.0.0",
  "plugins": [
    {
      "type": "weft",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"#;

/// The conflist's file name in the conf dir.
pub const CONF_NAME: &str = "10-weft.conflist";
/// The plugin's name in the bin dir: the conflist's "type".
pub const PLUGIN_NAME: &str = "weft";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: not a valid conflist: {what}")]
    Conflist { path: PathBuf, what: String },
    #[error(
        "cannot write {path}: {source} (is the host directory mounted read-write into the container?)"
    )]
    Write { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "weft-cni install",
    about = "Install weft-cni and its conflist on this node"
)]
pub struct InstallArgs {
    /// The CNI bin dir (the runtime's CNI_PATH).
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The CNI conf dir the runtime reads.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The conflist to install (default: weft's, delegate mode).
    #[arg(long)]
    pub conflist: Option<PathBuf>,
    /// The conflist's file name in --conf-dir.
    #[arg(long, default_value = CONF_NAME)]
    pub conf_name: String,
    /// The plugin's name in --bin-dir: the conflist's "type".
    #[arg(long, default_value = PLUGIN_NAME)]
    pub plugin_name: String,
    /// The binary to copy (default: this one).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Install the binary only. weft's DaemonSet does so: weftd
    /// (`--cni-conflist`) writes the conflist once the node forwards, so the
    /// runtime reports the node's network ready only then.
    #[arg(long)]
    pub no_conflist: bool,
}

/// Writes `bytes` to `path` atomically with permissions `mode`, creating the directory.
fn install_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let werr = |source| InstallError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(werr)?;
    crate::fsutil::write_atomic_mode(path, bytes, mode).map_err(werr)
}

/// Checks that `text` is a conflist naming a network and listing plugins,
/// one of them `plugin` (weft), whose configuration weft-cni accepts as it
/// will when the runtime calls it.
///
/// # Errors
/// [`InstallError::Conflist`] naming the problem.
pub fn validate_conflist(text: &str, path: &Path, plugin: &str) -> Result<(), InstallError> {
    let bad = |what: String| InstallError::Conflist {
        path: path.to_owned(),
        what,
    };
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if v.get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(bad("\"name\" is missing".into()));
    }
    let plugins = v
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("\"plugins\" must be an array".into()))?;
    if plugins.is_empty()
        || plugins
            .iter()
            .any(|p| p.get("type").and_then(Value::as_str).is_none())
    {
        return Err(bad("every plugin needs a \"type\"".into()));
    }
    let ours: Vec<&serde_json::Map<String, Value>> = plugins
        .iter()
        .filter_map(Value::as_object)
        .filter(|p| p.get("type").and_then(Value::as_str) == Some(plugin))
        .collect();
    if ours.is_empty() {
        return Err(bad(format!(
            "no plugin has \"type\": \"{plugin}\", so the runtime would never call weft-cni"
        )));
    }
    // As the runtime hands it over: the conflist's name and version in each plugin.
    let version = super::conf::version_of(v.as_object().unwrap_or(&serde_json::Map::new()))
        .map_err(|e| bad(e.msg))?;
    for p in ours {
        let mut conf = p.clone();
        conf.insert("name".into(), v["name"].clone());
        super::conf::NetConf::from_map(&conf, version).map_err(|e| bad(e.msg))?;
    }
    Ok(())
}

/// The other plugins a conflist chains must be in the bin dir, or the
/// runtime fails every ADD. The default conflist's `portmap` is left out
/// where there is none; a given conflist's missing plugins are named.
fn chained_plugins_present(text: String, args: &InstallArgs) -> (String, Vec<String>) {
    let Ok(mut v) = serde_json::from_str::<Value>(&text) else {
        return (text, vec![]);
    };
    let missing = |t: &str| t != args.plugin_name && !args.bin_dir.join(t).exists();
    let mut notes = vec![];
    if args.conflist.is_none() {
        if let Some(ps) = v.get_mut("plugins").and_then(Value::as_array_mut) {
            let before = ps.len();
            ps.retain(|p| !p.get("type").and_then(Value::as_str).is_some_and(missing));
            if ps.len() < before {
                notes.push(format!(
                    "no portmap in {}: the conflist leaves it out, so hostPort does not work until containernetworking-plugins is installed and weft-cni install runs again",
                    args.bin_dir.display()
                ));
                let text = serde_json::to_string_pretty(&v).unwrap_or(text) + "\n";
                return (text, notes);
            }
        }
        return (text, notes);
    }
    for t in v["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("type").and_then(Value::as_str))
        .filter(|t| missing(t))
    {
        notes.push(format!(
            "the conflist chains {t}, which is not in {}: the runtime fails every ADD until it is",
            args.bin_dir.display()
        ));
    }
    (text, notes)
}

/// What a conf file in the runtime's conf dir is to the installer.
fn is_flannels(path: &Path) -> bool {
    let Ok(text) = fs::read_to_string(path) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return false;
    };
    let flannel = |p: &Value| p.get("type").and_then(Value::as_str) == Some("flannel");
    flannel(&v)
        || v.get("plugins")
            .and_then(Value::as_array)
            .is_some_and(|ps| ps.iter().any(flannel))
}

/// Makes `ours` the configuration the runtime uses: runtimes take the
/// first file of the conf dir in name order, so flannel's files sorting
/// before it are renamed to `<name>.weft-disabled` (the runtime skips
/// them; rename them back to return to flannel). Returns one line for each
/// file renamed, and for each other file that still comes first.
fn take_precedence(ours: &Path) -> Result<Vec<String>, InstallError> {
    let dir = ours.parent().unwrap_or(Path::new("."));
    let Some(our_name) = ours.file_name().and_then(|n| n.to_str()) else {
        return Ok(vec![]);
    };
    let rd = fs::read_dir(dir).map_err(|source| InstallError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut names: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            [".conf", ".conflist", ".json"]
                .iter()
                .any(|x| n.ends_with(x))
        })
        .filter(|n| n.as_str() < our_name)
        .collect();
    names.sort();
    let mut notes = vec![];
    for n in names {
        let path = dir.join(&n);
        if is_flannels(&path) {
            let to = dir.join(format!("{n}.weft-disabled"));
            fs::rename(&path, &to).map_err(|source| InstallError::Write {
                path: path.clone(),
                source,
            })?;
            notes.push(format!(
                "renamed flannel's {} to {} so the runtime uses {} (rename it back to return to flannel)",
                path.display(),
                to.display(),
                ours.display()
            ));
        } else {
            notes.push(format!(
                "{} sorts before {} and the runtime uses the first: remove it, or install weft's under an earlier name (--conf-name)",
                path.display(),
                ours.display()
            ));
        }
    }
    Ok(notes)
}

/// What `weft-cni install` did.
#[derive(Debug)]
pub struct Installed {
    pub bin: PathBuf,
    /// None with `--no-conflist`.
    pub conflist: Option<PathBuf>,
    /// Other conf files dealt with (flannel's renamed), or still in the way.
    pub notes: Vec<String>,
}

/// The conflist `args` names (or the default), checked as weft-cni will
/// read it: its path (for messages) and text.
///
/// # Errors
/// [`InstallError`] naming the file.
pub fn read_conflist(args: &InstallArgs) -> Result<(PathBuf, String), InstallError> {
    let (path, text) = match &args.conflist {
        Some(p) => (
            p.clone(),
            fs::read_to_string(p).map_err(|source| InstallError::Read {
                path: p.clone(),
                source,
            })?,
        ),
        None => (
            PathBuf::from("(built-in default)"),
            DEFAULT_CONFLIST.to_string(),
        ),
    };
    validate_conflist(&text, &path, &args.plugin_name)?;
    Ok((path, text))
}

/// Installs the binary and (unless `--no-conflist`) the conflist, and makes
/// the conflist the one the runtime uses. A conflist weft-cni would refuse
/// is refused here, before anything is written.
///
/// # Errors
/// [`InstallError`] naming the file.
pub fn install(args: &InstallArgs) -> Result<Installed, InstallError> {
    let src = match &args.source {
        Some(s) => s.clone(),
        None => std::env::current_exe().map_err(|source| InstallError::Read {
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?,
    };
    if !args.no_conflist {
        read_conflist(args)?;
    }
    let bin = fs::read(&src).map_err(|source| InstallError::Read {
        path: src.clone(),
        source,
    })?;
    let bin_path = args.bin_dir.join(&args.plugin_name);
    install_file(&bin_path, &bin, 0o755)?;
    if args.no_conflist {
        return Ok(Installed {
            bin: bin_path,
            conflist: None,
            notes: vec![],
        });
    }
    let (conflist, notes) = install_conflist(args)?;
    Ok(Installed {
        bin: bin_path,
        conflist: Some(conflist),
        notes,
    })
}

/// Writes the conflist into the conf dir (unless it is there already, byte
/// for byte) and makes it the one the runtime uses: what `weft-cni install`
/// does after the binary, and what weftd does once the node forwards. Its
/// path, and notes on other conf files.
///
/// # Errors
/// [`InstallError`] naming the file.
pub fn install_conflist(args: &InstallArgs) -> Result<(PathBuf, Vec<String>), InstallError> {
    let (_, text) = read_conflist(args)?;
    let (text, mut notes) = chained_plugins_present(text, args);
    let conf_path = args.conf_dir.join(&args.conf_name);
    if fs::read(&conf_path).ok().as_deref() != Some(text.as_bytes()) {
        install_file(&conf_path, text.as_bytes(), 0o644)?;
    }
    notes.extend(take_precedence(&conf_path)?);
    Ok((conf_path, notes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The installer's arguments for a bin dir and conf dir under `dir`,
    /// installing a fake binary written there.
    fn args_in(dir: &Path) -> InstallArgs {
        let src = dir.join("src-bin");
        fs::write(&src, b"\x7fELF fake").unwrap();
        InstallArgs {
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            conflist: None,
            conf_name: "10-weft.conflist".into(),
            plugin_name: "weft".into(),
            source: Some(src),
            no_conflist: false,
        }
    }

    #[test]
    fn no_conflist_installs_the_binary_only_and_weftd_adds_the_conflist_later() {
        let d = tempfile::tempdir().unwrap();
        let mut args = args_in(d.path());
        args.no_conflist = true;
        let done = install(&args).unwrap();
        assert!(done.bin.exists());
        assert!(done.conflist.is_none());
        assert!(!args.conf_dir.join(CONF_NAME).exists(), "no conflist yet");
        // weftd, once the node forwards: the conflist, written once.
        args.no_conflist = false;
        let (path, _) = install_conflist(&args).unwrap();
        assert_eq!(path, args.conf_dir.join(CONF_NAME));
        let written = fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        install_conflist(&args).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().modified().unwrap(),
            written,
            "unchanged: not rewritten"
        );
    }

    #[test]
    fn installs_atomically_and_rejects_bad_conflists() {
        let d = tempfile::tempdir().unwrap();
        let args = args_in(d.path());
        let Installed {
            bin: b,
            conflist: c,
            notes,
        } = install(&args).unwrap();
        let c = c.expect("a conflist");
        assert_eq!(
            fs::metadata(&b).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let text = fs::read_to_string(&c).unwrap();
        assert!(text.contains("\"weft\""));
        assert!(
            !text.contains("portmap"),
            "no portmap in the bin dir: left out"
        );
        assert!(
            notes.is_empty() || notes[0].contains("no portmap"),
            "{notes:?}"
        );
        // With portmap installed, the default conflist chains it.
        fs::write(d.path().join("bin/portmap"), b"bin").unwrap();
        let again = install(&args).unwrap();
        assert!(again.notes.is_empty(), "{:?}", again.notes);
        assert!(fs::read_to_string(&c).unwrap().contains("\"portmap\""));
        assert_eq!(
            fs::read_dir(d.path().join("net.d")).unwrap().count(),
            1,
            "no temp file left"
        );
        let bad = d.path().join("bad.conflist");
        fs::write(&bad, r#"{"name":"x","plugins":[{}]}"#).unwrap();
        let e = install(&InstallArgs {
            conflist: Some(bad),
            ..args
        })
        .unwrap_err();
        assert!(e.to_string().contains("type"), "{e}");
    }

    /// What weft-cni would refuse at ADD is refused at install, and the
    /// conflist already installed stays as it was.
    #[test]
    fn conflists_the_plugin_would_refuse_are_refused_and_nothing_is_touched() {
        let d = tempfile::tempdir().unwrap();
        let args = args_in(d.path());
        let good = install(&args).unwrap().conflist.expect("a conflist");
        let before = fs::read_to_string(&good).unwrap();
        for (text, why) in [
            (
                r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"weft","delegate":{"ipam":{}}}]}"#,
                "delegate.ipam must not be set",
            ),
            (
                r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"weft","mode":"fast"}]}"#,
                "mode \"fast\" is not known",
            ),
            (
                r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
                "no plugin has \"type\": \"weft\"",
            ),
            (
                r#"{"name":"cbr0","cniVersion":"0.1.0","plugins":[{"type":"weft"}]}"#,
                "0.1.0",
            ),
        ] {
            let p = d.path().join("candidate.conflist");
            fs::write(&p, text).unwrap();
            let e = install(&InstallArgs {
                conflist: Some(p),
                ..args.clone()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(why), "{text}: {e}");
            assert_eq!(fs::read_to_string(&good).unwrap(), before, "{text}");
        }
    }

    /// flannel's conflist sorts first (10-flannel < 10-weft): renamed so the
    /// runtime takes weft's; anything else first is named.
    #[test]
    fn weft_s_conflist_becomes_the_one_the_runtime_uses() {
        let d = tempfile::tempdir().unwrap();
        let net_d = d.path().join("net.d");
        fs::create_dir_all(&net_d).unwrap();
        fs::write(
            net_d.join("10-flannel.conflist"),
            r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"isDefaultGateway":true}},{"type":"portmap"}]}"#,
        )
        .unwrap();
        fs::write(
            net_d.join("05-other.conf"),
            r#"{"name":"x","type":"bridge"}"#,
        )
        .unwrap();
        fs::write(
            net_d.join("99-later.conflist"),
            r#"{"name":"y","plugins":[{"type":"flannel"}]}"#,
        )
        .unwrap();
        let args = args_in(d.path());
        fs::create_dir_all(d.path().join("bin")).unwrap();
        fs::write(d.path().join("bin/portmap"), b"bin").unwrap();
        let done = install(&args).unwrap();
        assert!(!net_d.join("10-flannel.conflist").exists());
        assert!(net_d.join("10-flannel.conflist.weft-disabled").exists());
        assert!(net_d.join("99-later.conflist").exists(), "after ours: left");
        assert_eq!(done.notes.len(), 2, "{:?}", done.notes);
        assert!(
            done.notes[0].contains("05-other.conf sorts before"),
            "{:?}",
            done.notes
        );
        assert!(
            done.notes[1].contains("renamed flannel's"),
            "{:?}",
            done.notes
        );
    }
}
