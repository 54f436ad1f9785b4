//! `weftd doctor`'s store and CNI lines, from the built binary: the
//! Kubernetes API server (the in-process one of `kube_support`, on
//! loopback) unreachable through its in-cluster address, its TLS
//! certificate, RBAC verbs, the node's podCIDR and annotations; etcd's TLS
//! (a real etcd on loopback); the CNI conf dir and bin dir. No network
//! namespace: every address is on loopback, every peer lease names a 127.x
//! address, and the network config's VXLAN port is a free one where no
//! weftd runs, so the doctor never probes a peer.

mod etcd_support;
mod kube_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kube_support::{ApiServer, flannel_annotations, new_state, node_json};
use serde_json::json;

/// A free UDP port on loopback: the VXLAN port of the tests' network config.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback TCP port nobody listens on.
fn closed_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node's files for the doctor: net-conf.json (on a free VXLAN port),
/// an empty CNI conf dir and bin dir, a state dir, a subnet.env path.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("net-conf.json"),
            format!(
                r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"vxlan","Port":{}}}}}"#,
                free_udp_port()
            ),
        )
        .unwrap();
        for d in ["net.d", "bin", "state"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Node { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn s(&self, p: &str) -> String {
        self.path(p).display().to_string()
    }

    /// An executable stand-in for a CNI plugin in the bin dir.
    fn plugin(&self, name: &str) {
        let p = self.path("bin").join(name);
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn conf(&self, name: &str, text: &str) {
        std::fs::write(self.path("net.d").join(name), text).unwrap();
    }

    /// `weftd doctor` with `args` after the node's own, in an environment
    /// of `env` only: its exit status and its report.
    fn doctor(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weftd"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .arg("doctor")
            .args([
                "--iface",
                "127.0.0.1",
                "--net-config-path",
                &self.s("net-conf.json"),
                "--subnet-file",
                &self.s("subnet.env"),
                "--state-dir",
                &self.s("state"),
                "--cni-conf-dir",
                &self.s("net.d"),
                "--cni-bin-dir",
                &self.s("bin"),
                "--tun-name",
                "weftdoc0",
            ])
            .args(args)
            .stdin(Stdio::null());
        let out = cmd.output().expect("weftd doctor runs");
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "{report}{}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| !l.contains(" INFO "))
                .collect::<Vec<_>>()
                .join("\n")
        );
        (out.status.success(), report)
    }
}

/// The line starting `start` and the fix under it, if any.
fn check(report: &str, start: &str) -> (String, Option<String>) {
    let mut lines = report.lines();
    while let Some(l) = lines.next() {
        if l.starts_with(start) {
            let fix = lines
                .next()
                .and_then(|f| f.strip_prefix("    fix: "))
                .map(str::to_string);
            return (l.to_string(), fix);
        }
    }
    panic!("no line starting {start:?} in:\n{report}");
}

/// The line starting `start` is `line`, and the fix under it is `fix`.
fn expect(report: &str, start: &str, line: &str, fix: &str) {
    let (got, got_fix) = check(report, start);
    assert_eq!(got, line);
    assert_eq!(got_fix.as_deref(), Some(fix), "{got}");
}

fn no_line(report: &str, start: &str) {
    assert!(
        !report.lines().any(|l| l.starts_with(start)),
        "a line starting {start:?} in:\n{report}"
    );
}

/// An API server with node `n1` (podCIDR 10.244.1.0/24, annotated as this
/// node, 127.0.0.1, announces itself) and a peer `n2` on 127.0.0.2.
fn cluster() -> kube_support::Shared {
    let st = new_state();
    {
        let mut s = st.lock().unwrap();
        s.put_node(node_json(
            "n1",
            Some("10.244.1.0/24"),
            "127.0.0.1",
            flannel_annotations("127.0.0.1", "0a:58:7f:00:00:01"),
        ));
        s.put_node(node_json(
            "n2",
            Some("10.244.2.0/24"),
            "127.0.0.2",
            flannel_annotations("127.0.0.2", "0a:58:7f:00:00:02"),
        ));
    }
    st
}

fn kube_args(url: &str) -> Vec<String> {
    vec![
        "--kube-subnet-mgr".into(),
        "--kube-api-url".into(),
        url.into(),
    ]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// In-cluster config whose KUBERNETES_SERVICE_HOST does not answer (a
/// ClusterIP without kube-proxy): the deadlock, said plainly, with the fix;
/// and the doctor stops there.
#[test]
fn a_silent_cluster_ip_is_the_cni_before_kube_proxy_deadlock() {
    let n = Node::new();
    let sa = n.path("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    let (ca, _) = kube_support::tls_files(n.dir.path(), "IP:10.96.0.1");
    std::fs::copy(&ca, sa.join("ca.crt")).unwrap();
    std::fs::write(sa.join("token"), "test-token").unwrap();
    std::fs::write(sa.join("namespace"), "kube-weft").unwrap();
    let port = closed_tcp_port().to_string();
    let (ok, report) = n.doctor(
        &["--kube-subnet-mgr"],
        &[
            ("NODE_NAME", "n1"),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.44"),
            ("KUBERNETES_SERVICE_PORT", &port),
            ("WEFT_KUBE_SERVICE_ACCOUNT_DIR", sa.to_str().unwrap()),
        ],
    );
    assert!(!ok);
    let (line, fix) = check(&report, "✗ Kubernetes API:");
    assert_eq!(
        line,
        format!(
            "✗ Kubernetes API: https://127.0.0.44:{port} (in-cluster config: KUBERNETES_SERVICE_HOST=127.0.0.44, KUBERNETES_SERVICE_PORT={port}) does not answer: TCP connect to 127.0.0.44:{port}: Connection refused (os error 111). In a pod that address is the `kubernetes` Service's ClusterIP, which answers only once kube-proxy runs, and kube-proxy waits for the pod network that weft provides: the CNI-before-kube-proxy deadlock"
        )
    );
    assert_eq!(
        fix.as_deref(),
        Some(
            "give weftd the API server's real address: set KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT in the DaemonSet's env to the control plane's address and port (e.g. 10.0.0.100 and 6443), or pass --kube-api-url https://<control-plane>:6443 (flannel's advice for clusters without kube-proxy), or --kubeconfig-file with a kubeconfig that names it"
        )
    );
    // Nothing else can work: the doctor stops.
    no_line(&report, "✓ store");
    no_line(&report, "✗ store");
    // A Kubernetes node without any CNI configuration starts no pods.
    std::fs::remove_dir(n.path("net.d")).unwrap();
    let (_, report) = n.doctor(
        &["--kube-subnet-mgr"],
        &[
            ("NODE_NAME", "n1"),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.44"),
            ("KUBERNETES_SERVICE_PORT", &port),
            ("WEFT_KUBE_SERVICE_ACCOUNT_DIR", sa.to_str().unwrap()),
        ],
    );
    let (line, fix) = check(&report, "✗ CNI config:");
    assert_eq!(
        line,
        format!(
            "✗ CNI config: {} does not exist: the kubelet reports NetworkNotReady and starts no pods on this node",
            n.s("net.d")
        )
    );
    assert_eq!(
        fix,
        Some(format!(
            "weft-cni install --bin-dir {} --conf-dir {} (weft's DaemonSet does it: its init container and weftd --cni-conflist)",
            n.s("bin"),
            n.s("net.d")
        ))
    );
}

/// The API server's certificate: a CA that did not sign it, names without
/// the address dialled, and one that is right (then every check of a
/// healthy Kubernetes node's store passes).
#[test]
fn api_server_tls_wrong_ca_missing_san_and_right() {
    let n = Node::new();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let env = [("NODE_NAME", "n1")];

    // Signed by a CA, but weft trusts another one.
    let (_, tls) = kube_support::tls_files(dirs[0].path(), "DNS:kubernetes,IP:127.0.0.1");
    let (other_ca, _) = kube_support::tls_files(dirs[1].path(), "DNS:unused");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let srv = ApiServer::start(l, cluster(), Some(tls));
    let kc = kube_support::kubeconfig(dirs[0].path(), &srv.url, Some(&other_ca));
    let kc = kc.display().to_string();
    let (ok, report) = n.doctor(&["--kube-subnet-mgr", "--kubeconfig-file", &kc], &env);
    assert!(!ok);
    let (line, fix) = check(&report, "✗ API server TLS:");
    assert_eq!(
        line,
        format!(
            "✗ API server TLS: {} presents a certificate (subject CN=kube-apiserver, issuer CN=kubernetes, names [kubernetes, 127.0.0.1]) that the CA weft trusts (the certificate-authority of --kubeconfig-file {kc}) did not sign",
            srv.addr
        )
    );
    assert_eq!(
        fix.as_deref(),
        Some(
            "give weft the CA that signed the API server's certificate (kubeadm: /etc/kubernetes/pki/ca.crt): the kubeconfig's certificate-authority(-data), or the ServiceAccount's ca.crt"
        )
    );
    no_line(&report, "✓ store");
    drop(srv);

    // The right CA, but the certificate names the ClusterIP, not 127.0.0.1.
    let (ca, tls) = kube_support::tls_files(
        dirs[2].path(),
        "DNS:kubernetes,DNS:kubernetes.default.svc,IP:10.96.0.1",
    );
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let srv = ApiServer::start(l, cluster(), Some(tls));
    let kc = kube_support::kubeconfig(dirs[2].path(), &srv.url, Some(&ca))
        .display()
        .to_string();
    let (ok, report) = n.doctor(&["--kube-subnet-mgr", "--kubeconfig-file", &kc], &env);
    assert!(!ok);
    let (line, fix) = check(&report, "✗ API server TLS:");
    assert_eq!(
        line,
        format!(
            "✗ API server TLS: {} presents a certificate (subject CN=kube-apiserver) whose names [kubernetes, kubernetes.default.svc, 10.96.0.1] do not include 127.0.0.1, the address dialled",
            srv.addr
        )
    );
    assert_eq!(
        fix.as_deref(),
        Some(
            "dial the API server by one of those names (--kube-api-url, the kubeconfig's server, or KUBERNETES_SERVICE_HOST), or reissue its certificate with 127.0.0.1 in its SANs (kubeadm: apiServer.certSANs)"
        )
    );
    drop(srv);

    // Right: reached directly, TLS, every verb, the node, its annotations.
    let (ca, tls) = kube_support::tls_files(dirs[0].path(), "DNS:kubernetes,IP:127.0.0.1");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let srv = ApiServer::start(l, cluster(), Some(tls));
    let kc = kube_support::kubeconfig(dirs[0].path(), &srv.url, Some(&ca))
        .display()
        .to_string();
    let (_, report) = n.doctor(&["--kube-subnet-mgr", "--kubeconfig-file", &kc], &env);
    let a = srv.addr;
    for want in [
        format!(
            "✓ Kubernetes API: https://{a} answers at {a} (the server of --kubeconfig-file {kc}, reached directly)"
        ),
        format!(
            "✓ API server TLS: {a} presents a certificate (subject CN=kube-apiserver) signed by the CA weft trusts (the certificate-authority of --kubeconfig-file {kc}) and valid for 127.0.0.1: its names are [kubernetes, 127.0.0.1]"
        ),
        format!("✓ store: Kubernetes API https://{a} (node n1) answers"),
        "✓ node n1: podCIDR 10.244.1.0/24, inside the Network 10.244.0.0/16 of net-conf.json"
            .to_string(),
        "✓ node n1 annotations: agree with what this node announces: public-ip 127.0.0.1, backend-type vxlan, VNI 1, VtepMAC 0a:58:7f:00:00:01".to_string(),
    ] {
        let (line, fix) = check(&report, &want);
        assert_eq!((line, fix), (want, None));
    }
    // The doctor only read: no patch of the node, no other write.
    for (verb, res) in srv.with(|s| s.requests.clone()) {
        assert!(
            ["get", "list", "watch"].contains(&verb.as_str())
                || (verb.as_str(), res.as_str()) == ("create", "selfsubjectaccessreviews"),
            "the doctor made a {res} call that writes"
        );
    }
}

/// Every verb weft needs, by SelfSubjectAccessReview: all allowed, one
/// denied (the ClusterRole rule to add), and a review API that refuses.
#[test]
fn rbac_verbs_allowed_denied_and_unreviewable() {
    let n = Node::new();
    let srv = ApiServer::loopback(cluster());
    let a = kube_args(&srv.url);
    let env = [("NODE_NAME", "n1")];
    let (_, report) = n.doctor(&args(&a), &env);
    let allowed = "allowed (RBAC: allowed by ClusterRoleBinding \"weft\" of ClusterRole \"weft\" to ServiceAccount \"weft/kube-weft\")";
    for (verb, res) in weft::store::kube::API_CALLS {
        let want = format!("✓ RBAC {verb} {res}: {allowed}");
        assert_eq!(check(&report, &want), (want, None));
    }
    assert_eq!(
        check(&report, "✓ Kubernetes API:").0,
        format!(
            "✓ Kubernetes API: {} answers at {} (--kube-api-url, reached directly)",
            srv.url, srv.addr
        )
    );
    no_line(&report, "✓ API server TLS");

    srv.with(|s| s.forbid = vec![("patch".into(), "nodes/status".into())]);
    let (ok, report) = n.doctor(&args(&a), &env);
    assert!(!ok);
    expect(
        &report,
        "✗ RBAC patch nodes/status:",
        "✗ RBAC patch nodes/status: denied: weft's credentials may not patch nodes/status, so weftd cannot announce this node (its annotations) or clear NetworkUnavailable",
        "add the rule {apiGroups: [\"\"], resources: [\"nodes/status\"], verbs: [\"patch\"]} to weft's ClusterRole (docker/weft.yaml's, the shape of flannel's) and bind it to weft's ServiceAccount",
    );
    let want = format!("✓ RBAC get nodes: {allowed}");
    assert_eq!(check(&report, &want).0, want);

    srv.with(|s| {
        s.forbid.clear();
        s.review_refused = Some(403);
    });
    let (_, report) = n.doctor(&args(&a), &env);
    let (line, fix) = check(&report, "– RBAC:");
    assert_eq!(
        line,
        "– RBAC: not checked: the API server answers no SelfSubjectAccessReview (selfsubjectaccessreviews.authorization.k8s.io is forbidden: User \"system:anonymous\" cannot create resource \"selfsubjectaccessreviews\" in API group \"authorization.k8s.io\" at the cluster scope (403 Forbidden)); weftd's errors name a refused verb"
    );
    assert_eq!(fix, None);
    no_line(&report, "✓ RBAC get nodes");
}

/// The node's podCIDR: none assigned, outside the Network; and annotations
/// that name another address than this node's.
#[test]
fn pod_cidr_missing_outside_the_network_and_annotations_of_another_address() {
    let n = Node::new();
    let st = cluster();
    {
        let mut s = st.lock().unwrap();
        s.put_node(node_json("bare", None, "127.0.0.1", json!({})));
        s.put_node(node_json(
            "outside",
            Some("10.99.1.0/24"),
            "127.0.0.1",
            json!({}),
        ));
        s.put_node(node_json(
            "moved",
            Some("10.244.5.0/24"),
            "127.0.0.1",
            flannel_annotations("127.0.0.9", "0a:58:7f:00:00:09"),
        ));
    }
    let srv = ApiServer::loopback(st);
    let a = kube_args(&srv.url);

    let (ok, report) = n.doctor(&args(&a), &[("NODE_NAME", "bare")]);
    assert!(!ok);
    expect(
        &report,
        "✗ node bare:",
        "✗ node bare: has no podCIDR (spec.podCIDR and spec.podCIDRs are empty): nobody assigns node subnets in this cluster, so weftd has no subnet for this node",
        "run kube-controller-manager with --allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16 (kubeadm: kubeadm init --pod-network-cidr=10.244.0.0/16), or set spec.podCIDR on the node",
    );

    let (ok, report) = n.doctor(&args(&a), &[("NODE_NAME", "outside")]);
    assert!(!ok);
    expect(
        &report,
        "✗ node outside:",
        "✗ node outside: its podCIDR 10.99.1.0/24 lies outside the Network 10.244.0.0/16 of net-conf.json: weftd refuses it as this node's subnet",
        "make Network in net-conf.json equal kube-controller-manager's --cluster-cidr (kubeadm's --pod-network-cidr), which assigned 10.99.1.0/24",
    );

    let (ok, report) = n.doctor(&args(&a), &[("NODE_NAME", "moved")]);
    assert!(!ok);
    expect(
        &report,
        "✗ node moved annotations:",
        "✗ node moved annotations: flannel.alpha.coreos.com/public-ip is 127.0.0.9, but this node would announce 127.0.0.1: peers send its pods' traffic to 127.0.0.9",
        "start (or restart) weftd with these flags: it rewrites the annotations when it starts; if 127.0.0.1 is not the address peers should use, give weftd and the doctor the --iface/--public-ip that is (or set the annotation flannel.alpha.coreos.com/public-ip-overwrite)",
    );
    let want =
        "✓ node moved: podCIDR 10.244.5.0/24, inside the Network 10.244.0.0/16 of net-conf.json";
    assert_eq!(check(&report, want).0, want);
}

/// etcd's TLS on its own line: a CA that did not sign etcd's certificate,
/// a certificate without the address dialled, and the right files.
#[test]
fn etcd_tls_wrong_ca_missing_san_and_right() {
    if !etcd_support::etcd_available("etcd_tls_wrong_ca_missing_san_and_right") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tls = etcd_support::TlsFiles::generate(dir.path(), "DNS:localhost");
    let etcd = etcd_support::EtcdServer::start_tls(dir, tls.clone());
    let port = etcd.client_port;
    let n = Node::new();
    let run = |endpoint: &str, ca: &Path| {
        n.doctor(
            &[
                "--etcd-endpoints",
                endpoint,
                "--etcd-cafile",
                ca.to_str().unwrap(),
                "--etcd-certfile",
                tls.client_cert.to_str().unwrap(),
                "--etcd-keyfile",
                tls.client_key.to_str().unwrap(),
            ],
            &[],
        )
    };
    let localhost = format!("https://localhost:{port}");

    let (ok, report) = run(&localhost, &tls.wrong_ca);
    assert!(!ok);
    let (line, fix) = check(&report, "✗ etcd TLS");
    assert_eq!(
        line,
        format!(
            "✗ etcd TLS {localhost}: the server's certificate (subject CN=etcd-server, issuer CN=ca, names [localhost]) is not signed by --etcd-cafile {}",
            tls.wrong_ca.display()
        )
    );
    assert_eq!(
        fix.as_deref(),
        Some(
            "give --etcd-cafile the CA that signed etcd's --cert-file (etcdctl's --cacert; kubeadm's etcd: /etc/kubernetes/pki/etcd/ca.crt)"
        )
    );
    no_line(&report, "✗ store");

    let by_ip = format!("https://127.0.0.1:{port}");
    let (ok, report) = run(&by_ip, &tls.ca);
    assert!(!ok);
    let (line, fix) = check(&report, "✗ etcd TLS");
    assert_eq!(
        line,
        format!(
            "✗ etcd TLS {by_ip}: the server's certificate (subject CN=etcd-server, issuer CN=ca, names [localhost]) does not name 127.0.0.1, the host dialled"
        )
    );
    assert_eq!(
        fix.as_deref(),
        Some(
            "name etcd in --etcd-endpoints by one of the certificate's names, or reissue etcd's certificate with 127.0.0.1 in its SANs"
        )
    );

    let (_, report) = run(&localhost, &tls.ca);
    let want = format!(
        "✓ etcd TLS {localhost}: the server's certificate (subject CN=etcd-server, issuer CN=ca, names [localhost]) is signed by --etcd-cafile {} and valid for localhost; etcd accepts the client certificate {}",
        tls.ca.display(),
        tls.client_cert.display()
    );
    assert_eq!(check(&report, &want), (want, None));
    assert_eq!(
        check(&report, "✓ store:").0,
        format!("✓ store: etcd {localhost} answers")
    );
}

/// The conf file the runtime would use: another network's first, one that
/// names a plugin the bin dir lacks, and weft's with every plugin there.
#[test]
fn cni_conf_dir_other_first_missing_plugin_and_good() {
    let n = Node::new();
    let subnet = n.s("subnet.env");
    let weft = format!(
        r#"{{"name":"cbr0","cniVersion":"1.0.0","plugins":[{{"type":"weft","subnetFile":"{subnet}","delegate":{{"hairpinMode":true,"isDefaultGateway":true}}}},{{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#
    );
    n.conf("10-weft.conflist", &weft);
    n.conf(
        "05-other.conflist",
        r#"{"name":"other","cniVersion":"1.0.0","plugins":[{"type":"bridge","bridge":"cni9","ipam":{"type":"host-local","subnet":"10.88.0.0/16"}},{"type":"portmap"}]}"#,
    );
    let (ok, report) = n.doctor(&[], &[]);
    assert!(!ok);
    let (line, fix) = check(&report, "✗ CNI config:");
    assert_eq!(
        line,
        format!(
            "✗ CNI config: {d}/05-other.conflist, the first in {d} by name and so the one the runtime uses, is not weft's: its plugins are [bridge, portmap]; weft's 10-weft.conflist comes after it",
            d = n.s("net.d")
        )
    );
    assert_eq!(
        fix,
        Some(format!(
            "remove it (or move it out of {d}), or install weft's under a name that sorts first: weft-cni install --conf-dir {d} --conf-name 00-weft.conflist",
            d = n.s("net.d")
        ))
    );
    no_line(&report, "✓ CNI plugins");

    std::fs::remove_file(n.path("net.d/05-other.conflist")).unwrap();
    for p in ["weft", "bridge", "host-local"] {
        n.plugin(p);
    }
    let (ok, report) = n.doctor(&[], &[]);
    assert!(!ok);
    let conflist = n.s("net.d/10-weft.conflist");
    let want = format!(
        "✓ CNI config: {conflist}, the first in {}, is weft's: network cbr0, plugin weft, mode auto, subnetFile {subnet}",
        n.s("net.d")
    );
    assert_eq!(check(&report, &want), (want, None));
    let (line, fix) = check(&report, "✗ CNI plugins:");
    assert_eq!(
        line,
        format!(
            "✗ CNI plugins: {conflist} names portmap, not found as an executable in {}: the runtime fails every pod's ADD",
            n.s("bin")
        )
    );
    assert_eq!(
        fix,
        Some(format!(
            "install the reference plugins into {b}: apt install containernetworking-plugins (Debian puts them in /usr/lib/cni: copy or link them into {b}), or the release tarball of github.com/containernetworking/plugins",
            b = n.s("bin")
        ))
    );

    n.plugin("portmap");
    let (_, report) = n.doctor(&[], &[]);
    let want = format!(
        "✓ CNI plugins: weft (weft-cni), bridge, host-local, portmap in {}",
        n.s("bin")
    );
    assert_eq!(check(&report, &want), (want, None));
    // The embedded store checked on, and no peer probed (none is leased).
    check(&report, "✓ store: local:");
}
