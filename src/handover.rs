//! One weftd per VXLAN port and network namespace, and the hand-over from a
//! running weftd to a new one (a DaemonSet rollout with `maxSurge`, a
//! `systemctl restart`, an upgrade) without a gap in forwarding.
//!
//! The running weftd holds the abstract unix socket `@weft/<port>` of its
//! network namespace (abstract names are per namespace and vanish with the
//! process, even on SIGKILL). A new weftd that finds the name taken attaches
//! its own queues to the persistent TUN device and binds the VXLAN port
//! beside the old one (`SO_REUSEPORT`); once its dataplane forwards, it asks
//! the old one to stop and waits until that process has exited (its end of
//! the connection closes), then takes the name.

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
/// until its process has exited; returns how long that took.
///
/// # Errors
/// [`HandoverError::Socket`] when it cannot be reached or does not go in time.
pub fn ask_to_stop(port: u16, timeout: Duration) -> Result<Duration, HandoverError> {
    let err = |source| HandoverError::Socket { port, source };
    let t = Instant::now();
    let (mut s, _) = hello(port)?;
    s.write_all(b"stop\n").map_err(err)?;
    s.set_read_timeout(Some(timeout)).map_err(err)?;
    // The old process never writes again: the read ends at its exit.
    let mut rest = Vec::new();
    io::Read::read_to_end(&mut s, &mut rest).map_err(err)?;
    Ok(t.elapsed())
}

impl Holder {
    /// Serves successors on a thread of its own: answers each with `tun`,
    /// and calls `on_stop` once when one asks this weftd to stop. The
    /// connection that asked is kept open until this process exits, so the
    /// successor learns the exact moment.
    pub fn serve(self, tun: String, on_stop: impl Fn() + Send + 'static) {
        let spawned = std::thread::Builder::new()
            .name("weft-handover".into())
            .spawn(move || {
                for conn in self.listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    if writeln!(conn, "weftd {tun}").is_err() {
                        continue;
                    }
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut line = String::new();
                    let asked = BufReader::new(&conn)
                        .read_line(&mut line)
                        .is_ok_and(|_| line.trim() == "stop");
                    if asked {
                        on_stop();
                        // Closed by the kernel when this process exits.
                        std::mem::forget(conn);
                    }
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
        h.serve("weft0".into(), move || tx.send(()).unwrap());
        assert!(check_successor(port, "weft0").is_ok());
        let e = check_successor(port, "weft1").unwrap_err().to_string();
        assert!(
            e.contains("TUN device weft0") && e.contains("--tun-name"),
            "{e}"
        );
        // Within one process "exit" never comes: the wait ends at the timeout.
        let r = ask_to_stop(port, Duration::from_millis(200));
        assert!(rx.recv_timeout(Duration::from_secs(2)).is_ok(), "asked");
        assert!(r.is_err(), "the holder's process is still alive");
    }
}
