//! A Kubernetes API server for tests, in process, over real HTTP/1.1 (and TLS
//! when asked): just the node and pod endpoints weft uses, with the API's JSON
//! shapes (NodeList with a resourceVersion, watch event lines ADDED / MODIFIED /
//! DELETED / BOOKMARK / ERROR with a `Status`, `Status` bodies for errors),
//! strategic-merge patches of annotations and of the status subresource, RBAC
//! refusals on demand (and SelfSubjectAccessReviews that agree with them),
//! compaction (410 Gone), restarts and etcd restores.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

type Body = BoxBody<Bytes, Infallible>;

/// The API's data, shared across restarts of the server.
pub struct State {
    pub rv: u64,
    nodes: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    /// (resourceVersion, watch event) since `oldest`.
    history: Vec<(u64, Value)>,
    /// Watches from before this resourceVersion get 410 Gone.
    oldest: u64,
    /// (verb, resource) pairs answered with 403, and denied by a
    /// SelfSubjectAccessReview (which allows everything else).
    pub forbid: Vec<(String, String)>,
    /// When set, SelfSubjectAccessReviews themselves get this status code
    /// (403: refused, 404: an API server without the authorization API).
    pub review_refused: Option<u16>,
    /// (verb, resource) of every request, in order.
    pub requests: Vec<(String, String)>,
    live: broadcast::Sender<Value>,
    uid: u64,
}

pub type Shared = Arc<Mutex<State>>;

pub fn new_state() -> Shared {
    Arc::new(Mutex::new(State {
        rv: 100,
        nodes: BTreeMap::new(),
        pods: BTreeMap::new(),
        history: vec![],
        oldest: 0,
        forbid: vec![],
        review_refused: None,
        requests: vec![],
        live: broadcast::channel(1024).0,
        uid: 0,
    }))
}

/// A Node as the API returns it.
pub fn node_json(name: &str, pod_cidr: Option<&str>, ip: &str, annotations: Value) -> Value {
    let mut spec = json!({});
    if let Some(c) = pod_cidr {
        spec = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux"
            },
            "annotations": annotations,
            "creationTimestamp": "2026-01-05T09:12:44Z"
        },
        "spec": spec,
        "status": {
            "capacity": {"cpu": "2", "memory": "4015360Ki", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "3912960Ki", "pods": "110"},
            "conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-05T09:20:01Z",
                 "lastTransitionTime": "2026-01-05T09:13:30Z", "reason": "KubeletReady",
                 "message": "kubelet is posting ready status"}
            ],
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name}
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "3f1b6c0d2e9a4c7f8d21a5b6c7d8e9f0",
                "systemUUID": "3f1b6c0d-2e9a-4c7f-8d21-a5b6c7d8e9f0",
                "bootID": "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9",
                "kernelVersion": "6.8.0-49-generic",
                "osImage": "Ubuntu 24.04.1 LTS",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": "v1.34.1",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64"
            }
        }
    })
}

/// flannel's annotations for a vxlan node.
pub fn flannel_annotations(public_ip: &str, mac: &str) -> Value {
    json!({
        "flannel.alpha.coreos.com/backend-data": format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
        "flannel.alpha.coreos.com/backend-type": "vxlan",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": public_ip,
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true"
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Merges `patch` into `target` (JSON merge patch; `conditions` lists merge by `type`,
/// as the strategic merge patch of a Node does).
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else if k == "conditions" && v.is_array() {
                    let list = t.entry(k.clone()).or_insert_with(|| json!([]));
                    if !list.is_array() {
                        *list = json!([]);
                    }
                    let arr = list.as_array_mut().unwrap();
                    for c in v.as_array().unwrap() {
                        match arr.iter_mut().find(|x| x["type"] == c["type"]) {
                            Some(x) => merge(x, c),
                            None => arr.push(c.clone()),
                        }
                    }
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

impl State {
    fn bump(&mut self, kind: &str, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let ev = json!({"type": kind, "object": obj.clone()});
        self.history.push((self.rv, ev.clone()));
        let _ = self.live.send(ev);
        obj
    }

    /// Adds or replaces a node (an ADDED or MODIFIED event).
    pub fn put_node(&mut self, mut node: Value) {
        let name = node["metadata"]["name"].as_str().unwrap().to_string();
        let kind = if self.nodes.contains_key(&name) {
            node["metadata"]["uid"] = self.nodes[&name]["metadata"]["uid"].clone();
            "MODIFIED"
        } else {
            self.uid += 1;
            node["metadata"]["uid"] = json!(format!("8d3c7a52-1f0e-4b7a-9c1d-{:012x}", self.uid));
            "ADDED"
        };
        let node = self.bump(kind, node);
        self.nodes.insert(name, node);
    }

    /// Changes a node in place (a MODIFIED event).
    pub fn edit_node(&mut self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut n = self.nodes.get(name).cloned().expect("no such node");
        f(&mut n);
        let n = self.bump("MODIFIED", n);
        self.nodes.insert(name.to_string(), n);
    }

    pub fn delete_node(&mut self, name: &str) {
        if let Some(n) = self.nodes.remove(name) {
            self.bump("DELETED", n);
        }
    }

    pub fn node(&self, name: &str) -> Value {
        self.nodes.get(name).cloned().unwrap_or(Value::Null)
    }

    pub fn put_pod(&mut self, ns: &str, name: &str, node: &str) {
        let pod = json!({"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": self.rv.to_string()},
            "spec": {"nodeName": node, "containers": [{"name": "weft", "image": "weft:dev"}]}});
        self.pods.insert((ns.into(), name.into()), pod);
    }

    /// Compaction: every watch from before now gets ERROR 410 and must re-list.
    pub fn compact_and_expire(&mut self) {
        self.oldest = self.rv + 1;
        self.history.clear();
        let _ = self
            .live
            .send(json!({"type": "ERROR", "object": status(410, "Expired",
            "The resourceVersion for the provided watch is too old.")}));
    }

    /// A BOOKMARK to every live watch.
    pub fn bookmark(&mut self) {
        let _ = self.live.send(json!({"type": "BOOKMARK", "object": {"kind": "Node",
            "apiVersion": "v1", "metadata": {"resourceVersion": self.rv.to_string(),
            "creationTimestamp": null}, "spec": {}, "status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}, "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "", "kubeletVersion": "", "kubeProxyVersion": "", "operatingSystem": "", "architecture": ""}}}}));
    }

    /// An etcd restore from an old backup: resourceVersions go back to `rv`,
    /// the node set becomes `nodes`; the history is gone.
    pub fn restore(&mut self, rv: u64, nodes: Vec<Value>) {
        self.rv = rv;
        self.history.clear();
        self.oldest = 0;
        self.nodes.clear();
        for mut n in nodes {
            self.uid += 1;
            n["metadata"]["uid"] = json!(format!("8d3c7a52-1f0e-4b7a-9c1d-{:012x}", self.uid));
            n["metadata"]["resourceVersion"] = json!(rv.to_string());
            let name = n["metadata"]["name"].as_str().unwrap().to_string();
            self.nodes.insert(name, n);
        }
    }
}

/// A running server; stopped (every connection cut) on drop.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub url: String,
    pub state: Shared,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl ApiServer {
    /// Plain HTTP on a free loopback port.
    pub fn loopback(state: Shared) -> ApiServer {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        ApiServer::start(l, state, None)
    }

    /// A restarted server on `addr` (plain HTTP), once the old one let go of the port.
    pub fn restart_on(addr: SocketAddr, state: Shared) -> ApiServer {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => return ApiServer::start(l, state, None),
                Err(e) if std::time::Instant::now() < end => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("rebind {addr}: {e}"),
            }
        }
    }

    /// Serves on `listener` (plain HTTP, or TLS with `tls`).
    pub fn start(
        listener: std::net::TcpListener,
        state: Shared,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> ApiServer {
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        listener.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let st = state.clone();
        {
            let _g = rt.enter();
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            rt.spawn(async move {
                loop {
                    let Ok((sock, _)) = l.accept().await else {
                        continue;
                    };
                    let st = st.clone();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let st = st.clone();
                            async move { Ok::<_, Infallible>(handle(st, req).await) }
                        });
                        let b = hyper::server::conn::http1::Builder::new();
                        match acceptor {
                            Some(a) => {
                                if let Ok(s) = a.accept(sock).await {
                                    let _ = b
                                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                                        .await;
                                }
                            }
                            None => {
                                let _ = b
                                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                                    .await;
                            }
                        }
                    });
                }
            });
        }
        ApiServer {
            addr,
            url: format!("{scheme}://{addr}"),
            state,
            rt: Some(rt),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

fn full(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews: allowed
/// unless the (verb, resource[/subresource]) is in `forbid`, as RBAC's
/// authorizer answers.
async fn review(st: Shared, req: Request<Incoming>) -> Response<Body> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return full(StatusCode::BAD_REQUEST, &status(400, "BadRequest", "body")),
    };
    let Ok(mut r) = serde_json::from_slice::<Value>(&body) else {
        return full(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", "not JSON"),
        );
    };
    let mut s = st.lock().unwrap();
    s.requests
        .push(("create".into(), "selfsubjectaccessreviews".into()));
    if let Some(code) = s.review_refused {
        let (reason, msg) = match code {
            403 => (
                "Forbidden",
                "selfsubjectaccessreviews.authorization.k8s.io is forbidden: User \"system:anonymous\" cannot create resource \"selfsubjectaccessreviews\" in API group \"authorization.k8s.io\" at the cluster scope",
            ),
            _ => (
                "NotFound",
                "the server could not find the requested resource",
            ),
        };
        return full(
            StatusCode::from_u16(code).unwrap(),
            &status(code, reason, msg),
        );
    }
    let a = &r["spec"]["resourceAttributes"];
    let verb = a["verb"].as_str().unwrap_or_default().to_string();
    let mut resource = a["resource"].as_str().unwrap_or_default().to_string();
    if let Some(sub) = a["subresource"].as_str().filter(|s| !s.is_empty()) {
        resource = format!("{resource}/{sub}");
    }
    let denied = s
        .forbid
        .iter()
        .any(|(v, res)| *v == verb && *res == resource);
    r["status"] = if denied {
        json!({"allowed": false})
    } else {
        json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"weft\" of ClusterRole \"weft\" to ServiceAccount \"weft/kube-weft\""})
    };
    r["metadata"] = json!({"creationTimestamp": null});
    full(StatusCode::CREATED, &r)
}

async fn handle(st: Shared, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if req.method() == Method::POST
        && path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    {
        return review(st, req).await;
    }
    let q = query(&req);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let watch = q.get("watch").is_some_and(|v| v == "true" || v == "1");
    let (verb, resource, name, ns) = match (req.method(), parts.as_slice()) {
        (&Method::GET, ["api", "v1", "nodes"]) if watch => ("watch", "nodes", "", ""),
        (&Method::GET, ["api", "v1", "nodes"]) => ("list", "nodes", "", ""),
        (&Method::GET, ["api", "v1", "nodes", n]) => ("get", "nodes", *n, ""),
        (&Method::PATCH, ["api", "v1", "nodes", n]) => ("patch", "nodes", *n, ""),
        (&Method::PATCH, ["api", "v1", "nodes", n, "status"]) => ("patch", "nodes/status", *n, ""),
        (&Method::GET, ["api", "v1", "namespaces", ns, "pods", p]) => ("get", "pods", *p, *ns),
        _ => {
            return full(
                StatusCode::NOT_FOUND,
                &status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        }
    };
    {
        let mut s = st.lock().unwrap();
        s.requests.push((verb.into(), resource.into()));
        if s.forbid.iter().any(|(v, r)| v == verb && r == resource) {
            let (res, sub) = resource.split_once('/').unwrap_or((resource, ""));
            let sub = if sub.is_empty() {
                String::new()
            } else {
                format!("/{sub}")
            };
            let what = if name.is_empty() {
                res.to_string()
            } else {
                format!("{res} \"{name}\"")
            };
            return full(
                StatusCode::FORBIDDEN,
                &status(
                    403,
                    "Forbidden",
                    &format!(
                        "{what} is forbidden: User \"system:serviceaccount:kube-system:weft\" cannot {verb} resource \"{res}{sub}\" in API group \"\" at the cluster scope"
                    ),
                ),
            );
        }
    }
    match (verb, resource) {
        ("list", _) => {
            let s = st.lock().unwrap();
            full(
                StatusCode::OK,
                &json!({"kind": "NodeList", "apiVersion": "v1",
                        "metadata": {"resourceVersion": s.rv.to_string()},
                        "items": s.nodes.values().collect::<Vec<_>>()}),
            )
        }
        ("get", "nodes") => {
            let s = st.lock().unwrap();
            match s.nodes.get(name) {
                Some(n) => full(StatusCode::OK, n),
                None => full(
                    StatusCode::NOT_FOUND,
                    &status(404, "NotFound", &format!("nodes \"{name}\" not found")),
                ),
            }
        }
        ("get", "pods") => {
            let s = st.lock().unwrap();
            match s.pods.get(&(ns.to_string(), name.to_string())) {
                Some(p) => full(StatusCode::OK, p),
                None => full(
                    StatusCode::NOT_FOUND,
                    &status(404, "NotFound", &format!("pods \"{name}\" not found")),
                ),
            }
        }
        ("patch", _) => {
            let ct = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if ct != "application/strategic-merge-patch+json"
                && ct != "application/merge-patch+json"
            {
                return full(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &status(
                        415,
                        "UnsupportedMediaType",
                        &format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got {ct}"
                        ),
                    ),
                );
            }
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return full(StatusCode::BAD_REQUEST, &status(400, "BadRequest", "body")),
            };
            let Ok(mut patch) = serde_json::from_slice::<Value>(&body) else {
                return full(
                    StatusCode::BAD_REQUEST,
                    &status(400, "BadRequest", "not JSON"),
                );
            };
            let mut s = st.lock().unwrap();
            let Some(mut n) = s.nodes.get(name).cloned() else {
                return full(
                    StatusCode::NOT_FOUND,
                    &status(404, "NotFound", &format!("nodes \"{name}\" not found")),
                );
            };
            // The status subresource ignores spec; the main resource ignores status.
            if let Some(o) = patch.as_object_mut() {
                o.remove(if resource == "nodes/status" {
                    "spec"
                } else {
                    "status"
                });
            }
            merge(&mut n, &patch);
            let n = s.bump("MODIFIED", n);
            s.nodes.insert(name.to_string(), n.clone());
            full(StatusCode::OK, &n)
        }
        ("watch", _) => {
            let from: u64 = q
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let timeout: u64 = q
                .get("timeoutSeconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1800);
            let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
            let (tx, rx) = mpsc::channel::<Bytes>(64);
            let line = |v: &Value| Bytes::from(format!("{v}\n"));
            {
                let s = st.lock().unwrap();
                if from > s.rv {
                    let e = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                        "metadata": {}, "status": "Failure",
                        "message": format!("Too large resource version: {from}, current: {}", s.rv),
                        "reason": "Timeout",
                        "details": {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1},
                        "code": 504}});
                    let _ = tx.try_send(line(&e));
                } else if from != 0 && from < s.oldest {
                    let e = json!({"type": "ERROR", "object": status(410, "Expired",
                        &format!("too old resource version: {from} ({})", s.oldest))});
                    let _ = tx.try_send(line(&e));
                } else {
                    let backlog: Vec<Bytes> = s
                        .history
                        .iter()
                        .filter(|(rv, _)| *rv > from)
                        .map(|(_, e)| line(e))
                        .collect();
                    let mut live = s.live.subscribe();
                    let rv = s.rv;
                    drop(s);
                    tokio::spawn(async move {
                        for b in backlog {
                            if tx.send(b).await.is_err() {
                                return;
                            }
                        }
                        if bookmarks {
                            let bm = json!({"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1",
                                "metadata": {"resourceVersion": rv.to_string()}}});
                            let _ = tx.send(Bytes::from(format!("{bm}\n"))).await;
                        }
                        let end = tokio::time::sleep(Duration::from_secs(timeout));
                        tokio::pin!(end);
                        loop {
                            tokio::select! {
                                _ = &mut end => return,
                                ev = live.recv() => match ev {
                                    Ok(ev) => {
                                        let stop = ev["type"] == "ERROR";
                                        if tx.send(Bytes::from(format!("{ev}\n"))).await.is_err() || stop {
                                            return;
                                        }
                                    }
                                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                                    Err(_) => return,
                                }
                            }
                        }
                    });
                }
            }
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .header("transfer-encoding", "chunked")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
        _ => full(StatusCode::NOT_FOUND, &status(404, "NotFound", "not found")),
    }
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

/// A CA and a server certificate for `sans` (e.g. `DNS:kubernetes,IP:10.96.0.1`),
/// made with the openssl CLI. Returns (ca.crt, server config).
pub fn tls_files(dir: &Path, sans: &str) -> (PathBuf, Arc<rustls::ServerConfig>) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=kubernetes",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName={sans}\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.crt"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    (dir.join("ca.crt"), Arc::new(cfg))
}

/// A kubeconfig for `server` trusting `ca` (no credentials: the test server needs none).
pub fn kubeconfig(dir: &Path, server: &str, ca: Option<&Path>) -> PathBuf {
    let ca_line = match ca {
        Some(c) => format!("    certificate-authority: {}\n", c.display()),
        None => String::new(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n{ca_line}contexts:\n- name: test\n  context:\n    cluster: test\n    user: weft\ncurrent-context: test\nusers:\n- name: weft\n  user:\n    token: test-token\n"
    );
    let p = dir.join("kubeconfig");
    std::fs::write(&p, text).unwrap();
    p
}
