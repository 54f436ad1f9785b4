//! The Kubernetes lease store against an in-process API server over real HTTP:
//! leases from pod CIDRs, annotations, peers, re-lists (410, restarts, an etcd
//! restore), refusals that say what to do, and TLS errors that name the
//! certificate's SANs.

mod kube_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ipnet::Ipv4Net;
use kube_support::{ApiServer, flannel_annotations, new_state, node_json};
use serde_json::json;
use tokio::sync::mpsc;
use weft::config::NetConfig;
use weft::lease::{Lease, LeaseAttrs};
use weft::store::kube::{API_CALLS, KubeSettings, KubeStore};
use weft::store::{AcquireRequest, LeaseStore, WatchEvent};
use weft::types::{Vni, VtepMac};

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;
impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> String {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .with_env_filter("weft=debug")
            .try_init();
    });
    String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned()
}

fn settings(url: &str, node: &str) -> KubeSettings {
    KubeSettings {
        node_name: Some(node.into()),
        pod: None,
        kubeconfig: None,
        api_url: Some(url.into()),
        annotation_prefix: "flannel.alpha.coreos.com".into(),
        service_host: None,
        service_port: None,
        service_account_dir: PathBuf::from("/nonexistent"),
        resync: Duration::from_secs(300),
        connect_timeout: Duration::from_secs(2),
        set_node_network_unavailable: true,
    }
}

fn request(ip: [u8; 4]) -> AcquireRequest {
    AcquireRequest {
        config: NetConfig::parse(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
            "test",
        )
        .unwrap(),
        attrs: LeaseAttrs::vxlan(ip.into(), Vni::new(1).unwrap(), VtepMac::derive(&ip)),
        previous: None,
        previous6: None,
        ttl: Duration::from_secs(86400),
    }
}

async fn next(rx: &mut mpsc::Receiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a watch event within 15 s")
        .expect("the watch is alive")
}

/// Applies events until the table (subnet → public IP) equals `want`, or fails after 15 s.
async fn converge(
    rx: &mut mpsc::Receiver<WatchEvent>,
    table: &mut BTreeMap<Ipv4Net, Ipv4Addr>,
    want: &[(&str, &str)],
    snapshots: &mut usize,
) {
    let want: BTreeMap<Ipv4Net, Ipv4Addr> = want
        .iter()
        .map(|(s, i)| (s.parse().unwrap(), i.parse().unwrap()))
        .collect();
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    while *table != want {
        let ev = tokio::time::timeout_at(end, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("table {table:?}, want {want:?}"))
            .expect("watch alive");
        match ev {
            WatchEvent::Snapshot(all) => {
                *snapshots += 1;
                *table = all
                    .iter()
                    .filter_map(|l| Some((l.subnet?, l.attrs.public_ip)))
                    .collect();
            }
            WatchEvent::Upsert(l) => {
                if let Some(s) = l.subnet {
                    table.insert(s, l.attrs.public_ip);
                }
            }
            WatchEvent::Remove(id) => {
                if let Some(s) = id.v4 {
                    table.remove(&s);
                }
            }
        }
    }
}

fn two_nodes() -> kube_support::Shared {
    let st = new_state();
    {
        let mut s = st.lock().unwrap();
        s.put_node(node_json(
            "n1",
            Some("10.244.1.0/24"),
            "192.0.2.1",
            json!({}),
        ));
        s.put_node(node_json(
            "n2",
            Some("10.244.2.0/24"),
            "192.0.2.2",
            flannel_annotations("192.0.2.2", "62:fc:03:83:1b:2b"),
        ));
    }
    st
}

fn snapshot_table(ev: WatchEvent) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    match ev {
        WatchEvent::Snapshot(all) => all
            .iter()
            .filter_map(|l| Some((l.subnet?, l.attrs.public_ip)))
            .collect(),
        other => panic!("want a snapshot, got {other:?}"),
    }
}

/// flannel's `--set-node-network-unavailable=false`: the condition is left alone.
#[tokio::test]
async fn network_unavailable_is_left_alone_when_asked() {
    logs();
    let srv = ApiServer::loopback(two_nodes());
    let store = KubeStore::connect(KubeSettings {
        set_node_network_unavailable: false,
        ..settings(&srv.url, "n1")
    })
    .await
    .unwrap();
    let lease = store.acquire(&request([192, 0, 2, 1])).await.unwrap();
    store.network_ready(&lease).await.unwrap();
    let n1 = srv.with(|s| s.node("n1"));
    let conditions = n1["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        conditions.iter().all(|c| c["type"] != "NetworkUnavailable"),
        "{conditions:?}"
    );
}

#[tokio::test]
async fn lease_from_pod_cidr_annotations_peers_and_condition() {
    logs();
    let srv = ApiServer::loopback(two_nodes());
    let store = KubeStore::connect(settings(&srv.url, "n1")).await.unwrap();
    let lease = store.acquire(&request([192, 0, 2, 1])).await.unwrap();
    assert_eq!(lease.id().to_string(), "10.244.1.0/24");
    assert_eq!(lease.expiration, None);
    let n1 = srv.with(|s| s.node("n1"));
    let a = &n1["metadata"]["annotations"];
    let mac = VtepMac::derive(&[192, 0, 2, 1]).to_string();
    assert_eq!(
        a["flannel.alpha.coreos.com/backend-data"],
        json!(format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"))
    );
    assert_eq!(a["flannel.alpha.coreos.com/backend-type"], "vxlan");
    assert_eq!(a["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
    assert_eq!(a["flannel.alpha.coreos.com/public-ip"], "192.0.2.1");
    // renew and release change nothing.
    assert_eq!(
        store.renew(&lease, Duration::from_secs(1)).await.unwrap(),
        lease
    );

    let mut rx = store.watch().await.unwrap();
    let t = snapshot_table(next(&mut rx).await);
    assert_eq!(
        t,
        BTreeMap::from([
            (
                "10.244.1.0/24".parse().unwrap(),
                Ipv4Addr::new(192, 0, 2, 1)
            ),
            (
                "10.244.2.0/24".parse().unwrap(),
                Ipv4Addr::new(192, 0, 2, 2)
            ),
        ])
    );

    store.network_ready(&lease).await.unwrap();
    let n1 = srv.with(|s| s.node("n1"));
    let cond = n1["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "NetworkUnavailable")
        .expect("NetworkUnavailable condition")
        .clone();
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "WeftIsUp");
    // The Ready condition is still there (conditions merge by type).
    assert!(
        n1["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready")
    );

    // Every call made is one the RBAC rules name.
    for (verb, res) in srv.with(|s| s.requests.clone()) {
        assert!(
            API_CALLS.contains(&(verb.as_str(), res.as_str())),
            "{verb} {res} is not in API_CALLS"
        );
    }
    store.release(&lease).await.unwrap();
}

#[tokio::test]
async fn vtep_mac_is_kept_and_public_ip_overwrite_honoured() {
    let st = new_state();
    st.lock().unwrap().put_node(node_json(
        "m1",
        Some("10.244.7.0/24"),
        "192.0.2.7",
        json!({
            "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0a:58:0a:f4:07:00\"}",
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/public-ip": "192.0.2.7",
            "flannel.alpha.coreos.com/public-ip-overwrite": "198.51.100.9"
        }),
    ));
    let srv = ApiServer::loopback(st);
    let store = KubeStore::connect(settings(&srv.url, "m1")).await.unwrap();
    let lease = store.acquire(&request([192, 0, 2, 7])).await.unwrap();
    let d = lease.attrs.vxlan_data().unwrap();
    assert_eq!(
        d.vtep_mac.to_string(),
        "0a:58:0a:f4:07:00",
        "kept across restarts"
    );
    assert_eq!(lease.attrs.public_ip, Ipv4Addr::new(198, 51, 100, 9));
    let a = srv.with(|s| s.node("m1"))["metadata"]["annotations"].clone();
    assert_eq!(a["flannel.alpha.coreos.com/public-ip"], "198.51.100.9");
    // Acquiring again writes nothing new.
    let patches =
        |srv: &ApiServer| srv.with(|s| s.requests.iter().filter(|r| r.0 == "patch").count());
    let before = patches(&srv);
    store.acquire(&request([192, 0, 2, 7])).await.unwrap();
    assert_eq!(patches(&srv), before);
}

#[tokio::test]
async fn peers_follow_changes_and_malformed_nodes_are_skipped_by_name() {
    logs();
    let srv = ApiServer::loopback(two_nodes());
    let store = KubeStore::connect(settings(&srv.url, "n1")).await.unwrap();
    let mut rx = store.watch().await.unwrap();
    let mut table = BTreeMap::new();
    let mut snaps = 0;
    converge(
        &mut rx,
        &mut table,
        &[("10.244.2.0/24", "192.0.2.2")],
        &mut snaps,
    )
    .await;
    srv.with(|s| {
        s.put_node(node_json(
            "n3",
            Some("10.244.3.0/24"),
            "192.0.2.3",
            flannel_annotations("192.0.2.3", "62:fc:03:83:1b:33"),
        ));
        let mut bad = flannel_annotations("192.0.2.4", "x");
        bad["flannel.alpha.coreos.com/backend-data"] = json!("{\"VNI\":1,\"VtepMAC\":");
        s.put_node(node_json(
            "broken-node-4",
            Some("10.244.4.0/24"),
            "192.0.2.4",
            bad,
        ));
        s.edit_node("n2", |n| {
            n["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"] = json!("192.0.2.22")
        });
    });
    converge(
        &mut rx,
        &mut table,
        &[
            ("10.244.2.0/24", "192.0.2.22"),
            ("10.244.3.0/24", "192.0.2.3"),
        ],
        &mut snaps,
    )
    .await;
    srv.with(|s| {
        s.bookmark();
        s.delete_node("n2");
    });
    converge(
        &mut rx,
        &mut table,
        &[("10.244.3.0/24", "192.0.2.3")],
        &mut snaps,
    )
    .await;
    let l = logs();
    assert!(
        l.contains("skipping node broken-node-4") && l.contains("backend-data"),
        "{l}"
    );
}

#[tokio::test]
async fn gone_410_relists_into_one_snapshot() {
    let srv = ApiServer::loopback(two_nodes());
    let store = KubeStore::connect(settings(&srv.url, "n1")).await.unwrap();
    let mut rx = store.watch().await.unwrap();
    snapshot_table(next(&mut rx).await);
    srv.with(|s| {
        s.compact_and_expire();
        // Changed while the watch was gone: only a re-list can tell.
        s.put_node(node_json(
            "n5",
            Some("10.244.5.0/24"),
            "192.0.2.5",
            flannel_annotations("192.0.2.5", "62:fc:03:83:1b:55"),
        ));
    });
    // Whatever comes first, a snapshot arrives that holds n5.
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ev = tokio::time::timeout_at(end, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let WatchEvent::Snapshot(all) = ev {
            assert!(all.iter().any(|l| l.id().to_string() == "10.244.5.0/24"));
            break;
        }
    }
}

#[tokio::test]
async fn api_server_restart_and_etcd_restore_rebuild_the_table() {
    let st = two_nodes();
    let srv = ApiServer::loopback(st.clone());
    let addr = srv.addr;
    let mut s = settings(&srv.url, "n1");
    s.connect_timeout = Duration::from_millis(500);
    let store = KubeStore::connect(s).await.unwrap();
    let mut rx = store.watch().await.unwrap();
    let mut table = BTreeMap::new();
    let mut snaps = 0;
    converge(
        &mut rx,
        &mut table,
        &[("10.244.2.0/24", "192.0.2.2")],
        &mut snaps,
    )
    .await;

    // A restart on the same data, with a change made while it was down.
    drop(srv);
    st.lock().unwrap().put_node(node_json(
        "n6",
        Some("10.244.6.0/24"),
        "192.0.2.6",
        flannel_annotations("192.0.2.6", "62:fc:03:83:1b:66"),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let srv = ApiServer::restart_on(addr, st.clone());
    converge(
        &mut rx,
        &mut table,
        &[
            ("10.244.2.0/24", "192.0.2.2"),
            ("10.244.6.0/24", "192.0.2.6"),
        ],
        &mut snaps,
    )
    .await;

    // An etcd restore from an old backup: resourceVersions go back, n6 never existed.
    drop(srv);
    st.lock().unwrap().restore(
        7,
        vec![node_json(
            "n2",
            Some("10.244.2.0/24"),
            "192.0.2.2",
            flannel_annotations("192.0.2.2", "62:fc:03:83:1b:2b"),
        )],
    );
    let srv = ApiServer::restart_on(addr, st.clone());
    let before = snaps;
    converge(
        &mut rx,
        &mut table,
        &[("10.244.2.0/24", "192.0.2.2")],
        &mut snaps,
    )
    .await;
    assert!(snaps > before, "the restore must arrive as a snapshot");
    // Rebuilt once, not looping on "too large".
    let lists = || srv.with(|s| s.requests.iter().filter(|r| r.0 == "list").count());
    let a = lists();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        lists() <= a + 1,
        "re-listing in a loop: {} → {}",
        a,
        lists()
    );
}

#[tokio::test]
async fn periodic_resync_sends_a_fresh_snapshot() {
    let srv = ApiServer::loopback(two_nodes());
    let mut s = settings(&srv.url, "n1");
    s.resync = Duration::from_millis(700);
    let store = KubeStore::connect(s).await.unwrap();
    let mut rx = store.watch().await.unwrap();
    snapshot_table(next(&mut rx).await);
    snapshot_table(next(&mut rx).await);
}

#[tokio::test]
async fn refusals_name_the_fix() {
    let st = two_nodes();
    {
        let mut s = st.lock().unwrap();
        s.put_node(node_json("bare", None, "192.0.2.9", json!({})));
        s.put_node(node_json(
            "outside",
            Some("10.99.1.0/24"),
            "192.0.2.10",
            json!({}),
        ));
        s.put_node(node_json(
            "tiny",
            Some("10.244.7.1/32"),
            "192.0.2.12",
            json!({}),
        ));
    }
    let srv = ApiServer::loopback(st);
    let e = KubeStore::connect(settings(&srv.url, "bare"))
        .await
        .unwrap()
        .acquire(&request([192, 0, 2, 9]))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(
        e.contains("node bare has no pod CIDR")
            && e.contains("--allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16")
            && e.contains("--pod-network-cidr=10.244.0.0/16"),
        "{e}"
    );
    let e = KubeStore::connect(settings(&srv.url, "outside"))
        .await
        .unwrap()
        .acquire(&request([192, 0, 2, 10]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("10.99.1.0/24") && e.contains("outside the Network 10.244.0.0/16"),
        "{e}"
    );
    // A /32 pod CIDR: refused, naming the node, not a subnet.env with no room.
    let e = KubeStore::connect(settings(&srv.url, "tiny"))
        .await
        .unwrap()
        .acquire(&request([192, 0, 2, 12]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node tiny's pod CIDR 10.244.7.1/32 cannot be a node subnet")
            && e.contains("--node-cidr-mask-size"),
        "{e}"
    );
    let e = KubeStore::connect(settings(&srv.url, "ghost"))
        .await
        .unwrap()
        .acquire(&request([192, 0, 2, 11]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no node \"ghost\"") && e.contains("NODE_NAME"),
        "{e}"
    );

    for (verb, res) in [("patch", "nodes/status"), ("get", "nodes")] {
        srv.with(|s| s.forbid = vec![(verb.into(), res.into())]);
        let e = KubeStore::connect(settings(&srv.url, "n1"))
            .await
            .unwrap()
            .acquire(&request([192, 0, 2, 1]))
            .await
            .unwrap_err()
            .to_string();
        eprintln!("{e}");
        assert!(
            e.contains(&format!("forbidden to {verb} {res}"))
                && e.contains(&format!("verb \"{verb}\" on \"{res}\"")),
            "{e}"
        );
    }
}

#[tokio::test]
async fn node_name_from_the_pod() {
    let st = two_nodes();
    st.lock()
        .unwrap()
        .put_pod("kube-system", "weft-x7k2p", "n2");
    let srv = ApiServer::loopback(st);
    let mut s = settings(&srv.url, "unused");
    s.node_name = None;
    s.pod = Some(("kube-system".into(), "weft-x7k2p".into()));
    let store = KubeStore::connect(s.clone()).await.unwrap();
    assert_eq!(store.node_name(), "n2");
    s.pod = None;
    let e = KubeStore::connect(s).await.unwrap_err().to_string();
    assert!(e.contains("NODE_NAME"), "{e}");
}

#[tokio::test]
async fn tls_error_names_the_address_and_the_certificate_sans() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = kube_support::tls_files(
        dir.path(),
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1",
    );
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let srv = ApiServer::start(l, two_nodes(), Some(tls));
    let kc = kube_support::kubeconfig(dir.path(), &srv.url, Some(&ca));
    let mut s = settings(&srv.url, "n1");
    s.api_url = None;
    s.kubeconfig = Some(kc);
    let store = KubeStore::connect(s).await.unwrap();
    let e = store
        .acquire(&request([192, 0, 2, 1]))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(
        e.contains(&srv.addr.to_string())
            && e.contains("kubernetes.default.svc")
            && e.contains("10.96.0.1")
            && e.contains("not 127.0.0.1"),
        "{e}"
    );
}

#[tokio::test]
async fn unanswering_cluster_ip_is_called_the_cni_before_kube_proxy_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = kube_support::tls_files(dir.path(), "IP:10.96.0.1");
    let sa = dir.path().join("sa");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::copy(&ca, sa.join("ca.crt")).unwrap();
    std::fs::write(sa.join("token"), "test-token").unwrap();
    std::fs::write(sa.join("namespace"), "kube-system").unwrap();
    // A loopback port nobody listens on stands in for a ClusterIP without kube-proxy.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = settings("", "n1");
    s.api_url = None;
    s.service_host = Some("127.0.0.1".into());
    s.service_port = Some(port.to_string());
    s.service_account_dir = sa;
    let store = KubeStore::connect(s).await.unwrap();
    let e = store
        .acquire(&request([192, 0, 2, 1]))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(
        e.contains("CNI-before-kube-proxy deadlock")
            && e.contains(&format!("127.0.0.1:{port}"))
            && e.contains("--kubeconfig-file")
            && e.contains("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT"),
        "{e}"
    );
}

/// flannel's advice for clusters without kube-proxy, `--kube-api-url` beside
/// the in-cluster environment: the address dialled is the URL's, so a
/// silent server there is named as such, not as the ClusterIP's deadlock.
#[tokio::test]
async fn kube_api_url_overrides_the_in_cluster_address_and_its_diagnosis() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = kube_support::tls_files(dir.path(), "IP:127.0.0.1");
    let sa = dir.path().join("sa");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::copy(&ca, sa.join("ca.crt")).unwrap();
    let closed = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (cluster_ip_port, url_port) = (closed(), closed());
    let mut s = settings(&format!("https://127.0.0.1:{url_port}"), "n1");
    s.service_host = Some("127.0.0.1".into());
    s.service_port = Some(cluster_ip_port.to_string());
    s.service_account_dir = sa;
    let e = KubeStore::connect(s)
        .await
        .unwrap()
        .acquire(&request([192, 0, 2, 1]))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(
        e.contains(&format!("https://127.0.0.1:{url_port}: unreachable"))
            && !e.contains("deadlock")
            && !e.contains(&cluster_ip_port.to_string()),
        "{e}"
    );
}

/// A lease in the shape the daemon would get: usable by the core.
#[test]
fn leases_are_vxlan_leases() {
    let l = Lease {
        subnet: "10.244.1.0/24".parse().ok(),
        ipv6_subnet: None,
        attrs: LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 0, 2, 1),
            Vni::new(1).unwrap(),
            VtepMac::derive(&[192, 0, 2, 1]),
        ),
        expiration: None,
    };
    assert!(l.attrs.vxlan_data().is_ok());
}

const NET6: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;

/// A dual-stack request, as weftd makes it: the IPv6 VTEP's VtepMAC derived
/// from the public IPv6 address.
fn request6(ip: [u8; 4], ip6: &str) -> AcquireRequest {
    let ip6: std::net::Ipv6Addr = ip6.parse().unwrap();
    let mut r = request(ip);
    r.config = NetConfig::parse(NET6, "test").unwrap();
    r.attrs = r
        .attrs
        .with_ipv6(ip6, Vni::new(1).unwrap(), VtepMac::derive(&ip6.octets()));
    r
}

fn dual_node(
    name: &str,
    cidrs: [&str; 2],
    ip: &str,
    annotations: serde_json::Value,
) -> serde_json::Value {
    let mut n = node_json(name, Some(cidrs[0]), ip, annotations);
    n["spec"]["podCIDRs"] = json!(cidrs);
    n
}

#[tokio::test]
async fn dual_stack_pod_cidrs_annotations_overwrite_and_peers() {
    logs();
    let st = new_state();
    {
        let mut s = st.lock().unwrap();
        s.put_node(dual_node(
            "d1",
            ["10.244.1.0/24", "fc00:0:0:1::/64"],
            "192.0.2.1",
            json!({"flannel.alpha.coreos.com/public-ipv6-overwrite": "2001:db8::99"}),
        ));
        // A dual-stack flannel peer.
        let mut a = flannel_annotations("192.0.2.2", "62:fc:03:83:1b:2b");
        a["flannel.alpha.coreos.com/backend-v6-data"] =
            json!(r#"{"VNI":1,"VtepMAC":"8a:2e:0c:11:3d:4f"}"#);
        a["flannel.alpha.coreos.com/public-ipv6"] = json!("fd00::2");
        s.put_node(dual_node(
            "d2",
            ["10.244.2.0/24", "fc00:0:0:2::/64"],
            "192.0.2.2",
            a,
        ));
        // An IPv4-only peer (no v6 annotations) and one with a hostile IPv6 half.
        s.put_node(dual_node(
            "d3",
            ["10.244.3.0/24", "fc00:0:0:3::/64"],
            "192.0.2.3",
            flannel_annotations("192.0.2.3", "62:fc:03:83:1b:2c"),
        ));
        let mut a = flannel_annotations("192.0.2.4", "62:fc:03:83:1b:2d");
        a["flannel.alpha.coreos.com/backend-v6-data"] = json!("{garbage");
        a["flannel.alpha.coreos.com/public-ipv6"] = json!("fd00::4");
        s.put_node(dual_node(
            "d4",
            ["10.244.4.0/24", "fc00:0:0:4::/64"],
            "192.0.2.4",
            a,
        ));
    }
    let srv = ApiServer::loopback(st);
    let store = KubeStore::connect(settings(&srv.url, "d1")).await.unwrap();
    let lease = store
        .acquire(&request6([192, 0, 2, 1], "2001:db8::1"))
        .await
        .unwrap();
    assert_eq!(lease.id().to_string(), "10.244.1.0/24");
    assert_eq!(lease.ipv6_subnet, Some("fc00:0:0:1::/64".parse().unwrap()));
    // public-ipv6-overwrite wins over the interface's address.
    assert_eq!(
        lease.attrs.public_ipv6,
        Some("2001:db8::99".parse().unwrap())
    );
    let d1 = srv.with(|s| s.node("d1"));
    let a = &d1["metadata"]["annotations"];
    let mac6 = VtepMac::derive(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    assert_eq!(
        a["flannel.alpha.coreos.com/backend-v6-data"],
        json!(format!("{{\"VNI\":1,\"VtepMAC\":\"{mac6}\"}}"))
    );
    assert_eq!(a["flannel.alpha.coreos.com/public-ipv6"], "2001:db8::99");
    assert_eq!(a["flannel.alpha.coreos.com/public-ip"], "192.0.2.1");

    let mut rx = store.watch().await.unwrap();
    let peers: BTreeMap<String, Lease> = match next(&mut rx).await {
        WatchEvent::Snapshot(all) => all.into_iter().map(|l| (l.id().to_string(), l)).collect(),
        other => panic!("want a snapshot, got {other:?}"),
    };
    assert_eq!(peers.len(), 4, "{peers:?}");
    let d2 = &peers["10.244.2.0/24"];
    assert_eq!(d2.ipv6_subnet, Some("fc00:0:0:2::/64".parse().unwrap()));
    assert_eq!(d2.attrs.public_ipv6, Some("fd00::2".parse().unwrap()));
    assert_eq!(
        d2.attrs
            .vxlan_v6_data()
            .unwrap()
            .unwrap()
            .vtep_mac
            .to_string(),
        "8a:2e:0c:11:3d:4f"
    );
    let d3 = &peers["10.244.3.0/24"];
    assert_eq!((d3.ipv6_subnet, d3.attrs.public_ipv6), (None, None));
    // The hostile IPv6 half is dropped, its IPv4 half kept, and said once.
    let d4 = &peers["10.244.4.0/24"];
    assert_eq!((d4.ipv6_subnet, d4.attrs.public_ipv6), (None, None));
    assert_eq!(d4.attrs.public_ip, Ipv4Addr::new(192, 0, 2, 4));
    let l = logs();
    assert!(
        l.contains("node d4: routing only its IPv4 pod CIDR 10.244.4.0/24")
            && l.contains("backend-v6-data is not JSON"),
        "{l}"
    );
}

#[tokio::test]
async fn an_ipv6_pod_cidr_outside_the_ipv6_network_is_refused_naming_the_node() {
    let st = new_state();
    st.lock().unwrap().put_node(dual_node(
        "x1",
        ["10.244.1.0/24", "fd99:0:0:1::/64"],
        "192.0.2.1",
        json!({}),
    ));
    st.lock().unwrap().put_node(node_json(
        "x2",
        Some("10.244.2.0/24"),
        "192.0.2.2",
        json!({}),
    ));
    let srv = ApiServer::loopback(st);
    let store = KubeStore::connect(settings(&srv.url, "x1")).await.unwrap();
    let e = store
        .acquire(&request6([192, 0, 2, 1], "2001:db8::1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "node x1's IPv6 pod CIDR fd99:0:0:1::/64 lies outside the IPv6Network fc00::/48"
        ) && e.contains("make IPv6Network equal"),
        "{e}"
    );
    // A node with no IPv6 pod CIDR in a dual-stack network: refused with the fix.
    let store = KubeStore::connect(settings(&srv.url, "x2")).await.unwrap();
    let e = store
        .acquire(&request6([192, 0, 2, 2], "2001:db8::2"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node x2 has no IPv6 pod CIDR") && e.contains("--cluster-cidr"),
        "{e}"
    );
    // IPv4 only, the same node is fine and no IPv6 annotation is written.
    let l = store.acquire(&request([192, 0, 2, 2])).await.unwrap();
    assert_eq!(l.ipv6_subnet, None);
    let x2 = srv.with(|s| s.node("x2"));
    let a = x2["metadata"]["annotations"].as_object().unwrap();
    assert!(a.keys().all(|k| !k.contains("v6")), "{a:?}");
}
