//! Integration tests in real network namespaces: weft nodes, kernel VXLAN peers,
//! TCP and UDP across the overlay, and weftd on a real etcd. They need root;
//! without it each says loudly that it was skipped (and fails under CI=true).

mod harness;

#[path = "../tests/etcd_support/mod.rs"]
mod etcd_support;

mod cni;
mod dataplane;
mod doctor;
mod dropin;
mod dualstack;
mod etcd;
mod flannel;
mod hostile;
mod ipv6only;
mod kube;
#[path = "../tests/kube_support/mod.rs"]
mod kube_support;
mod lifecycle;
mod podnet;
mod rootless;
mod secrets;
mod status;
