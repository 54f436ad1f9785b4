//! flannel's `subnet.env`: the node's lease as CNI plugins and runtimes read it,
//! with `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET` in a dual-stack
//! network, and only those (no `FLANNEL_NETWORK`) in an IPv6-only one.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};

/// flannel's default path, which flannel's CNI plugin reads.
pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";

/// The contents of subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The IPv4 half: `Network` and the node subnet (written as its first
    /// host address, `10.244.3.1/24`); `None` in an IPv6-only network.
    pub ipv4: Option<Ipv4Env>,
    /// The IPv6 half of a dual-stack or IPv6-only network: `IPv6Network` and
    /// the node's IPv6 subnet (written as its first host address,
    /// `fc00:0:0:3::1/64`).
    pub ipv6: Option<Ipv6Env>,
    pub mtu: u32,
    pub ipmasq: bool,
}

/// `FLANNEL_NETWORK` and `FLANNEL_SUBNET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Env {
    pub network: Ipv4Net,
    pub subnet: Ipv4Net,
}

/// `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Env {
    pub network: Ipv6Net,
    pub subnet: Ipv6Net,
}

#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    #[error(
        "cannot write {path}: {source} (is its directory writable? set --subnet-file to move it)"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Parse { path: PathBuf, what: String },
}

impl SubnetEnv {
    /// The file's text, in flannel's order and format.
    pub fn render(&self) -> String {
        // The first host address; a subnet with none (refused by `parse`
        // and by every store) is written as it is rather than overflowing.
        let mut out = String::new();
        if let Some(v4) = &self.ipv4 {
            let net = u32::from(v4.subnet.network());
            let first = Ipv4Addr::from(if v4.subnet.prefix_len() < 31 {
                net.saturating_add(1)
            } else {
                net
            });
            out += &format!(
                "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\n",
                v4.network,
                first,
                v4.subnet.prefix_len()
            );
        }
        if let Some(v6) = &self.ipv6 {
            let net = u128::from(v6.subnet.network());
            let first = Ipv6Addr::from(if v6.subnet.prefix_len() < 127 {
                net.saturating_add(1)
            } else {
                net
            });
            out += &format!(
                "FLANNEL_IPV6_NETWORK={}\nFLANNEL_IPV6_SUBNET={}/{}\n",
                v6.network,
                first,
                v6.subnet.prefix_len()
            );
        }
        out + &format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n", self.mtu, self.ipmasq)
    }

    /// Writes the file atomically (a temporary file renamed over it), creating
    /// its directory.
    ///
    /// # Errors
    /// [`SubnetEnvError::Write`] naming the path.
    pub fn write(&self, path: &Path) -> Result<(), SubnetEnvError> {
        let werr = |source| SubnetEnvError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        crate::fsutil::write_atomic(path, self.render().as_bytes()).map_err(werr)
    }

    /// Parses subnet.env text (as written by flannel or weft).
    ///
    /// # Errors
    /// [`SubnetEnvError::Parse`] naming the variable that is missing or malformed.
    pub fn parse(text: &str, path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let perr = |what: String| SubnetEnvError::Parse {
            path: path.to_owned(),
            what,
        };
        let var = |name: &str| {
            text.lines()
                .filter_map(|l| l.trim().split_once('='))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
        };
        let has6 = var("FLANNEL_IPV6_NETWORK").is_some() || var("FLANNEL_IPV6_SUBNET").is_some();
        let ipv4 = match (var("FLANNEL_NETWORK"), var("FLANNEL_SUBNET")) {
            // An IPv6-only network's file (flannel writes no IPv4 pair there).
            (None, None) if has6 => None,
            (n, s) => {
                let network = n
                    .ok_or_else(|| perr("FLANNEL_NETWORK is missing".into()))?
                    .parse::<Ipv4Net>()
                    .map_err(|e| perr(format!("FLANNEL_NETWORK: {e}")))?;
                let subnet = s
                    .ok_or_else(|| perr("FLANNEL_SUBNET is missing".into()))?
                    .parse::<Ipv4Net>()
                    .map_err(|e| perr(format!("FLANNEL_SUBNET: {e}")))?
                    .trunc();
                if let Some(why) = crate::lease::node_subnet_problem(&subnet) {
                    return Err(perr(format!("FLANNEL_SUBNET={subnet}: {why}")));
                }
                Some(Ipv4Env { network, subnet })
            }
        };
        let mtu = var("FLANNEL_MTU")
            .ok_or_else(|| perr("FLANNEL_MTU is missing".into()))?
            .parse::<u32>()
            .map_err(|e| perr(format!("FLANNEL_MTU: {e}")))?;
        let ipmasq = var("FLANNEL_IPMASQ").is_some_and(|v| v == "true");
        let ipv6 = match (var("FLANNEL_IPV6_NETWORK"), var("FLANNEL_IPV6_SUBNET")) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(perr(
                    "FLANNEL_IPV6_NETWORK is set but FLANNEL_IPV6_SUBNET is missing".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(perr(
                    "FLANNEL_IPV6_SUBNET is set but FLANNEL_IPV6_NETWORK is missing".into(),
                ));
            }
            (Some(n), Some(s)) => {
                let network = n
                    .parse::<Ipv6Net>()
                    .map_err(|e| perr(format!("FLANNEL_IPV6_NETWORK={n}: {e}")))?;
                let subnet = s
                    .parse::<Ipv6Net>()
                    .map_err(|e| perr(format!("FLANNEL_IPV6_SUBNET={s}: {e}")))?
                    .trunc();
                if let Some(why) = crate::lease::node_subnet6_problem(&subnet) {
                    return Err(perr(format!("FLANNEL_IPV6_SUBNET={subnet}: {why}")));
                }
                if !network.contains(&subnet) {
                    return Err(perr(format!(
                        "FLANNEL_IPV6_SUBNET={subnet} is not inside FLANNEL_IPV6_NETWORK={network}"
                    )));
                }
                Some(Ipv6Env { network, subnet })
            }
        };
        Ok(SubnetEnv {
            ipv4,
            ipv6,
            mtu,
            ipmasq,
        })
    }

    /// Reads the file at `path`.
    ///
    /// # Errors
    /// [`SubnetEnvError::Read`] or [`SubnetEnvError::Parse`], naming the path.
    pub fn read(path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let text = std::fs::read_to_string(path).map_err(|source| SubnetEnvError::Read {
            path: path.to_owned(),
            source,
        })?;
        SubnetEnv::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_format_and_round_trip() {
        let e = SubnetEnv {
            ipv4: Some(Ipv4Env {
                network: "10.1.0.0/16".parse().unwrap(),
                subnet: "10.1.17.0/24".parse().unwrap(),
            }),
            ipv6: None,
            mtu: 1450,
            ipmasq: false,
        };
        // Same order and format as flannel (seed 004).
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("flannel/subnet.env");
        e.write(&p).unwrap();
        assert_eq!(SubnetEnv::read(&p).unwrap(), e);
        assert_eq!(
            std::fs::read_dir(p.parent().unwrap()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn subnets_without_room_are_refused_and_never_overflow() {
        for bad in ["255.255.255.255/32", "10.1.2.4/31", "0.0.0.0/0"] {
            let text =
                format!("FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET={bad}\nFLANNEL_MTU=1450\n");
            let e = SubnetEnv::parse(&text, Path::new("/run/flannel/subnet.env")).unwrap_err();
            assert!(
                e.to_string().contains("FLANNEL_SUBNET=")
                    && e.to_string().contains("/run/flannel/subnet.env"),
                "{e}"
            );
        }
        let e = SubnetEnv {
            ipv4: Some(Ipv4Env {
                network: "0.0.0.0/1".parse().unwrap(),
                subnet: "255.255.255.255/32".parse().unwrap(),
            }),
            ipv6: None,
            mtu: 1450,
            ipmasq: false,
        };
        assert!(e.render().contains("FLANNEL_SUBNET=255.255.255.255/32"));
    }

    #[test]
    fn ipv6_only_in_flannels_format() {
        let e = SubnetEnv {
            ipv4: None,
            ipv6: Some(Ipv6Env {
                network: "fc00::/48".parse().unwrap(),
                subnet: "fc00:0:0:3::/64".parse().unwrap(),
            }),
            mtu: 1430,
            ipmasq: true,
        };
        // flannel's WriteSubnetFile with EnableIPv4 false: no IPv4 pair.
        assert_eq!(
            e.render(),
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(SubnetEnv::parse(&e.render(), Path::new("/x")).unwrap(), e);
        // Neither family: FLANNEL_NETWORK is what is missing.
        let m = SubnetEnv::parse("FLANNEL_MTU=1450\n", Path::new("/x"))
            .unwrap_err()
            .to_string();
        assert!(m.contains("FLANNEL_NETWORK is missing"), "{m}");
        // Half an IPv4 pair beside IPv6 is still refused.
        let m = SubnetEnv::parse(
            &format!("FLANNEL_NETWORK=10.0.0.0/8\n{}", e.render()),
            Path::new("/x"),
        )
        .unwrap_err()
        .to_string();
        assert!(m.contains("FLANNEL_SUBNET is missing"), "{m}");
    }

    #[test]
    fn dual_stack_in_flannels_format() {
        let e = SubnetEnv {
            ipv4: Some(Ipv4Env {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.3.0/24".parse().unwrap(),
            }),
            ipv6: Some(Ipv6Env {
                network: "fc00::/48".parse().unwrap(),
                subnet: "fc00:0:0:3::/64".parse().unwrap(),
            }),
            mtu: 1430,
            ipmasq: true,
        };
        // flannel's WriteSubnetFile: IPv4 pair, IPv6 pair, then MTU and IPMASQ.
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(SubnetEnv::parse(&e.render(), Path::new("/x")).unwrap(), e);
        let base =
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1430\n";
        for (extra, want) in [
            (
                "FLANNEL_IPV6_NETWORK=fc00::/48\n",
                "FLANNEL_IPV6_SUBNET is missing",
            ),
            (
                "FLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\n",
                "FLANNEL_IPV6_NETWORK is missing",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc01::1/64\n",
                "not inside",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/128\n",
                "/127 or /128",
            ),
            (
                "FLANNEL_IPV6_NETWORK=10.0.0.0/8\nFLANNEL_IPV6_SUBNET=fc00::1/64\n",
                "FLANNEL_IPV6_NETWORK=10.0.0.0/8",
            ),
        ] {
            let err = SubnetEnv::parse(&format!("{base}{extra}"), Path::new("/x")).unwrap_err();
            assert!(err.to_string().contains(want), "{extra}: {err}");
        }
    }

    #[test]
    fn missing_variables_are_named() {
        let e = SubnetEnv::parse("FLANNEL_NETWORK=10.1.0.0/16\n", Path::new("/x")).unwrap_err();
        assert!(e.to_string().contains("FLANNEL_SUBNET is missing"), "{e}");
    }
}
