//! The overlay probe of `weftd doctor`: an ICMP echo wrapped in VXLAN, from
//! this node's `.0` to a peer's `.0`, as the peer's dataplane would carry
//! pod traffic; and a plain echo to the peer's public IP, to tell a dropped
//! VXLAN port from a node that is down. Frames are built and replies parsed
//! by pure functions; the sockets come from [`crate::sys`].

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use crate::types::{Vni, VtepMac};
use crate::wire::{checksum_finish, checksum_sum, ethernet, ipv4, vxlan};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_HEADER: usize = 8;

/// An ICMP echo request `id`/`seq` padded so the whole ICMP message is `len` bytes.
pub fn echo_request(id: u16, seq: u16, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len.max(ICMP_HEADER)];
    m[0] = ICMP_ECHO_REQUEST;
    m[4..6].copy_from_slice(&id.to_be_bytes());
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in m[ICMP_HEADER..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = checksum_finish(checksum_sum(&m, 0));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// What the probe of one peer sends: VXLAN (`vni`), an inner Ethernet header
/// to the peer's VtepMAC, and an IPv4 packet of `total` bytes from `src` to
/// `dst` carrying an echo request `id`/`seq`.
#[allow(clippy::too_many_arguments)]
pub fn vxlan_echo(
    vni: Vni,
    to_mac: VtepMac,
    from_mac: VtepMac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
    total: u16,
) -> Vec<u8> {
    let total = total.max(28);
    let mut d = vec![0u8; vxlan::HEADER_LEN + ethernet::HEADER_LEN];
    vxlan::Packet::new_unchecked(&mut d[..vxlan::HEADER_LEN]).emit(vni);
    ethernet::Frame::new_unchecked(&mut d[vxlan::HEADER_LEN..]).emit(
        to_mac.octets(),
        from_mac.octets(),
        ethernet::ETHERTYPE_IPV4,
    );
    let mut ip = vec![0u8; ipv4::MIN_HEADER_LEN];
    ipv4::emit_header(&mut ip, total, 64, 1, src, dst);
    ip.extend(echo_request(
        id,
        seq,
        usize::from(total) - ipv4::MIN_HEADER_LEN,
    ));
    d.extend(ip);
    d
}

/// The source, id and seq of an echo reply as a raw ICMP socket reads it
/// (IPv4 header first); None for anything else.
pub fn parse_echo_reply(pkt: &[u8]) -> Option<(Ipv4Addr, u16, u16)> {
    let ip = ipv4::Packet::new_checked(pkt).ok()?;
    let icmp = pkt.get(ip.header_len()..)?;
    if ip.protocol() != 1 || icmp.len() < ICMP_HEADER || icmp[0] != ICMP_ECHO_REPLY {
        return None;
    }
    Some((
        ip.src(),
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    ))
}

/// How one probe came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered after this long.
    Answered(Duration),
    /// The peer's kernel said nothing listens on its VXLAN port.
    PortClosed,
    /// No answer in time.
    Silent,
}

/// Sends `datagram` from `from` (this node's address, so the peer's source
/// check knows it) to `to`, and waits up to `wait` on `icmp` for the echo
/// reply `(reply_from, id, seq)`.
pub fn vxlan_probe(
    icmp: &UdpSocket,
    from: Ipv4Addr,
    to: SocketAddrV4,
    datagram: &[u8],
    reply: (Ipv4Addr, u16, u16),
    wait: Duration,
) -> std::io::Result<Outcome> {
    let udp = UdpSocket::bind((from, 0))?;
    udp.connect(to)?;
    udp.set_nonblocking(true)?;
    let t = Instant::now();
    udp.send(datagram)?;
    let mut buf = [0u8; 2048];
    while t.elapsed() < wait {
        if wait_reply(icmp, reply, Duration::from_millis(5)) {
            return Ok(Outcome::Answered(t.elapsed()));
        }
        // A port unreachable comes back on the connected socket as ECONNREFUSED.
        if let Err(e) = udp.recv(&mut buf) {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                return Ok(Outcome::PortClosed);
            }
        }
    }
    Ok(Outcome::Silent)
}

/// Pings `to` on the underlay through `icmp` (echo `id`/`seq`).
pub fn underlay_ping(
    icmp: &UdpSocket,
    to: Ipv4Addr,
    id: u16,
    seq: u16,
    wait: Duration,
) -> std::io::Result<Outcome> {
    let t = Instant::now();
    icmp.send_to(&echo_request(id, seq, 64), (to, 0))?;
    while t.elapsed() < wait {
        if wait_reply(icmp, (to, id, seq), Duration::from_millis(5)) {
            return Ok(Outcome::Answered(t.elapsed()));
        }
    }
    Ok(Outcome::Silent)
}

/// Reads `icmp` for up to `wait`; whether the echo reply `want` came.
fn wait_reply(icmp: &UdpSocket, want: (Ipv4Addr, u16, u16), wait: Duration) -> bool {
    let end = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        match icmp.recv(&mut buf) {
            Ok(n) if parse_echo_reply(&buf[..n]) == Some(want) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_a_frame_the_peer_core_delivers() {
        use crate::dataplane::core::{Core, RxAction, Sender};
        use crate::dataplane::{ENCAP_LEN, HEADROOM, SLOT};
        let peer_mac = VtepMac::derive(&[192, 0, 2, 2]);
        let vni = Vni::new(1).unwrap();
        let d = vxlan_echo(
            vni,
            peer_mac,
            VtepMac::derive(&[192, 0, 2, 1]),
            [10, 244, 1, 0].into(),
            [10, 244, 2, 0].into(),
            7,
            3,
            1450,
        );
        assert_eq!(d.len(), 1450 + ENCAP_LEN);
        let core = Core::new(vni, peer_mac, "10.244.2.0/24".parse().unwrap());
        let mut slot = vec![0u8; SLOT];
        let start = HEADROOM - ENCAP_LEN;
        slot[start..start + d.len()].copy_from_slice(&d);
        let from = crate::dataplane::table::SenderEntry {
            nets: vec!["10.244.1.0/24".parse().unwrap()],
            nets6: vec![],
            slot: 0,
        };
        let RxAction::Deliver(r) = core.decap(Sender::Leased(&from), &slot, start, d.len()) else {
            panic!("not delivered")
        };
        let inner = &slot[r];
        let ip = ipv4::Packet::new_checked(inner).unwrap();
        assert_eq!(ip.total_len(), 1450);
        assert_eq!(
            checksum_finish(checksum_sum(&inner[20..], 0)),
            0,
            "ICMP checksum"
        );
    }

    #[test]
    fn echo_replies_are_recognised_and_nothing_else() {
        let mut pkt = vec![0u8; 20];
        ipv4::emit_header(
            &mut pkt,
            36,
            64,
            1,
            [10, 244, 2, 0].into(),
            [10, 244, 1, 0].into(),
        );
        let mut m = echo_request(9, 4, 16);
        m[0] = ICMP_ECHO_REPLY;
        pkt.extend(&m);
        assert_eq!(parse_echo_reply(&pkt), Some(([10, 244, 2, 0].into(), 9, 4)));
        pkt[20] = ICMP_ECHO_REQUEST;
        assert_eq!(parse_echo_reply(&pkt), None);
        assert_eq!(parse_echo_reply(&pkt[..25]), None);
        assert_eq!(parse_echo_reply(&[0x45]), None);
    }
}
