//! Route and link queries over rtnetlink: the underlay's MTU, the TUN device's
//! index, and the route that sends the whole overlay Network into TUN.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0} (weftd needs CAP_NET_ADMIN)")]
    Connect(std::io::Error),
    #[error("interface {name} not found: {detail}")]
    NoLink { name: String, detail: String },
    #[error("cannot set address {addr}/32 on {dev}: {detail}")]
    Address {
        addr: Ipv4Addr,
        dev: String,
        detail: String,
    },
    #[error("cannot delete interface {name}: {detail}")]
    Delete { name: String, detail: String },
    #[error(
        "cannot add route {net} dev {dev} src {src}: {detail} (is another route for {net} in the way? `ip route show {net}`)"
    )]
    Route {
        net: Ipv4Net,
        dev: String,
        src: Ipv4Addr,
        detail: String,
    },
}

/// A netlink handle driven by a task on the current tokio runtime.
///
/// # Errors
/// [`NetlinkError::Connect`].
pub fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The index and MTU of interface `name`.
///
/// # Errors
/// [`NetlinkError::NoLink`] naming the interface.
pub async fn link(handle: &Handle, name: &str) -> Result<(u32, u32), NetlinkError> {
    let no = |detail: String| NetlinkError::NoLink {
        name: name.to_string(),
        detail,
    };
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let msg = links
        .try_next()
        .await
        .map_err(|e| no(e.to_string()))?
        .ok_or_else(|| no("no such link".into()))?;
    let mtu = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500);
    Ok((msg.header.index, mtu))
}

/// Adds (or replaces) `net dev <index> src <src>`: the route for the whole overlay.
///
/// # Errors
/// [`NetlinkError::Route`] naming the route.
pub async fn replace_route(
    handle: &Handle,
    net: Ipv4Net,
    index: u32,
    dev: &str,
    src: Ipv4Addr,
) -> Result<(), NetlinkError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(net.network(), net.prefix_len())
        .output_interface(index)
        .pref_source(src)
        .build();
    handle
        .route()
        .add(msg)
        .replace()
        .execute()
        .await
        .map_err(|e| NetlinkError::Route {
            net,
            dev: dev.to_string(),
            src,
            detail: e.to_string(),
        })
}

/// Deletes interface `name` (its routes go with it); false when there is none.
///
/// # Errors
/// [`NetlinkError::Delete`] naming the interface.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, NetlinkError> {
    let Ok((index, _)) = link(handle, name).await else {
        return Ok(false);
    };
    handle
        .link()
        .del(index)
        .execute()
        .await
        .map(|()| true)
        .map_err(|e| NetlinkError::Delete {
            name: name.to_string(),
            detail: e.to_string(),
        })
}

/// Leaves `addr/32` as the only IPv4 address of interface `index`: a device
/// kept from an earlier run may hold another subnet's.
///
/// # Errors
/// [`NetlinkError::Address`] naming the device and address.
pub async fn set_only_address(
    handle: &Handle,
    index: u32,
    dev: &str,
    addr: Ipv4Addr,
) -> Result<(), NetlinkError> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let fail = |detail: String| NetlinkError::Address {
        addr,
        dev: dev.to_string(),
        detail,
    };
    let mut have = false;
    let mut stale = vec![];
    let mut list = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(m) = list.try_next().await.map_err(|e| fail(e.to_string()))? {
        let v4 = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(std::net::IpAddr::V4(a))
            | AddressAttribute::Address(std::net::IpAddr::V4(a)) => Some(*a),
            _ => None,
        });
        match v4 {
            Some(a) if a == addr && m.header.prefix_len == 32 => have = true,
            Some(_) => stale.push(m),
            None => {}
        }
    }
    for m in stale {
        handle
            .address()
            .del(m)
            .execute()
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    if !have {
        handle
            .address()
            .add(index, std::net::IpAddr::V4(addr), 32)
            .replace()
            .execute()
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}
