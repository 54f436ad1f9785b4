//! ICMPv6 destination-unreachable messages (RFC 4443), built in place for
//! IPv6 packets weft cannot route.

use std::net::Ipv6Addr;

use super::{checksum_finish, checksum_sum, ipv6};

pub const TYPE_DEST_UNREACHABLE: u8 = 1;
/// Code 0: no route to destination (no lease covers it).
pub const CODE_NO_ROUTE: u8 = 0;
/// Length of an ICMPv6 error header (type, code, checksum, unused).
pub const HEADER_LEN: usize = 8;
/// An ICMPv6 error must fit the IPv6 minimum MTU (RFC 4443 §2.4 (c)).
pub const MIN_MTU: usize = 1280;

/// Whether `orig` (a checked IPv6 packet) may be answered with an ICMPv6
/// error (RFC 4443 §2.4 (e)): not an ICMPv6 error itself (types below 128),
/// not from the unspecified or a multicast source, not to a multicast
/// destination.
pub fn may_answer(orig: &ipv6::Packet<&[u8]>) -> bool {
    let (src, dst) = (orig.src(), orig.dst());
    if src.is_unspecified() || src.is_multicast() || dst.is_multicast() {
        return false;
    }
    if orig.next_header() == ipv6::PROTO_ICMPV6 {
        return match orig.as_bytes().get(ipv6::HEADER_LEN) {
            Some(&t) => t >= 128,
            None => false,
        };
    }
    true
}

/// Builds, into `out`, an IPv6 packet carrying ICMPv6 destination-unreachable
/// (`code`) from `router` to the source of `orig`, quoting as much of `orig`
/// as keeps the answer within the IPv6 minimum MTU and `out`. Returns the
/// length written, or `None` when `out` cannot hold even the headers.
pub fn emit_unreachable(out: &mut [u8], orig: &[u8], router: Ipv6Addr, code: u8) -> Option<usize> {
    let o = ipv6::Packet::new_checked(orig).ok()?;
    let room = out.len().min(MIN_MTU);
    let head = ipv6::HEADER_LEN + HEADER_LEN;
    if room <= head {
        return None;
    }
    let quote = o.total_len().min(room - head);
    let total = head + quote;
    let payload = (HEADER_LEN + quote) as u16;
    let to = o.src();
    ipv6::emit_header(out, payload, ipv6::PROTO_ICMPV6, 64, router, to);
    let icmp = &mut out[ipv6::HEADER_LEN..total];
    icmp[..HEADER_LEN].copy_from_slice(&[TYPE_DEST_UNREACHABLE, code, 0, 0, 0, 0, 0, 0]);
    icmp[HEADER_LEN..].copy_from_slice(&orig[..quote]);
    let sum = ipv6::pseudo_header_sum(router, to, ipv6::PROTO_ICMPV6, u32::from(payload), 0);
    let c = checksum_finish(checksum_sum(icmp, sum));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(src: &str, dst: &str, next: u8, first: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + len];
        ipv6::emit_header(
            &mut p,
            len as u16,
            next,
            64,
            src.parse().unwrap(),
            dst.parse().unwrap(),
        );
        if len > 0 {
            p[40] = first;
        }
        p
    }

    #[test]
    fn unreachable_quotes_the_original_and_verifies() {
        let orig = packet(
            "fc00:0:0:1::5",
            "fc00:0:0:9::1",
            ipv6::PROTO_ICMPV6,
            128,
            16,
        );
        let router: Ipv6Addr = "fc00:0:0:1::".parse().unwrap();
        let mut out = [0u8; 256];
        let n = emit_unreachable(&mut out, &orig, router, CODE_NO_ROUTE).unwrap();
        assert_eq!(n, 40 + 8 + orig.len());
        let ip = ipv6::Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(ip.src(), router);
        assert_eq!(ip.dst(), "fc00:0:0:1::5".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.next_header(), ipv6::PROTO_ICMPV6);
        let sum = ipv6::pseudo_header_sum(ip.src(), ip.dst(), 58, (n - 40) as u32, 0);
        assert_eq!(
            checksum_finish(checksum_sum(&out[40..n], sum)),
            0,
            "checksum verifies"
        );
        assert_eq!(out[40], TYPE_DEST_UNREACHABLE);
        assert_eq!(&out[48..n], &orig[..]);
        // A big original is cut so the answer fits 1280 bytes.
        let big = packet("fc00:0:0:1::5", "fc00:0:0:9::1", 17, 0, 1400);
        let mut out = vec![0u8; 2000];
        assert_eq!(emit_unreachable(&mut out, &big, router, 0), Some(MIN_MTU));
    }

    #[test]
    fn never_answers_errors_or_multicast() {
        let check = |p: &[u8]| may_answer(&ipv6::Packet::new_checked(p).unwrap());
        assert!(check(&packet("fc00::5", "fc00:9::1", 58, 128, 8)));
        assert!(check(&packet("fc00::5", "fc00:9::1", 17, 0, 8)));
        assert!(
            !check(&packet("fc00::5", "fc00:9::1", 58, 1, 8)),
            "an error"
        );
        assert!(
            !check(&packet("fc00::5", "fc00:9::1", 58, 0, 0)),
            "too short to tell"
        );
        assert!(!check(&packet("::", "fc00:9::1", 17, 0, 8)));
        assert!(!check(&packet("fc00::5", "ff02::1", 17, 0, 8)));
        let orig = packet("fc00::5", "fc00:9::1", 17, 0, 8);
        assert!(emit_unreachable(&mut [0u8; 48], &orig, Ipv6Addr::LOCALHOST, 0).is_none());
        assert!(emit_unreachable(&mut [0u8; 128], &orig[..30], Ipv6Addr::LOCALHOST, 0).is_none());
    }
}
