//! A real etcd for tests: `/usr/bin/etcd` on 127.0.0.1 with free ports and its
//! data in a temp dir, stopped and started on the same data, snapshotted,
//! restored and compacted with `etcdctl` as an operator would. Killed on drop.
//! The netns tests run it (and `etcdctl`) inside a test namespace instead,
//! listening on an address there ([`EtcdServer::start_in_netns`]).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where the binaries are looked for.
pub const ETCD: &str = "etcd";
pub const ETCDCTL: &str = "etcdctl";

/// `true` when etcd can run here; otherwise prints a loud SKIPPED line (and
/// panics under CI=true, where a skip would hide a missing install step).
pub fn etcd_available(test: &str) -> bool {
    let ok = Command::new(ETCD)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        && Command::new(ETCDCTL)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED (etcd not installed): {test}; run scripts/deps.sh");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "etcd/etcdctl not installed under CI=true: scripts/deps.sh must install etcd-server and etcd-client"
            );
        }
    }
    ok
}

/// A free loopback port below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), so that no outgoing connection takes it
/// as its source port while etcd is stopped between a test's stop and
/// resume (a port from `bind(:0)` is in that range, and one was taken so).
fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Each call starts past the last one's port: a port is free again as
    // soon as the probe closes, and a server needs two distinct ones.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(low.saturating_sub(10_000).max(1));
    let first = std::process::id() % span;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < span, "no free loopback port below the ephemeral range");
        let port = 10_000 + ((first + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Certificates for a TLS etcd, made with the openssl CLI.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing of the above.
    pub wrong_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

fn make_leaf(dir: &Path, ca: &str, name: &str, sans: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    let ext = format!(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={sans}\n"
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

impl TlsFiles {
    /// A CA, a server certificate for `server_sans` (openssl form:
    /// `DNS:localhost`), a client certificate, and a wrong CA.
    pub fn generate(dir: &Path, server_sans: &str) -> TlsFiles {
        make_ca(dir, "ca");
        make_ca(dir, "wrong-ca");
        make_leaf(dir, "ca", "etcd-server", server_sans);
        make_leaf(dir, "ca", "weft-node", "DNS:weft-node");
        TlsFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("etcd-server.crt"),
            server_key: dir.join("etcd-server.key"),
            client_cert: dir.join("weft-node.crt"),
            client_key: dir.join("weft-node.key"),
            wrong_ca: dir.join("wrong-ca.crt"),
        }
    }
}

/// One etcd member on loopback.
pub struct EtcdServer {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub tls: Option<TlsFiles>,
    /// `user:password` for etcdctl once auth is enabled.
    pub user: Option<String>,
    /// The member name and, in a cluster, everyone's `name=peer-url` list.
    pub name: String,
    pub initial_cluster: Option<String>,
    /// The network namespace etcd and etcdctl run in (`None`: the test's own).
    pub netns: Option<String>,
    /// The client listen address (127.0.0.1 unless in a namespace).
    pub host: String,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts a plain-http etcd and waits until it answers.
    pub fn start() -> EtcdServer {
        EtcdServer::start_with(None)
    }

    /// Starts an etcd with client-certificate auth over the given files.
    pub fn start_tls(dir: tempfile::TempDir, tls: TlsFiles) -> EtcdServer {
        EtcdServer::start_in(dir, Some(tls))
    }

    fn start_with(tls: Option<TlsFiles>) -> EtcdServer {
        EtcdServer::start_in(tempfile::tempdir().unwrap(), tls)
    }

    fn start_in(dir: tempfile::TempDir, tls: Option<TlsFiles>) -> EtcdServer {
        EtcdServer::start_in_ns(dir, tls, None, "127.0.0.1")
    }

    /// Starts a plain-http etcd inside namespace `ns`, listening for clients on
    /// `host` there (its peer URL stays on that namespace's loopback).
    pub fn start_in_netns(ns: &str, host: std::net::Ipv4Addr) -> EtcdServer {
        EtcdServer::start_in_ns(
            tempfile::tempdir().unwrap(),
            None,
            Some(ns),
            &host.to_string(),
        )
    }

    /// As [`EtcdServer::start_in_netns`], listening on an IPv6 address
    /// (an IPv6-only underlay): its endpoint is `http://[host]:PORT`.
    pub fn start_in_netns6(ns: &str, host: std::net::Ipv6Addr) -> EtcdServer {
        EtcdServer::start_in_ns(
            tempfile::tempdir().unwrap(),
            None,
            Some(ns),
            &format!("[{host}]"),
        )
    }

    /// As [`EtcdServer::start_in_netns`], with client-certificate auth over
    /// `tls` (whose server certificate must name `host`).
    pub fn start_tls_in_netns(
        dir: tempfile::TempDir,
        tls: TlsFiles,
        ns: &str,
        host: std::net::Ipv4Addr,
    ) -> EtcdServer {
        EtcdServer::start_in_ns(dir, Some(tls), Some(ns), &host.to_string())
    }

    fn start_in_ns(
        dir: tempfile::TempDir,
        tls: Option<TlsFiles>,
        ns: Option<&str>,
        host: &str,
    ) -> EtcdServer {
        let data_dir = dir.path().join("data");
        let mut s = EtcdServer {
            data_dir,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            user: None,
            name: "default".into(),
            initial_cluster: None,
            netns: ns.map(str::to_string),
            host: host.to_string(),
            child: None,
        };
        s.resume();
        s
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The client URL: `http://127.0.0.1:PORT`, or `https://localhost:PORT` with
    /// TLS (the server certificate names `localhost` only, so that connecting by
    /// IP shows the missing-SAN error of seeds 000 and 002). In a namespace,
    /// the listen address instead of 127.0.0.1 / localhost.
    pub fn endpoint(&self) -> String {
        match (&self.tls, self.host.as_str()) {
            (None, h) => format!("http://{h}:{}", self.client_port),
            (Some(_), "127.0.0.1") => format!("https://localhost:{}", self.client_port),
            (Some(_), h) => format!("https://{h}:{}", self.client_port),
        }
    }

    fn listen_url(&self) -> String {
        format!("{}://{}:{}", self.scheme(), self.host, self.client_port)
    }

    /// `program`, run in this server's namespace when it has one.
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Starts etcd again on the same data dir and ports; waits until it answers.
    pub fn resume(&mut self) {
        self.spawn();
        self.wait_healthy();
    }

    fn cluster_arg(&self) -> String {
        self.initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, self.peer_url()))
    }

    /// Starts the etcd process without waiting for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let mut cmd = self.command(ETCD);
        cmd.args([
            "--name",
            &self.name,
            "--data-dir",
            self.data_dir.to_str().unwrap(),
            "--listen-client-urls",
            &self.listen_url(),
            "--advertise-client-urls",
            &self.endpoint(),
            "--listen-peer-urls",
            &self.peer_url(),
            "--initial-advertise-peer-urls",
            &self.peer_url(),
            "--initial-cluster",
            &self.cluster_arg(),
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]);
        if let Some(t) = &self.tls {
            cmd.args([
                "--cert-file",
                t.server_cert.to_str().unwrap(),
                "--key-file",
                t.server_key.to_str().unwrap(),
                "--trusted-ca-file",
                t.ca.to_str().unwrap(),
                "--client-cert-auth",
            ]);
        }
        cmd.stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null());
        self.child = Some(cmd.spawn().expect("etcd starts"));
    }

    /// Waits until this member answers `endpoint health`.
    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.etcdctl_raw(&["--command-timeout=1s", "endpoint", "health"]);
            if out.status.success() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("etcd exited ({st}); log: {}", self.log_tail());
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy after 30 s: {}; log: {}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills etcd (as a crash or an outage would); the data dir stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read(self.dir.path().join("etcd.log")).unwrap_or_default();
        let n = s.len().saturating_sub(3000);
        String::from_utf8_lossy(&s[n..]).into_owned()
    }

    fn etcdctl_raw(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()));
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        if let Some(u) = &self.user {
            cmd.arg(format!("--user={u}"));
        }
        cmd.args(args).output().expect("etcdctl runs")
    }

    /// Runs etcdctl against this server; panics with its stderr when it fails.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl_raw(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", key, value]);
    }

    pub fn del(&self, key: &str) {
        self.etcdctl(&["del", key]);
    }

    /// The current revision of the store.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&["get", "/weft-test-revision-probe", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        v["header"]["revision"].as_i64().expect("a revision")
    }

    /// Compacts the history up to the current revision.
    pub fn compact(&self) -> i64 {
        let rev = self.revision();
        self.etcdctl(&["compact", &rev.to_string(), "--physical"]);
        rev
    }

    /// `etcdctl snapshot save` into the temp dir; returns the file.
    pub fn snapshot_save(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        self.etcdctl(&["snapshot", "save", p.to_str().unwrap()]);
        p
    }

    /// Stops etcd, replaces its data with `snapshot` (`etcdctl snapshot restore`,
    /// as an operator restoring a backup does) and starts it again.
    pub fn restore(&mut self, snapshot: &Path) {
        self.stop();
        std::fs::remove_dir_all(&self.data_dir).unwrap();
        let out = Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .args([
                "snapshot",
                "restore",
                snapshot.to_str().unwrap(),
                "--data-dir",
                self.data_dir.to_str().unwrap(),
                "--name",
                &self.name,
                "--initial-cluster",
                &self.cluster_arg(),
                "--initial-advertise-peer-urls",
                &self.peer_url(),
            ])
            .output()
            .expect("etcdctl runs");
        assert!(
            out.status.success(),
            "etcdctl snapshot restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.resume();
    }
}

impl EtcdServer {
    /// Enables etcd's auth with a root user and a `user` allowed readwrite on
    /// `prefix`/ only, as an operator would for flannel.
    pub fn enable_auth(&mut self, user: &str, password: &str, prefix: &str) {
        self.etcdctl(&["user", "add", "root:rootpw", "--interactive=false"]);
        let _ = self.etcdctl_raw(&["role", "add", "root"]);
        self.etcdctl(&["user", "grant-role", "root", "root"]);
        self.etcdctl(&["role", "add", user]);
        self.etcdctl(&[
            "role",
            "grant-permission",
            user,
            "--prefix=true",
            "readwrite",
            &format!("{prefix}/"),
        ]);
        self.etcdctl(&[
            "user",
            "add",
            &format!("{user}:{password}"),
            "--interactive=false",
        ]);
        self.etcdctl(&["user", "grant-role", user, user]);
        self.etcdctl(&["auth", "enable"]);
        self.user = Some("root:rootpw".into());
    }
}

/// A cluster of `n` members on loopback, each in its own temp dir.
pub fn cluster(n: usize) -> Vec<EtcdServer> {
    let mut members: Vec<EtcdServer> = (0..n)
        .map(|i| {
            let dir = tempfile::tempdir().unwrap();
            EtcdServer {
                data_dir: dir.path().join("data"),
                dir,
                client_port: free_port(),
                peer_port: free_port(),
                tls: None,
                user: None,
                name: format!("m{i}"),
                initial_cluster: None,
                netns: None,
                host: "127.0.0.1".into(),
                child: None,
            }
        })
        .collect();
    let all: Vec<String> = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect();
    for m in &mut members {
        m.initial_cluster = Some(all.join(","));
        m.spawn();
    }
    for m in &mut members {
        m.wait_healthy();
    }
    members
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
