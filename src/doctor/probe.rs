//! The overlay probe of `weftd doctor`: an ICMP (or, to a peer's IPv6 half,
//! ICMPv6) echo wrapped in VXLAN, from this node's subnet address to a
//! peer's, as the peer's dataplane would carry pod traffic; and a plain echo
//! to the peer's public address, to tell a dropped VXLAN port from a node
//! that is down. Frames are built and replies parsed by pure functions; the
//! sockets come from [`crate::sys`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::types::{Vni, VtepMac};
use crate::wire::{checksum_finish, checksum_sum, ethernet, ipv4, ipv6, vxlan};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const ICMP_HEADER: usize = 8;

/// An ICMP echo request `id`/`seq` padded so the whole ICMP message is `len` bytes.
pub fn echo_request(id: u16, seq: u16, len: usize) -> Vec<u8> {
    let mut m = echo_message(ICMP_ECHO_REQUEST, id, seq, len);
    let c = checksum_finish(checksum_sum(&m, 0));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An echo message of `kind`, checksum left zero.
fn echo_message(kind: u8, id: u16, seq: u16, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len.max(ICMP_HEADER)];
    m[0] = kind;
    m[4..6].copy_from_slice(&id.to_be_bytes());
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in m[ICMP_HEADER..].iter_mut().enumerate() {
        *b = i as u8;
    }
    m
}

/// What the probe of one peer sends: VXLAN (`vni`), an inner Ethernet header
/// to the peer's VtepMAC (its IPv6 one for an IPv6 probe), and an IP packet
/// of `total` bytes from `src` to `dst` carrying an echo request `id`/`seq`
/// (ICMPv6 when the addresses are IPv6).
#[allow(clippy::too_many_arguments)]
pub fn vxlan_echo(
    vni: Vni,
    to_mac: VtepMac,
    from_mac: VtepMac,
    src: IpAddr,
    dst: IpAddr,
    id: u16,
    seq: u16,
    total: u16,
) -> Vec<u8> {
    let mut d = vec![0u8; vxlan::HEADER_LEN + ethernet::HEADER_LEN];
    vxlan::Packet::new_unchecked(&mut d[..vxlan::HEADER_LEN]).emit(vni);
    let ip = match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(t)) => echo6(s, t, id, seq, total),
        (s, t) => echo4(v4(s), v4(t), id, seq, total),
    };
    let ethertype = if src.is_ipv6() {
        ethernet::ETHERTYPE_IPV6
    } else {
        ethernet::ETHERTYPE_IPV4
    };
    ethernet::Frame::new_unchecked(&mut d[vxlan::HEADER_LEN..]).emit(
        to_mac.octets(),
        from_mac.octets(),
        ethertype,
    );
    d.extend(ip);
    d
}

fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

fn echo4(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, total: u16) -> Vec<u8> {
    let total = total.max(28);
    let mut ip = vec![0u8; ipv4::MIN_HEADER_LEN];
    ipv4::emit_header(&mut ip, total, 64, 1, src, dst);
    ip.extend(echo_request(
        id,
        seq,
        usize::from(total) - ipv4::MIN_HEADER_LEN,
    ));
    ip
}

fn echo6(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16, total: u16) -> Vec<u8> {
    let total = total.max(48);
    let len = usize::from(total) - ipv6::HEADER_LEN;
    let mut m = echo_message(ICMPV6_ECHO_REQUEST, id, seq, len);
    let sum = ipv6::pseudo_header_sum(src, dst, ipv6::PROTO_ICMPV6, len as u32, 0);
    let c = checksum_finish(checksum_sum(&m, sum));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0u8; ipv6::HEADER_LEN];
    ipv6::emit_header(&mut ip, len as u16, ipv6::PROTO_ICMPV6, 64, src, dst);
    ip.extend(m);
    ip
}

/// The source, id and seq of an echo reply as a raw ICMP socket reads it
/// (IPv4 header first); None for anything else.
pub fn parse_echo_reply(pkt: &[u8]) -> Option<(Ipv4Addr, u16, u16)> {
    let ip = ipv4::Packet::new_checked(pkt).ok()?;
    let icmp = pkt.get(ip.header_len()..)?;
    if ip.protocol() != 1 {
        return None;
    }
    let (id, seq) = echo_reply_ids(icmp, ICMP_ECHO_REPLY)?;
    Some((ip.src(), id, seq))
}

/// The id and seq of an echo reply message of type `reply` (no IP header:
/// what a raw ICMPv6 socket reads).
fn echo_reply_ids(m: &[u8], reply: u8) -> Option<(u16, u16)> {
    if m.len() < ICMP_HEADER || m[0] != reply {
        return None;
    }
    Some((
        u16::from_be_bytes([m[4], m[5]]),
        u16::from_be_bytes([m[6], m[7]]),
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

/// The raw sockets the probes read echo replies from: ICMP, and ICMPv6 in
/// a dual-stack network.
pub struct Echoes {
    v4: UdpSocket,
    v6: Option<UdpSocket>,
}

impl Echoes {
    /// Raw ICMP (and, with `ipv6`, ICMPv6) sockets; needs CAP_NET_RAW.
    ///
    /// # Errors
    /// The socket error.
    pub fn open(ipv6: bool) -> std::io::Result<Echoes> {
        let wait = Duration::from_millis(1);
        Ok(Echoes {
            v4: crate::sys::icmp_raw_socket(wait)?,
            v6: if ipv6 {
                Some(crate::sys::icmpv6_raw_socket(wait)?)
            } else {
                None
            },
        })
    }

    /// Reads for up to `wait`; whether the echo reply `want` came.
    fn wait(&self, want: (IpAddr, u16, u16), wait: Duration) -> bool {
        let end = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        let (sock, v6) = match (want.0, &self.v6) {
            (IpAddr::V6(_), Some(s)) => (s, true),
            (IpAddr::V6(_), None) => return false,
            (IpAddr::V4(_), _) => (&self.v4, false),
        };
        while Instant::now() < end {
            let got = match sock.recv_from(&mut buf) {
                Ok((n, from)) if v6 => echo_reply_ids(&buf[..n], ICMPV6_ECHO_REPLY)
                    .map(|(id, seq)| (from.ip(), id, seq)),
                Ok((n, _)) => parse_echo_reply(&buf[..n]).map(|(a, id, seq)| (a.into(), id, seq)),
                Err(_) => return false,
            };
            if got == Some(want) {
                return true;
            }
        }
        false
    }
}

/// Sends `datagram` from `from` (this node's address, so the peer's source
/// check knows it) to `to`, and waits up to `wait` for the echo reply
/// `(reply_from, id, seq)`.
pub fn vxlan_probe(
    echoes: &Echoes,
    from: IpAddr,
    to: SocketAddr,
    datagram: &[u8],
    reply: (IpAddr, u16, u16),
    wait: Duration,
) -> std::io::Result<Outcome> {
    let udp = UdpSocket::bind((from, 0))?;
    udp.connect(to)?;
    udp.set_nonblocking(true)?;
    let t = Instant::now();
    udp.send(datagram)?;
    let mut buf = [0u8; 2048];
    while t.elapsed() < wait {
        if echoes.wait(reply, Duration::from_millis(5)) {
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

/// Pings `to` on the underlay (echo `id`/`seq`; ICMPv6 to an IPv6 address,
/// whose checksum the kernel fills in).
pub fn underlay_ping(
    echoes: &Echoes,
    to: IpAddr,
    id: u16,
    seq: u16,
    wait: Duration,
) -> std::io::Result<Outcome> {
    let t = Instant::now();
    match (to, &echoes.v6) {
        (IpAddr::V6(_), Some(s)) => {
            s.send_to(&echo_message(ICMPV6_ECHO_REQUEST, id, seq, 64), (to, 0))?;
        }
        (IpAddr::V6(_), None) => return Ok(Outcome::Silent),
        (IpAddr::V4(_), _) => {
            echoes.v4.send_to(&echo_request(id, seq, 64), (to, 0))?;
        }
    }
    while t.elapsed() < wait {
        if echoes.wait((to, id, seq), Duration::from_millis(5)) {
            return Ok(Outcome::Answered(t.elapsed()));
        }
    }
    Ok(Outcome::Silent)
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
            Ipv4Addr::new(10, 244, 1, 0).into(),
            Ipv4Addr::new(10, 244, 2, 0).into(),
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

    /// The IPv6 probe: a frame the peer's dual-stack core delivers, to its
    /// IPv6 VtepMAC, an ICMPv6 echo request whose checksum verifies.
    #[test]
    fn the_ipv6_probe_is_a_frame_the_peer_core_delivers() {
        use crate::dataplane::core::{Core, RxAction, Sender};
        use crate::dataplane::{ENCAP_LEN, HEADROOM, SLOT};
        let mac6 = VtepMac::derive(b"2001:db8::2");
        let vni = Vni::new(1).unwrap();
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (
            "fc00:0:0:1::".parse().unwrap(),
            "fc00:0:0:2::".parse().unwrap(),
        );
        let d = vxlan_echo(
            vni,
            mac6,
            VtepMac::derive(b"x"),
            src.into(),
            dst.into(),
            7,
            3,
            1430,
        );
        assert_eq!(d.len(), 1430 + ENCAP_LEN);
        let core = Core::new(
            vni,
            VtepMac::derive(&[192, 0, 2, 2]),
            "10.244.2.0/24".parse().unwrap(),
        )
        .with_ipv6("fc00:0:0:2::/64".parse().unwrap(), mac6);
        let mut slot = vec![0u8; SLOT];
        let start = HEADROOM - ENCAP_LEN;
        slot[start..start + d.len()].copy_from_slice(&d);
        let RxAction::Deliver(r) = core.decap(Sender::Anyone, &slot, start, d.len()) else {
            panic!("not delivered")
        };
        let inner = &slot[r];
        let sum = ipv6::pseudo_header_sum(src, dst, 58, 1390, 0);
        assert_eq!(
            checksum_finish(checksum_sum(&inner[40..], sum)),
            0,
            "ICMPv6 checksum"
        );
        assert_eq!(inner[40], ICMPV6_ECHO_REQUEST);
        let mut reply = inner[40..].to_vec();
        reply[0] = ICMPV6_ECHO_REPLY;
        assert_eq!(echo_reply_ids(&reply, ICMPV6_ECHO_REPLY), Some((7, 3)));
        assert_eq!(echo_reply_ids(&reply[..7], ICMPV6_ECHO_REPLY), None);
        assert_eq!(echo_reply_ids(&inner[40..], ICMPV6_ECHO_REPLY), None);
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
