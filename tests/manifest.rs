//! `docker/weft.yaml`: every document is a valid object of its Kubernetes type
//! (no field lost in a typed round trip), the DaemonSet's arguments are ones
//! weftd and `weft-cni install` accept, and the ClusterRole grants exactly the
//! API calls the kube store makes.

use std::collections::BTreeSet;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use weft::cli::Cli;
use weft::cni::install::{InstallArgs, validate_conflist};
use weft::config::NetConfig;
use weft::store::kube::API_CALLS;

const MANIFEST: &str = include_str!("../docker/weft.yaml");

/// Drops nulls, empty maps and empty lists, so that a typed round trip compares equal.
fn prune(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), prune(v)))
                .filter(|(_, v)| !matches!(v, Value::Object(m) if m.is_empty()))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(prune).collect()),
        other => other.clone(),
    }
}

/// Parses `doc` as `T` and checks that nothing was dropped (a misspelt field would be).
fn typed<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let t: T =
        serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{}: {e}", doc["kind"]));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        prune(&back),
        prune(doc),
        "{} {} has fields its type does not know",
        doc["kind"],
        doc["metadata"]["name"]
    );
    t
}

struct Docs {
    config_map: ConfigMap,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    sa: ServiceAccount,
    ds: DaemonSet,
}

fn docs() -> Docs {
    let mut cm = None;
    let mut role = None;
    let mut binding = None;
    let mut sa = None;
    let mut ds = None;
    let mut ns = None;
    for d in serde_yaml::Deserializer::from_str(MANIFEST) {
        let y = serde_yaml::Value::deserialize(d).expect("YAML");
        let v: Value = serde_json::to_value(&y).unwrap();
        match (v["apiVersion"].as_str(), v["kind"].as_str()) {
            (Some("v1"), Some("Namespace")) => ns = Some(typed::<Namespace>(&v)),
            (Some("v1"), Some("ServiceAccount")) => sa = Some(typed::<ServiceAccount>(&v)),
            (Some("v1"), Some("ConfigMap")) => cm = Some(typed::<ConfigMap>(&v)),
            (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRole")) => {
                role = Some(typed::<ClusterRole>(&v))
            }
            (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRoleBinding")) => {
                binding = Some(typed::<ClusterRoleBinding>(&v))
            }
            (Some("apps/v1"), Some("DaemonSet")) => ds = Some(typed::<DaemonSet>(&v)),
            other => panic!("unexpected document {other:?}"),
        }
    }
    let ns = ns.expect("a Namespace");
    let sa = sa.expect("a ServiceAccount");
    assert_eq!(sa.metadata.namespace, ns.metadata.name);
    Docs {
        config_map: cm.expect("a ConfigMap"),
        role: role.expect("a ClusterRole"),
        binding: binding.expect("a ClusterRoleBinding"),
        sa,
        ds: ds.expect("a DaemonSet"),
    }
}

#[test]
fn rbac_grants_exactly_the_calls_the_kube_store_makes() {
    let d = docs();
    let mut granted = BTreeSet::new();
    for r in d.role.rules.unwrap_or_default() {
        assert_eq!(
            r.api_groups.as_deref(),
            Some(&[String::new()][..]),
            "core group only"
        );
        for res in r.resources.unwrap_or_default() {
            for v in &r.verbs {
                granted.insert((v.clone(), res.clone()));
            }
        }
    }
    let used: BTreeSet<(String, String)> = API_CALLS
        .iter()
        .map(|(v, r)| (v.to_string(), r.to_string()))
        .collect();
    assert_eq!(granted, used, "ClusterRole vs weft::store::kube::API_CALLS");
    let subj = &d.binding.subjects.as_ref().unwrap()[0];
    assert_eq!(d.binding.role_ref.name, d.role.metadata.name.unwrap());
    assert_eq!(subj.kind, "ServiceAccount");
    assert_eq!(Some(&subj.name), d.sa.metadata.name.as_ref());
    assert_eq!(subj.namespace, d.sa.metadata.namespace);
}

#[test]
fn daemonset_runs_weftd_and_the_installer_with_arguments_they_accept() {
    let d = docs();
    let data = d.config_map.data.unwrap();
    NetConfig::parse(&data["net-conf.json"], "weft.yaml net-conf.json").unwrap();
    validate_conflist(
        &data["cni-conf.json"],
        "weft.yaml cni-conf.json".as_ref(),
        "weft",
    )
    .unwrap();

    let spec = d.ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.service_account_name, d.sa.metadata.name);
    let tolerations = spec.tolerations.unwrap_or_default();
    assert!(tolerations.iter().any(|t| {
        t.key.as_deref() == Some("node-role.kubernetes.io/control-plane")
            || (t.key.is_none() && t.operator.as_deref() == Some("Exists"))
    }));

    let c = &spec.containers[0];
    let mut argv = c.command.clone().unwrap();
    argv.extend(c.args.clone().unwrap_or_default());
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(cli.run.kube_subnet_mgr);
    // As kube-flannel.yml: weftd owns masquerade, the CNI bridge does none.
    assert!(
        cli.run.ip_masq,
        "the DaemonSet must pass --ip-masq: {argv:?}"
    );
    let conf = cli.run.net_config_path.clone().unwrap();
    let mounts = c.volume_mounts.clone().unwrap();
    let cfg_mount = mounts.iter().find(|m| m.name == "weft-cfg").unwrap();
    assert_eq!(
        conf,
        std::path::Path::new(&cfg_mount.mount_path).join("net-conf.json")
    );
    assert!(mounts.iter().any(|m| m.mount_path == "/dev/net/tun"));
    let env = c.env.clone().unwrap();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    assert_eq!(
        node.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
    let sc = c.security_context.clone().unwrap();
    assert_ne!(sc.privileged, Some(true), "capabilities, not privileged");
    assert!(
        sc.capabilities
            .unwrap()
            .add
            .unwrap()
            .contains(&"NET_ADMIN".to_string())
    );
    let probe = c.readiness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(probe.path.as_deref(), Some("/readyz"));
    let live = c.liveness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(live.path.as_deref(), Some("/healthz"));
    assert_eq!(live.port, probe.port);
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
            cli.run.healthz_port
        ))
    );

    let init = &spec.init_containers.unwrap()[0];
    let cmd = init.command.clone().unwrap();
    assert_eq!(cmd[1], "install");
    let mut argv = vec![cmd[0].clone()];
    argv.extend(init.args.clone().unwrap_or_default());
    let inst = InstallArgs::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    // The init container installs the binary; weftd writes the conflist
    // from the ConfigMap once the node forwards, into the host's conf dir,
    // checking the chained plugins in the host's bin dir.
    assert!(inst.no_conflist, "{argv:?}");
    let under = |dir: &std::path::Path,
                 mounts: &[k8s_openapi::api::core::v1::VolumeMount],
                 volume: &str| {
        let m = mounts
            .iter()
            .find(|m| m.name == volume)
            .unwrap_or_else(|| panic!("no {volume} mount"));
        assert_eq!(dir, std::path::Path::new(&m.mount_path), "{volume}");
    };
    under(
        &inst.bin_dir,
        init.volume_mounts.as_deref().unwrap(),
        "cni-bin",
    );
    assert_eq!(
        cli.run.cni_conflist.clone().unwrap(),
        std::path::Path::new(&cfg_mount.mount_path).join("cni-conf.json")
    );
    under(&cli.run.cni_conf_dir, &mounts, "cni-conf");
    under(&cli.run.cni_bin_dir, &mounts, "cni-bin");
}
