//! The cluster under test, reached as a user reaches it: `scripts/cluster.sh`
//! to build and tear down, kubectl for everything in the API, and a node's
//! own namespaces for what only the node sees (routes, its weftd process).

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub type Res<T> = Result<T, String>;

pub struct Cluster {
    script: PathBuf,
    /// Where the harness keeps its logs (`WEFT_CLUSTER_DIR`).
    pub dir: PathBuf,
}

fn run(mut c: Command, what: &str) -> Res<String> {
    let out: Output = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Cluster {
    /// `scripts/cluster.sh up`: builds what is not cached, starts the
    /// cluster and installs weft from docker/weft.yaml.
    pub fn up() -> Res<Cluster> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let c = Cluster {
            script: root.join("scripts/cluster.sh"),
            dir: PathBuf::from(
                std::env::var("WEFT_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/weft-cluster".into()),
            ),
        };
        if std::env::var("WEFT_CLUSTER_KEEP").as_deref() == Ok("1")
            && c.dir.join("admin.conf").exists()
            && c.kubectl(&["get", "nodes"]).is_ok()
        {
            println!(
                "reusing the cluster in {} (WEFT_CLUSTER_KEEP=1)",
                c.dir.display()
            );
            return Ok(c);
        }
        let mut cmd = Command::new(&c.script);
        cmd.arg("up")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let status = cmd
            .status()
            .map_err(|e| format!("scripts/cluster.sh up: {e}"))?;
        if !status.success() {
            // Leave nothing behind, but keep what tells why.
            c.dump_state("cluster up");
            return Err(format!("scripts/cluster.sh up: {status}"));
        }
        Ok(c)
    }

    pub fn script(&self, args: &[&str]) -> Res<String> {
        let mut c = Command::new(&self.script);
        c.args(args);
        run(c, &format!("cluster.sh {}", args.join(" ")))
    }

    pub fn kubectl(&self, args: &[&str]) -> Res<String> {
        let mut c = Command::new(&self.script);
        c.arg("kubectl").args(args);
        run(c, &format!("kubectl {}", args.join(" ")))
    }

    pub fn kubectl_json(&self, args: &[&str]) -> Res<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.kubectl(&a)?;
        serde_json::from_str(&out).map_err(|e| format!("kubectl {}: not JSON: {e}", args.join(" ")))
    }

    /// `kubectl apply` of a manifest given as text.
    pub fn apply(&self, yaml: &str) -> Res<()> {
        let mut c = Command::new(&self.script);
        c.args(["kubectl", "apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| format!("kubectl apply: {e}"))?;
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(yaml.as_bytes())
            .map_err(|e| format!("kubectl apply: {e}"))?;
        let out = child
            .wait_with_output()
            .map_err(|e| format!("kubectl apply: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "kubectl apply: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `kubectl exec -n NS POD -- CMD`.
    pub fn exec(&self, ns: &str, pod: &str, cmd: &[&str]) -> Res<String> {
        let mut a = vec!["exec", "-n", ns, pod, "--"];
        a.extend_from_slice(cmd);
        self.kubectl(&a)
    }

    /// The same, started in the background (a long probe).
    pub fn exec_spawn(&self, ns: &str, pod: &str, cmd: &[&str]) -> Res<Child> {
        let mut c = Command::new(&self.script);
        c.args(["kubectl", "exec", "-n", ns, pod, "--"])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().map_err(|e| format!("kubectl exec {pod}: {e}"))
    }

    /// CMD in a node's network and mount namespaces (what the node's own
    /// processes see).
    pub fn on_node(&self, node: &str, cmd: &[&str]) -> Res<String> {
        let mut a = vec!["node-exec", node];
        a.extend_from_slice(cmd);
        self.script(&a)
    }

    /// CMD in a network namespace of the harness (`wc-ext`, a node's).
    pub fn in_netns(&self, ns: &str, cmd: &[&str]) -> Res<String> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(cmd);
        run(c, &format!("ip netns exec {ns} {}", cmd.join(" ")))
    }

    /// Writes what a failed check needs for its diagnosis: nodes, pods,
    /// weft's logs, the events.
    pub fn dump_state(&self, check: &str) {
        let dir = state_dir();
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!(
            "failed-{}.txt",
            check.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
        let mut s = String::new();
        for args in [
            &["get", "nodes", "-o", "wide"][..],
            &["get", "pods", "-A", "-o", "wide"],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"],
            &[
                "-n",
                "kube-weft",
                "logs",
                "-l",
                "k8s-app=weft",
                "--tail=60",
                "--prefix",
                "--all-containers",
            ],
            &[
                "-n",
                "kube-flannel",
                "logs",
                "-l",
                "app=flannel",
                "--tail=60",
                "--prefix",
                "--all-containers",
            ],
        ] {
            s.push_str(&format!("$ kubectl {}\n", args.join(" ")));
            match self.kubectl(args) {
                Ok(o) => s.push_str(&o),
                Err(e) => s.push_str(&e),
            }
            s.push('\n');
        }
        let _ = std::fs::write(&file, &s);
        println!("    (cluster state: {})", file.display());
        if std::env::var("CI").as_deref() == Ok("true") {
            // CI keeps only what was printed.
            println!("{s}");
        }
    }
}

/// Where failed checks leave the cluster's state and the components' logs,
/// which `scripts/cluster.sh down` would otherwise remove.
fn state_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cluster-state")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The logs of every component (weft's pods included), for a look after.
        let logs = state_dir().join("logs");
        let _ = std::fs::remove_dir_all(&logs);
        let _ = std::fs::create_dir_all(&logs);
        let _ = Command::new("bash")
            .args([
                "-c",
                r#"cp -r "$1/logs/." "$2/" && for n in "$1"/nodes/*/; do
                     n=${n%/}; cp -r "$n/root/var/log/pods" "$2/pods-${n##*/}"; done"#,
                "bash",
            ])
            .arg(&self.dir)
            .arg(&logs)
            .stderr(Stdio::null())
            .status();
        if std::env::var("WEFT_CLUSTER_KEEP").as_deref() == Ok("1") {
            println!("cluster kept (WEFT_CLUSTER_KEEP=1): scripts/cluster.sh down removes it");
            return;
        }
        let _ = Command::new(&self.script)
            .arg("down")
            .stdin(Stdio::null())
            .status();
    }
}

/// Polls `f` every 500 ms until it returns `Ok`, for at most `secs`; the
/// last error says why it did not.
pub fn wait<T>(secs: u64, what: &str, mut f: impl FnMut() -> Res<T>) -> Res<T> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > end => {
                return Err(format!("{what}: not within {secs} s: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The test program, built beside the Kubernetes binaries (scripts/cluster.sh).
pub fn netprobe_bin() -> String {
    let cache =
        std::env::var("WEFT_CLUSTER_CACHE").unwrap_or_else(|_| "/var/cache/weft-cluster".into());
    format!("{cache}/bin/netprobe")
}
