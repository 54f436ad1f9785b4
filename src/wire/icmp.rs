//! ICMPv4 destination-unreachable messages, built in place for packets weft cannot route.

use std::net::Ipv4Addr;

use super::{checksum_finish, checksum_sum, ipv4};

pub const TYPE_DEST_UNREACHABLE: u8 = 3;
/// Code 0: network unreachable (no lease covers the destination).
pub const CODE_NET_UNREACHABLE: u8 = 0;
/// Length of an ICMP header.
pub const HEADER_LEN: usize = 8;

/// ICMP types that are themselves errors: never answered with an error (RFC 1812 4.3.2.7).
pub fn is_error_type(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// Whether `orig` (a checked IPv4 packet) may be answered with an ICMP error:
/// not for ICMP errors, non-first fragments, or from unspecified, broadcast or
/// multicast sources or to multicast/broadcast destinations.
pub fn may_answer(orig: &ipv4::Packet<&[u8]>) -> bool {
    let src = orig.src();
    let dst = orig.dst();
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
        return false;
    }
    if dst.is_broadcast() || dst.is_multicast() {
        return false;
    }
    if orig.frag_offset() != 0 {
        return false;
    }
    if orig.protocol() == ipv4::PROTO_ICMP {
        // The ICMP type sits right after the IP header; a packet too short to
        // show it is not answered.
        return match orig.as_bytes().get(orig.header_len()) {
            Some(&t) => !is_error_type(t),
            None => false,
        };
    }
    true
}

/// Builds, into `out`, an IPv4 packet carrying ICMP destination-unreachable
/// (`code`) from `router` to the source of `orig`, quoting the original IP
/// header and the first 8 bytes of its payload. Returns the length written,
/// or `None` when `out` is too small.
pub fn emit_unreachable(out: &mut [u8], orig: &[u8], router: Ipv4Addr, code: u8) -> Option<usize> {
    let o = ipv4::Packet::new_checked(orig).ok()?;
    let quote = (o.header_len() + 8).min(o.total_len() as usize);
    let total = ipv4::MIN_HEADER_LEN + HEADER_LEN + quote;
    if out.len() < total {
        return None;
    }
    let src_of_orig = o.src();
    ipv4::emit_header(out, total as u16, 64, ipv4::PROTO_ICMP, router, src_of_orig);
    let icmp = &mut out[ipv4::MIN_HEADER_LEN..total];
    icmp[..HEADER_LEN].copy_from_slice(&[TYPE_DEST_UNREACHABLE, code, 0, 0, 0, 0, 0, 0]);
    icmp[HEADER_LEN..].copy_from_slice(&orig[..quote]);
    let c = checksum_finish(checksum_sum(icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(src: [u8; 4], dst: [u8; 4], icmp_type: u8) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 16];
        ipv4::emit_header(&mut p, 36, 64, ipv4::PROTO_ICMP, src.into(), dst.into());
        p[20] = icmp_type;
        p
    }

    #[test]
    fn unreachable_quotes_the_original() {
        let orig = ping([10, 244, 1, 0], [10, 244, 9, 1], 8);
        let mut out = [0u8; 128];
        let n = emit_unreachable(
            &mut out,
            &orig,
            Ipv4Addr::new(10, 244, 1, 0),
            CODE_NET_UNREACHABLE,
        )
        .unwrap();
        assert_eq!(n, 20 + 8 + 28);
        let ip = ipv4::Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(ip.dst(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(checksum_finish(checksum_sum(&out[..20], 0)), 0);
        assert_eq!(checksum_finish(checksum_sum(&out[20..n], 0)), 0);
        assert_eq!(out[20], TYPE_DEST_UNREACHABLE);
        assert_eq!(&out[28..n], &orig[..28]);
    }

    #[test]
    fn never_answers_errors_or_broadcasts() {
        let echo = ping([10, 244, 1, 0], [10, 244, 9, 1], 8);
        assert!(may_answer(&ipv4::Packet::new_checked(&echo[..]).unwrap()));
        let err = ping([10, 244, 1, 0], [10, 244, 9, 1], 3);
        assert!(!may_answer(&ipv4::Packet::new_checked(&err[..]).unwrap()));
        let bcast = ping([10, 244, 1, 0], [255, 255, 255, 255], 8);
        assert!(!may_answer(&ipv4::Packet::new_checked(&bcast[..]).unwrap()));
        let mut out = [0u8; 16];
        assert!(emit_unreachable(&mut out, &echo, Ipv4Addr::LOCALHOST, 0).is_none());
        assert!(emit_unreachable(&mut out, &echo[..10], Ipv4Addr::LOCALHOST, 0).is_none());
    }
}
