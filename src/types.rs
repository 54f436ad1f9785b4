//! Newtypes for the values that are easy to mix up: VNIs, VTEP MAC addresses
//! and address families.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A VXLAN network identifier, checked to fit its 24 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI the 24-bit field can carry.
    pub const MAX: u32 = 0x00ff_ffff;

    /// Returns `None` when `v` does not fit in 24 bits.
    pub const fn new(v: u32) -> Option<Vni> {
        if v <= Self::MAX { Some(Vni(v)) } else { None }
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The MAC address of a node's VXLAN tunnel endpoint (flannel's `VtepMAC`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VtepMac(pub [u8; 6]);

impl VtepMac {
    /// A stable, locally administered unicast MAC derived from `seed` (FNV-1a, then mixed),
    /// so a node keeps its VtepMAC across restarts without keeping state.
    pub fn derive(seed: &[u8]) -> VtepMac {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // splitmix64's finalizer: short seeds (an IPv4 address) change every octet.
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        let b = h.to_be_bytes();
        // 0x02 bit: locally administered; 0x01 bit cleared: unicast.
        VtepMac([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }

    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for VtepMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for VtepMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A MAC address string that is not six `:`-separated hex octets.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a MAC address (want six hex octets such as 0a:58:0a:f4:01:01)")]
pub struct BadMac(pub String);

impl FromStr for VtepMac {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for o in out.iter_mut() {
            let p = parts.next().ok_or_else(|| BadMac(s.to_string()))?;
            if p.is_empty() || p.len() > 2 {
                return Err(BadMac(s.to_string()));
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| BadMac(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.to_string()));
        }
        Ok(VtepMac(out))
    }
}

impl Serialize for VtepMac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VtepMac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An IP address family. Each has its own routes and addresses (netlink
/// dumps one family at a time), its own forwarding switch, and its own rules
/// (nftables family, iptables tool: [`crate::netfilter`] names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of `a`.
    pub fn of(a: IpAddr) -> Family {
        match a {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `IPv4`, `IPv6`, as messages name the family.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The family's forwarding switch: its file under `/proc/sys` and its
    /// sysctl name.
    pub fn forwarding_sysctl(self) -> (&'static str, &'static str) {
        match self {
            Family::V4 => ("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
            Family::V6 => (
                "/proc/sys/net/ipv6/conf/all/forwarding",
                "net.ipv6.conf.all.forwarding",
            ),
        }
    }

    /// The destination of a default route: `0.0.0.0/0`, `::/0`.
    pub fn default_route(self) -> IpNet {
        match self {
            Family::V4 => IpNet::V4(Ipv4Net::default()),
            Family::V6 => IpNet::V6(Ipv6Net::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_is_24_bits() {
        assert_eq!(Vni::new(1).unwrap().get(), 1);
        assert!(Vni::new(0x00ff_ffff).is_some());
        assert!(Vni::new(0x0100_0000).is_none());
    }

    #[test]
    fn mac_round_trip_and_derivation() {
        let m: VtepMac = "62:fc:03:83:1b:2b".parse().unwrap();
        assert_eq!(m.to_string(), "62:fc:03:83:1b:2b");
        assert!("62:fc:03:83:1b".parse::<VtepMac>().is_err());
        assert!("62:fc:03:83:1b:2b:00".parse::<VtepMac>().is_err());
        assert!("zz:fc:03:83:1b:2b".parse::<VtepMac>().is_err());
        let a = VtepMac::derive(b"192.0.2.1");
        assert_eq!(a, VtepMac::derive(b"192.0.2.1"));
        assert_ne!(a, VtepMac::derive(b"192.0.2.2"));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered unicast");
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"62:fc:03:83:1b:2b\"");
    }
}
