//! Test hosts in network namespaces: an underlay bridge in a namespace of its
//! own (never the host's) and nodes joined to it by veth pairs. Used by
//! `weftd lab` and by the netns tests; everything is removed on drop.
//!
//! Also the one way weft runs code inside a network namespace,
//! `on_thread_in_netns` (a thread of its own that enters it), used by
//! [`in_netns`] and by weft-cni's netlink client.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Output};

use nix::errno::Errno;
use nix::sched::CloneFlags;

/// The underlay subnet (TEST-NET-1, documentation space); the bridge is `.254`.
pub const UNDERLAY_PREFIX: [u8; 3] = [192, 0, 2];
pub const UNDERLAY_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The underlay bridge's IPv6 address: the underlay is dual-stack, 2001:db8::/64.
pub const UNDERLAY6_GW: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);

/// Node `i`'s IPv6 underlay address, `2001:db8::<i+1>`.
pub fn underlay6_addr(i: usize) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16 + 1)
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("cannot run `{cmd}`: {source} (is iproute2 installed?)")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("cannot enter network namespace {ns}: {detail}")]
    Enter { ns: String, detail: String },
}

/// Runs `ip ARGS` and returns its stdout.
///
/// # Errors
/// [`NetnsError`] with the command line and its stderr.
pub fn ip(args: &[&str]) -> Result<String, NetnsError> {
    run(Command::new("ip").args(args))
}

/// Runs `cmd` and returns its stdout when it exits 0.
///
/// # Errors
/// [`NetnsError`] with the command line and its stderr.
pub fn run(cmd: &mut Command) -> Result<String, NetnsError> {
    let line = format!("{cmd:?}").replace('"', "");
    let out: Output = cmd.output().map_err(|source| NetnsError::Spawn {
        cmd: line.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Command {
            cmd: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A command that runs inside namespace `ns` (`ip netns exec NS PROGRAM`).
pub fn exec_in(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Runs `f` on a thread that has entered namespace `ns`: sockets it opens live there.
///
/// # Errors
/// [`NetnsError::Enter`] when the namespace cannot be entered.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let enter = |detail: String| NetnsError::Enter {
        ns: ns.to_string(),
        detail,
    };
    let fd = File::open(format!("/run/netns/{ns}")).map_err(|e| enter(e.to_string()))?;
    on_thread_in_netns(&fd, f)
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
        .map_err(|e| enter(e.to_string()))
}

/// Runs `f` on a new thread that first enters the network namespace `ns` (an
/// open nsfs file such as `/run/netns/NAME` or `/proc/PID/ns/net`): sockets `f`
/// opens live there, and the calling thread never changes namespace.
/// `Ok(Err(errno))` when `setns` fails (`f` does not run then); `Err` holds the
/// panic of `f`, for the caller to resume or report.
pub(crate) fn on_thread_in_netns<T: Send>(
    ns: &File,
    f: impl FnOnce() -> T + Send,
) -> std::thread::Result<Result<T, Errno>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
    })
}

/// One node's namespace.
#[derive(Debug, Clone)]
pub struct NodeNs {
    pub ns: String,
    /// The node's underlay address, on `eth0`.
    pub ip: Ipv4Addr,
}

/// A bridge in namespace `<prefix>-ul` and the nodes attached to it.
#[derive(Debug)]
pub struct Underlay {
    pub ns: String,
    prefix: String,
    pub nodes: Vec<NodeNs>,
}

impl Underlay {
    /// Creates the underlay namespace with bridge `br0` (192.0.2.254/24 and
    /// 2001:db8::fe/64), after
    /// removing leftovers of an earlier run with the same prefix.
    ///
    /// # Errors
    /// [`NetnsError`] naming the `ip` command that failed.
    pub fn new(prefix: &str) -> Result<Underlay, NetnsError> {
        remove_with_prefix(prefix);
        let ns = format!("{prefix}-ul");
        ip(&["netns", "add", &ns])?;
        let u = Underlay {
            ns: ns.clone(),
            prefix: prefix.to_string(),
            nodes: vec![],
        };
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{UNDERLAY_GW}/24"),
            "dev",
            "br0",
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{UNDERLAY6_GW}/64"),
            "dev",
            "br0",
            "nodad",
        ])?;
        ip(&["-n", &ns, "link", "set", "br0", "up"])?;
        Ok(u)
    }

    /// Adds node `<prefix>-n<i>` with `eth0` = 192.0.2.<i+1>/24 and
    /// 2001:db8::<i+1>/64 (MTU 1500) and,
    /// when `default_route`, a default route via the bridge.
    ///
    /// # Errors
    /// [`NetnsError`] naming the `ip` command that failed.
    pub fn add_node(&mut self, default_route: bool) -> Result<NodeNs, NetnsError> {
        let i = self.nodes.len();
        let ns = format!("{}-n{i}", self.prefix);
        let addr = Ipv4Addr::new(
            UNDERLAY_PREFIX[0],
            UNDERLAY_PREFIX[1],
            UNDERLAY_PREFIX[2],
            i as u8 + 1,
        );
        ip(&["netns", "add", &ns])?;
        let node = NodeNs {
            ns: ns.clone(),
            ip: addr,
        };
        self.nodes.push(node.clone());
        let port = format!("v{i}");
        ip(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
            &self.ns,
        ])?;
        ip(&["-n", &self.ns, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        // Dual-stack: 2001:db8::<i+1>/64 beside the IPv4 address, usable at once.
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/64", underlay6_addr(i)),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "mtu", "1500", "up"])?;
        if default_route {
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &UNDERLAY_GW.to_string(),
            ])?;
        }
        Ok(node)
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        remove_with_prefix(&self.prefix);
    }
}

/// Kills every process in, and deletes, the namespaces named `<prefix>-*`.
pub fn remove_with_prefix(prefix: &str) {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('-'))
        {
            if let Ok(pids) = ip(&["netns", "pids", ns]) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Whether this process runs as root (the namespace tests and the lab need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `GET path` from `127.0.0.1:port` inside namespace `ns`; the response body.
///
/// # Errors
/// [`NetnsError::Enter`] when the namespace cannot be entered, or a
/// [`NetnsError::Command`] describing the HTTP failure.
pub fn http_get(ns: &str, port: u16, path: &str) -> Result<String, NetnsError> {
    use std::io::{Read, Write};
    let r = in_netns(ns, || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, port).into(),
            std::time::Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
    })?;
    r.map_err(|e| NetnsError::Command {
        cmd: format!("GET http://127.0.0.1:{port}{path} in {ns}"),
        stderr: e.to_string(),
    })
}
