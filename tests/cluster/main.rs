//! The cluster tier: weft installed from `docker/weft.yaml` on a real
//! Kubernetes v1.34 cluster built from source (`scripts/cluster.sh`: etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, and nodes with
//! containerd + runc, kubelet and kube-proxy, each a network namespace), and
//! checked as a user would: pods reach pods, Services and the outside world
//! with their own addresses, and keep their connections while weft is rolled
//! out, killed and re-configured; then beside the real flannel (flannel.rs):
//! one node on flannel's own DaemonSet, a node moved to weft under traffic
//! and one moved back.
//!
//! One cluster serves every check, in order; each check prints what it
//! measured. Run with `cargo test --test cluster` (root; docs/testing.md).
//! Arguments are substrings of the checks to run; `WEFT_CLUSTER_KEEP=1`
//! leaves the cluster up afterwards for a look, and reuses one that is up
//! (`scripts/cluster.sh down` removes it).

mod checks;
mod flannel;
mod kube;

use std::time::Instant;

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !weft::netns::is_root() {
        let msg = "SKIPPED (needs root): the cluster tier did not run";
        if std::env::var("CI").as_deref() == Ok("true") {
            eprintln!("{msg}, and CI=true requires it");
            std::process::exit(1);
        }
        eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
        return;
    }
    let mut all = checks::all();
    all.extend(flannel::all());
    let chosen: Vec<_> = all
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let started = Instant::now();
    println!("\nrunning {} checks on a real cluster", chosen.len());
    let mut cx = match kube::Cluster::up() {
        Ok(c) => checks::Ctx::new(c),
        Err(e) => {
            println!("cluster up ... FAILED\n{e}");
            println!(
                "\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in {:.2}s\n",
                started.elapsed().as_secs_f64()
            );
            std::process::exit(1);
        }
    };
    println!("cluster up in {:.0} s", started.elapsed().as_secs_f64());
    let (mut passed, mut failed) = (0, vec![]);
    for (name, check) in &chosen {
        let t = Instant::now();
        match check(&mut cx) {
            Ok(said) => {
                passed += 1;
                println!(
                    "check {name} ... ok ({:.1} s){}",
                    t.elapsed().as_secs_f64(),
                    indent(&said)
                );
            }
            Err(e) => {
                println!(
                    "check {name} ... FAILED ({:.1} s){}",
                    t.elapsed().as_secs_f64(),
                    indent(&e)
                );
                cx.cluster.dump_state(name);
                failed.push(*name);
            }
        }
    }
    drop(cx);
    if !failed.is_empty() {
        println!("\nfailures:");
        for f in &failed {
            println!("    {f}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        all.len() - chosen.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

fn indent(s: &str) -> String {
    if s.is_empty() {
        return String::new();
    }
    s.lines().map(|l| format!("\n    {l}")).collect()
}
