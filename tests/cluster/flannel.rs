//! The real flannel beside weft: flannel's own kube-flannel.yml of the
//! release cluster/flannel pins (flanneld and its CNI plugin built from
//! source, `scripts/cluster.sh install-flannel`) on one node, weft's
//! DaemonSet on the others, node by node as docs/migrating.md tells an
//! operator: a node labelled `pod-network=weft` runs weft, every other node
//! flannel. Then a flannel node with pods on it moves to weft while pods
//! talk, and a weft node moves back to flannel.
//!
//! These run after the weft-only checks, on the same cluster (three nodes,
//! a probe pod on each, Service `target` with its endpoint on the first).

use crate::checks::{
    Ctx, NS, Pod, condition_of, items, pod_ready, pod_to_pod, s, watch_start, watch_stop,
    weft_rolled_out,
};
use crate::kube::{Res, wait};
use serde_json::Value;
use std::time::{Duration, Instant};

pub fn all() -> Vec<(&'static str, crate::checks::Check)> {
    vec![
        (
            "flannel_runs_on_the_node_not_labelled_for_weft",
            flannel_installed as crate::checks::Check,
        ),
        (
            "mixed_pods_on_flannel_and_weft_nodes_reach_each_other",
            mixed_pod_to_pod,
        ),
        (
            "mixed_bulk_tcp_between_flannel_and_weft_pods_arrives_intact",
            mixed_bulk_tcp,
        ),
        (
            "mixed_services_answer_across_flannel_and_weft_nodes",
            mixed_services,
        ),
        (
            "mixed_pods_reach_the_outside_masqueraded_to_their_node",
            mixed_egress,
        ),
        (
            "mixed_each_agent_writes_the_annotations_the_other_reads",
            mixed_annotations,
        ),
        (
            "migration_flannel_node_to_weft_under_traffic",
            migrate_to_weft,
        ),
        ("migration_weft_node_back_to_flannel", back_to_flannel),
    ]
}

/// The label that moves a node (scripts/cluster.sh's AGENT_LABEL).
const LABEL: &str = "pod-network";
/// The node flannel runs on first, then moved to weft.
const X: &str = "wc-n3";
/// The node moved from weft back to flannel.
const Y: &str = "wc-n2";
/// The node that runs weft throughout.
const W: &str = "wc-n1";

const A: &str = "flannel.alpha.coreos.com";

/// flannel's DaemonSet pod on `node`, Ready.
fn flannel_pod(cx: &Ctx, node: &str) -> Res<String> {
    let v = cx.cluster.kubectl_json(&[
        "-n",
        "kube-flannel",
        "get",
        "pods",
        "-l",
        "app=flannel",
        "--field-selector",
        &format!("spec.nodeName={node}"),
    ])?;
    let pod = items(&v)
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| s(&p["metadata"]["name"]))
        .next()
        .ok_or(format!("no flannel pod on {node}"))?;
    if pod_ready(cx, "kube-flannel", &pod)? {
        Ok(pod)
    } else {
        Err(format!("{pod} on {node} is not Ready"))
    }
}

/// Any pod of namespace `ns` with `label` on `node`, terminating or not.
fn any_pod(cx: &Ctx, ns: &str, label: &str, node: &str) -> Res<Option<String>> {
    let v = cx.cluster.kubectl_json(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        label,
        "--field-selector",
        &format!("spec.nodeName={node}"),
    ])?;
    Ok(items(&v).first().map(|p| s(&p["metadata"]["name"])))
}

/// Waits until every node runs exactly its agent: flannel on `flannel`,
/// weft on the others, each Ready, no pod of the other agent left there
/// (not even terminating), and the node's NetworkUnavailable=False written
/// by that agent (its reason). Returns one line per node.
fn agents_settled(cx: &Ctx, flannel: &[&str]) -> Res<Vec<String>> {
    wait(240, "each node to run its agent alone", || {
        let mut said = vec![];
        for (node, _, _) in cx.nodes()? {
            let on_flannel = flannel.contains(&node.as_str());
            let (pod, other, reason) = if on_flannel {
                (
                    flannel_pod(cx, &node)?,
                    any_pod(cx, "kube-weft", "k8s-app=weft", &node)?,
                    "FlannelIsUp",
                )
            } else {
                let pod = cx.weft_pod(&node)?;
                if !pod_ready(cx, "kube-weft", &pod)? {
                    return Err(format!("{pod} on {node} is not Ready"));
                }
                (
                    pod,
                    any_pod(cx, "kube-flannel", "app=flannel", &node)?,
                    "WeftIsUp",
                )
            };
            if let Some(o) = other {
                return Err(format!("{o} is still on {node}"));
            }
            let v = cx.cluster.kubectl_json(&["get", "node", &node])?;
            let c = condition_of(&v, "NetworkUnavailable").unwrap_or_default();
            if c["status"] != "False" || c["reason"] != reason {
                return Err(format!(
                    "{node}: NetworkUnavailable {c}, want False/{reason}"
                ));
            }
            said.push(format!(
                "{node}: {pod} Ready, NetworkUnavailable=False ({reason})"
            ));
        }
        Ok(said)
    })
}

/// The probe pod on `node`.
fn probe_on(cx: &Ctx, node: &str) -> Res<Pod> {
    cx.pods
        .iter()
        .find(|p| p.node == node)
        .cloned()
        .ok_or(format!("no probe pod on {node}"))
}

/// The CNI container ID of the pod holding `ip` on `node`: host-local's
/// reservation file names it on its first line.
fn sandbox_of(cx: &Ctx, node: &str, ip: &str) -> Res<String> {
    let f = cx
        .cluster
        .on_node(node, &["cat", &format!("/var/lib/cni/networks/cbr0/{ip}")])?;
    f.lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| l.len() == 64)
        .ok_or(format!("{node}: host-local's file for {ip}: {f:?}"))
}

fn exists_on(cx: &Ctx, node: &str, path: &str) -> Res<bool> {
    Ok(cx
        .cluster
        .on_node(
            node,
            &["sh", "-c", &format!("test -e {path} && echo yes || true")],
        )?
        .trim()
        == "yes")
}

/// Deletes the probe pod on `node` and waits for the DaemonSet's new one
/// (through whichever CNI plugin the node now has); `cx.pods` follows.
fn replace_probe(cx: &mut Ctx, node: &str) -> Res<(Pod, Pod)> {
    let old = probe_on(cx, node)?;
    cx.cluster
        .kubectl(&["-n", NS, "delete", "pod", &old.name, "--wait=true"])?;
    let want = cx.pods.len();
    cx.pods = wait(120, "the probe pod's replacement", || {
        let pods = cx.probe_pods(want)?;
        if pods.iter().any(|p| p.name == old.name) {
            Err("the old pod is still there".into())
        } else {
            Ok(pods)
        }
    })?;
    Ok((old, probe_on(cx, node)?))
}

// ------------------------------------------------------------------ checks

/// The nodes that stay on weft labelled, then `scripts/cluster.sh
/// install-flannel` (flannel's kube-flannel.yml with only the images and a
/// node affinity changed; weft's DaemonSet patched with the opposite one):
/// weft's pod leaves X, flannel's runs there, and X's probe pod, created
/// again, is added by flannel's CNI plugin (its saved delegate file). The
/// pod weft-cni had added, deleted under flannel, keeps its address in
/// host-local, as migrating.md's "Back to flannel" says.
fn flannel_installed(cx: &mut Ctx) -> Res<String> {
    for n in [W, Y] {
        cx.cluster
            .kubectl(&["label", "node", n, &format!("{LABEL}=weft"), "--overwrite"])?;
    }
    cx.cluster.script(&["install-flannel"])?;
    weft_rolled_out(cx)?;
    cx.cluster.kubectl(&[
        "-n",
        "kube-flannel",
        "rollout",
        "status",
        "ds/kube-flannel-ds",
        "--timeout=300s",
    ])?;
    let mut said = agents_settled(cx, &[X])?;
    // flanneld's own device, where weft's pod had been.
    let link = cx
        .cluster
        .on_node(X, &["ip", "-d", "link", "show", "flannel.1"])?;
    if !link.contains("vxlan id 1") || !link.contains("dstport 8472") {
        return Err(format!(
            "{X}: flannel.1 is not flannel's VXLAN device:\n{link}"
        ));
    }
    let (old, new) = replace_probe(cx, X)?;
    let id = sandbox_of(cx, X, &new.ip.to_string())?;
    let saved = format!("/var/lib/cni/flannel/{id}");
    if !exists_on(cx, X, &saved)? {
        return Err(format!(
            "{X}: {} was not added by flannel's plugin: no {saved}",
            new.name
        ));
    }
    let leaked = exists_on(cx, X, &format!("/var/lib/cni/networks/cbr0/{}", old.ip))?;
    if !leaked {
        return Err(format!(
            "{X}: {} (added by weft-cni) deleted under flannel released its address {}: migrating.md says it stays",
            old.name, old.ip
        ));
    }
    said.push(format!(
        "{X}: flannel.1 up (VXLAN id 1, port 8472); {} re-created by flannel's plugin as {} ({}, {saved}); \
         {} of the pod weft-cni added stays reserved in host-local after its DEL under flannel",
        old.name, new.name, new.ip, old.ip
    ));
    Ok(said.join("\n"))
}

/// Every pod reaches every other across the two kinds of node (ICMP, TCP,
/// UDP), seen as itself: flannel's kernel VXLAN on X, weft's userspace one
/// elsewhere.
fn mixed_pod_to_pod(cx: &mut Ctx) -> Res<String> {
    let which: Vec<String> = cx
        .pods
        .iter()
        .map(|p| {
            format!(
                "{} {} ({})",
                p.node,
                p.ip,
                if p.node == X { "flannel" } else { "weft" }
            )
        })
        .collect();
    Ok(format!("{}: {}", which.join(", "), pod_to_pod(cx)?))
}

/// 16 MiB of random bytes over one TCP connection from X's pod (flannel)
/// to W's (weft) and back, each arriving byte-identical (SHA-256) within
/// 20 s: full-size segments, which flannel.1 on a veth underlay sends as
/// offloaded super-packets, not only the probes' short lines.
fn mixed_bulk_tcp(cx: &mut Ctx) -> Res<String> {
    let (fx, w) = (probe_on(cx, X)?, probe_on(cx, W)?);
    let mut said = vec![];
    for (from, to) in [(&fx, &w), (&w, &fx)] {
        said.push(bulk_tcp(cx, from, to)?);
    }
    Ok(said.join("\n"))
}

/// [`mixed_bulk_tcp`]'s transfer from `from` to `to` (busybox's nc).
fn bulk_tcp(cx: &Ctx, from: &Pod, to: &Pod) -> Res<String> {
    const MIB: usize = 16;
    let receiver = cx.cluster.exec_spawn(
        NS,
        &to.name,
        &[
            "sh",
            "-c",
            // Its stdin a FIFO it holds open itself: nc ends on the peer's
            // EOF, not on its own stdin's.
            "rm -f /tmp/ff /tmp/bulk; mkfifo /tmp/ff; timeout 20 nc -l -p 9000 <>/tmp/ff >/tmp/bulk; \
             sha256sum </tmp/bulk | cut -d' ' -f1; wc -c </tmp/bulk; rm -f /tmp/ff /tmp/bulk",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let sent = cx.cluster.exec(
        NS,
        &from.name,
        &[
            "sh",
            "-c",
            &format!(
                "dd if=/dev/urandom of=/tmp/blob bs=65536 count={} 2>/dev/null && \
                 sha256sum </tmp/blob | cut -d' ' -f1; timeout 20 nc {} 9000 </tmp/blob; rm -f /tmp/blob",
                MIB * 16,
                to.ip
            ),
        ],
    );
    let out = receiver
        .wait_with_output()
        .map_err(|e| format!("nc -l in {}: {e}", to.name))?;
    let took = t.elapsed();
    let sent = sent?;
    let got = String::from_utf8_lossy(&out.stdout).to_string();
    let mut got = got.split_whitespace();
    let (hash, bytes) = (got.next().unwrap_or_default(), got.next().unwrap_or("0"));
    if sent.trim() != hash || bytes != (MIB << 20).to_string() {
        return Err(format!(
            "{} ({}) -> {} ({}): {bytes} of {} bytes arrived in {:.1} s{}",
            from.node,
            if from.node == X { "flannel" } else { "weft" },
            to.node,
            if to.node == X { "flannel" } else { "weft" },
            MIB << 20,
            took.as_secs_f64(),
            if bytes == (MIB << 20).to_string() {
                ", not byte-identical"
            } else {
                ""
            }
        ));
    }
    Ok(format!(
        "{} -> {}: {MIB} MiB byte-identical in {:.1} s",
        from.node,
        to.node,
        took.as_secs_f64()
    ))
}

const FLANNEL_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: target-flannel
  namespace: weft-test
spec:
  selector: {app: probe, probe-target-flannel: "yes"}
  ports:
    - {name: tcp, protocol: TCP, port: 80, targetPort: 8080}
    - {name: udp, protocol: UDP, port: 81, targetPort: 8081}
"#;

/// A Service whose endpoint is X's pod (flannel) answers the weft nodes'
/// pods, and `target` (endpoint on W, weft) answers X's pod, TCP and UDP,
/// each endpoint seeing the client's own pod IP.
fn mixed_services(cx: &mut Ctx) -> Res<String> {
    let fx = probe_on(cx, X)?;
    cx.cluster.kubectl(&[
        "-n",
        NS,
        "label",
        "pod",
        &fx.name,
        "probe-target-flannel=yes",
        "--overwrite",
    ])?;
    cx.cluster.apply(FLANNEL_SERVICE)?;
    let mut said = vec![];
    for (svc, endpoint) in [("target-flannel", fx.clone()), ("target", probe_on(cx, W)?)] {
        let v = cx
            .cluster
            .kubectl_json(&["-n", NS, "get", "service", svc])?;
        let cip = s(&v["spec"]["clusterIP"]);
        for p in cx.pods.iter().filter(|p| p.node != endpoint.node) {
            if svc == "target" && p.node != X {
                continue; // weft to weft: the weft-only checks did that
            }
            for (proto, port) in [("tcp", 80), ("udp", 81)] {
                let seen = wait(60, "the Service's endpoint and kube-proxy's rules", || {
                    cx.seen_by(p, proto, &format!("{cip}:{port}"))
                })?;
                if seen != p.ip.to_string() {
                    return Err(format!(
                        "{proto} {} on {} -> Service {svc} {cip} (endpoint on {}): seen as {seen}, not {}",
                        p.name, p.node, endpoint.node, p.ip
                    ));
                }
            }
            said.push(format!(
                "{} ({}) -> Service {svc} {cip} -> {} on {} ({}): TCP and UDP, client seen as itself",
                p.node,
                if p.node == X { "flannel" } else { "weft" },
                endpoint.ip,
                endpoint.node,
                if endpoint.node == X { "flannel" } else { "weft" },
            ));
        }
    }
    Ok(said.join("\n"))
}

/// Every pod reaches the host outside the cluster masqueraded to its node's
/// address: on X flanneld's iptables chains and the nftables table weft
/// left there masquerade alike; elsewhere weft's table does.
fn mixed_egress(cx: &mut Ctx) -> Res<String> {
    crate::checks::egress(cx)
}

/// A node's flannel annotations: (public-ip, VtepMAC), after checking
/// backend-type and kube-subnet-manager.
fn annotations(node: &Value) -> Res<(String, String)> {
    let name = s(&node["metadata"]["name"]);
    let a = &node["metadata"]["annotations"];
    let get = |k: &str| s(&a[format!("{A}/{k}")]);
    if get("backend-type") != "vxlan" || get("kube-subnet-manager") != "true" {
        return Err(format!("{name}: annotations {a}"));
    }
    let data: Value = serde_json::from_str(&get("backend-data"))
        .map_err(|e| format!("{name}: backend-data {:?}: {e}", get("backend-data")))?;
    if data["VNI"] != 1 {
        return Err(format!("{name}: backend-data {data}"));
    }
    Ok((get("public-ip"), s(&data["VtepMAC"])))
}

/// Who last wrote the node's NetworkUnavailable condition (managedFields).
fn condition_writer(cx: &Ctx, node: &str) -> Res<String> {
    let v = cx
        .cluster
        .kubectl_json(&["get", "node", node, "--show-managed-fields"])?;
    v["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| {
            m["fieldsV1"]["f:status"]["f:conditions"]
                .get("k:{\"type\":\"NetworkUnavailable\"}")
                .is_some_and(|c| c.get("f:reason").is_some())
        })
        .map(|m| s(&m["manager"]))
        .ok_or(format!(
            "{node}: nobody manages NetworkUnavailable's reason"
        ))
}

/// The annotations on every node (public-ip its InternalIP, backend-type
/// vxlan, kube-subnet-manager, backend-data with VNI 1 and a VtepMAC), the
/// condition written by each node's own agent (managedFields: flanneld on
/// X, weftd elsewhere), and each side reading the other: weftd status on
/// each weft node lists X with the VtepMAC flannel.1 has, and on X flannel
/// routes each weft node's podCIDR through flannel.1 with an FDB entry for
/// its VtepMAC at its address.
fn mixed_annotations(cx: &mut Ctx) -> Res<String> {
    Ok(read_both_ways(cx, X)?.join("\n"))
}

/// [`mixed_annotations`] with `f` the flannel node.
fn read_both_ways(cx: &Ctx, f: &str) -> Res<Vec<String>> {
    let nodes = cx.nodes()?;
    let mut said = vec![];
    let mut macs = vec![];
    for (name, ip, _) in &nodes {
        let v = cx.cluster.kubectl_json(&["get", "node", name])?;
        let (public, mac) = annotations(&v)?;
        if public != ip.to_string() {
            return Err(format!("{name}: public-ip {public}, InternalIP {ip}"));
        }
        let writer = condition_writer(cx, name)?;
        let want = if name == f { "flanneld" } else { "weftd" };
        if writer != want {
            return Err(format!(
                "{name}: NetworkUnavailable written by {writer:?}, not {want}"
            ));
        }
        said.push(format!(
            "{name}: public-ip {public}, VtepMAC {mac}, NetworkUnavailable=False by {writer}"
        ));
        macs.push(mac);
    }
    let x_mac = nodes
        .iter()
        .zip(&macs)
        .find(|(n, _)| n.0 == f)
        .map(|(_, m)| m.clone())
        .ok_or("no flannel node")?;
    let dev = cx
        .cluster
        .on_node(f, &["cat", "/sys/class/net/flannel.1/address"])?;
    if dev.trim() != x_mac {
        return Err(format!(
            "{f}: flannel.1 has MAC {}, its annotation {x_mac}",
            dev.trim()
        ));
    }
    let x_ip = cx.node_ip(f)?.to_string();
    let routes = cx.cluster.on_node(f, &["ip", "route", "show"])?;
    let fdb = cx
        .cluster
        .on_node(f, &["bridge", "fdb", "show", "dev", "flannel.1"])?;
    for ((name, ip, cidr), mac) in nodes.iter().zip(&macs).filter(|(n, _)| n.0 != f) {
        // weft reads flannel's node.
        let pod = cx.weft_pod(name)?;
        let st = cx
            .cluster
            .exec("kube-weft", &pod, &["weftd", "status", "--output", "json"])?;
        let v: Value =
            serde_json::from_str(&st).map_err(|e| format!("weftd status in {pod}: {e}: {st}"))?;
        let view = if v.is_array() { v[0].clone() } else { v };
        let peer = view["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["public_ip"] == x_ip.as_str())
            .ok_or(format!("weftd status on {name} lacks {f} ({x_ip}): {st}"))?;
        if peer["vtep_mac"] != x_mac.as_str() {
            return Err(format!(
                "weftd on {name} has {f} at VtepMAC {}, flannel.1 has {x_mac}",
                peer["vtep_mac"]
            ));
        }
        // flannel reads weft's nodes.
        let cidr = cidr.ok_or(format!("{name} has no podCIDR"))?;
        let route = format!("{cidr} via {} dev flannel.1 onlink", cidr.network());
        if !routes.lines().any(|l| l.trim().starts_with(&route)) {
            return Err(format!("{f}: no route {route:?}:\n{routes}"));
        }
        let entry = format!("{mac} dst {ip}");
        if !fdb.lines().any(|l| l.starts_with(&entry)) {
            return Err(format!("{f}: no FDB entry {entry:?} on flannel.1:\n{fdb}"));
        }
        said.push(format!(
            "weftd status on {name} lists {f} {} at {x_mac}; {f} routes {cidr} via flannel.1, FDB {entry}",
            peer["subnet"].as_str().unwrap_or_default()
        ));
    }
    // The same subnet.env on both kinds of node: keys, Network, MTU, masquerade.
    let keys = |env: &str| -> Vec<String> {
        let mut k: Vec<String> = env
            .lines()
            .filter(|l| !l.starts_with("FLANNEL_SUBNET="))
            .map(str::to_string)
            .collect();
        k.sort();
        k
    };
    let fenv = cx.cluster.on_node(f, &["cat", "/run/flannel/subnet.env"])?;
    for (name, _, _) in nodes.iter().filter(|n| n.0 != f) {
        let wenv = cx
            .cluster
            .on_node(name, &["cat", "/run/flannel/subnet.env"])?;
        if keys(&wenv) != keys(&fenv) {
            return Err(format!(
                "subnet.env differs beyond FLANNEL_SUBNET: {f} (flanneld):\n{fenv}{name} (weftd):\n{wenv}"
            ));
        }
    }
    said.push(format!(
        "subnet.env the same on every node but FLANNEL_SUBNET: {}",
        keys(&fenv).join(" ")
    ));
    Ok(said)
}

/// Migration for real (migrating.md, "Node by node"): X runs flannel with a
/// pod on it that flannel's plugin added, probing a pod on W (5 ms UDP, one
/// TCP connection), while a pod on W probes one on Y. X's label moves to
/// weft: flannel's pod leaves X, weft's takes over (deleting flannel.1).
/// Measured: X's pod's longest gap (≤ 1 s) and whether its TCP connection
/// lived (it must); the W → Y connection must not notice (kept, gap ≤ 100
/// ms). Then X's pod,
/// added by flannel, is deleted under weft: its host-local address and
/// flannel's saved file are gone.
fn migrate_to_weft(cx: &mut Ctx) -> Res<String> {
    let (px, pw, py) = (probe_on(cx, X)?, probe_on(cx, W)?, probe_on(cx, Y)?);
    let id = sandbox_of(cx, X, &px.ip.to_string())?;
    let saved = format!("/var/lib/cni/flannel/{id}");
    if !exists_on(cx, X, &saved)? {
        return Err(format!("{X}: {} has no {saved}: not flannel's", px.name));
    }
    let wx = watch_start(cx, &px, &pw)?;
    let wo = watch_start(cx, &pw, &py)?;
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let moved: Res<_> = (|| {
        cx.cluster
            .kubectl(&["label", "node", X, &format!("{LABEL}=weft"), "--overwrite"])?;
        let settled = agents_settled(cx, &[])?;
        let took = t0.elapsed();
        // Until X's pod is answered again (the gap's end).
        wait(60, "X's pod to reach W's again", || {
            cx.seen_by(&px, "udp", &format!("{}:8081", pw.ip))
        })?;
        Ok((settled, took))
    })();
    std::thread::sleep(Duration::from_secs(2));
    let (wx, wo) = (watch_stop(cx, &px, &pw, wx), watch_stop(cx, &pw, &py, wo));
    let (settled, took) = moved?;
    let (wx, wo) = (wx?, wo?);
    let mut said = settled;
    said.push(format!(
        "{X} moved to weft: label set to weft Ready on every node in {:.1} s",
        took.as_secs_f64()
    ));
    said.push(format!("X's pod: {}", wx.summary(&px, &pw)));
    said.push(format!("other nodes: {}", wo.summary(&pw, &py)));
    if !wo.tcp_ok || wo.longest_gap_ms > 100.0 {
        return Err(format!(
            "the connection between two other nodes was interrupted:\n{}",
            said.join("\n")
        ));
    }
    // flannel.1 forwards until weftd replaces it: the gap is weftd's
    // take-over, well under a second (docs/migrating.md has the figure).
    if wx.longest_gap_ms > 1000.0 {
        return Err(format!(
            "X's pod lost its traffic for over a second:\n{}",
            said.join("\n")
        ));
    }
    if !wx.tcp_ok {
        return Err(format!(
            "X's pod's TCP connection did not survive the move:\n{}",
            said.join("\n")
        ));
    }
    if exists_on(cx, X, "/sys/class/net/flannel.1")? {
        return Err(format!("{X}: flannel.1 is still there under weft"));
    }
    let conf = cx.cluster.on_node(X, &["ls", "/etc/cni/net.d"])?;
    if !conf.contains("10-flannel.conflist.weft-disabled") || conf.contains("10-flannel.conflist\n")
    {
        return Err(format!("{X}: /etc/cni/net.d holds {conf:?}"));
    }
    // The pod flannel's plugin added, deleted under weft.
    let (old, new) = replace_probe(cx, X)?;
    let reserved = format!("/var/lib/cni/networks/cbr0/{}", old.ip);
    if exists_on(cx, X, &reserved)? {
        return Err(format!(
            "{X}: {} deleted under weft left {reserved}",
            old.name
        ));
    }
    let left = cx.cluster.on_node(
        X,
        &["sh", "-c", "ls -A /var/lib/cni/flannel 2>/dev/null; true"],
    )?;
    if !left.trim().is_empty() {
        return Err(format!(
            "{X}: /var/lib/cni/flannel still holds {left:?} after {} was deleted under weft",
            old.name
        ));
    }
    said.push(format!(
        "{} (added by flannel) deleted under weft: {} released, {saved} gone, /var/lib/cni/flannel empty; {} added by weft-cni ({})",
        old.name, old.ip, new.name, new.ip
    ));
    Ok(said.join("\n"))
}

/// Back to flannel (migrating.md): Y's label removed, weft's pod leaves,
/// flannel's runs there and reads the weft nodes, which read it. What the
/// guide says stays behind does (weft0, its nftables table, 10-weft.conflist
/// beside flannel's, which sorts first);
/// pods reach each other; a pod weft-cni added, deleted under flannel,
/// keeps its host-local address; the pod flannel adds instead reaches
/// everyone; `weftd uninstall` (by `kubectl debug node`, weft's image)
/// removes weft0 and weft's rules, and pods still reach each other.
fn back_to_flannel(cx: &mut Ctx) -> Res<String> {
    cx.cluster
        .kubectl(&["label", "node", Y, &format!("{LABEL}-")])?;
    let mut said = agents_settled(cx, &[Y])?;
    said.extend(read_both_ways(cx, Y)?);
    let left = cx.cluster.on_node(
        Y,
        &[
            "sh",
            "-c",
            "ip -br link show weft0; nft list table ip weft >/dev/null && echo nft-table-weft; ls /etc/cni/net.d",
        ],
    )?;
    for want in [
        "weft0",
        "nft-table-weft",
        "10-flannel.conflist\n",
        "10-weft.conflist",
    ] {
        if !left.contains(want) {
            return Err(format!("{Y}: want {want:?} left behind: {left}"));
        }
    }
    said.push(format!(
        "{Y} left by weft: {}",
        left.split_whitespace().collect::<Vec<_>>().join(" ")
    ));
    said.push(format!(
        "weft's pod on {Y}, under flannel: {}",
        pod_to_pod(cx)?
    ));
    let (old, new) = replace_probe(cx, Y)?;
    if !exists_on(cx, Y, &format!("/var/lib/cni/networks/cbr0/{}", old.ip))? {
        return Err(format!(
            "{Y}: {} (added by weft-cni) deleted under flannel released {}: migrating.md says it stays",
            old.name, old.ip
        ));
    }
    let id = sandbox_of(cx, Y, &new.ip.to_string())?;
    if !exists_on(cx, Y, &format!("/var/lib/cni/flannel/{id}"))? {
        return Err(format!(
            "{Y}: {} was not added by flannel's plugin",
            new.name
        ));
    }
    said.push(format!(
        "{} deleted under flannel: {} stays reserved; {} added by flannel ({})",
        old.name, old.ip, new.name, new.ip
    ));
    said.push(format!("flannel's pod on {Y}: {}", pod_to_pod(cx)?));
    // weftd uninstall, the way a cluster runs a command on a node.
    cx.cluster.kubectl(&[
        "debug",
        &format!("node/{Y}"),
        "--image=localhost/weft:dev",
        "--profile=sysadmin",
        "-q",
        "--",
        "weftd",
        "uninstall",
    ])?;
    let gone = wait(60, "weftd uninstall in the debug pod", || {
        let gone = cx.cluster.on_node(
            Y,
            &[
                "sh",
                "-c",
                "ip link show weft0 >/dev/null 2>&1 && echo weft0; nft list table ip weft >/dev/null 2>&1 && echo table; true",
            ],
        )?;
        if gone.trim().is_empty() {
            Ok(())
        } else {
            Err(format!("still there: {gone}"))
        }
    });
    let debug_log = debug_pod_log(cx, Y);
    gone.map_err(|e| format!("{e}\ndebug pod: {debug_log}"))?;
    said.push(format!(
        "weftd uninstall on {Y} (kubectl debug node): {}",
        debug_log.split_whitespace().collect::<Vec<_>>().join(" ")
    ));
    said.push(format!("after it: {}", pod_to_pod(cx)?));
    Ok(said.join("\n"))
}

/// The log of the newest `kubectl debug node/NODE` pod, which is deleted.
fn debug_pod_log(cx: &Ctx, node: &str) -> String {
    let Ok(v) = cx.cluster.kubectl_json(&[
        "get",
        "pods",
        "--field-selector",
        &format!("spec.nodeName={node}"),
    ]) else {
        return String::new();
    };
    let mut log = String::new();
    for p in items(&v) {
        let name = s(&p["metadata"]["name"]);
        if name.starts_with(&format!("node-debugger-{node}")) {
            let _ = wait(30, "the debug pod to finish", || {
                let v = cx.cluster.kubectl_json(&["get", "pod", &name])?;
                match s(&v["status"]["phase"]).as_str() {
                    "Succeeded" | "Failed" => Ok(()),
                    ph => Err(ph.to_string()),
                }
            });
            log = cx.cluster.kubectl(&["logs", &name]).unwrap_or_else(|e| e);
            let _ = cx
                .cluster
                .kubectl(&["delete", "pod", &name, "--wait=false"]);
        }
    }
    log
}
