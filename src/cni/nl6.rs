//! The IPv6 netlink operations built-in mode needs (addresses without
//! duplicate address detection, routes, their dumps), over weft's one
//! netlink client ([`crate::netlink::Netlink`]); free functions, so they never
//! clash with methods the client may grow.

use std::io;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::{Netlink, is_exists};

/// An IPv6 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route6 {
    pub dst: Ipv6Net,
    pub gw: Option<Ipv6Addr>,
    pub oif: Option<u32>,
}

/// Adds IPv6 address `addr` to link `index` with `nodad` (usable at once,
/// as the bridge plugin adds its addresses); `Ok(false)` when it was there.
///
/// # Errors
/// Netlink errors other than EEXIST.
pub fn add_address(nl: &mut Netlink, index: u32, addr: Ipv6Net) -> io::Result<bool> {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet6;
    m.header.prefix_len = addr.prefix_len();
    m.header.index = index;
    m.header.flags = AddressHeaderFlags::Nodad;
    m.attributes
        .push(AddressAttribute::Local(IpAddr::V6(addr.addr())));
    m.attributes
        .push(AddressAttribute::Address(IpAddr::V6(addr.addr())));
    m.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    match nl.ack(
        RouteNetlinkMessage::NewAddress(m),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(()) => Ok(true),
        Err(e) if is_exists(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The IPv6 addresses of link `index` (link-local ones included).
///
/// # Errors
/// The netlink error.
pub fn addresses(nl: &mut Netlink, index: u32) -> io::Result<Vec<Ipv6Net>> {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet6;
    let all = nl.request(RouteNetlinkMessage::GetAddress(m), NLM_F_DUMP)?;
    let mut out = Vec::new();
    for r in all {
        let RouteNetlinkMessage::NewAddress(a) = r else {
            continue;
        };
        if a.header.index != index {
            continue;
        }
        for at in &a.attributes {
            if let AddressAttribute::Address(IpAddr::V6(ip)) = at
                && let Ok(n) = Ipv6Net::new(*ip, a.header.prefix_len)
            {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// Adds an IPv6 route in the main table; `Ok(false)` when it existed.
///
/// # Errors
/// Netlink errors other than EEXIST.
pub fn add_route(
    nl: &mut Netlink,
    dst: Ipv6Net,
    gw: Option<Ipv6Addr>,
    oif: u32,
) -> io::Result<bool> {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet6;
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    if dst.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet6(
                dst.network(),
            )));
    }
    if let Some(g) = gw {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(g)));
    }
    m.attributes.push(RouteAttribute::Oif(oif));
    match nl.ack(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL) {
        Ok(()) => Ok(true),
        Err(e) if is_exists(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The IPv6 routes of the main table.
///
/// # Errors
/// The netlink error.
pub fn routes(nl: &mut Netlink) -> io::Result<Vec<Route6>> {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet6;
    let all = nl.request(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)?;
    let mut out = Vec::new();
    for r in all {
        let RouteNetlinkMessage::NewRoute(rt) = r else {
            continue;
        };
        if rt.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let mut e = Route6 {
            dst: Ipv6Net::default(),
            gw: None,
            oif: None,
        };
        for a in &rt.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => {
                    e.dst =
                        Ipv6Net::new(*d, rt.header.destination_prefix_length).unwrap_or_default();
                }
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => e.gw = Some(*g),
                RouteAttribute::Oif(o) => e.oif = Some(*o),
                _ => {}
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// Whether `routes` holds a route to IPv6 `dst` (via `gw` when given).
/// Pure; an IPv4 `dst` or `gw` is never found here.
pub fn has_route(routes: &[Route6], dst: IpNet, gw: Option<IpAddr>) -> bool {
    let IpNet::V6(dst) = dst else {
        return false;
    };
    routes.iter().any(|r| {
        r.dst == dst.trunc()
            && match gw {
                Some(IpAddr::V6(g)) => r.gw == Some(g),
                Some(IpAddr::V4(_)) => false,
                None => true,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_route_matches_family_destination_and_gateway() {
        let gw: Ipv6Addr = "fc00:0:0:3::1".parse().unwrap();
        let routes = vec![
            Route6 {
                dst: "fc00::/48".parse().unwrap(),
                gw: Some(gw),
                oif: Some(2),
            },
            Route6 {
                dst: Ipv6Net::default(),
                gw: Some(gw),
                oif: Some(2),
            },
        ];
        let net: IpNet = "fc00::/48".parse().unwrap();
        assert!(has_route(&routes, net, Some(IpAddr::V6(gw))));
        assert!(has_route(&routes, net, None));
        assert!(has_route(
            &routes,
            "::/0".parse().unwrap(),
            Some(IpAddr::V6(gw))
        ));
        assert!(!has_route(&routes, net, Some("fc00::9".parse().unwrap())));
        assert!(!has_route(&routes, net, Some("10.0.0.1".parse().unwrap())));
        assert!(!has_route(&routes, "10.0.0.0/8".parse().unwrap(), None));
        assert!(!has_route(&routes, "fc01::/48".parse().unwrap(), None));
    }
}
