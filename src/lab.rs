//! `weftd lab`: a small overlay on one machine. N nodes in network namespaces
//! on one underlay bridge, each running weftd on a shared embedded store; the
//! lab prints their leases and a live reachability matrix until Ctrl-C.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::cli::LabArgs;
use crate::lease::Lease;
use crate::netns::{NetnsError, Underlay, is_root};
use crate::store::local::LocalStore;
use crate::subnet_env::SubnetEnv;

const PREFIX: &str = "weftlab";
const METRICS_PORT: u16 = 9100;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab creates network namespaces and TUN devices: run it as root (sudo)")]
    NotRoot,
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot start weftd in {ns}: {source}")]
    Spawn { ns: String, source: std::io::Error },
    #[error("weftd in {ns} exited ({status}); last lines of {log}:\n{tail}")]
    Exited {
        ns: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("weftd in {ns} has no lease after 20 s; see {log}")]
    NoLease { ns: String, log: PathBuf },
    #[error("lab state directory {dir}: {source}")]
    State {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("not every node reaches every other (see the matrix above)")]
    Unreachable,
}

struct LabNode {
    ns: String,
    underlay: Ipv4Addr,
    dir: PathBuf,
    child: Child,
}

/// Runs the lab until `shutdown` (or once, with `--once`).
///
/// # Errors
/// [`LabError`] naming the node, its log and what went wrong.
pub async fn run(args: LabArgs, shutdown: impl Future<Output = ()>) -> Result<(), LabError> {
    if !is_root() {
        return Err(LabError::NotRoot);
    }
    let state = std::env::temp_dir().join(format!("weft-lab-{}", std::process::id()));
    let serr = |source| LabError::State {
        dir: state.clone(),
        source,
    };
    std::fs::create_dir_all(&state).map_err(serr)?;
    let exe = std::env::current_exe().map_err(serr)?;

    let mut underlay = Underlay::new(PREFIX)?;
    let mut nodes: Vec<LabNode> = vec![];
    let result = async {
        for i in 0..args.nodes {
            let n = underlay.add_node(true)?;
            let dir = state.join(format!("node{i}"));
            std::fs::create_dir_all(&dir).map_err(serr)?;
            let log = std::fs::File::create(dir.join("weftd.log")).map_err(serr)?;
            let log2 = log.try_clone().map_err(serr)?;
            let child = Command::new("ip")
                .args(["netns", "exec", &n.ns])
                .arg(&exe)
                .arg("--state-dir")
                .arg(state.join("store"))
                .arg("--subnet-file")
                .arg(dir.join("subnet.env"))
                .args([
                    "--healthz-port",
                    &METRICS_PORT.to_string(),
                    "--subnet-lease-ttl",
                    "60s",
                    // As kube-flannel.yml runs flanneld: weft owns masquerade.
                    "--ip-masq",
                ])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| LabError::Spawn {
                    ns: n.ns.clone(),
                    source,
                })?;
            nodes.push(LabNode {
                ns: n.ns,
                underlay: n.ip,
                dir,
                child,
            });
        }
        wait_for_leases(&mut nodes).await?;
        wait_for_peers(&nodes).await;
        let store = LocalStore::new(state.join("store"), Duration::from_millis(500));
        print_leases(&nodes, &store.leases().unwrap_or_default());
        println!(
            "weftd logs: {}/node*/weftd.log; Ctrl-C stops the lab and removes it.\n",
            state.display()
        );

        tokio::pin!(shutdown);
        loop {
            let all_ok = print_matrix(&mut nodes).await?;
            if args.once {
                return if all_ok {
                    Ok(())
                } else {
                    Err(LabError::Unreachable)
                };
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(args.interval) => {}
            }
        }
    }
    .await;

    for n in &mut nodes {
        if let Some(pid) = n.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for n in &mut nodes {
        let _ = tokio::time::timeout(Duration::from_secs(3), n.child.wait()).await;
    }
    drop(underlay);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&state);
    } else {
        eprintln!("lab state kept for inspection: {}", state.display());
    }
    result
}

async fn wait_for_leases(nodes: &mut [LabNode]) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in nodes.iter_mut() {
        loop {
            if let Some(st) = n.child.try_wait().ok().flatten() {
                return Err(LabError::Exited {
                    ns: n.ns.clone(),
                    status: st.to_string(),
                    log: n.dir.join("weftd.log"),
                    tail: tail(&n.dir.join("weftd.log")),
                });
            }
            if n.dir.join("subnet.env").exists() {
                break;
            }
            if Instant::now() > deadline {
                return Err(LabError::NoLease {
                    ns: n.ns.clone(),
                    log: n.dir.join("weftd.log"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Waits (up to 10 s) until every node's table holds every other node.
async fn wait_for_peers(nodes: &[LabNode]) {
    let want = (nodes.len() - 1) as f64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let all = nodes.iter().all(|n| {
            crate::netns::http_get(&n.ns, METRICS_PORT, "/metrics")
                .map(|m| crate::metrics::parse(&m).get("weft_peers") == Some(&want))
                .unwrap_or(false)
        });
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

fn subnet_of(n: &LabNode) -> Option<ipnet::Ipv4Net> {
    SubnetEnv::read(&n.dir.join("subnet.env"))
        .ok()
        .and_then(|e| e.ipv4)
        .map(|e4| e4.subnet)
}

fn print_leases(nodes: &[LabNode], leases: &[Lease]) {
    println!(
        "weft lab: {} nodes on underlay 192.0.2.0/24, embedded lease store\n",
        nodes.len()
    );
    println!(
        "{:<12} {:<13} {:<16} {:<18} expires",
        "node", "underlay", "lease", "VtepMAC"
    );
    let by_ip: BTreeMap<Ipv4Addr, &Lease> = leases.iter().map(|l| (l.attrs.public_ip, l)).collect();
    for n in nodes {
        let l = by_ip.get(&n.underlay);
        let mac = l
            .and_then(|l| l.attrs.vxlan_data().ok())
            .map(|d| d.vtep_mac.to_string())
            .unwrap_or_default();
        let exp = l
            .and_then(|l| l.expiration)
            .map(|e| humantime::format_rfc3339_seconds(e).to_string())
            .unwrap_or_default();
        let sub = l.map(|l| l.id().to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<12} {:<13} {:<16} {:<18} {}",
            n.ns, n.underlay, sub, mac, exp
        );
    }
    println!();
}

/// Pings every other node's `.0` from every node; prints the matrix and counters.
async fn print_matrix(nodes: &mut [LabNode]) -> Result<bool, LabError> {
    for n in nodes.iter_mut() {
        if let Some(st) = n.child.try_wait().ok().flatten() {
            return Err(LabError::Exited {
                ns: n.ns.clone(),
                status: st.to_string(),
                log: n.dir.join("weftd.log"),
                tail: tail(&n.dir.join("weftd.log")),
            });
        }
    }
    let targets: Vec<Option<Ipv4Addr>> = nodes
        .iter()
        .map(|n| subnet_of(n).map(|s| s.network()))
        .collect();
    let mut probes = vec![];
    for (i, from) in nodes.iter().enumerate() {
        for (j, to) in targets.iter().enumerate() {
            if i == j {
                continue;
            }
            let ns = from.ns.clone();
            let to = *to;
            probes.push(async move {
                let Some(to) = to else { return (i, j, None) };
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns,
                        "ping",
                        "-n",
                        "-c1",
                        "-W1",
                        &to.to_string(),
                    ])
                    .output()
                    .await;
                let rtt = out.ok().filter(|o| o.status.success()).and_then(|o| {
                    let s = String::from_utf8_lossy(&o.stdout).into_owned();
                    s.split("time=")
                        .nth(1)
                        .and_then(|t| t.split_whitespace().next())
                        .map(str::to_string)
                });
                (i, j, rtt)
            });
        }
    }
    let results = futures::future::join_all(probes).await;
    let mut grid = vec![vec![String::from("·"); nodes.len()]; nodes.len()];
    let mut all_ok = true;
    for (i, j, rtt) in results {
        grid[i][j] = match rtt {
            Some(ms) => format!("✓ {ms}ms"),
            None => {
                all_ok = false;
                "✗".to_string()
            }
        };
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "[{}] ping .0 of each lease (from row to column):",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    let _ = write!(out, "{:<12}", "");
    for (j, t) in targets.iter().enumerate() {
        let _ = write!(
            out,
            " {:<14}",
            t.map(|a| a.to_string()).unwrap_or_else(|| format!("n{j}?"))
        );
    }
    let _ = writeln!(out);
    for (i, n) in nodes.iter().enumerate() {
        let _ = write!(out, "{:<12}", n.ns);
        for cell in &grid[i] {
            let _ = write!(out, " {cell:<14}");
        }
        let _ = writeln!(out);
    }
    println!("{out}");
    Ok(all_ok)
}
