//! What a real cluster must show with weft as its pod network, one check
//! each, in the order a user meets them: install, pods, Services, egress,
//! observability, a rollout, a killed weftd, the CNI-before-kube-proxy
//! deadlock and its fix, a node joining and a node deleted.

use crate::kube::{Cluster, Res, wait};
use ipnet::Ipv4Net;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::process::Child;
use std::time::Duration;

pub type Check = fn(&mut Ctx) -> Res<String>;

pub fn all() -> Vec<(&'static str, Check)> {
    vec![
        (
            "weft_runs_on_every_node_and_nodes_become_ready",
            weft_runs_on_every_node as Check,
        ),
        (
            "pods_get_addresses_in_their_nodes_pod_cidr",
            pods_get_addresses,
        ),
        (
            "every_pod_reaches_every_pod_with_its_own_address",
            pod_to_pod,
        ),
        (
            "cluster_ip_service_answers_from_every_node_and_hairpin",
            cluster_ip_service,
        ),
        ("node_port_answers_from_another_node", node_port),
        ("pods_reach_the_outside_masqueraded_to_their_node", egress),
        (
            "status_and_metrics_in_the_weft_pod_show_every_peer",
            status_and_metrics,
        ),
        (
            "rollout_restart_keeps_connections_between_pods",
            rollout_restart,
        ),
        (
            "sigkilled_weftd_is_restarted_by_kubelet_and_traffic_resumes",
            sigkill_weftd,
        ),
        (
            "deadlock_before_kube_proxy_is_named_and_the_fix_brings_the_node_up",
            deadlock_before_kube_proxy,
        ),
        (
            "a_node_added_later_joins_every_pods_reach",
            node_added_later,
        ),
        (
            "a_node_deleted_from_the_api_leaves_every_route",
            node_deleted,
        ),
    ]
}

/// The namespace of the test workload.
pub const NS: &str = "weft-test";
/// The underlay host outside the cluster (scripts/cluster.sh's `wc-ext`).
const EXT_NS: &str = "wc-ext";
const EXT_IP: &str = "198.51.100.100";

/// One test pod (`netprobe serve`) per node, from a DaemonSet.
const WORKLOAD: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: weft-test
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: probe
  namespace: weft-test
spec:
  selector:
    matchLabels: {app: probe}
  template:
    metadata:
      labels: {app: probe}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: probe
          image: localhost/weft-test:dev
          imagePullPolicy: Never
          readinessProbe:
            tcpSocket: {port: 8080}
            periodSeconds: 2
"#;

#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
}

pub struct Ctx {
    pub cluster: Cluster,
    /// The probe pods, one per node, once the workload runs.
    pub pods: Vec<Pod>,
}

impl Ctx {
    pub fn new(cluster: Cluster) -> Ctx {
        Ctx {
            cluster,
            pods: vec![],
        }
    }

    /// Every node: name, InternalIP, podCIDR.
    pub fn nodes(&self) -> Res<Vec<(String, Ipv4Addr, Option<Ipv4Net>)>> {
        let v = self.cluster.kubectl_json(&["get", "nodes"])?;
        let mut out = vec![];
        for n in items(&v) {
            let name = s(&n["metadata"]["name"]);
            let ip = n["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["type"] == "InternalIP")
                .and_then(|a| a["address"].as_str()?.parse().ok())
                .ok_or(format!("node {name} has no InternalIP"))?;
            let cidr = n["spec"]["podCIDR"].as_str().and_then(|c| c.parse().ok());
            out.push((name, ip, cidr));
        }
        Ok(out)
    }

    pub fn node_ip(&self, node: &str) -> Res<Ipv4Addr> {
        self.nodes()?
            .into_iter()
            .find(|n| n.0 == node)
            .map(|n| n.1)
            .ok_or(format!("no node {node}"))
    }

    /// The probe pods, once one per node is Ready.
    pub fn probe_pods(&self, want: usize) -> Res<Vec<Pod>> {
        let v = self
            .cluster
            .kubectl_json(&["-n", NS, "get", "pods", "-l", "app=probe"])?;
        let mut pods = vec![];
        for p in items(&v) {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if !ready || !p["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            pods.push(Pod {
                name: s(&p["metadata"]["name"]),
                node: s(&p["spec"]["nodeName"]),
                ip: p["status"]["podIP"]
                    .as_str()
                    .and_then(|i| i.parse().ok())
                    .ok_or("a Ready pod without an IPv4 podIP")?,
            });
        }
        pods.sort_by(|a, b| a.node.cmp(&b.node));
        if pods.len() == want {
            Ok(pods)
        } else {
            Err(format!(
                "{} of {want} probe pods Ready: {pods:?}",
                pods.len()
            ))
        }
    }

    /// weft's pod on `node`.
    pub fn weft_pod(&self, node: &str) -> Res<String> {
        let v = self.cluster.kubectl_json(&[
            "-n",
            "kube-weft",
            "get",
            "pods",
            "-l",
            "k8s-app=weft",
            "--field-selector",
            &format!("spec.nodeName={node}"),
        ])?;
        items(&v)
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| s(&p["metadata"]["name"]))
            .next()
            .ok_or(format!("no weft pod on {node}"))
    }

    /// `netprobe tcp|udp ADDR` in pod `from`: the address the server saw.
    pub fn seen_by(&self, from: &Pod, proto: &str, addr: &str) -> Res<String> {
        let out =
            self.cluster
                .exec(NS, &from.name, &["netprobe", proto, "-timeout", "5s", addr])?;
        peer_ip(&out).ok_or(format!(
            "netprobe {proto} {addr} from {}: {out:?}",
            from.name
        ))
    }
}

pub fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

pub fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// `peer=10.244.1.5:41234 ...` -> `10.244.1.5`.
fn peer_ip(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("peer=")?;
    let addr = rest.split_whitespace().next()?;
    Some(
        addr.rsplit_once(':')?
            .0
            .trim_matches(['[', ']'])
            .to_string(),
    )
}

/// A node's condition of type `kind` (its status, reason, message).
pub fn condition_of(node: &Value, kind: &str) -> Option<Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

pub fn condition(node: &Value, kind: &str) -> Option<String> {
    condition_of(node, kind).map(|c| s(&c["status"]))
}

/// Waits until weft's DaemonSet has rolled out on every node.
pub fn weft_rolled_out(cx: &Ctx) -> Res<String> {
    cx.cluster.kubectl(&[
        "-n",
        "kube-weft",
        "rollout",
        "status",
        "ds/weft",
        "--timeout=300s",
    ])
}

// ------------------------------------------------------------------ checks

/// docker/weft.yaml applied as a user applies it: a weft pod Ready on every
/// node, every node Ready with NetworkUnavailable=False, flannel's
/// annotations written, subnet.env on the node naming its podCIDR, and the
/// CNI config (weftd's, once the node forwards) in the runtime's conf dir.
fn weft_runs_on_every_node(cx: &mut Ctx) -> Res<String> {
    let nodes = cx.nodes()?;
    let mut said = vec![];
    for (name, ip, cidr) in &nodes {
        let cidr = cidr.ok_or(format!("node {name} has no podCIDR"))?;
        let v = cx.cluster.kubectl_json(&["get", "node", name])?;
        if condition(&v, "Ready").as_deref() != Some("True") {
            return Err(format!("node {name} is not Ready"));
        }
        if condition(&v, "NetworkUnavailable").as_deref() != Some("False") {
            return Err(format!(
                "node {name}: NetworkUnavailable is not False (weftd sets it)"
            ));
        }
        let a = &v["metadata"]["annotations"];
        let public = s(&a["flannel.alpha.coreos.com/public-ip"]);
        if public != ip.to_string() {
            return Err(format!(
                "node {name}: public-ip annotation {public:?}, want {ip}"
            ));
        }
        if s(&a["flannel.alpha.coreos.com/backend-type"]) != "vxlan" {
            return Err(format!(
                "node {name}: backend-type annotation {:?}",
                a["flannel.alpha.coreos.com/backend-type"]
            ));
        }
        let data: Value = serde_json::from_str(&s(&a["flannel.alpha.coreos.com/backend-data"]))
            .map_err(|e| format!("node {name}: backend-data annotation: {e}"))?;
        if data["VtepMAC"].as_str().is_none_or(|m| m.len() != 17) {
            return Err(format!(
                "node {name}: backend-data without a VtepMAC: {data}"
            ));
        }
        let pod = cx.weft_pod(name)?;
        let env = cx
            .cluster
            .on_node(name, &["cat", "/run/flannel/subnet.env"])?;
        let want = format!(
            "FLANNEL_SUBNET={}/{}",
            cidr.hosts().next().unwrap_or(cidr.network()),
            cidr.prefix_len()
        );
        if !env.lines().any(|l| l == want) {
            return Err(format!(
                "node {name}: /run/flannel/subnet.env has no {want}:\n{env}"
            ));
        }
        let conf = cx
            .cluster
            .on_node(name, &["cat", "/etc/cni/net.d/10-weft.conflist"])?;
        if !conf.contains("\"type\": \"weft\"") {
            return Err(format!(
                "node {name}: 10-weft.conflist is not weft's:\n{conf}"
            ));
        }
        said.push(format!(
            "{name} {ip} podCIDR {cidr}: Ready, {pod} Ready, {want}, 10-weft.conflist in place"
        ));
    }
    Ok(said.join("\n"))
}

/// The test workload's pods get addresses in their node's podCIDR, from
/// weft-cni through containerd's CRI plugin.
fn pods_get_addresses(cx: &mut Ctx) -> Res<String> {
    cx.cluster.apply(WORKLOAD)?;
    let nodes = cx.nodes()?;
    cx.pods = wait(180, "a Ready probe pod on every node", || {
        cx.probe_pods(nodes.len())
    })?;
    let mut said = vec![];
    for p in &cx.pods {
        let cidr = nodes
            .iter()
            .find(|n| n.0 == p.node)
            .and_then(|n| n.2)
            .ok_or(format!("node {} has no podCIDR", p.node))?;
        if !cidr.contains(&p.ip) {
            return Err(format!(
                "pod {} on {} has {}, outside the node's podCIDR {cidr}",
                p.name, p.node, p.ip
            ));
        }
        said.push(format!("{} on {}: {} in {cidr}", p.name, p.node, p.ip));
    }
    Ok(said.join("\n"))
}

/// Every pod reaches every other over ICMP, TCP and UDP, and the receiver
/// sees the sender's own pod IP (no NAT between pods).
pub fn pod_to_pod(cx: &mut Ctx) -> Res<String> {
    let mut n = 0;
    for a in &cx.pods {
        for b in &cx.pods {
            if a.name == b.name {
                continue;
            }
            let ip = b.ip.to_string();
            cx.cluster
                .exec(NS, &a.name, &["ping", "-c", "1", "-W", "3", &ip])
                .map_err(|e| format!("ping {} ({}) -> {} ({}): {e}", a.node, a.ip, b.node, b.ip))?;
            for (proto, port) in [("tcp", 8080), ("udp", 8081)] {
                let seen = cx.seen_by(a, proto, &format!("{ip}:{port}"))?;
                if seen != a.ip.to_string() {
                    return Err(format!(
                        "{proto} {} ({}) -> {} ({}): the receiver saw {seen}, not the sender's pod IP",
                        a.node, a.ip, b.node, b.ip
                    ));
                }
            }
            n += 1;
        }
    }
    Ok(format!(
        "{n} ordered pairs: ICMP, TCP and UDP, each receiver saw the sender's own pod IP"
    ))
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: target
  namespace: weft-test
spec:
  selector: {app: probe, probe-target: "yes"}
  ports:
    - {name: tcp, protocol: TCP, port: 80, targetPort: 8080}
    - {name: udp, protocol: UDP, port: 81, targetPort: 8081}
---
apiVersion: v1
kind: Service
metadata:
  name: target-np
  namespace: weft-test
spec:
  type: NodePort
  selector: {app: probe, probe-target: "yes"}
  ports:
    - {name: tcp, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
"#;

/// A ClusterIP Service whose one endpoint is on the first node answers the
/// pods of every other node (TCP and UDP, kube-proxy's DNAT with weft's
/// masquerade rules beside it: the endpoint sees the client's own pod IP),
/// and the endpoint pod reaches itself through the Service (hairpin).
fn cluster_ip_service(cx: &mut Ctx) -> Res<String> {
    let target = cx.pods.first().ok_or("no probe pods")?.clone();
    cx.cluster.kubectl(&[
        "-n",
        NS,
        "label",
        "pod",
        &target.name,
        "probe-target=yes",
        "--overwrite",
    ])?;
    cx.cluster.apply(SERVICES)?;
    let v = cx
        .cluster
        .kubectl_json(&["-n", NS, "get", "service", "target"])?;
    let cip = s(&v["spec"]["clusterIP"]);
    wait(60, "the Service's endpoint", || {
        let e = cx.cluster.kubectl(&[
            "-n",
            NS,
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=target",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[*]}",
        ])?;
        if e.contains(&target.ip.to_string()) {
            Ok(())
        } else {
            Err(format!("endpoints: {e:?}"))
        }
    })?;
    let mut said = vec![format!(
        "Service target {cip} -> {} on {}",
        target.ip, target.node
    )];
    for p in cx.pods.iter().filter(|p| p.name != target.name) {
        for (proto, port) in [("tcp", 80), ("udp", 81)] {
            let seen = wait(30, "kube-proxy's rules on the client's node", || {
                cx.seen_by(p, proto, &format!("{cip}:{port}"))
            })?;
            if seen != p.ip.to_string() {
                return Err(format!(
                    "{proto} {} -> Service {cip}: the endpoint saw {seen}, not the client's pod IP {}",
                    p.name, p.ip
                ));
            }
        }
        said.push(format!(
            "from {} ({}): TCP and UDP answered, client seen as itself",
            p.node, p.ip
        ));
    }
    let seen = cx.seen_by(&target, "tcp", &format!("{cip}:80"))?;
    said.push(format!(
        "hairpin: {} reached itself through {cip}:80 (seen as {seen})",
        target.name
    ));
    Ok(said.join("\n"))
}

/// A NodePort on one node answers a client on another node (host network),
/// with the endpoint on a third.
fn node_port(cx: &mut Ctx) -> Res<String> {
    let target = cx.pods.first().ok_or("no probe pods")?.clone();
    let others: Vec<_> = cx.pods.iter().filter(|p| p.node != target.node).collect();
    let (via, client) = match others.as_slice() {
        [a, b, ..] => (a.node.clone(), b.node.clone()),
        _ => return Err("needs three nodes".into()),
    };
    let via_ip = cx.node_ip(&via)?;
    let script = format!("exec 3<>/dev/tcp/{via_ip}/30080 && read -t 5 line <&3 && echo \"$line\"");
    let out = wait(30, "the NodePort", || {
        cx.cluster
            .in_netns(&client, &["timeout", "6", "bash", "-c", &script])
    })?;
    let seen = peer_ip(&out).ok_or(format!("NodePort answer: {out:?}"))?;
    Ok(format!(
        "{client} -> {via} ({via_ip}):30080 -> endpoint {} on {}: answered, the endpoint saw {seen}",
        target.ip, target.node
    ))
}

/// A pod reaches a host outside the cluster (on the underlay), seen there
/// as its node's address (weft's --ip-masq).
pub fn egress(cx: &mut Ctx) -> Res<String> {
    let netprobe = crate::kube::netprobe_bin();
    let mut server = std::process::Command::new("ip")
        .args([
            "netns", "exec", EXT_NS, &netprobe, "serve", "-tcp", ":8080", "-udp", ":8081",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("netprobe serve in {EXT_NS}: {e}"))?;
    let result = (|| {
        let mut said = vec![];
        for p in &cx.pods {
            let node_ip = cx.node_ip(&p.node)?;
            for (proto, port) in [("tcp", 8080), ("udp", 8081)] {
                let seen = wait(10, "the outside host", || {
                    cx.seen_by(p, proto, &format!("{EXT_IP}:{port}"))
                })?;
                if seen != node_ip.to_string() {
                    return Err(format!(
                        "{proto} {} ({}) -> {EXT_IP}: seen as {seen}, not masqueraded to its node's {node_ip}",
                        p.name, p.ip
                    ));
                }
            }
            said.push(format!(
                "{} ({}) -> {EXT_IP}: TCP and UDP seen as {node_ip}",
                p.node, p.ip
            ));
        }
        Ok(said.join("\n"))
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// `weftd status` inside each weft pod lists every other node as a peer,
/// and its /metrics (the DaemonSet's --healthz-port) counts them.
fn status_and_metrics(cx: &mut Ctx) -> Res<String> {
    let nodes = cx.nodes()?;
    let mut said = vec![];
    for (name, _, _) in &nodes {
        let pod = cx.weft_pod(name)?;
        let out = cx
            .cluster
            .exec("kube-weft", &pod, &["weftd", "status", "--output", "json"])?;
        let v: Value =
            serde_json::from_str(&out).map_err(|e| format!("weftd status in {pod}: {e}: {out}"))?;
        let view = if v.is_array() { v[0].clone() } else { v };
        let peers: Vec<String> = view["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["public_ip"].as_str().map(str::to_string))
            .collect();
        for (other, ip, _) in nodes.iter().filter(|n| &n.0 != name) {
            if !peers.contains(&ip.to_string()) {
                return Err(format!(
                    "weftd status in {pod} on {name} lacks {other} ({ip}): {peers:?}"
                ));
            }
        }
        let metrics = cx.cluster.on_node(
            name,
            &["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/10300 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"],
        )?;
        let count = metrics
            .lines()
            .find_map(|l| l.strip_prefix("weft_peers "))
            .ok_or(format!("{name}: /metrics has no weft_peers"))?;
        if count.trim() != (nodes.len() - 1).to_string() {
            return Err(format!(
                "{name}: weft_peers {count}, want {}",
                nodes.len() - 1
            ));
        }
        said.push(format!(
            "{pod} on {name}: status lists {} peers, weft_peers {count}",
            peers.len()
        ));
    }
    Ok(said.join("\n"))
}

/// What `netprobe watch` measured between two pods.
#[derive(Debug, serde::Deserialize)]
pub struct Watch {
    pub sent: u64,
    pub received: u64,
    pub longest_gap_ms: f64,
    pub tcp_ok: bool,
    #[serde(default)]
    tcp_error: String,
    tcp_lines: u64,
}

impl Watch {
    /// One line: what the probe from `a` to `b` saw.
    pub fn summary(&self, a: &Pod, b: &Pod) -> String {
        format!(
            "{} -> {}: UDP {}/{} echoed, longest gap {:.1} ms; TCP {} ({} lines)",
            a.node,
            b.node,
            self.received,
            self.sent,
            self.longest_gap_ms,
            if self.tcp_ok {
                "kept".to_string()
            } else {
                format!("broken: {}", self.tcp_error)
            },
            self.tcp_lines
        )
    }
}

/// A UDP probe every 5 ms and one TCP connection from pod `a` to pod `b`,
/// while `during` runs; stopped (SIGTERM to netprobe, which then reports)
/// once it returns.
fn watched<T>(cx: &Ctx, a: &Pod, b: &Pod, during: impl FnOnce() -> Res<T>) -> Res<(T, Watch)> {
    let child = watch_start(cx, a, b)?;
    // Let the probe run clean for a moment first.
    std::thread::sleep(Duration::from_secs(2));
    let result = during();
    std::thread::sleep(Duration::from_secs(2));
    let watch = watch_stop(cx, a, b, child)?;
    Ok((result?, watch))
}

/// Starts `netprobe watch` in pod `a` towards pod `b`: a UDP probe every 5
/// ms and one TCP connection ([`watch_stop`] ends it and reads the result).
pub fn watch_start(cx: &Ctx, a: &Pod, b: &Pod) -> Res<Child> {
    let (udp, tcp) = (format!("{}:8081", b.ip), format!("{}:8080", b.ip));
    cx.cluster.exec_spawn(
        NS,
        &a.name,
        &[
            "netprobe",
            "watch",
            "-udp",
            &udp,
            "-tcp",
            &tcp,
            "-interval",
            "5ms",
            "-duration",
            "600s",
        ],
    )
}

/// Stops the `netprobe watch` in pod `a` (SIGTERM, on which it reports)
/// and returns what it measured.
pub fn watch_stop(cx: &Ctx, a: &Pod, b: &Pod, child: Child) -> Res<Watch> {
    let _ = cx.cluster.exec(
        NS,
        &a.name,
        &[
            "sh",
            "-c",
            "kill -TERM $(ps -o pid,args | awk '$2 == \"netprobe\" && $3 == \"watch\" {print $1}')",
        ],
    );
    let out = child
        .wait_with_output()
        .map_err(|e| format!("netprobe watch: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or(format!(
            "netprobe watch {} -> {} printed no result: {text}{}",
            a.name,
            b.name,
            String::from_utf8_lossy(&out.stderr)
        ))
}

/// The weft pods' names and UIDs.
fn weft_pods(cx: &Ctx) -> Res<Vec<(String, String, String)>> {
    let v = cx
        .cluster
        .kubectl_json(&["-n", "kube-weft", "get", "pods", "-l", "k8s-app=weft"])?;
    Ok(items(&v)
        .iter()
        .map(|p| {
            (
                s(&p["metadata"]["name"]),
                s(&p["metadata"]["uid"]),
                s(&p["spec"]["nodeName"]),
            )
        })
        .collect())
}

/// `kubectl -n kube-weft rollout restart ds/weft` while pods on two nodes
/// talk: every weft pod is replaced, the TCP connection survives and the
/// longest gap in a 5 ms UDP probe stays within 100 ms (the netns restart
/// tests' bound).
fn rollout_restart(cx: &mut Ctx) -> Res<String> {
    let (a, b) = (cx.pods[0].clone(), cx.pods[1].clone());
    let before = weft_pods(cx)?;
    let started = std::time::Instant::now();
    let (took, w) = watched(cx, &a, &b, || {
        cx.cluster
            .kubectl(&["-n", "kube-weft", "rollout", "restart", "ds/weft"])?;
        weft_rolled_out(cx)?;
        Ok(started.elapsed())
    })?;
    let after = weft_pods(cx)?;
    if let Some(old) = after.iter().find(|p| before.iter().any(|b| b.1 == p.1)) {
        return Err(format!(
            "weft pod {} was not replaced by the rollout",
            old.0
        ));
    }
    let said = format!(
        "rollout of {} weft pods in {:.1} s; {}",
        after.len(),
        took.as_secs_f64(),
        w.summary(&a, &b)
    );
    if !w.tcp_ok {
        return Err(format!(
            "the TCP connection did not survive the rollout: {said}"
        ));
    }
    if w.longest_gap_ms > 100.0 {
        return Err(format!("the longest gap is over 100 ms: {said}"));
    }
    Ok(said)
}

/// The pid of the weftd process on `node` (seen from the host).
fn weftd_pid(cx: &Ctx, node: &str) -> Res<String> {
    // A weftd whose network namespace is the node's (the DaemonSet's pod).
    let script = "me=$(readlink /proc/self/ns/net); for p in /proc/[0-9]*; do \
        [ \"$(cat $p/comm 2>/dev/null)\" = weftd ] && [ \"$(readlink $p/ns/net)\" = \"$me\" ] && echo ${p#/proc/}; done; true";
    let out = cx.cluster.in_netns(node, &["bash", "-c", script])?;
    let pids: Vec<&str> = out.split_whitespace().collect();
    match pids.as_slice() {
        [one] => Ok(one.to_string()),
        _ => Err(format!("want one weftd on {node}, found pids {pids:?}")),
    }
}

fn restarts(cx: &Ctx, pod: &str) -> Res<u64> {
    let v = cx
        .cluster
        .kubectl_json(&["-n", "kube-weft", "get", "pod", pod])?;
    Ok(v["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0))
}

pub fn pod_ready(cx: &Ctx, ns: &str, pod: &str) -> Res<bool> {
    let v = cx.cluster.kubectl_json(&["-n", ns, "get", "pod", pod])?;
    Ok(v["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// SIGKILL to one node's weftd: kubelet restarts the container, traffic
/// through that node resumes and the TCP connection through it survives.
fn sigkill_weftd(cx: &mut Ctx) -> Res<String> {
    let (a, b) = (cx.pods[0].clone(), cx.pods[1].clone());
    let pod = cx.weft_pod(&b.node)?;
    let before = restarts(cx, &pod)?;
    let pid = weftd_pid(cx, &b.node)?;
    let (back, w) = watched(cx, &a, &b, || {
        cx.cluster.in_netns(&b.node, &["kill", "-9", &pid])?;
        let t = std::time::Instant::now();
        wait(120, "kubelet to restart weftd", || {
            if restarts(cx, &pod)? > before && pod_ready(cx, "kube-weft", &pod)? {
                Ok(())
            } else {
                Err("not restarted and Ready yet".into())
            }
        })?;
        Ok(t.elapsed())
    })?;
    let said = format!(
        "weftd (pid {pid}) on {} killed; kubelet restarted {pod} (Ready again in {:.1} s); {}",
        b.node,
        back.as_secs_f64(),
        w.summary(&a, &b)
    );
    if !w.tcp_ok {
        return Err(format!("the TCP connection did not survive: {said}"));
    }
    // Traffic resumed: the probe's echoes came back after the restart.
    cx.seen_by(&a, "udp", &format!("{}:8081", b.ip))?;
    Ok(said)
}

const LATE_NODE: &str = "wc-n4";

/// Seed 000's deadlock, for real: a node whose kube-proxy does not run yet,
/// so the `kubernetes` Service's ClusterIP (weftd's in-cluster address) does
/// not answer there. weftd's log and `weftd doctor` name the cause and the
/// fix, its pod is not Ready; with the fix (the manifest's
/// KUBERNETES_SERVICE_HOST/PORT lines, the API server's real address) the
/// node comes up. Meanwhile the node is not Ready: weftd writes the CNI
/// config only once the node forwards.
fn deadlock_before_kube_proxy(cx: &mut Ctx) -> Res<String> {
    cx.cluster
        .script(&["add-node", LATE_NODE, "--no-kube-proxy"])?;
    let pod = wait(120, "a weft pod on the new node", || cx.weft_pod(LATE_NODE))?;
    let log = wait(120, "weftd's log to name the deadlock", || {
        let mut l = cx
            .cluster
            .kubectl(&["-n", "kube-weft", "logs", &pod, "-c", "weft"])
            .unwrap_or_default();
        l += &cx
            .cluster
            .kubectl(&["-n", "kube-weft", "logs", &pod, "-c", "weft", "--previous"])
            .unwrap_or_default();
        if l.contains("CNI-before-kube-proxy deadlock") {
            Ok(l)
        } else {
            Err(format!("log so far: {l}"))
        }
    })?;
    let line = log
        .lines()
        .find(|l| l.contains("CNI-before-kube-proxy deadlock"))
        .unwrap_or_default()
        .to_string();
    for want in ["10.96.0.1", "KUBERNETES_SERVICE_HOST", "--kubeconfig-file"] {
        if !line.contains(want) {
            return Err(format!(
                "weftd's deadlock line does not name {want}: {line}"
            ));
        }
    }
    if pod_ready(cx, "kube-weft", &pod)? {
        return Err(format!(
            "{pod} is Ready although weftd cannot reach the API server"
        ));
    }
    // Nor is the node: weftd writes the CNI config only once the node
    // forwards, so kubelet reports the network not ready and no pod is
    // scheduled there to hang in ContainerCreating.
    let v = cx.cluster.kubectl_json(&["get", "node", LATE_NODE])?;
    let ready = condition_of(&v, "Ready").unwrap_or_default();
    if ready["status"] == "True" {
        return Err(format!("{LATE_NODE} is Ready although weft is not"));
    }
    let conf = cx.cluster.on_node(LATE_NODE, &["ls", "/etc/cni/net.d"])?;
    if !conf.trim().is_empty() {
        return Err(format!(
            "{LATE_NODE} has a CNI config before weft is ready: {conf}"
        ));
    }
    // The doctor, run as an operator would: in the pod, with its flags.
    let doctor = cx
        .cluster
        .exec(
            "kube-weft",
            &pod,
            &[
                "weftd",
                "doctor",
                "--kube-subnet-mgr",
                "--net-config-path=/etc/kube-flannel/net-conf.json",
                "--subnet-file=/run/flannel/subnet.env",
            ],
        )
        .err()
        .ok_or("weftd doctor passed on a node that cannot reach the API server")?;
    if !(doctor.contains("deadlock") && doctor.contains("KUBERNETES_SERVICE_HOST")) {
        return Err(format!(
            "weftd doctor does not name the deadlock and its fix:\n{doctor}"
        ));
    }
    // The fix, as the manifest's comment says it.
    cx.cluster
        .script(&["install-weft", "--api-server-address"])?;
    weft_rolled_out(cx)?;
    wait(120, "the new node to become Ready", || {
        let v = cx.cluster.kubectl_json(&["get", "node", LATE_NODE])?;
        match (
            condition(&v, "Ready").as_deref(),
            condition(&v, "NetworkUnavailable").as_deref(),
        ) {
            (Some("True"), Some("False")) => Ok(()),
            other => Err(format!("Ready, NetworkUnavailable: {other:?}")),
        }
    })?;
    Ok(format!(
        "weftd: {}\nnode meanwhile: {}\ndoctor: {}\nwith KUBERNETES_SERVICE_HOST/PORT set: {LATE_NODE} Ready, NetworkUnavailable=False",
        line.trim(),
        s(&ready["message"]),
        doctor
            .lines()
            .find(|l| l.contains("deadlock"))
            .unwrap_or_default()
            .trim()
    ))
}

/// The node added after the others: its probe pod reaches every other pod
/// and every other reaches it, with their own addresses; then its
/// kube-proxy starts and Services answer there too.
fn node_added_later(cx: &mut Ctx) -> Res<String> {
    let want = cx.nodes()?.len();
    cx.pods = wait(180, "a Ready probe pod on every node", || {
        cx.probe_pods(want)
    })?;
    let new = cx
        .pods
        .iter()
        .find(|p| p.node == LATE_NODE)
        .ok_or("no probe pod on the new node")?
        .clone();
    for other in cx.pods.iter().filter(|p| p.node != LATE_NODE) {
        for (from, to) in [(&new, other), (other, &new)] {
            let seen = wait(30, "the route to the new node", || {
                cx.seen_by(from, "tcp", &format!("{}:8080", to.ip))
            })?;
            if seen != from.ip.to_string() {
                return Err(format!("{} -> {}: seen as {seen}", from.node, to.node));
            }
        }
    }
    cx.cluster.script(&["start-kube-proxy", LATE_NODE])?;
    let v = cx
        .cluster
        .kubectl_json(&["-n", NS, "get", "service", "target"])?;
    let cip = s(&v["spec"]["clusterIP"]);
    let seen = wait(60, "kube-proxy's rules on the new node", || {
        cx.seen_by(&new, "tcp", &format!("{cip}:80"))
    })?;
    Ok(format!(
        "{} ({}) <-> every other pod over TCP, each seen as itself; after its kube-proxy started, Service {cip} answered it (seen as {seen})",
        new.node, new.ip
    ))
}

/// A node deleted from the API (its processes stopped first, as a drained
/// machine is): every other weftd drops it from its forwarding table.
fn node_deleted(cx: &mut Ctx) -> Res<String> {
    let (_, _, cidr) = cx
        .nodes()?
        .into_iter()
        .find(|n| n.0 == LATE_NODE)
        .ok_or("no late node")?;
    let cidr = cidr.ok_or("the late node has no podCIDR")?.to_string();
    cx.cluster.script(&["remove-node", LATE_NODE])?;
    let others: Vec<String> = cx.nodes()?.into_iter().map(|n| n.0).collect();
    let probe = cx
        .pods
        .iter()
        .find(|p| p.node == LATE_NODE)
        .map(|p| p.ip)
        .ok_or("no probe pod on the late node (the check before this one failed)")?;
    for node in &others {
        let pod = cx.weft_pod(node)?;
        wait(60, "the peer to leave", || {
            let st =
                cx.cluster
                    .exec("kube-weft", &pod, &["weftd", "status", "--output", "json"])?;
            if st.contains(&format!("\"{cidr}\"")) {
                Err(format!("weftd status on {node} still lists {cidr}"))
            } else {
                Ok(())
            }
        })?;
    }
    // A pod that sends to the deleted node's subnet is told there is no route.
    let from = cx
        .pods
        .iter()
        .find(|p| p.node != LATE_NODE)
        .ok_or("no pods")?;
    let ip = probe.to_string();
    if cx
        .cluster
        .exec(NS, &from.name, &["ping", "-c", "1", "-W", "2", &ip])
        .is_ok()
    {
        return Err(format!(
            "{} still reaches {ip} on the deleted node",
            from.node
        ));
    }
    cx.pods.retain(|p| p.node != LATE_NODE);
    Ok(format!(
        "{LATE_NODE} ({cidr}) deleted: gone from weftd status on {}; its pod address unreachable",
        others.join(", ")
    ))
}
