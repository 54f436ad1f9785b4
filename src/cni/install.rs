//! `weft-cni install`: copies the plugin into a CNI bin dir and writes the
//! conflist, both atomically (a temporary file renamed into place), as a
//! DaemonSet's init container runs it. A running binary is never truncated:
//! the rename replaces it, so pods being set up keep the old one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The conflist written when none is given: delegate mode, as flannel's
/// `kube-flannel.yml` configures it (with `type` weft), built-in when the
/// reference plugins are not installed.
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
    }
  ]
}
"#;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: not a valid conflist: {what}")]
    Conflist { path: PathBuf, what: String },
    #[error(
        "cannot write {path}: {source} (is the host directory mounted read-write into the init container?)"
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
    #[arg(long, default_value = "10-weft.conflist")]
    pub conf_name: String,
    /// The plugin's name in --bin-dir: the conflist's "type".
    #[arg(long, default_value = "weft")]
    pub plugin_name: String,
    /// The binary to copy (default: this one).
    #[arg(long)]
    pub source: Option<PathBuf>,
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

/// Checks that `text` is a conflist naming a network and listing plugins.
///
/// # Errors
/// [`InstallError::Conflist`] naming the problem.
pub fn validate_conflist(text: &str, path: &Path) -> Result<(), InstallError> {
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
    Ok(())
}

/// Installs the binary and the conflist; returns the two paths written.
///
/// # Errors
/// [`InstallError`] naming the file.
pub fn install(args: &InstallArgs) -> Result<(PathBuf, PathBuf), InstallError> {
    let src = match &args.source {
        Some(s) => s.clone(),
        None => std::env::current_exe().map_err(|source| InstallError::Read {
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?,
    };
    let (conf_path_in, conf_text) = match &args.conflist {
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
    validate_conflist(&conf_text, &conf_path_in)?;
    let bin = fs::read(&src).map_err(|source| InstallError::Read {
        path: src.clone(),
        source,
    })?;
    let bin_path = args.bin_dir.join(&args.plugin_name);
    install_file(&bin_path, &bin, 0o755)?;
    let conf_path = args.conf_dir.join(&args.conf_name);
    install_file(&conf_path, conf_text.as_bytes(), 0o644)?;
    Ok((bin_path, conf_path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn installs_atomically_and_rejects_bad_conflists() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src-bin");
        fs::write(&src, b"\x7fELF fake").unwrap();
        let args = InstallArgs {
            bin_dir: d.path().join("bin"),
            conf_dir: d.path().join("net.d"),
            conflist: None,
            conf_name: "10-weft.conflist".into(),
            plugin_name: "weft".into(),
            source: Some(src),
        };
        let (b, c) = install(&args).unwrap();
        assert_eq!(
            fs::metadata(&b).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let text = fs::read_to_string(&c).unwrap();
        assert!(text.contains("\"weft\""));
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
}
