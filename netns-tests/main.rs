//! Integration tests in real network namespaces: weft nodes, kernel VXLAN peers,
//! TCP and UDP across the overlay. They need root; without it each says loudly
//! that it was skipped (and fails under CI=true).

mod harness;

mod cni;
mod dataplane;
mod kube;
#[path = "../tests/kube_support/mod.rs"]
mod kube_support;
