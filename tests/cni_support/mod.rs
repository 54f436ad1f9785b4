//! Helpers for weft-cni's tests: uniquely named network namespaces that are
//! always deleted, a "node" (a netns standing for the host, its subnet.env and
//! dataDir) and a runner that calls the plugin binary exactly as a runtime
//! does: `CNI_*` in the environment, the configuration on stdin.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_weft-cni");
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
pub const NETWORK: &str = "10.77.0.0/16";
pub const SUBNET: &str = "10.77.5.0/24";
pub const GATEWAY: &str = "10.77.5.1";
pub const MTU: u32 = 1410;
/// The IPv6 half of a dual-stack node ([`Node::dual`]), and all of an
/// IPv6-only one ([`Node::ipv6_only`]).
pub const NETWORK6: &str = "fd77::/48";
pub const SUBNET6: &str = "fd77:0:0:5::/64";
pub const GATEWAY6: &str = "fd77:0:0:5::1";

/// Whether the test may run: root, or a loud skip (a failure when CI=true).
pub fn root_or_skip(test: &str) -> bool {
    // /proc/self belongs to the effective user.
    let euid =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc"));
    if euid == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root (network namespaces) and CI=true: run the tests as root");
    }
    // Written to the real stderr: libtest captures eprintln! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED (needs root): {test}: creates network namespaces"
    );
    false
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted on drop (even when the test fails).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("wcni-{}-{tag}-{n}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        Netns { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -j -n NS ARGS`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j", "-n", &self.name];
        a.extend_from_slice(args);
        let out = Command::new("ip").args(&a).output().expect("run ip");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()))
    }

    pub fn ip(&self, args: &[&str]) -> bool {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        Command::new("ip")
            .args(&a)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn has_link(&self, name: &str) -> bool {
        self.ip(&["link", "show", "dev", name])
    }

    /// Deletes the namespace now (the drop then finds it gone).
    pub fn delete(&self) {
        sh(&["ip", "netns", "del", &self.name]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

pub fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(st.success(), "{args:?} failed");
}

/// How the plugin finds (or does not find) delegates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `CNI_PATH` holds the reference plugins: bridge + host-local.
    Delegate,
    /// `CNI_PATH` is an empty directory.
    Builtin,
}

/// A node: its netns (the plugin runs there, as on a host), subnet.env and dataDir.
pub struct Node {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub mode: Mode,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub json: Value,
}

impl Out {
    pub fn cni_code(&self) -> Option<u64> {
        self.json.get("code").and_then(Value::as_u64)
    }
    pub fn msg(&self) -> String {
        self.json
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }
}

impl Node {
    pub fn new(mode: Mode) -> Node {
        let node = Node {
            ns: Netns::new("node"),
            dir: tempfile::tempdir().expect("tempdir"),
            mode,
        };
        std::fs::write(
            node.subnet_env(),
            format!(
                "FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={GATEWAY}/24\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n"
            ),
        )
        .expect("write subnet.env");
        std::fs::create_dir_all(node.empty_path()).expect("mkdir");
        node
    }

    /// A dual-stack node: subnet.env also holds `FLANNEL_IPV6_NETWORK` and
    /// `FLANNEL_IPV6_SUBNET`, as weftd writes them.
    pub fn dual(mode: Mode) -> Node {
        let node = Node::new(mode);
        std::fs::write(
            node.subnet_env(),
            format!(
                "FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={GATEWAY}/24\nFLANNEL_IPV6_NETWORK={NETWORK6}\nFLANNEL_IPV6_SUBNET={GATEWAY6}/64\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n"
            ),
        )
        .expect("write subnet.env");
        node
    }

    /// An IPv6-only node (`EnableIPv4: false`): subnet.env holds only
    /// `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET` (no `FLANNEL_NETWORK`
    /// or `FLANNEL_SUBNET`), as flannel and weftd write it.
    pub fn ipv6_only(mode: Mode) -> Node {
        let node = Node::new(mode);
        std::fs::write(
            node.subnet_env(),
            format!(
                "FLANNEL_IPV6_NETWORK={NETWORK6}\nFLANNEL_IPV6_SUBNET={GATEWAY6}/64\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n"
            ),
        )
        .expect("write subnet.env");
        node
    }

    pub fn subnet_env(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn host_local_dir(&self) -> PathBuf {
        self.dir.path().join("host-local")
    }
    pub fn empty_path(&self) -> PathBuf {
        self.dir.path().join("empty-cni-path")
    }
    pub fn cni_path(&self) -> String {
        match self.mode {
            Mode::Delegate => REFERENCE_PLUGINS.to_string(),
            Mode::Builtin => self.empty_path().display().to_string(),
        }
    }

    /// A flannel-style plugin configuration with `"type": "weft"`.
    pub fn conf(&self, version: &str) -> Value {
        serde_json::json!({
            "cniVersion": version,
            "name": "cbr0",
            "type": "weft",
            "subnetFile": self.subnet_env(),
            "dataDir": self.data_dir(),
            "delegate": { "hairpinMode": true, "isDefaultGateway": true },
            "ipam": { "dataDir": self.host_local_dir() },
        })
    }

    /// Runs the plugin inside the node's netns, as a runtime would.
    pub fn call(
        &self,
        command: &str,
        cid: &str,
        netns: Option<&str>,
        ifname: &str,
        stdin: &Value,
    ) -> Out {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name, BIN])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", self.cni_path());
        if let Some(n) = netns {
            cmd.env("CNI_NETNS", n);
        }
        run(cmd, stdin.to_string().as_bytes())
    }

    /// The addresses weft's built-in IPAM holds (every subnet's store: a
    /// dual-stack node has one per family).
    pub fn builtin_allocations(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.data_dir().join("ipam")) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd.flatten().flat_map(|e| ip_files(&e.path())).collect();
        v.sort();
        v
    }

    /// The addresses host-local holds.
    pub fn host_local_allocations(&self) -> Vec<String> {
        ip_files(&self.host_local_dir().join("cbr0"))
    }

    pub fn allocations(&self) -> Vec<String> {
        match self.mode {
            Mode::Delegate => self.host_local_allocations(),
            Mode::Builtin => self.builtin_allocations(),
        }
    }
}

fn ip_files(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

/// Runs a prepared command with `stdin`, collecting everything.
pub fn run(mut cmd: Command, stdin: &[u8]) -> Out {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn plugin");
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin);
    }
    let out = child.wait_with_output().expect("wait plugin");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Out {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the plugin directly (no netns), with exactly `env`.
pub fn call_raw(env: &[(&str, &str)], stdin: &[u8]) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().envs(env.iter().copied());
    run(cmd, stdin)
}
