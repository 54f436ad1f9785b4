//! The CNI lines of `weftd doctor`: the conf file a container runtime would
//! use (the first by name in the CNI conf dir) is weft's, valid as weft-cni
//! reads it, and reads weftd's subnet.env; and every plugin it runs or
//! delegates to is an executable in the CNI bin dir. The conf dir is listed
//! and the one file read here; what they mean is decided by functions
//! without I/O, over weft-cni's own parsing ([`crate::cni::install`],
//! [`crate::cni::conf`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::report::{Check, Report};
use crate::cni::conf::{Mode, NetConf};
use crate::cni::delegate::find_plugin;
use crate::cni::install::validate_conflist;
use crate::daemon::Options;

/// Where the container runtime keeps its CNI configuration and plugins
/// (`weftd doctor --cni-conf-dir`, `--cni-bin-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniDirs {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
}

/// The conf dir containerd, CRI-O and podman read by default.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Their default bin dir.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";

impl Default for CniDirs {
    fn default() -> CniDirs {
        CniDirs {
            conf_dir: DEFAULT_CONF_DIR.into(),
            bin_dir: DEFAULT_BIN_DIR.into(),
        }
    }
}

const CONF: &str = "CNI config";
const PLUGINS: &str = "CNI plugins";
/// A conf file larger than this is not read (none is near it).
const MAX_CONF: u64 = 1 << 20;
/// A plugin binary larger than this is not searched for weft-cni's name.
const MAX_PLUGIN: u64 = 256 << 20;
/// Bytes every weft-cni binary holds (its log prefix) and flannel's does not.
const WEFT_CNI_MARK: &[u8] = b"weft-cni: ";
/// The extensions libcni (containerd, CRI-O, podman) reads, in this order of preference.
const EXTENSIONS: [&str; 3] = [".conf", ".conflist", ".json"];

/// The conf file the runtime would use and the plugins it needs.
pub fn check(opts: &Options, dirs: &CniDirs, r: &mut Report) {
    let kube = opts.kube.is_some();
    let names = match std::fs::read_dir(&dirs.conf_dir) {
        Ok(rd) => conf_files(rd.flatten().filter_map(|e| {
            // Directories and other oddities are not conf files to a runtime.
            let is_file = std::fs::metadata(e.path()).is_ok_and(|m| m.is_file());
            e.file_name().into_string().ok().filter(|_| is_file)
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            r.push(no_config(dirs, kube, "does not exist"));
            return;
        }
        Err(e) => {
            r.push(Check::fail(
                CONF,
                format!("cannot read {}: {e}", dirs.conf_dir.display()),
                "run the doctor as root (the runtime reads it as root)",
            ));
            return;
        }
    };
    let Some(first) = names.first() else {
        r.push(no_config(
            dirs,
            kube,
            "holds no .conf, .conflist or .json file",
        ));
        return;
    };
    let path = dirs.conf_dir.join(first);
    let conf = match read_capped(&path, MAX_CONF) {
        Ok(bytes) => parse(&path, &String::from_utf8_lossy(&bytes)),
        Err(e) => Conf::Broken(format!("cannot read it: {e}")),
    };
    // When the runtime's choice is not weft's, say where weft's is.
    let later = match conf {
        Conf::Ours(_) => None,
        _ => names[1..].iter().find(|n| {
            let p = dirs.conf_dir.join(n);
            read_capped(&p, MAX_CONF)
                .is_ok_and(|b| matches!(parse(&p, &String::from_utf8_lossy(&b)), Conf::Ours(_)))
        }),
    };
    r.push(conf_check(
        &path,
        &dirs.conf_dir,
        &conf,
        later.map(String::as_str),
        &opts.subnet_file,
        kube,
    ));
    if let Conf::Ours(ours) = conf {
        let runs_weft_cni = ours.plugin == "weft" || is_weft_cni(&dirs.bin_dir.join(&ours.plugin));
        let present = |name: &str| find_plugin(std::slice::from_ref(&dirs.bin_dir), name).is_some();
        r.push(plugins_check(
            &path,
            dirs,
            &needs(&ours, runs_weft_cni),
            &present,
        ));
    }
}

/// Up to `max` bytes of `path`; a longer file is an error.
fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![];
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(buf)
}

/// Whether the plugin binary at `path` is weft-cni (installed under another
/// name, as `weft-cni install --plugin-name flannel` does), not flannel's.
fn is_weft_cni(path: &Path) -> bool {
    read_capped(path, MAX_PLUGIN).is_ok_and(|b| holds(&b, WEFT_CNI_MARK))
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The names a runtime reads as conf files, in the order it tries them
/// (libcni: by name, byte order).
pub(crate) fn conf_files(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = names
        .into_iter()
        .filter(|n| EXTENSIONS.iter().any(|x| n.ends_with(x)))
        .collect();
    v.sort();
    v
}

/// weft's plugin in a conf file, as weft-cni will read it.
#[derive(Debug, Clone)]
pub(crate) struct Ours {
    /// `weft`, or `flannel` (the name weft-cni answers to when installed as flannel's).
    pub(crate) plugin: String,
    /// The network's name.
    pub(crate) network: String,
    pub(crate) conf: NetConf,
    /// The other plugins the runtime runs, with their IPAM plugins, in order.
    pub(crate) chained: Vec<String>,
}

/// What a conf file is to weft.
#[derive(Debug, Clone)]
pub(crate) enum Conf {
    Ours(Box<Ours>),
    /// weft's (or flannel's plugin name), but weft-cni would refuse it: why.
    Refused(String),
    /// Valid, but without a weft or flannel plugin: the plugin types it names.
    Foreign(Vec<String>),
    /// Not usable: why.
    Broken(String),
}

/// Parses a conf file: a conflist, or a single plugin's `.conf` (which a
/// runtime turns into a conflist of one).
pub(crate) fn parse(path: &Path, text: &str) -> Conf {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Conf::Broken(format!("not valid JSON: {e}")),
    };
    let Some(obj) = v.as_object() else {
        return Conf::Broken("not a JSON object".into());
    };
    let list: Map<String, Value> = if obj.contains_key("plugins") {
        obj.clone()
    } else {
        let mut m = Map::new();
        for k in ["name", "cniVersion"] {
            if let Some(x) = obj.get(k) {
                m.insert(k.into(), x.clone());
            }
        }
        m.insert("plugins".into(), json!([v]));
        m
    };
    let types: Vec<String> = list
        .get("plugins")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("type").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    let Some(plugin) = ["weft", "flannel"]
        .into_iter()
        .find(|t| types.iter().any(|x| x == t))
    else {
        if types.is_empty() {
            return Conf::Broken("it names no plugin (no \"plugins\" with a \"type\")".into());
        }
        return Conf::Foreign(types);
    };
    let text = Value::Object(list.clone()).to_string();
    if let Err(e) = validate_conflist(&text, path, plugin) {
        return Conf::Refused(format!("weft-cni would refuse it: {e}"));
    }
    let network = list
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let plugins = list
        .get("plugins")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(mut ours) = plugins
        .iter()
        .filter_map(Value::as_object)
        .find(|p| p.get("type").and_then(Value::as_str) == Some(plugin))
        .cloned()
    else {
        return Conf::Refused(format!("no plugin of type {plugin}"));
    };
    ours.insert("name".into(), json!(network));
    let conf = match crate::cni::conf::version_of(&list)
        .and_then(|version| NetConf::from_map(&ours, version))
    {
        Ok(c) => c,
        Err(e) => return Conf::Refused(format!("weft-cni would refuse it: {}", e.msg)),
    };
    let mut chained = vec![];
    for p in &plugins {
        let t = p.get("type").and_then(Value::as_str).unwrap_or_default();
        if t == plugin {
            continue;
        }
        chained.push(t.to_string());
        if let Some(ipam) = p
            .get("ipam")
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
        {
            chained.push(ipam.to_string());
        }
    }
    Conf::Ours(Box::new(Ours {
        plugin: plugin.to_string(),
        network,
        conf,
        chained,
    }))
}

/// Why the runtime would have no configuration: a failure on a Kubernetes
/// node, a note elsewhere. In Kubernetes mode the node runs pods, and the
/// kubelet keeps it NotReady until a CNI configuration is there; with the
/// embedded store or etcd, weft may carry Docker's `--bip` bridge or plain
/// hosts, where no CNI runtime reads the conf dir at all.
fn no_config(dirs: &CniDirs, kube: bool, why: &str) -> Check {
    let install = format!(
        "weft-cni install --bin-dir {} --conf-dir {} (weft's DaemonSet does it: its init container and weftd --cni-conflist)",
        dirs.bin_dir.display(),
        dirs.conf_dir.display()
    );
    if kube {
        Check::fail(
            CONF,
            format!(
                "{} {why}: the kubelet reports NetworkNotReady and starts no pods on this node",
                dirs.conf_dir.display()
            ),
            install,
        )
    } else {
        Check::note(
            CONF,
            format!(
                "{} {why}: no container runtime wires pods here with CNI (fine for Docker on subnet.env, or a node without pods); if pods are to run here: {install}",
                dirs.conf_dir.display()
            ),
        )
    }
}

/// The runtime's conf file against weft's: `later` is weft's own when it
/// comes after the runtime's choice. Another network's file first is a
/// failure on a Kubernetes node (`kube`), or wherever weft's is in the dir
/// too; elsewhere a note: with the embedded store or etcd, weft may serve
/// Docker through subnet.env beside a runtime's own network (podman's).
pub(crate) fn conf_check(
    path: &Path,
    dir: &Path,
    conf: &Conf,
    later: Option<&str>,
    subnet_file: &Path,
    kube: bool,
) -> Check {
    let (p, d) = (path.display(), dir.display());
    if !kube && later.is_none() {
        let what = match conf {
            Conf::Foreign(types) => Some(format!("its plugins are [{}]", types.join(", "))),
            Conf::Broken(why) => Some(why.clone()),
            _ => None,
        };
        if let Some(what) = what {
            return Check::note(
                CONF,
                format!(
                    "{p}, the first in {d}, is not weft's ({what}) and no file there is: pods here do not use weft's network (fine for Docker on subnet.env); if they are to, run weft-cni install --conf-dir {d}"
                ),
            );
        }
    }
    match conf {
        Conf::Ours(o) if o.conf.subnet_file != subnet_file => Check::fail(
            CONF,
            format!(
                "{p} is weft's, but its subnetFile {} is not weftd's --subnet-file {}: weft-cni would read another lease, or none",
                o.conf.subnet_file.display(),
                subnet_file.display()
            ),
            format!(
                "set \"subnetFile\": \"{}\" in its {} plugin, or run weftd with --subnet-file {}",
                subnet_file.display(),
                o.plugin,
                o.conf.subnet_file.display()
            ),
        ),
        Conf::Ours(o) => {
            let mode = match o.conf.mode {
                Mode::Auto => "auto",
                Mode::Delegate => "delegate",
                Mode::Builtin => "builtin",
            };
            Check::pass(
                CONF,
                format!(
                    "{p}, the first in {d}, is weft's: network {}, plugin {}, mode {mode}, subnetFile {}",
                    o.network,
                    o.plugin,
                    o.conf.subnet_file.display()
                ),
            )
        }
        Conf::Foreign(types) => Check::fail(
            CONF,
            format!(
                "{p}, the first in {d} by name and so the one the runtime uses, is not weft's: its plugins are [{}]{}",
                types.join(", "),
                later.map_or(String::new(), |l| format!("; weft's {l} comes after it"))
            ),
            format!(
                "remove it (or move it out of {d}), or install weft's under a name that sorts first: weft-cni install --conf-dir {d} --conf-name 00-weft.conflist"
            ),
        ),
        Conf::Broken(why) | Conf::Refused(why) => Check::fail(
            CONF,
            format!("{p}, the first in {d} and the one the runtime uses: {why}"),
            format!(
                "fix or remove it; weft-cni install --conf-dir {d} writes weft's{}",
                later.map_or(String::new(), |l| format!(" (weft's {l} comes after it)"))
            ),
        ),
    }
}

/// A plugin the conf file makes the runtime (or weft-cni) run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Need {
    pub(crate) name: String,
    /// Without it, pods get no network; else weft-cni does without.
    pub(crate) required: bool,
    /// Which of weft's plugins this is (shown with its name).
    pub(crate) label: Option<&'static str>,
}

/// What the conf file needs in the bin dir. `runs_weft_cni`: the plugin of
/// type `ours.plugin` is weft-cni (always for `weft`; for `flannel`, when
/// weft-cni was installed under flannel's name), which in auto mode wires
/// pods itself without bridge and host-local; flannel's own plugin always
/// delegates to them.
pub(crate) fn needs(ours: &Ours, runs_weft_cni: bool) -> Vec<Need> {
    let mut out: Vec<Need> = vec![];
    let mut add = |name: String, required: bool, label: Option<&'static str>| {
        if let Some(n) = out.iter_mut().find(|n| n.name == name) {
            n.required |= required;
        } else if !name.is_empty() {
            out.push(Need {
                name,
                required,
                label,
            });
        }
    };
    let label = if runs_weft_cni {
        "weft-cni"
    } else {
        "flannel's plugin"
    };
    add(ours.plugin.clone(), true, Some(label));
    let delegates = match (runs_weft_cni, ours.conf.mode) {
        (false, _) | (true, Mode::Delegate) => Some(true),
        (true, Mode::Auto) => Some(false),
        (true, Mode::Builtin) => None,
    };
    if let Some(required) = delegates {
        add(ours.conf.delegate_type(), required, None);
        add(ours.conf.ipam_type(), required, None);
    }
    for c in &ours.chained {
        add(c.clone(), true, None);
    }
    out
}

/// Every plugin `needs` names against the bin dir (`present` looks one up).
pub(crate) fn plugins_check(
    path: &Path,
    dirs: &CniDirs,
    needs: &[Need],
    present: &dyn Fn(&str) -> bool,
) -> Check {
    let bin = dirs.bin_dir.display();
    let shown = |n: &Need| match n.label {
        Some(l) => format!("{} ({l})", n.name),
        None => n.name.clone(),
    };
    let missing: Vec<&Need> = needs
        .iter()
        .filter(|n| n.required && !present(&n.name))
        .collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|n| shown(n)).collect();
        let mut fixes = vec![];
        if missing.iter().any(|n| n.label == Some("weft-cni")) {
            fixes.push(format!(
                "weft-cni install --bin-dir {bin} --conf-dir {}",
                dirs.conf_dir.display()
            ));
        }
        if missing.iter().any(|n| n.label != Some("weft-cni")) {
            fixes.push(format!(
                "install the reference plugins into {bin}: apt install containernetworking-plugins (Debian puts them in /usr/lib/cni: copy or link them into {bin}), or the release tarball of github.com/containernetworking/plugins"
            ));
        }
        return Check::fail(
            PLUGINS,
            format!(
                "{} names {}, not found as an executable in {bin}: the runtime fails every pod's ADD",
                path.display(),
                names.join(", ")
            ),
            fixes.join("; "),
        );
    }
    let found: Vec<String> = needs
        .iter()
        .filter(|n| present(&n.name))
        .map(shown)
        .collect();
    let optional: Vec<&str> = needs
        .iter()
        .filter(|n| !n.required && !present(&n.name))
        .map(|n| n.name.as_str())
        .collect();
    let builtin = if optional.is_empty() {
        String::new()
    } else {
        format!(
            "; no {} there, so weft-cni wires pods in its built-in mode",
            optional.join(", ")
        )
    };
    Check::pass(PLUGINS, format!("{} in {bin}{builtin}", found.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn dirs() -> CniDirs {
        CniDirs::default()
    }

    fn ours(text: &str) -> Ours {
        match parse(&p("/etc/cni/net.d/10-weft.conflist"), text) {
            Conf::Ours(o) => *o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_runtime_takes_the_first_conf_file_by_name() {
        let v = conf_files(
            [
                "99-x.conflist",
                "10-weft.conflist",
                "05-a.conf",
                "README",
                "10-flannel.conflist.weft-disabled",
                "00-b.json",
            ]
            .map(String::from),
        );
        assert_eq!(
            v,
            [
                "00-b.json",
                "05-a.conf",
                "10-weft.conflist",
                "99-x.conflist"
            ]
        );
    }

    #[test]
    fn conf_files_are_told_apart() {
        let path = p("/etc/cni/net.d/10-weft.conflist");
        let o = ours(crate::cni::install::DEFAULT_CONFLIST);
        assert_eq!((o.plugin.as_str(), o.network.as_str()), ("weft", "cbr0"));
        assert_eq!(o.chained, ["portmap"]);
        let c = conf_check(
            &path,
            &p("/etc/cni/net.d"),
            &Conf::Ours(Box::new(o)),
            None,
            &p("/run/flannel/subnet.env"),
            true,
        );
        assert_eq!(c.status, Status::Pass, "{c:?}");
        // flannel's conflist: weft-cni answers to its name.
        let o = ours(
            r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true}},{"type":"portmap"}]}"#,
        );
        assert_eq!(o.plugin, "flannel");
        // A single plugin's .conf.
        let o = ours(r#"{"name":"cbr0","cniVersion":"1.0.0","type":"weft","mode":"builtin"}"#);
        assert_eq!(o.conf.mode, Mode::Builtin);
        match parse(
            &path,
            r#"{"name":"x","cniVersion":"1.0.0","plugins":[{"type":"bridge","ipam":{"type":"host-local"}}]}"#,
        ) {
            Conf::Foreign(t) => assert_eq!(t, ["bridge"]),
            other => panic!("{other:?}"),
        }
        for (bad, why) in [
            ("{nope", "not valid JSON"),
            ("[1]", "not a JSON object"),
            ("{}", "names no plugin"),
            (
                r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"weft","mode":"fast"}]}"#,
                "weft-cni would refuse it",
            ),
            (
                r#"{"name":"cbr0","plugins":[{"type":"weft"}]}"#,
                "cniVersion",
            ),
            (r#"{"plugins":"weft"}"#, "names no plugin"),
        ] {
            match parse(&path, bad) {
                Conf::Broken(w) | Conf::Refused(w) => assert!(w.contains(why), "{bad}: {w}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn another_conf_file_first_is_named_with_weft_s() {
        let c = conf_check(
            &p("/etc/cni/net.d/05-other.conflist"),
            &p("/etc/cni/net.d"),
            &Conf::Foreign(vec!["bridge".into(), "portmap".into()]),
            Some("10-weft.conflist"),
            &p("/run/flannel/subnet.env"),
            true,
        );
        assert_eq!(c.status, Status::Fail);
        assert_eq!(
            c.detail,
            "/etc/cni/net.d/05-other.conflist, the first in /etc/cni/net.d by name and so the one the runtime uses, is not weft's: its plugins are [bridge, portmap]; weft's 10-weft.conflist comes after it"
        );
        // Without weft's anywhere, off Kubernetes: a note.
        let podman = Conf::Foreign(vec!["bridge".into()]);
        let c = conf_check(
            &p("/x/87-podman.conflist"),
            &p("/x"),
            &podman,
            None,
            &p("/s"),
            false,
        );
        assert_eq!(c.status, Status::Note, "{c:?}");
        let c = conf_check(
            &p("/x/87-podman.conflist"),
            &p("/x"),
            &podman,
            None,
            &p("/s"),
            true,
        );
        assert_eq!(c.status, Status::Fail, "{c:?}");
        let o = ours(
            r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"weft","subnetFile":"/run/weft/subnet.env"}]}"#,
        );
        let c = conf_check(
            &p("/x/10-weft.conflist"),
            &p("/x"),
            &Conf::Ours(Box::new(o)),
            None,
            &p("/run/flannel/subnet.env"),
            true,
        );
        assert!(c.detail.contains("its subnetFile /run/weft/subnet.env is not weftd's --subnet-file /run/flannel/subnet.env"), "{c:?}");
    }

    #[test]
    fn a_missing_plugin_is_named_with_its_fix() {
        let o = ours(crate::cni::install::DEFAULT_CONFLIST);
        let path = p("/etc/cni/net.d/10-weft.conflist");
        let n = needs(&o, true);
        assert_eq!(
            n.iter()
                .map(|n| (n.name.as_str(), n.required))
                .collect::<Vec<_>>(),
            [
                ("weft", true),
                ("bridge", false),
                ("host-local", false),
                ("portmap", true)
            ]
        );
        let c = plugins_check(&path, &dirs(), &n, &|name| name == "weft");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(
            c.detail,
            "/etc/cni/net.d/10-weft.conflist names portmap, not found as an executable in /opt/cni/bin: the runtime fails every pod's ADD"
        );
        assert!(
            c.fix
                .unwrap()
                .contains("apt install containernetworking-plugins")
        );
        let c = plugins_check(&path, &dirs(), &n, &|name| name == "portmap");
        assert!(
            c.fix
                .unwrap()
                .starts_with("weft-cni install --bin-dir /opt/cni/bin")
        );
        let c = plugins_check(&path, &dirs(), &n, &|name| name != "bridge");
        assert_eq!(c.status, Status::Pass);
        assert!(
            c.detail
                .ends_with("no bridge there, so weft-cni wires pods in its built-in mode"),
            "{}",
            c.detail
        );
        // flannel's own plugin always delegates.
        let o = ours(r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel"}]}"#);
        assert!(needs(&o, false).iter().all(|n| n.required));
        assert!(holds(b"xx weft-cni: yy", WEFT_CNI_MARK) && !holds(b"flannel", WEFT_CNI_MARK));
    }
}
