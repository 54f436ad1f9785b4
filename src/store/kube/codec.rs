//! A node object ↔ a lease: the annotation keys under weft's prefix, a
//! node's pod CIDRs, a peer's lease from its annotations (an unusable IPv6
//! half left out, with why), this node's lease from its own object and the
//! network, and the annotations this node should carry. Pure: no I/O, any
//! node object, never a panic.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use super::KubeError;
use crate::backend::vxlan::VxlanData;
use crate::lease::{Lease, LeaseAttrs};

/// The annotation keys under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// The prefix, without a trailing slash.
    pub(super) prefix: String,
    pub(super) backend_type: String,
    pub(super) backend_data: String,
    pub(super) managed: String,
    pub(super) public_ip: String,
    pub(super) public_ip_overwrite: String,
    pub(super) backend_v6_data: String,
    pub(super) public_ipv6: String,
    pub(super) public_ipv6_overwrite: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        let prefix = prefix.trim_end_matches('/');
        let k = |s: &str| format!("{prefix}/{s}");
        Keys {
            prefix: prefix.to_string(),
            backend_type: k("backend-type"),
            backend_data: k("backend-data"),
            managed: k("kube-subnet-manager"),
            public_ip: k("public-ip"),
            public_ip_overwrite: k("public-ip-overwrite"),
            backend_v6_data: k("backend-v6-data"),
            public_ipv6: k("public-ipv6"),
            public_ipv6_overwrite: k("public-ipv6-overwrite"),
        }
    }
}

/// A node's pod CIDRs as text: `spec.podCIDRs`, else `spec.podCIDR`, the
/// empty ones left out.
fn pod_cidrs(node: &Node) -> Vec<String> {
    let Some(spec) = node.spec.as_ref() else {
        return vec![];
    };
    let mut all: Vec<String> = spec.pod_cidrs.clone().unwrap_or_default();
    if all.is_empty() {
        all.extend(spec.pod_cidr.clone());
    }
    all.retain(|c| !c.is_empty());
    all
}

/// The first IPv4 pod CIDR of a node (`spec.podCIDRs`, else `spec.podCIDR`),
/// else its first pod CIDR, as text, and parsed when it parses.
fn pod_cidr(node: &Node) -> Option<(String, Option<Ipv4Net>)> {
    let all = pod_cidrs(node);
    let first = all
        .iter()
        .find(|c| !c.contains(':'))
        .or(all.first())?
        .clone();
    let parsed = first.parse::<Ipv4Net>().ok().map(|n| n.trunc());
    Some((first, parsed))
}

/// The IPv6 pod CIDR of a node (the IPv6 entry of `spec.podCIDRs`, else an
/// IPv6 `spec.podCIDR`), as text, and parsed when it parses.
fn pod_cidr6(node: &Node) -> Option<(String, Option<Ipv6Net>)> {
    let text = pod_cidrs(node).into_iter().find(|c| c.contains(':'))?;
    let parsed = text.parse::<Ipv6Net>().ok().map(|n| n.trunc());
    Some((text, parsed))
}

pub(super) fn name_of(node: &Node) -> String {
    node.metadata
        .name
        .clone()
        .unwrap_or_else(|| "(unnamed)".into())
}

pub(super) fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// A node object as a peer lease, as the watch reads every node:
/// `Ok(None)` when the node is not (yet) managed by weft or flannel, `Err`
/// with the reason when its data is malformed. An unusable IPv6 half is
/// left out (the IPv4 half kept). Pure; the fuzzer's entry point.
pub fn peer_from_node(annotation_prefix: &str, node: &Node) -> Result<Option<Lease>, String> {
    Ok(peer_of(&Keys::new(annotation_prefix), node)?.map(|(l, _)| l))
}

/// This node's lease from its own node object and `network`, as
/// [`KubeStore`](super::KubeStore)'s `acquire` makes it before writing the annotations: the
/// pod CIDR, the public IP from `public-ip-overwrite` if set, and the
/// VtepMAC already annotated; with `network6` (a dual-stack network) also
/// the IPv6 pod CIDR, `public-ipv6-overwrite` and the IPv6 VtepMAC already
/// annotated. Pure; the fuzzer's entry point.
///
/// # Errors
/// [`KubeError::NoPodCidr`], [`KubeError::PodCidrOutside`],
/// [`KubeError::PodCidrUnusable`] or their IPv6 kin
/// ([`KubeError::NoPodCidr6`], …), naming `node_name`.
pub fn own_lease_from_node(
    annotation_prefix: &str,
    node_name: &str,
    node: &Node,
    network: Option<Ipv4Net>,
    network6: Option<Ipv6Net>,
    attrs: &LeaseAttrs,
) -> Result<Lease, KubeError> {
    own_lease(
        &Keys::new(annotation_prefix),
        node_name,
        node,
        network,
        network6,
        attrs,
    )
}

/// A node as a peer lease as its annotations hold it (see
/// [`peer_from_node`]), with why its IPv6 half was left out, if it was:
/// annotations that do not decode. What the lease means to this node is
/// [`crate::node::Admission`]'s to judge.
pub(super) fn peer_of(keys: &Keys, node: &Node) -> Result<Option<(Lease, Option<String>)>, String> {
    if annotation(node, &keys.managed) != Some("true") {
        return Ok(None);
    }
    let Some((text, cidr)) = pod_cidr(node) else {
        return Ok(None);
    };
    if cidr.is_none() && pod_cidr6(node).is_some_and(|(t6, _)| t6 == text) {
        // Only an IPv6 pod CIDR: a node of an IPv6-only network.
        return peer_ipv6_only(keys, node).map(Some);
    }
    let subnet = cidr.ok_or_else(|| format!("pod CIDR {text:?} is not an IPv4 network"))?;
    if let Some(why) = crate::lease::node_subnet_problem(&subnet) {
        return Err(format!("pod CIDR {subnet}: {why}"));
    }
    let backend_type = annotation(node, &keys.backend_type)
        .ok_or_else(|| format!("annotation {} is missing", keys.backend_type))?;
    let data = annotation(node, &keys.backend_data)
        .ok_or_else(|| format!("annotation {} is missing", keys.backend_data))?;
    let backend_data: serde_json::Value = serde_json::from_str(data).map_err(|e| {
        format!(
            "annotation {} is not JSON ({data:?}): {e}",
            keys.backend_data
        )
    })?;
    let ip = annotation(node, &keys.public_ip)
        .ok_or_else(|| format!("annotation {} is missing", keys.public_ip))?;
    let public_ip: Ipv4Addr = ip.parse().map_err(|_| {
        format!(
            "annotation {} = {ip:?} is not an IPv4 address",
            keys.public_ip
        )
    })?;
    let attrs = LeaseAttrs {
        public_ip,
        backend_type: backend_type.to_string(),
        backend_data,
        public_ipv6: None,
        backend_v6_data: None,
    };
    let lease = Lease {
        subnet: Some(subnet),
        ipv6_subnet: None,
        attrs,
        expiration: None,
    };
    peer_ipv6(keys, node, lease).map(Some)
}

/// A peer of an IPv6-only network from its node object: its IPv6 pod CIDR,
/// `public-ipv6` and `backend-v6-data` (no `public-ip` or `backend-data`,
/// which flannel does not write there), or why they are unusable.
fn peer_ipv6_only(keys: &Keys, node: &Node) -> Result<(Lease, Option<String>), String> {
    let backend_type = annotation(node, &keys.backend_type)
        .ok_or_else(|| format!("annotation {} is missing", keys.backend_type))?;
    let lease = Lease {
        subnet: None,
        ipv6_subnet: None,
        attrs: LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            backend_type: backend_type.to_string(),
            backend_data: serde_json::Value::Null,
            public_ipv6: None,
            backend_v6_data: None,
        },
        expiration: None,
    };
    peer_ipv6(keys, node, lease)
}

/// The IPv6 half of a peer from its node object: none when it announces no
/// IPv6 VTEP (an IPv4-only peer), else its IPv6 pod CIDR, `public-ipv6` and
/// `backend-v6-data`, or why they are unusable (the IPv4 half then kept;
/// an error when `lease` has no IPv4 half to keep).
fn peer_ipv6(keys: &Keys, node: &Node, lease: Lease) -> Result<(Lease, Option<String>), String> {
    let present = |k: &str| {
        annotation(node, k)
            .map(str::trim)
            .filter(|v| !v.is_empty() && *v != "null")
    };
    let unusable = |lease: Lease, why: String| match lease.subnet {
        Some(_) => Ok((lease, Some(why))),
        None => Err(why),
    };
    let data6 = present(&keys.backend_v6_data);
    let ip6 = present(&keys.public_ipv6);
    if data6.is_none() && ip6.is_none() {
        if lease.subnet.is_none() {
            return Err(format!(
                "it has only an IPv6 pod CIDR but announces no IPv6 VTEP (annotations {} and {} are missing)",
                keys.public_ipv6, keys.backend_v6_data
            ));
        }
        return Ok((lease, None));
    }
    let Some((text, cidr6)) = pod_cidr6(node) else {
        return unusable(
            lease,
            "it announces an IPv6 VTEP but has no IPv6 pod CIDR".into(),
        );
    };
    let Some(subnet6) = cidr6 else {
        return unusable(
            lease,
            format!("IPv6 pod CIDR {text:?} is not an IPv6 network"),
        );
    };
    let public_ipv6 = match ip6.map(str::parse::<Ipv6Addr>) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            return unusable(
                lease,
                format!(
                    "annotation {} = {:?} is not an IPv6 address",
                    keys.public_ipv6,
                    ip6.unwrap_or_default()
                ),
            );
        }
    };
    let backend_v6_data = match data6.map(serde_json::from_str::<serde_json::Value>) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            return unusable(
                lease,
                format!(
                    "annotation {} is not JSON ({:?}): {e}",
                    keys.backend_v6_data,
                    data6.unwrap_or_default()
                ),
            );
        }
    };
    let mut l = lease;
    l.ipv6_subnet = Some(subnet6);
    l.attrs.public_ipv6 = public_ipv6;
    l.attrs.backend_v6_data = backend_v6_data;
    Ok((l, None))
}

/// What `acquire` makes of this node's object (see [`own_lease_from_node`]).
pub(super) fn own_lease(
    keys: &Keys,
    node_name: &str,
    node: &Node,
    network: Option<Ipv4Net>,
    network6: Option<Ipv6Net>,
    attrs: &LeaseAttrs,
) -> Result<Lease, KubeError> {
    let mut attrs = attrs.clone();
    let subnet = match network {
        Some(network) => Some(own_subnet4(keys, node_name, node, network, &mut attrs)?),
        None => {
            // IPv6-only: no IPv4 VTEP, as flannel announces none.
            attrs.public_ip = Ipv4Addr::UNSPECIFIED;
            attrs.backend_data = serde_json::Value::Null;
            None
        }
    };
    let ipv6_subnet = match network6 {
        None => {
            // IPv4 only: no IPv6 VTEP announced, whatever the request held.
            attrs.public_ipv6 = None;
            attrs.backend_v6_data = None;
            None
        }
        Some(n6) => {
            let s6 = own_subnet6(keys, node_name, node, n6, &mut attrs)?;
            Some(s6)
        }
    };
    Ok(Lease {
        subnet,
        ipv6_subnet,
        attrs,
        expiration: None,
    })
}

/// The IPv4 half of this node's lease: its IPv4 pod CIDR inside `network`,
/// and `attrs` with the public IP from `public-ip-overwrite` if set and the
/// VtepMAC already annotated.
fn own_subnet4(
    keys: &Keys,
    node_name: &str,
    node: &Node,
    network: Ipv4Net,
    attrs: &mut LeaseAttrs,
) -> Result<Ipv4Net, KubeError> {
    let Some((text, cidr)) = pod_cidr(node) else {
        return Err(KubeError::NoPodCidr {
            node: node_name.to_string(),
            network,
        });
    };
    let subnet = match cidr {
        Some(c) if network.contains(&c) => c,
        _ => {
            return Err(KubeError::PodCidrOutside {
                node: node_name.to_string(),
                cidr: text,
                network,
            });
        }
    };
    if let Some(why) = crate::lease::node_subnet_problem(&subnet) {
        return Err(KubeError::PodCidrUnusable {
            node: node_name.to_string(),
            cidr: subnet,
            why,
        });
    }
    if let Some(ip) = annotation(node, &keys.public_ip_overwrite) {
        match ip.parse::<Ipv4Addr>() {
            Ok(ip) => {
                tracing::info!(
                    "node {}: public IP {ip} from annotation {}",
                    node_name,
                    keys.public_ip_overwrite
                );
                attrs.public_ip = ip;
            }
            Err(_) => tracing::warn!(
                "node {}: ignoring annotation {} = {ip:?}: not an IPv4 address",
                node_name,
                keys.public_ip_overwrite
            ),
        }
    }
    keep_vtep_mac(node, &keys.backend_data, Some(&mut attrs.backend_data));
    Ok(subnet)
}

/// The IPv6 half of this node's lease: its IPv6 pod CIDR inside `network6`,
/// and `attrs` with the public IPv6 address from `public-ipv6-overwrite` if
/// set and the IPv6 VtepMAC already annotated.
fn own_subnet6(
    keys: &Keys,
    node_name: &str,
    node: &Node,
    network6: Ipv6Net,
    attrs: &mut LeaseAttrs,
) -> Result<Ipv6Net, KubeError> {
    let Some((text, cidr6)) = pod_cidr6(node) else {
        return Err(KubeError::NoPodCidr6 {
            node: node_name.to_string(),
            network: network6,
        });
    };
    let subnet6 = match cidr6 {
        Some(c) if network6.contains(&c) => c,
        _ => {
            return Err(KubeError::PodCidr6Outside {
                node: node_name.to_string(),
                cidr: text,
                network: network6,
            });
        }
    };
    if let Some(why) = crate::lease::node_subnet6_problem(&subnet6) {
        return Err(KubeError::PodCidr6Unusable {
            node: node_name.to_string(),
            cidr: subnet6,
            why,
        });
    }
    if let Some(ip) = annotation(node, &keys.public_ipv6_overwrite).filter(|v| !v.is_empty()) {
        match ip.parse::<Ipv6Addr>() {
            Ok(ip) => {
                tracing::info!(
                    "node {node_name}: public IPv6 {ip} from annotation {}",
                    keys.public_ipv6_overwrite
                );
                attrs.public_ipv6 = Some(ip);
            }
            Err(_) => tracing::warn!(
                "node {node_name}: ignoring annotation {} = {ip:?}: not an IPv6 address",
                keys.public_ipv6_overwrite
            ),
        }
    }
    keep_vtep_mac(node, &keys.backend_v6_data, attrs.backend_v6_data.as_mut());
    Ok(subnet6)
}

/// Keeps in `data` (this node's BackendData or BackendV6Data) the VtepMAC
/// the node already announced in the annotation `key`, if it did: a
/// restart must not change it.
fn keep_vtep_mac(node: &Node, key: &str, data: Option<&mut serde_json::Value>) {
    let annotated_mac = annotation(node, key)
        .and_then(|d| serde_json::from_str::<VxlanData>(d).ok())
        .map(|d| d.vtep_mac);
    if let (Some(mac), Some(obj)) = (annotated_mac, data.and_then(|d| d.as_object_mut())) {
        obj.insert("VtepMAC".into(), json!(mac.to_string()));
    }
}

/// The annotations this node should carry for `attrs`: with an IPv6 VTEP
/// (PublicIPv6 and BackendV6Data) also `backend-v6-data` and `public-ipv6`.
/// On an IPv6-only network (BackendData `null`) there is no IPv4 VTEP, so
/// `backend-data` and `public-ip` are not written, as flannel leaves them.
pub(super) fn own_annotations(keys: &Keys, attrs: &LeaseAttrs) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([
        (keys.backend_type.clone(), attrs.backend_type.clone()),
        (keys.managed.clone(), "true".to_string()),
    ]);
    if !attrs.backend_data.is_null() {
        a.insert(keys.backend_data.clone(), attrs.backend_data.to_string());
        a.insert(keys.public_ip.clone(), attrs.public_ip.to_string());
    }
    if let (Some(ip6), Some(d6)) = (attrs.public_ipv6, &attrs.backend_v6_data) {
        a.insert(keys.backend_v6_data.clone(), d6.to_string());
        a.insert(keys.public_ipv6.clone(), ip6.to_string());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::kube::DEFAULT_ANNOTATION_PREFIX;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_cidrs_prefer_the_ipv4_entry_of_podcidrs() {
        let n = node(json!({"metadata": {"name": "a"}, "spec": {
            "podCIDR": "fd00::/64", "podCIDRs": ["fd00::/64", "10.244.1.0/24"]}}));
        assert_eq!(
            pod_cidr(&n).unwrap().1,
            Some("10.244.1.0/24".parse().unwrap())
        );
        let n = node(json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.244.2.0/24"}}));
        assert_eq!(
            pod_cidr(&n).unwrap().1,
            Some("10.244.2.0/24".parse().unwrap())
        );
        let n = node(json!({"metadata": {"name": "a"}, "spec": {}}));
        assert!(pod_cidr(&n).is_none());
    }

    #[test]
    fn annotation_keys_follow_the_prefix() {
        let k = Keys::new("flannel.alpha.coreos.com");
        assert_eq!(k.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(
            k.public_ip_overwrite,
            "flannel.alpha.coreos.com/public-ip-overwrite"
        );
        let attrs = LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 0, 2, 1),
            crate::types::Vni::new(1).unwrap(),
            "62:fc:03:83:1b:2b".parse().unwrap(),
        );
        let a = own_annotations(&Keys::new("example.com/"), &attrs);
        assert_eq!(
            a["example.com/backend-data"],
            r#"{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2b"}"#
        );
        assert_eq!(a["example.com/kube-subnet-manager"], "true");
        assert_eq!(a["example.com/public-ip"], "192.0.2.1");
    }

    fn dual_attrs() -> LeaseAttrs {
        let vni = crate::types::Vni::new(1).unwrap();
        LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 0, 2, 1),
            vni,
            "62:fc:03:83:1b:2b".parse().unwrap(),
        )
        .with_ipv6(
            "fd00::1".parse().unwrap(),
            vni,
            "8a:2e:0c:11:3d:4f".parse().unwrap(),
        )
    }

    #[test]
    fn own_lease_takes_both_pod_cidrs_and_the_ipv6_overwrite() {
        let keys = Keys::new(DEFAULT_ANNOTATION_PREFIX);
        let net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let net6: Ipv6Net = "fc00::/48".parse().unwrap();
        let n = node(json!({"metadata": {"name": "a", "annotations": {
            "flannel.alpha.coreos.com/public-ipv6-overwrite": "2001:db8::7",
            "flannel.alpha.coreos.com/backend-v6-data": r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:66"}"#,
        }}, "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fc00:0:0:1::/64"]}}));
        let l = own_lease(&keys, "a", &n, Some(net), Some(net6), &dual_attrs()).unwrap();
        assert_eq!(l.id().to_string(), "10.244.1.0/24");
        assert_eq!(l.ipv6_subnet, Some("fc00:0:0:1::/64".parse().unwrap()));
        assert_eq!(l.attrs.public_ipv6, Some("2001:db8::7".parse().unwrap()));
        assert_eq!(
            l.attrs
                .vxlan_v6_data()
                .unwrap()
                .unwrap()
                .vtep_mac
                .to_string(),
            "02:00:00:00:00:66"
        );
        let a = own_annotations(&keys, &l.attrs);
        assert_eq!(
            a["flannel.alpha.coreos.com/backend-v6-data"],
            r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:66"}"#
        );
        assert_eq!(a["flannel.alpha.coreos.com/public-ipv6"], "2001:db8::7");
        // IPv4 only: no IPv6 subnet and no IPv6 annotations, whatever the request held.
        let l4 = own_lease(&keys, "a", &n, Some(net), None, &dual_attrs()).unwrap();
        assert_eq!((l4.ipv6_subnet, l4.attrs.public_ipv6), (None, None));
        let a = own_annotations(&keys, &l4.attrs);
        assert!(a.keys().all(|k| !k.contains("v6")), "{a:?}");
        // The refusals name the node, the CIDR and the fix.
        let only4 =
            node(json!({"metadata": {"name": "a"}, "spec": {"podCIDRs": ["10.244.1.0/24"]}}));
        let m = own_lease(&keys, "a", &only4, Some(net), Some(net6), &dual_attrs())
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("node a has no IPv6 pod CIDR") && m.contains("EnableIPv6"),
            "{m}"
        );
        for (cidr, want) in [
            ("fd99::/64", "lies outside the IPv6Network fc00::/48"),
            ("fc00:0:0:1::zz/64", "lies outside"),
            ("fc00::/128", "--node-cidr-mask-size-ipv6"),
        ] {
            let n = node(
                json!({"metadata": {"name": "b"}, "spec": {"podCIDRs": ["10.244.1.0/24", cidr]}}),
            );
            let m = own_lease(&keys, "b", &n, Some(net), Some(net6), &dual_attrs())
                .unwrap_err()
                .to_string();
            assert!(m.contains("node b") && m.contains(want), "{cidr}: {m}");
        }
    }

    #[test]
    fn peers_with_ipv6_annotations_and_hostile_ones() {
        let keys = Keys::new(DEFAULT_ANNOTATION_PREFIX);
        let net6: Ipv6Net = "fc00::/48".parse().unwrap();
        let peer = |cidrs: serde_json::Value, extra: serde_json::Value| {
            let mut ann = json!({
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/backend-data": r#"{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2b"}"#,
                "flannel.alpha.coreos.com/public-ip": "192.0.2.2",
            });
            for (k, v) in extra.as_object().unwrap() {
                ann[k] = v.clone();
            }
            node(
                json!({"metadata": {"name": "p", "annotations": ann}, "spec": {"podCIDRs": cidrs}}),
            )
        };
        let v6 = json!({
            "flannel.alpha.coreos.com/backend-v6-data": r#"{"VNI":1,"VtepMAC":"8a:2e:0c:11:3d:4f"}"#,
            "flannel.alpha.coreos.com/public-ipv6": "fd00::2",
        });
        let (l, why) = peer_of(
            &keys,
            &peer(json!(["10.244.2.0/24", "fc00:0:0:2::/64"]), v6.clone()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(why, None);
        assert_eq!(l.ipv6_subnet, Some("fc00:0:0:2::/64".parse().unwrap()));
        assert_eq!(l.attrs.public_ipv6, Some("fd00::2".parse().unwrap()));
        assert_eq!(
            l.attrs
                .vxlan_v6_data()
                .unwrap()
                .unwrap()
                .vtep_mac
                .to_string(),
            "8a:2e:0c:11:3d:4f"
        );
        // No IPv6 annotations: an IPv4-only peer, nothing to report.
        let (l, why) = peer_of(
            &keys,
            &peer(json!(["10.244.2.0/24", "fc00:0:0:2::/64"]), json!({})),
        )
        .unwrap()
        .unwrap();
        assert_eq!((l.ipv6_subnet, why), (None, None));
        // Hostile IPv6 data: the IPv4 half stays, the reason names the
        // problem: the codec's (annotations that do not decode) or the
        // reconciler's (crate::node::Admission, for the lease as annotated).
        let admission = crate::node::Admission {
            network: "10.244.0.0/16".parse().ok(),
            network6: Some(net6),
            backend: crate::backend::Backend::Vxlan(crate::backend::Vxlan::flannel_default()),
        };
        let hostile = [
            (
                json!(["10.244.2.0/24", "fd99::/64"]),
                v6.clone(),
                "outside the IPv6Network",
            ),
            (json!(["10.244.2.0/24"]), v6.clone(), "no IPv6 pod CIDR"),
            (
                json!(["10.244.2.0/24", "fc00::zz/64"]),
                v6.clone(),
                "not an IPv6 network",
            ),
            (
                json!(["10.244.2.0/24", "fc00::/128"]),
                v6.clone(),
                "/127 or /128",
            ),
            (
                json!(["10.244.2.0/24", "fc00:0:0:2::/64"]),
                json!({"flannel.alpha.coreos.com/public-ipv6": "192.0.2.9",
                       "flannel.alpha.coreos.com/backend-v6-data": r#"{"VNI":1,"VtepMAC":"8a:2e:0c:11:3d:4f"}"#}),
                "not an IPv6 address",
            ),
            (
                json!(["10.244.2.0/24", "fc00:0:0:2::/64"]),
                json!({"flannel.alpha.coreos.com/public-ipv6": "fd00::2",
                       "flannel.alpha.coreos.com/backend-v6-data": "{not json"}),
                "is not JSON",
            ),
            (
                json!(["10.244.2.0/24", "fc00:0:0:2::/64"]),
                json!({"flannel.alpha.coreos.com/public-ipv6": "fd00::2",
                       "flannel.alpha.coreos.com/backend-v6-data": r#"{"VtepMAC":"nope"}"#}),
                "BackendV6Data",
            ),
            (
                json!(["10.244.2.0/24", "fc00:0:0:2::/64"]),
                json!({"flannel.alpha.coreos.com/backend-v6-data": r#"{"VNI":1,"VtepMAC":"8a:2e:0c:11:3d:4f"}"#}),
                "no PublicIPv6",
            ),
        ];
        for (cidrs, extra, want) in hostile {
            let (l, why) = peer_of(&keys, &peer(cidrs.clone(), extra))
                .unwrap()
                .unwrap();
            let (t, skipped) = admission.table([&l], None);
            let why = why
                .or_else(|| skipped.first().map(|s| s.why.clone()))
                .unwrap_or_default();
            assert!(why.contains(want), "{cidrs}: {why}");
            assert_eq!(l.id().to_string().split('&').next(), Some("10.244.2.0/24"));
            assert_eq!((t.len(), t.peers6().count()), (1, 0), "{cidrs}: {why}");
            assert!(t.lookup([10, 244, 2, 9].into()).is_some());
        }
    }
}
