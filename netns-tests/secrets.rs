//! Nothing secret in weftd's output, at the most verbose log level: etcd
//! passwords (flag and `FLANNELD_ETCD_PASSWORD`), client key material and
//! Kubernetes tokens stay out of every log line and error, whether weftd
//! runs, is refused, or fails on a bad file.

use serde_json::json;
use weft::netns::{self, UNDERLAY_GW};

use crate::etcd_support::{EtcdServer, etcd_available};
use crate::harness::{Cluster, Opts, require_root};
use crate::kube_support::{ApiServer, new_state, node_json};

const PREFIX: &str = "/coreos.com/network";
const PASSWORD: &str = "pw-7f3a9c1e-right";
const WRONG_PASSWORD: &str = "pw-0b2d4e6f-wrong";
const KEY_MATERIAL: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7secret";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.weft-test-token-4d5e6f";

/// Fails, printing the text, when any secret occurs in it.
fn assert_no_secret(what: &str, text: &str) {
    for s in [PASSWORD, WRONG_PASSWORD, KEY_MATERIAL, TOKEN] {
        assert!(!text.contains(s), "{what} shows the secret {s:?}:\n{text}");
    }
}

#[test]
fn etcd_passwords_and_keys_never_reach_the_log() {
    if !require_root("etcd_passwords_and_keys_never_reach_the_log")
        || !etcd_available("etcd_passwords_and_keys_never_reach_the_log")
    {
        return;
    }
    let mut c = Cluster::build(
        "secret",
        &Opts {
            nodes: 2,
            ..Opts::default()
        },
    );
    let mut etcd = EtcdServer::start_in_netns(c.underlay_ns(), UNDERLAY_GW);
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    etcd.enable_auth("weft", PASSWORD, PREFIX);
    c.etcd = Some(etcd.endpoint());
    let trace = ["--log-level".to_string(), "trace".into()];

    // Runs with the password at trace level, and forwards.
    c.nodes[0].extra = [&trace[..], &["--etcd-username".into(), "weft".into()]].concat();
    c.nodes[0]
        .extra
        .extend(["--etcd-password".into(), PASSWORD.into()]);
    c.start(0);
    c.nodes[1].extra = [&trace[..], &["--etcd-username".into(), "weft".into()]].concat();
    c.nodes[1]
        .extra
        .extend(["--etcd-password".into(), PASSWORD.into()]);
    c.start(1);
    c.wait_peers(1);
    assert!(c.nodes[0].ping(c.nodes[1].addr()));
    c.nodes[0].stop();
    let log = c.nodes[0].log();
    assert!(log.contains("TRACE"), "not at trace level:\n{log}");
    assert_no_secret("a running weftd's trace log", &log);

    // A wrong password from flanneld's variable: refused, naming the user.
    c.nodes[0].extra = [&trace[..], &["--etcd-username".into(), "weft".into()]].concat();
    let err = c.refused(0, &[("FLANNELD_ETCD_PASSWORD", WRONG_PASSWORD)]);
    assert!(
        err.contains("weft") && err.to_lowercase().contains("auth"),
        "the refusal must say the credentials of user weft failed:\n{err}"
    );
    assert_no_secret("a refused weftd's output", &err);

    // Key material that is no key: the file is named, never shown.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("client.key");
    std::fs::write(
        &key,
        format!("-----BEGIN PRIVATE KEY-----\n{KEY_MATERIAL}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let cert = dir.path().join("client.crt");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    c.nodes[0].extra = [
        &trace[..],
        &[
            "--etcd-certfile".into(),
            cert.display().to_string(),
            "--etcd-keyfile".into(),
            key.display().to_string(),
            "--etcd-password".into(),
            PASSWORD.into(),
            "--etcd-username".into(),
            "weft".into(),
        ],
    ]
    .concat();
    c.etcd = Some(etcd.endpoint().replace("http://", "https://"));
    let err = c.refused(0, &[]);
    assert!(
        err.contains(&cert.display().to_string()) || err.contains(&key.display().to_string()),
        "the refusal must name the file:\n{err}"
    );
    assert_no_secret("weftd refusing a bad key", &err);
}

#[test]
fn kube_tokens_never_reach_the_log() {
    if !require_root("kube_tokens_never_reach_the_log") {
        return;
    }
    let mut c = Cluster::build(
        "ksecret",
        &Opts {
            nodes: 1,
            ..Opts::default()
        },
    );
    let st = new_state();
    st.lock().unwrap().put_node(node_json(
        "node0",
        Some("10.244.1.0/24"),
        &c.nodes[0].ip.to_string(),
        json!({}),
    ));
    let l = netns::in_netns(c.underlay_ns(), || {
        std::net::TcpListener::bind("192.0.2.254:0")
    })
    .unwrap()
    .unwrap();
    let srv = ApiServer::start(l, st, None);
    let conf = c.store_dir.with_file_name("kube-net-conf.json");
    std::fs::write(
        &conf,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let kubeconfig = c.store_dir.with_file_name("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: weft\ncurrent-context: t\nusers:\n- name: weft\n  user:\n    token: {TOKEN}\n",
            srv.url
        ),
    )
    .unwrap();
    let args: Vec<String> = [
        "--kube-subnet-mgr",
        "--kubeconfig-file",
        &kubeconfig.display().to_string(),
        "--net-config-path",
        &conf.display().to_string(),
        "--log-level",
        "trace",
    ]
    .map(String::from)
    .to_vec();
    c.set_node_args(0, &args, &[("NODE_NAME", "node0")]);
    c.start(0);
    c.nodes[0].stop();
    let log = c.nodes[0].log();
    assert!(log.contains("TRACE"), "not at trace level:\n{log}");
    assert_no_secret("a running weftd's trace log (Kubernetes mode)", &log);

    // Refused (no such node): the token stays out of the error too.
    c.set_node_args(0, &args, &[("NODE_NAME", "nosuchnode")]);
    let err = c.refused(0, &[]);
    assert_no_secret("a refused weftd's output (Kubernetes mode)", &err);
}
