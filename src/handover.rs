//! One weftd per VXLAN port and network namespace, and the hand-over from a
//! running weftd to a new one (a DaemonSet rollout with `maxSurge`, a
//! `systemctl restart`, an upgrade) without a gap in forwarding.
//!
//! The running weftd holds the abstract unix socket `@weft/<port>` of its
//! network namespace (abstract names are per namespace and vanish with the
//! process, even on SIGKILL). A new weftd that finds the name taken attaches
//! its own queues to the persistent TUN device and binds the VXLAN port
//! beside the old one (`SO_REUSEPORT`); once its dataplane forwards, it asks
//! the old one to stop and waits until that one has let go (its end of the
//! connection closes: at its exit, or, in a pod, once it has released the
//! device and ports and idles until its pod is deleted), then takes the name.
//!
//! The same socket answers `weftd status` (and the doctor) with the node's
//! live view. Abstract names have no file permissions: the holder asks the
//! kernel who connected (`SO_PEERCRED`) and takes `stop` and `status` only
//! from root or its own user.

use std::io::{self, BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// What a hand-over can go wrong on, naming the port and device.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot use the hand-over socket @weft/{port}: {source}")]
    Socket { port: u16, source: io::Error },
    #[error(
        "the weftd serving VXLAN port {port} refused this request ({answer}): run as root or as the user weftd runs as"
    )]
    Refused { port: u16, answer: String },
    #[error(
        "another weftd, on TUN device {theirs}, serves VXLAN port {port} in this network namespace; this one was asked to use {ours}. Two weftds cannot share a port: stop the other one, or give this one the same --tun-name to take over from it"
    )]
    OtherDevice {
        port: u16,
        theirs: String,
        ours: String,
    },
}

fn addr(port: u16) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("weft/{port}").as_bytes())
}

/// The hand-over socket of the running weftd.
#[derive(Debug)]
pub struct Holder {
    listener: UnixListener,
}

/// Takes the name for `port`; `None` when a running weftd holds it.
///
/// # Errors
/// [`HandoverError::Socket`] for anything but "in use".
pub fn claim(port: u16) -> Result<Option<Holder>, HandoverError> {
    let err = |source| HandoverError::Socket { port, source };
    match UnixListener::bind_addr(&addr(port).map_err(err)?) {
        Ok(listener) => Ok(Some(Holder { listener })),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// Takes the name for `port`, waiting up to `timeout` for a previous holder
/// that is on its way out.
///
/// # Errors
/// As [`claim`]; `Ok(None)` when it is still held after `timeout`.
pub fn claim_within(port: u16, timeout: Duration) -> Result<Option<Holder>, HandoverError> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(h) = claim(port)? {
            return Ok(Some(h));
        }
        if Instant::now() > end {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asks the weftd holding `port` which TUN device it serves.
///
/// # Errors
/// [`HandoverError::Socket`] when it cannot be reached.
fn hello(port: u16) -> Result<(UnixStream, String), HandoverError> {
    let err = |source| HandoverError::Socket { port, source };
    let s = UnixStream::connect_addr(&addr(port).map_err(err)?).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(err)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(err)?;
    let tun = line
        .trim()
        .strip_prefix("weftd ")
        .unwrap_or_default()
        .to_string();
    Ok((s, tun))
}

/// The TUN device of the weftd that serves `port` here, if one runs.
pub fn running(port: u16) -> Option<String> {
    hello(port).ok().map(|(_, tun)| tun)
}

/// Checks that the running weftd on `port` serves `tun` (so this one may
/// take over from it).
///
/// # Errors
/// [`HandoverError::OtherDevice`] when it serves another device.
pub fn check_successor(port: u16, tun: &str) -> Result<(), HandoverError> {
    let (_, theirs) = hello(port)?;
    if theirs == tun {
        Ok(())
    } else {
        Err(HandoverError::OtherDevice {
            port,
            theirs,
            ours: tun.to_string(),
        })
    }
}

/// Asks the running weftd on `port` to stop and waits, at most `timeout`,
/// until it has let go (its process exited, or it dropped its
/// [`Successor`]); returns how long that took.
///
/// # Errors
/// [`HandoverError::Socket`] when it cannot be reached or does not go in time.
pub fn ask_to_stop(port: u16, timeout: Duration) -> Result<Duration, HandoverError> {
    let err = |source| HandoverError::Socket { port, source };
    let t = Instant::now();
    let (mut s, _) = hello(port)?;
    s.write_all(b"stop\n").map_err(err)?;
    s.set_read_timeout(Some(timeout)).map_err(err)?;
    // The old weftd never writes again: the read ends when it lets go.
    let mut rest = Vec::new();
    io::Read::read_to_end(&mut s, &mut rest).map_err(err)?;
    Ok(t.elapsed())
}

/// Asks the weftd serving `port` for its live view (the JSON of
/// [`crate::status::View`]).
///
/// # Errors
/// [`HandoverError::Socket`] when it cannot be reached, [`HandoverError::Refused`]
/// when it does not take the request from this user.
pub fn ask_status(port: u16) -> Result<String, HandoverError> {
    let err = |source| HandoverError::Socket { port, source };
    let (mut s, _) = hello(port)?;
    s.write_all(b"status\n").map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(err)?;
    let mut body = String::new();
    io::Read::read_to_string(&mut s, &mut body).map_err(err)?;
    match body.strip_prefix("refused: ") {
        Some(why) => Err(HandoverError::Refused {
            port,
            answer: why.trim().to_string(),
        }),
        None => Ok(body),
    }
}

/// The VXLAN ports of the weftds running in this network namespace: the
/// `@weft/<port>` names in `/proc/net/unix`.
pub fn running_ports() -> Vec<u16> {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let mut ports = ports_in(&table);
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The ports of the listening `@weft/<port>` sockets in a `/proc/net/unix` text.
fn ports_in(table: &str) -> Vec<u16> {
    table
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .last()?
                .strip_prefix("@weft/")?
                .parse()
                .ok()
        })
        .collect()
}

/// Whether the peer of `conn` may stop this weftd or read its state: root,
/// or the user this weftd runs as.
fn trusted(conn: &UnixStream) -> Result<(), String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let me = nix::unistd::geteuid().as_raw();
    match getsockopt(conn, PeerCredentials) {
        Ok(c) if c.uid() == 0 || c.uid() == me => Ok(()),
        Ok(c) => Err(format!(
            "uid {} is neither root nor weftd's uid {me}",
            c.uid()
        )),
        Err(e) => Err(format!("cannot tell who connected: {e}")),
    }
}

/// A successor's request to stop, and this weftd's claim on the name.
/// Dropping it tells the successor that this weftd has let go: the
/// connection closes and the name is free for it to take. Drop it once the
/// packet threads have stopped (or let the process exit).
#[derive(Debug)]
pub struct Successor {
    _conn: UnixStream,
    _name: UnixListener,
}

impl Holder {
    /// Serves successors and `weftd status` on a thread of its own: answers
    /// each with `tun`, and `status` with what `status` returns. The first
    /// successor that asks this weftd to stop ends the service: `on_stop`
    /// gets its [`Successor`], whose drop tells it this one has let go.
    pub fn serve(
        self,
        tun: String,
        on_stop: impl FnOnce(Successor) + Send + 'static,
        status: impl Fn() -> String + Send + 'static,
    ) {
        let listener = self.listener;
        let spawned = std::thread::Builder::new()
            .name("weft-handover".into())
            .spawn(move || {
                loop {
                    let Ok((mut conn, _)) = listener.accept() else {
                        continue;
                    };
                    if writeln!(conn, "weftd {tun}").is_err() {
                        continue;
                    }
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut line = String::new();
                    if BufReader::new(&conn).read_line(&mut line).is_err() {
                        continue;
                    }
                    let verb = line.trim();
                    if !matches!(verb, "stop" | "status") {
                        continue;
                    }
                    if let Err(why) = trusted(&conn) {
                        tracing::warn!("refused `{verb}` on the control socket: {why}");
                        let _ = writeln!(conn, "refused: {why}");
                        continue;
                    }
                    if verb == "status" {
                        let _ = conn.write_all(status().as_bytes());
                        continue;
                    }
                    on_stop(Successor {
                        _conn: conn,
                        _name: listener,
                    });
                    return;
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(
                "cannot serve hand-overs (a new weftd will wait for this one's exit): {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_port_and_a_successor_asks_it_to_stop() {
        // A port number no weftd uses; abstract names are per network
        // namespace, and tests run in the host's.
        let port = 40_000 + (std::process::id() % 20_000) as u16;
        let h = claim(port).unwrap().expect("free");
        assert!(claim(port).unwrap().is_none(), "held");
        let (tx, rx) = std::sync::mpsc::channel();
        h.serve("weft0".into(), move |s| tx.send(s).unwrap(), || "{}".into());
        assert!(check_successor(port, "weft0").is_ok());
        assert_eq!(ask_status(port).unwrap(), "{}");
        assert!(running_ports().contains(&port));
        let e = check_successor(port, "weft1").unwrap_err().to_string();
        assert!(
            e.contains("TUN device weft0") && e.contains("--tun-name"),
            "{e}"
        );
        // The successor waits while the holder keeps its Successor...
        let asking = std::thread::spawn(move || ask_to_stop(port, Duration::from_secs(5)));
        let successor = rx.recv_timeout(Duration::from_secs(2)).expect("asked");
        std::thread::sleep(Duration::from_millis(100));
        assert!(!asking.is_finished(), "the successor did not wait");
        assert!(claim(port).unwrap().is_none(), "the name is still held");
        // ...and goes on, with the name free, once it is dropped.
        drop(successor);
        let waited = asking.join().unwrap().expect("let go");
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(claim(port).unwrap().is_some(), "the name is free");
    }

    #[test]
    fn ports_come_from_the_abstract_names() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 36342 @weft/8472
0000000000000000: 00000003 00000000 00000000 0001 03 36343 @weft/8472
0000000000000000: 00000002 00000000 00010000 0001 01 1234 /run/systemd/notify
0000000000000000: 00000002 00000000 00010000 0001 01 1235 @weft/x
0000000000000000: 00000002 00000000 00010000 0001 01 1236
";
        assert_eq!(ports_in(table), vec![8472, 8472]);
    }
}
