//! The Kubernetes checks of `weftd doctor`: the API server reached, and the
//! CNI-before-kube-proxy deadlock when its in-cluster address is silent; its
//! TLS certificate against the CA weft trusts and the address dialled; each
//! RBAC verb weft needs, asked with a SelfSubjectAccessReview; this node's
//! object, its podCIDR against the Network, and its flannel annotations
//! against what this node would announce. The facts come from
//! `store::kube::diagnose` (the dial and the TLS diagnosis are weftd's own);
//! what they mean, and the fix, are decided here by functions without I/O.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Node;

use super::STORE_WAIT;
use super::report::{Check, Report};
use crate::backend::vxlan::VxlanData;
use crate::config::NetConfig;
use crate::iface::ExtIface;
use crate::lease::LeaseAttrs;
use crate::store::kube::diagnose::{
    self, Annotation, CertProblem, Dial, OwnNode, Review, SeenCert, Source,
};
use crate::store::kube::{API_CALLS, KubeSettings, KubeStore};
use crate::store::{KubeError, StoreError};

const API: &str = "Kubernetes API";
const TLS: &str = "API server TLS";

/// The API server, its TLS and weft's RBAC verbs; the store to read the
/// node from, or `None` when the server cannot be used (the report says why).
pub async fn server(k: &KubeSettings, r: &mut Report) -> Option<KubeStore> {
    let store = match tokio::time::timeout(STORE_WAIT, KubeStore::connect(k.clone())).await {
        Ok(Ok(s)) => s,
        // With POD_NAME instead of NODE_NAME, connecting reads the pod.
        Ok(Err(e)) => {
            r.push(match &e {
                StoreError::Kube(
                    k @ (KubeError::Deadlock { .. } | KubeError::Unreachable { .. }),
                ) => unreachable(k),
                StoreError::Kube(KubeError::Tls { .. }) => Check::fail(TLS, e.to_string(), ""),
                _ => Check::fail(API, e.to_string(), ""),
            });
            return None;
        }
        Err(_) => {
            r.push(Check::fail(API, "no answer in 10 s", ""));
            return None;
        }
    };
    let s = diagnose::server(&store).await;
    let (checks, usable) = dial_checks(&s.api, &s.source, s.ca_from.as_deref(), &s.dial);
    for c in checks {
        r.push(c);
    }
    if !usable {
        return None;
    }
    let mut reviews = vec![];
    for &(verb, resource) in API_CALLS {
        let review = match tokio::time::timeout(
            STORE_WAIT,
            diagnose::review(&store, verb, resource),
        )
        .await
        {
            Ok(v) => v,
            Err(_) => Review::Unavailable("no answer in 10 s".into()),
        };
        reviews.push(((verb, resource), review));
    }
    for c in rbac_checks(&reviews, k.node_name.is_none()) {
        r.push(c);
    }
    Some(store)
}

/// This node's object: found, its podCIDR inside `config`'s Network, its
/// annotations what this node (`ext`) would announce.
pub async fn node(store: &KubeStore, config: &NetConfig, ext: Option<&ExtIface>, r: &mut Report) {
    let name = store.node_name();
    let node = match tokio::time::timeout(STORE_WAIT, store.node()).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            r.push(Check::fail(format!("node {name}"), e.to_string(), ""));
            return;
        }
        Err(_) => {
            r.push(Check::fail(format!("node {name}"), "no answer in 10 s", ""));
            return;
        }
    };
    // What weftd would put in its request: the daemon's own derivation.
    let announce = ext.map(|e| {
        config.backend.own_attrs(
            config.ipv4.map(|_| e.public_ip),
            config.ipv6.and(e.public_ipv6),
        )
    });
    for c in node_checks(
        store.annotation_prefix(),
        name,
        &node,
        config,
        announce.as_ref(),
    ) {
        r.push(c);
    }
}

/// The reachability line and, for https, the TLS line; whether requests
/// can get through. `ca_from`: where the CA weft trusts comes from; `None`
/// for the system's CAs, which weftd's client loads and its diagnosis does
/// not, so the certificate is not judged.
pub(crate) fn dial_checks(
    api: &str,
    source: &Source,
    ca_from: Option<&str>,
    dialled: &Dial,
) -> (Vec<Check>, bool) {
    let (addr, host, tls) = match dialled {
        Dial::Unreachable(e) => return (vec![unreachable(e)], false),
        Dial::Connected { addr, host, tls } => (addr, host, tls),
    };
    let how = match source {
        Source::InCluster { .. } => format!(
            "{}; that address is the `kubernetes` Service's ClusterIP unless the DaemonSet sets it to the API server's own",
            source.describe()
        ),
        _ => format!("{}, reached directly", source.describe()),
    };
    let mut out = vec![Check::pass(API, format!("{api} answers at {addr} ({how})"))];
    let Some(tls) = tls else {
        return (out, true);
    };
    let Some(ca_from) = ca_from else {
        out.push(Check::note(
            TLS,
            format!(
                "not checked: no kubeconfig CA and no ServiceAccount ca.crt, so weftd trusts the system's CAs for {addr}, which the doctor does not load"
            ),
        ));
        return (out, true);
    };
    let c = tls_check(*addr, host, ca_from, tls);
    let ok = c.status != super::report::Status::Fail;
    out.push(c);
    (out, ok)
}

/// An unreachable server: the deadlock when the address is the in-cluster one.
fn unreachable(e: &KubeError) -> Check {
    match e {
        KubeError::Deadlock {
            api,
            host,
            port,
            detail,
        } => Check::fail(
            API,
            format!(
                "{api} (in-cluster config: KUBERNETES_SERVICE_HOST={host}, KUBERNETES_SERVICE_PORT={port}) does not answer: {detail}. In a pod that address is the `kubernetes` Service's ClusterIP, which answers only once kube-proxy runs, and kube-proxy waits for the pod network that weft provides: the CNI-before-kube-proxy deadlock"
            ),
            "give weftd the API server's real address: set KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT in the DaemonSet's env to the control plane's address and port (e.g. 10.0.0.100 and 6443), or pass --kube-api-url https://<control-plane>:6443 (flannel's advice for clusters without kube-proxy), or --kubeconfig-file with a kubeconfig that names it",
        ),
        KubeError::Unreachable { api, detail } => Check::fail(
            API,
            format!("{api} does not answer: {detail}"),
            "check the server address (--kube-api-url, or the kubeconfig's clusters[].cluster.server) and that the API server runs there",
        ),
        other => Check::fail(API, other.to_string(), ""),
    }
}

/// The API server's certificate against the CA weft trusts (`ca_from`) and
/// the name dialled (`host`).
pub(crate) fn tls_check(
    addr: SocketAddr,
    host: &str,
    ca_from: &str,
    seen: &Result<SeenCert, String>,
) -> Check {
    let cert = match seen {
        Ok(c) => c,
        Err(why) => {
            return Check::fail(
                TLS,
                format!("{addr}: {why}"),
                format!(
                    "check that the API server speaks https there and that weft has the CA that signed its certificate (now: {ca_from})"
                ),
            );
        }
    };
    let names = cert.names.join(", ");
    let SeenCert {
        subject, issuer, ..
    } = cert;
    match &cert.refused {
        None => Check::pass(
            TLS,
            format!(
                "{addr} presents a certificate (subject {subject}) signed by the CA weft trusts ({ca_from}) and valid for {host}: its names are [{names}]"
            ),
        ),
        Some((CertProblem::Untrusted, _)) => Check::fail(
            TLS,
            format!(
                "{addr} presents a certificate (subject {subject}, issuer {issuer}, names [{names}]) that the CA weft trusts ({ca_from}) did not sign"
            ),
            "give weft the CA that signed the API server's certificate (kubeadm: /etc/kubernetes/pki/ca.crt): the kubeconfig's certificate-authority(-data), or the ServiceAccount's ca.crt",
        ),
        Some((CertProblem::WrongName, _)) => Check::fail(
            TLS,
            format!(
                "{addr} presents a certificate (subject {subject}) whose names [{names}] do not include {host}, the address dialled"
            ),
            format!(
                "dial the API server by one of those names (--kube-api-url, the kubeconfig's server, or KUBERNETES_SERVICE_HOST), or reissue its certificate with {host} in its SANs (kubeadm: apiServer.certSANs)"
            ),
        ),
        Some((CertProblem::Expired, _)) => Check::fail(
            TLS,
            format!("{addr} presents an expired certificate (subject {subject}, names [{names}])"),
            "renew it (kubeadm certs renew all on a kubeadm cluster) and restart the API server",
        ),
        Some((CertProblem::Other, e)) => Check::fail(
            TLS,
            format!(
                "{addr} presents a certificate (subject {subject}, names [{names}]) that does not verify: {e}"
            ),
            "",
        ),
    }
}

/// What weftd cannot do without the verb.
fn needed_for(verb: &str, resource: &str) -> &'static str {
    match (verb, resource) {
        ("get", "nodes") => "weftd cannot read this node's podCIDR",
        (_, "nodes") => "weftd cannot learn its peers",
        (_, "nodes/status") => {
            "weftd cannot announce this node (its annotations) or clear NetworkUnavailable"
        }
        (_, "pods") => "weftd cannot find its node from POD_NAME and POD_NAMESPACE",
        _ => "weftd makes this call",
    }
}

/// One line per verb weft needs; one note when the review API answers none.
/// `get pods` matters only when the node is found from the pod (`pod_lookup`).
pub(crate) fn rbac_checks(reviews: &[((&str, &str), Review)], pod_lookup: bool) -> Vec<Check> {
    if let Some(((_, _), Review::Unavailable(why))) = reviews.first() {
        if reviews
            .iter()
            .all(|(_, r)| matches!(r, Review::Unavailable(_)))
        {
            return vec![Check::note(
                "RBAC",
                format!(
                    "not checked: the API server answers no SelfSubjectAccessReview ({why}); weftd's errors name a refused verb"
                ),
            )];
        }
    }
    reviews
        .iter()
        .map(|((verb, resource), review)| {
            let what = format!("RBAC {verb} {resource}");
            let because = |reason: &str| {
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({reason})")
                }
            };
            match review {
                Review::Allowed { reason } => Check::pass(what, format!("allowed{}", because(reason))),
                Review::Denied { reason } if *resource == "pods" && !pod_lookup => Check::note(
                    what,
                    format!(
                        "denied{}: not needed while NODE_NAME is set",
                        because(reason)
                    ),
                ),
                Review::Denied { reason } => Check::fail(
                    what,
                    format!(
                        "denied{}: weft's credentials may not {verb} {resource}, so {}",
                        because(reason),
                        needed_for(verb, resource)
                    ),
                    format!(
                        "add the rule {{apiGroups: [\"\"], resources: [\"{resource}\"], verbs: [\"{verb}\"]}} to weft's ClusterRole (docker/weft.yaml's, the shape of flannel's) and bind it to weft's ServiceAccount"
                    ),
                ),
                Review::Unavailable(why) => Check::note(what, format!("not checked: {why}")),
            }
        })
        .collect()
}

/// The node's podCIDR against the Network, and its annotations against
/// `announce` (what this node would ask for; `None` when the interface is
/// unknown).
pub(crate) fn node_checks(
    annotation_prefix: &str,
    name: &str,
    node: &Node,
    config: &NetConfig,
    announce: Option<&LeaseAttrs>,
) -> Vec<Check> {
    let what = format!("node {name}");
    let network = config.network();
    // The lease weftd would make of the node; the attributes only shape the
    // annotations, so any stand in when the interface is unknown.
    let placeholder;
    let attrs = match announce {
        Some(a) => a,
        None => {
            placeholder = config
                .backend
                .own_attrs(Some(std::net::Ipv4Addr::UNSPECIFIED), None);
            &placeholder
        }
    };
    let own = match diagnose::own_node(annotation_prefix, name, node, config, attrs) {
        Ok(o) => o,
        Err(KubeError::NoPodCidr { network, .. }) => {
            return vec![Check::fail(
                what,
                "has no podCIDR (spec.podCIDR and spec.podCIDRs are empty): nobody assigns node subnets in this cluster, so weftd has no subnet for this node",
                format!(
                    "run kube-controller-manager with --allocate-node-cidrs=true --cluster-cidr={network} (kubeadm: kubeadm init --pod-network-cidr={network}), or set spec.podCIDR on the node"
                ),
            )];
        }
        Err(KubeError::PodCidrOutside { cidr, network, .. }) => {
            return vec![Check::fail(
                what,
                format!(
                    "its podCIDR {cidr} lies outside the Network {network} of net-conf.json: weftd refuses it as this node's subnet"
                ),
                format!(
                    "make Network in net-conf.json equal kube-controller-manager's --cluster-cidr (kubeadm's --pod-network-cidr), which assigned {cidr}"
                ),
            )];
        }
        Err(KubeError::PodCidrUnusable { cidr, why, .. }) => {
            return vec![Check::fail(
                what,
                format!("its podCIDR {cidr} cannot be a node subnet: {why}"),
                "give kube-controller-manager a --node-cidr-mask-size of 30 or less",
            )];
        }
        Err(e) => return vec![Check::fail(what, e.to_string(), "")],
    };
    let mut out = vec![Check::pass(
        &what,
        format!(
            "podCIDR {}, inside the Network {} of net-conf.json",
            own.lease.id(),
            network
                .map(|n| n.to_string())
                .or(config.network6().map(|n| n.to_string()))
                .unwrap_or_default()
        ),
    )];
    let what = format!("node {name} annotations");
    out.push(match announce {
        None => Check::note(
            what,
            "not compared: the interface check failed, so the address this node would announce is unknown",
        ),
        Some(_) => annotations_check(what, &own, config),
    });
    out
}

/// The node's flannel annotations against those weftd would write for it
/// (`own`, announcing its lease's attributes).
fn annotations_check(what: String, own: &OwnNode, config: &NetConfig) -> Check {
    let want = &own.lease.attrs;
    fn have(a: &Annotation) -> Option<&str> {
        a.have.as_deref()
    }
    // An IPv6-only network's node has no IPv4 VTEP: flannel writes neither
    // public-ip nor backend-data for it, and weftd neither.
    let v4 = config.ipv4.is_some();
    let (ip_a, data_a, overwrite_a) = if v4 {
        (&own.public_ip, &own.backend_data, &own.public_ip_overwrite)
    } else {
        (
            &own.public_ipv6,
            &own.backend_v6_data,
            &own.public_ipv6_overwrite,
        )
    };
    let have_ip = have(&own.public_ip);
    let have_type = have(&own.backend_type);
    let have_data = have(&own.backend_data);
    if have(&own.managed).is_none() && have(ip_a).is_none() && have(data_a).is_none() {
        return Check::note(
            what,
            format!(
                "none yet ({} and the rest): weftd writes them when it starts on this node",
                ip_a.key
            ),
        );
    }
    let want_mac = if v4 {
        want.vxlan_data().map(|d| d.vtep_mac).ok()
    } else {
        want.vxlan_v6_data().ok().flatten().map(|d| d.vtep_mac)
    };
    let mut problems = vec![];
    let ip = if v4 {
        want.public_ip.to_string()
    } else {
        want.public_ipv6.map(|a| a.to_string()).unwrap_or_default()
    };
    match have_ip {
        _ if !v4 => {}
        None => problems.push(format!("{} is missing", own.public_ip.key)),
        Some(v) if v != ip => problems.push(format!(
            "{} is {v}, but this node would announce {ip}: peers send its pods' traffic to {v}",
            own.public_ip.key
        )),
        Some(_) => {}
    }
    match have_type {
        Some("vxlan") => {}
        Some(t) => problems.push(format!(
            "{} is {t}, not vxlan: peers do not reach this node through VXLAN",
            own.backend_type.key
        )),
        None => problems.push(format!("{} is missing", own.backend_type.key)),
    }
    let crate::backend::Backend::Vxlan(vx) = config.backend;
    let vni = vx.vni.get();
    match have_data.map(serde_json::from_str::<VxlanData>) {
        _ if !v4 => {}
        None => problems.push(format!("{} is missing", own.backend_data.key)),
        Some(Err(_)) => problems.push(format!(
            "{} {:?} is not flannel's vxlan data ({}): peers skip this node",
            own.backend_data.key,
            have_data.unwrap_or_default(),
            own.backend_data
                .want
                .as_deref()
                .unwrap_or("{\"VNI\":…,\"VtepMAC\":…}")
        )),
        Some(Ok(d)) if d.vni != vni => problems.push(format!(
            "{} has VNI {}, but net-conf.json's is {vni}: peers send VXLAN this node drops",
            own.backend_data.key, d.vni
        )),
        Some(Ok(_)) => {}
    }
    if let Some(ip6) = want.public_ipv6 {
        let ip6 = ip6.to_string();
        match have(&own.public_ipv6) {
            None => problems.push(format!("{} is missing", own.public_ipv6.key)),
            Some(v) if v != ip6 => problems.push(format!(
                "{} is {v}, but this node would announce {ip6}: peers send its pods' IPv6 traffic to {v}",
                own.public_ipv6.key
            )),
            Some(_) => {}
        }
        match have(&own.backend_v6_data).map(serde_json::from_str::<VxlanData>) {
            None => problems.push(format!("{} is missing", own.backend_v6_data.key)),
            Some(Err(_)) => problems.push(format!(
                "{} is not flannel's vxlan data: peers reach this node over IPv4 only",
                own.backend_v6_data.key
            )),
            Some(Ok(d)) if d.vni != vni => problems.push(format!(
                "{} has VNI {}, but net-conf.json's is {vni}",
                own.backend_v6_data.key, d.vni
            )),
            Some(Ok(_)) => {}
        }
    }
    if problems.is_empty() {
        return Check::pass(
            what,
            format!(
                "agree with what this node announces: {} {ip}, backend-type vxlan, VNI {vni}, VtepMAC {}",
                ip_a.key.rsplit('/').next().unwrap_or_default(),
                want_mac.map(|m| m.to_string()).unwrap_or_default()
            ),
        );
    }
    Check::fail(
        what,
        problems.join("; "),
        format!(
            "start (or restart) weftd with these flags: it rewrites the annotations when it starts; if {ip} is not the address peers should use, give weftd and the doctor the --iface/{} that is (or set the annotation {})",
            if v4 { "--public-ip" } else { "--public-ipv6" },
            overwrite_a.key
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::VtepMac;
    use serde_json::json;

    fn config() -> NetConfig {
        NetConfig::parse(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
            "test",
        )
        .unwrap()
    }

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    fn attrs(ip: [u8; 4]) -> LeaseAttrs {
        LeaseAttrs::vxlan(
            ip.into(),
            crate::types::Vni::new(1).unwrap(),
            VtepMac::derive(&ip),
        )
    }

    const PREFIX: &str = "flannel.alpha.coreos.com";

    fn cert(names: &[&str], refused: Option<CertProblem>) -> SeenCert {
        SeenCert {
            subject: "CN=kube-apiserver".into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            issuer: "CN=kubernetes".into(),
            refused: refused.map(|p| (p, "x509".into())),
        }
    }

    #[test]
    fn a_silent_in_cluster_address_is_the_deadlock() {
        let d = Dial::Unreachable(KubeError::Deadlock {
            api: "https://10.96.0.1".into(),
            host: "10.96.0.1".into(),
            port: "443".into(),
            detail: "TCP connect to 10.96.0.1:443: timed out".into(),
        });
        let src = Source::InCluster {
            host: "10.96.0.1".into(),
            port: "443".into(),
        };
        let (c, ok) = dial_checks("https://10.96.0.1", &src, Some("ca.crt"), &d);
        assert!(!ok);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].detail.contains("CNI-before-kube-proxy deadlock"),
            "{c:?}"
        );
        let fix = c[0].fix.as_deref().unwrap();
        assert!(
            fix.contains("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT")
                && fix.contains("--kube-api-url"),
            "{fix}"
        );
    }

    #[test]
    fn without_a_ca_the_system_s_are_not_judged() {
        let d = Dial::Connected {
            addr: "192.0.2.10:6443".parse().unwrap(),
            host: "192.0.2.10".into(),
            tls: Some(Err("no usable CA: no root trust anchors".into())),
        };
        let (c, ok) = dial_checks("https://192.0.2.10:6443", &Source::ApiUrl, None, &d);
        assert!(ok, "{c:?}");
        assert_eq!(
            c[0].detail,
            "https://192.0.2.10:6443 answers at 192.0.2.10:6443 (--kube-api-url, reached directly)"
        );
        assert_eq!(c[1].status, super::super::report::Status::Note);
        assert!(c[1].detail.contains("system's CAs"), "{c:?}");
    }

    #[test]
    fn tls_lines_name_the_certificate_and_the_address() {
        let a: SocketAddr = "10.0.0.100:6443".parse().unwrap();
        let ok = tls_check(
            a,
            "10.0.0.100",
            "ca.crt",
            &Ok(cert(&["kubernetes", "10.0.0.100"], None)),
        );
        assert_eq!(ok.status, super::super::report::Status::Pass);
        assert!(
            ok.detail.contains("[kubernetes, 10.0.0.100]"),
            "{}",
            ok.detail
        );
        let bad = tls_check(
            a,
            "10.0.0.100",
            "ca.crt",
            &Ok(cert(
                &["kubernetes", "10.96.0.1"],
                Some(CertProblem::WrongName),
            )),
        );
        assert!(
            bad.detail
                .contains("[kubernetes, 10.96.0.1] do not include 10.0.0.100"),
            "{}",
            bad.detail
        );
        assert!(bad.fix.unwrap().contains("apiServer.certSANs"));
        let untrusted = tls_check(
            a,
            "h",
            "ca.crt",
            &Ok(cert(&[], Some(CertProblem::Untrusted))),
        );
        assert!(
            untrusted.detail.contains("(ca.crt) did not sign"),
            "{}",
            untrusted.detail
        );
        let plain = tls_check(a, "h", "ca.crt", &Err("ended early".into()));
        assert!(plain.detail.contains("ended early"));
    }

    #[test]
    fn a_denied_verb_names_the_rule_to_add() {
        let reviews = [
            (
                ("get", "nodes"),
                Review::Allowed {
                    reason: String::new(),
                },
            ),
            (
                ("patch", "nodes/status"),
                Review::Denied {
                    reason: String::new(),
                },
            ),
            (
                ("get", "pods"),
                Review::Denied {
                    reason: "no".into(),
                },
            ),
        ];
        let c = rbac_checks(&reviews, false);
        assert_eq!(c[0].detail, "allowed");
        assert_eq!(c[1].what, "RBAC patch nodes/status");
        assert!(
            c[1].detail.contains("cannot announce this node"),
            "{}",
            c[1].detail
        );
        assert_eq!(
            c[1].fix.as_deref(),
            Some(
                "add the rule {apiGroups: [\"\"], resources: [\"nodes/status\"], verbs: [\"patch\"]} to weft's ClusterRole (docker/weft.yaml's, the shape of flannel's) and bind it to weft's ServiceAccount"
            )
        );
        assert_eq!(
            c[2].status,
            super::super::report::Status::Note,
            "NODE_NAME is set"
        );
        assert_eq!(
            rbac_checks(&reviews, true)[2].status,
            super::super::report::Status::Fail
        );
        let none = [
            (("get", "nodes"), Review::Unavailable("404".into())),
            (("list", "nodes"), Review::Unavailable("404".into())),
        ];
        let c = rbac_checks(&none, false);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, super::super::report::Status::Note);
    }

    #[test]
    fn pod_cidrs_missing_outside_and_inside() {
        let c = node_checks(
            PREFIX,
            "n1",
            &node(json!({"metadata": {"name": "n1"}, "spec": {}})),
            &config(),
            Some(&attrs([192, 0, 2, 1])),
        );
        assert_eq!(c.len(), 1);
        assert!(c[0].detail.contains("no podCIDR"), "{c:?}");
        assert!(
            c[0].fix
                .as_deref()
                .unwrap()
                .contains("--allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16")
        );
        let n = node(json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.99.1.0/24"}}));
        let c = node_checks(PREFIX, "n1", &n, &config(), None);
        assert!(
            c[0].detail
                .contains("10.99.1.0/24 lies outside the Network 10.244.0.0/16"),
            "{c:?}"
        );
        // Garbage where a CIDR belongs: a line, not a panic.
        let n = node(json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "nonsense"}}));
        assert_eq!(
            node_checks(PREFIX, "n1", &n, &config(), None)[0].status,
            super::super::report::Status::Fail
        );
        let n = node(json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}));
        let c = node_checks(PREFIX, "n1", &n, &config(), None);
        assert_eq!(
            c[0].detail,
            "podCIDR 10.244.1.0/24, inside the Network 10.244.0.0/16 of net-conf.json"
        );
        assert_eq!(c[1].status, super::super::report::Status::Note);
    }

    /// Whatever a hostile API server puts in the node: lines, never a panic.
    #[test]
    fn odd_nodes_give_lines() {
        let me = attrs([192, 0, 2, 1]);
        for spec in [
            json!({"podCIDRs": ["fd00::/64"]}),
            json!({"podCIDRs": [""], "podCIDR": ""}),
            json!({"podCIDR": "10.244.1.7/32"}),
            json!({"podCIDR": "10.244.1.0/24"}),
        ] {
            for data in ["null", "[]", "{\"VNI\":-1}", "{\"VtepMAC\":\"zz\"}", ""] {
                let n = node(json!({"metadata": {"name": "n", "annotations": {
                    "flannel.alpha.coreos.com/backend-data": data,
                    "flannel.alpha.coreos.com/public-ip": "not an address",
                    "flannel.alpha.coreos.com/public-ip-overwrite": "::1",
                }}, "spec": spec}));
                let c = node_checks(PREFIX, "n", &n, &config(), Some(&me));
                assert!(!c.is_empty());
            }
        }
    }

    /// An IPv6-only node is announced by its IPv6 annotations alone: without
    /// public-ip and backend-data it passes, and a wrong public-ipv6 fails
    /// naming --public-ipv6.
    #[test]
    fn ipv6_only_annotations_are_the_ipv6_ones() {
        let config = NetConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
            "test",
        )
        .unwrap();
        let ip6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mac6 = VtepMac::derive(&ip6.octets());
        let me = LeaseAttrs::vxlan6_only(ip6, crate::types::Vni::new(1).unwrap(), mac6);
        let annotated = |ip6: &str| {
            node(json!({"metadata": {"name": "n1", "annotations": {
                "flannel.alpha.coreos.com/public-ipv6": ip6,
                "flannel.alpha.coreos.com/backend-v6-data": format!("{{\"VNI\":1,\"VtepMAC\":\"{mac6}\"}}"),
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            }}, "spec": {"podCIDR": "fc00:0:0:1::/64", "podCIDRs": ["fc00:0:0:1::/64"]}}))
        };
        let c = node_checks(PREFIX, "n1", &annotated("2001:db8::1"), &config, Some(&me));
        assert_eq!(c[0].status, super::super::report::Status::Pass, "{c:?}");
        assert_eq!(c[1].status, super::super::report::Status::Pass, "{c:?}");
        assert!(
            c[1].detail.contains("public-ipv6 2001:db8::1")
                && c[1].detail.contains(&mac6.to_string()),
            "{c:?}"
        );
        let c = node_checks(PREFIX, "n1", &annotated("2001:db8::9"), &config, Some(&me));
        assert_eq!(c[1].status, super::super::report::Status::Fail, "{c:?}");
        assert!(
            c[1].detail.contains("public-ipv6 is 2001:db8::9")
                && c[1]
                    .fix
                    .as_deref()
                    .is_some_and(|f| f.contains("--public-ipv6")),
            "{c:?}"
        );
    }

    #[test]
    fn annotations_naming_another_address_fail() {
        let mac = VtepMac::derive(&[192, 0, 2, 1]);
        let annotated = |ip: &str, data: &str, ty: &str| {
            node(json!({"metadata": {"name": "n1", "annotations": {
                "flannel.alpha.coreos.com/public-ip": ip,
                "flannel.alpha.coreos.com/backend-data": data,
                "flannel.alpha.coreos.com/backend-type": ty,
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            }}, "spec": {"podCIDR": "10.244.1.0/24"}}))
        };
        let good = format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}");
        let me = attrs([192, 0, 2, 1]);
        let c = node_checks(
            PREFIX,
            "n1",
            &annotated("192.0.2.1", &good, "vxlan"),
            &config(),
            Some(&me),
        );
        assert_eq!(c[1].status, super::super::report::Status::Pass, "{c:?}");
        assert!(c[1].detail.contains(&mac.to_string()));
        let c = node_checks(
            PREFIX,
            "n1",
            &annotated("192.0.2.9", &good, "vxlan"),
            &config(),
            Some(&me),
        );
        assert!(
            c[1].detail
                .contains("public-ip is 192.0.2.9, but this node would announce 192.0.2.1"),
            "{c:?}"
        );
        let c = node_checks(
            PREFIX,
            "n1",
            &annotated(
                "192.0.2.1",
                "{\"VNI\":7,\"VtepMAC\":\"0a:00:00:00:00:01\"}",
                "host-gw",
            ),
            &config(),
            Some(&me),
        );
        assert!(
            c[1].detail.contains("backend-type is host-gw") && c[1].detail.contains("VNI 7"),
            "{c:?}"
        );
        let c = node_checks(
            PREFIX,
            "n1",
            &annotated("192.0.2.1", "{nope", "vxlan"),
            &config(),
            Some(&me),
        );
        assert!(c[1].detail.contains("is not flannel's vxlan data"), "{c:?}");
        let bare = node(json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}));
        let c = node_checks(PREFIX, "n1", &bare, &config(), Some(&me));
        assert_eq!(c[1].status, super::super::report::Status::Note);
    }
}
