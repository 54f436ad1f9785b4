//! The rules weft wants, with no I/O: flannel's masquerade and forward-accept
//! rules for one Network and node subnet per address family, rendered as an
//! `nft -f` transaction or an `iptables-restore --noflush` script, and the
//! comparison of what a listing (`nft list table`, `iptables-save`) shows
//! against what is wanted.
//!
//! The IPv4 rules live in nftables table `ip weft` or iptables; on a
//! dual-stack node the IPv6 rules, the same list for the IPv6 Network and
//! subnet (multicast `ff00::/8`), live in table `ip6 weft` or ip6tables, as
//! flannel keeps them with `EnableIPv6`. Each family's rules are installed,
//! checked and removed on their own: turning IPv6 on leaves the IPv4 ones as
//! they were.
//!
//! Every rule carries a comment `weft <role> <fingerprint>/<n>`: the
//! fingerprint hashes the whole wanted rule set of its family, so a rule
//! flushed, edited, reordered or left from another Network or subnet shows up
//! as a difference.

use std::fmt::Write as _;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use crate::types::Family;

/// weft's nftables table, in family `ip` (and `ip6` on a dual-stack node):
/// nothing else of the host's is touched.
pub const NFT_TABLE: &str = "weft";
/// The nftables chains in [`NFT_TABLE`].
pub const NFT_MASQ_CHAIN: &str = "postrouting";
pub const NFT_FORWARD_CHAIN: &str = "forward";
/// weft's iptables chains, jumped to from `nat POSTROUTING` and `filter FORWARD`.
pub const IPT_MASQ_CHAIN: &str = "WEFT-POSTRTG";
pub const IPT_FORWARD_CHAIN: &str = "WEFT-FWD";
/// The comments on the iptables jumps into weft's chains.
pub const IPT_MASQ_JUMP_COMMENT: &str = "weft masq";
pub const IPT_FORWARD_JUMP_COMMENT: &str = "weft forward";
/// kube-proxy marks the packets it will masquerade itself with this bit.
pub const KUBE_PROXY_MARK: u32 = 0x4000;
/// IPv4 multicast, never masqueraded.
pub const MULTICAST: Ipv4Net = match Ipv4Net::new(std::net::Ipv4Addr::new(224, 0, 0, 0), 4) {
    Ok(n) => n,
    Err(_) => panic!("224.0.0.0/4 is a valid prefix"),
};
/// IPv6 multicast, never masqueraded.
pub const MULTICAST6: Ipv6Net =
    match Ipv6Net::new(std::net::Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8) {
        Ok(n) => n,
        Err(_) => panic!("ff00::/8 is a valid prefix"),
    };

/// Each family has its own table (`ip weft`, `ip6 weft`) and its own
/// iptables tool (iptables, ip6tables).
impl Family {
    /// nft's name for the family: `ip`, `ip6`.
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The iptables tool of the family: `iptables`, `ip6tables`.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// `iptables-save`, `ip6tables-save`.
    pub fn iptables_save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    /// `iptables-restore`, `ip6tables-restore`.
    pub fn iptables_restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// What weftd is asked to install for this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// The IPv4 half: the pod Network (net-conf.json's `Network`) and this
    /// node's subnet (its lease). None: an IPv6-only node, whose IPv4 table
    /// is removed.
    pub ipv4: Option<Rules4>,
    /// A dual-stack or IPv6-only node's IPv6 half (net-conf.json's
    /// `EnableIPv6`): the same rules for the IPv6 Network and subnet. None:
    /// IPv4 only.
    pub ipv6: Option<Rules6>,
    /// `--ip-masq`: masquerade pods' traffic that leaves the Network.
    pub masquerade: bool,
    /// `--random-fully` on MASQUERADE (off with `--ip-masq-fully-random-disable`).
    pub random_fully: bool,
    /// `--iptables-forward-rules`: accept forwarded traffic from and to the Network.
    pub forward: bool,
}

/// The IPv4 Network and subnet of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules4 {
    /// net-conf.json's `Network`.
    pub network: Ipv4Net,
    /// This node's subnet (its lease's `Subnet`).
    pub subnet: Ipv4Net,
}

/// The IPv6 Network and subnet of a dual-stack or IPv6-only node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules6 {
    /// net-conf.json's `IPv6Network`.
    pub network: Ipv6Net,
    /// This node's IPv6 subnet (its lease's `IPv6Subnet`).
    pub subnet: Ipv6Net,
}

/// The chain a rule lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// nat, postrouting hook.
    Masq,
    /// filter, forward hook.
    Forward,
}

/// One condition of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    KubeProxyMark,
    Src(IpNet),
    NotSrc(IpNet),
    Dst(IpNet),
    NotDst(IpNet),
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Return,
    Accept,
    Masquerade { random_fully: bool },
}

/// One rule, in a backend-neutral form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub matches: Vec<Match>,
    pub verdict: Verdict,
    /// Why the rule is there (shown in `weftd`'s docs and logs).
    pub why: &'static str,
}

impl Rules {
    /// The families with rules wanted: IPv4 (but on an IPv6-only node), and
    /// IPv6 on a dual-stack or IPv6-only node.
    pub fn families(&self) -> Vec<Family> {
        let mut v = vec![];
        if self.ipv4.is_some() {
            v.push(Family::V4);
        }
        if self.ipv6.is_some() {
            v.push(Family::V6);
        }
        v
    }

    /// The Network, subnet and multicast range of `family` (None: IPv6 is off).
    fn nets(&self, family: Family) -> Option<(IpNet, IpNet, IpNet)> {
        match family {
            Family::V4 => self
                .ipv4
                .map(|r| (r.network.into(), r.subnet.into(), MULTICAST.into())),
            Family::V6 => self
                .ipv6
                .map(|r| (r.network.into(), r.subnet.into(), MULTICAST6.into())),
        }
    }

    /// flannel's rule list (`--ip-masq`, `--iptables-forward-rules`) for
    /// `family`, in order (empty for IPv6 on an IPv4-only node).
    pub fn list(&self, family: Family) -> Vec<Rule> {
        let Some((net, sub, multicast)) = self.nets(family) else {
            return vec![];
        };
        let masq = Verdict::Masquerade {
            random_fully: self.random_fully,
        };
        let r = |chain, matches: &[Match], verdict, why| Rule {
            chain,
            matches: matches.to_vec(),
            verdict,
            why,
        };
        let mut v = vec![];
        if self.masquerade {
            use Match::*;
            v.extend([
                r(
                    Chain::Masq,
                    &[KubeProxyMark],
                    Verdict::Return,
                    "kube-proxy masquerades what it marked",
                ),
                r(
                    Chain::Masq,
                    &[Src(sub), Dst(net)],
                    Verdict::Return,
                    "no NAT from this node's pods to pods",
                ),
                r(
                    Chain::Masq,
                    &[Src(net), Dst(sub)],
                    Verdict::Return,
                    "no NAT from pods to this node's pods",
                ),
                r(
                    Chain::Masq,
                    &[NotSrc(net), Dst(sub)],
                    Verdict::Return,
                    "no NAT from outside to this node's pods",
                ),
                r(
                    Chain::Masq,
                    &[Src(net), NotDst(multicast)],
                    masq,
                    "pods to outside the Network: masquerade (not multicast)",
                ),
                r(
                    Chain::Masq,
                    &[NotSrc(net), Dst(net)],
                    masq,
                    "outside to pods on other nodes: masquerade",
                ),
            ]);
        }
        if self.forward {
            v.extend([
                r(
                    Chain::Forward,
                    &[Match::Src(net)],
                    Verdict::Accept,
                    "forward from pods",
                ),
                r(
                    Chain::Forward,
                    &[Match::Dst(net)],
                    Verdict::Accept,
                    "forward to pods",
                ),
            ]);
        }
        v
    }

    /// A short hash of `family`'s wanted rule set: rules of another Network,
    /// subnet or option set carry another one.
    pub fn fingerprint(&self, family: Family) -> String {
        let mut text = String::new();
        for r in self.list(family) {
            let _ = writeln!(text, "{:?} {}", r.chain, nft_body(&r));
        }
        // FNV-1a, 32 bits.
        let mut h: u32 = 0x811c_9dc5;
        for b in text.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        format!("{h:08x}")
    }

    /// The comments `family`'s rules of `chain` carry, in order.
    pub fn comments(&self, family: Family, chain: Chain) -> Vec<String> {
        let fp = self.fingerprint(family);
        self.list(family)
            .iter()
            .enumerate()
            .filter(|(_, r)| r.chain == chain)
            .map(|(i, r)| comment(r.chain, &fp, i))
            .collect()
    }

    /// An `nft -f -` transaction that removes weft's table of `family` (and
    /// nothing else).
    pub fn nft_remove_script(family: Family) -> String {
        let f = family.nft();
        format!("add table {f} {NFT_TABLE}\ndelete table {f} {NFT_TABLE}\n")
    }

    /// An `nft -f -` transaction that replaces weft's table of `family`
    /// atomically with the wanted rules (or removes it when nothing is wanted).
    pub fn nft_script(&self, family: Family) -> String {
        let fp = self.fingerprint(family);
        let rules = self.list(family);
        let f = family.nft();
        let mut s = Rules::nft_remove_script(family);
        if rules.is_empty() {
            return s;
        }
        let _ = writeln!(s, "add table {f} {NFT_TABLE}");
        for (chain, name, head) in [
            (
                Chain::Masq,
                NFT_MASQ_CHAIN,
                "type nat hook postrouting priority srcnat; policy accept;",
            ),
            (
                Chain::Forward,
                NFT_FORWARD_CHAIN,
                "type filter hook forward priority filter; policy accept;",
            ),
        ] {
            if !rules.iter().any(|r| r.chain == chain) {
                continue;
            }
            let _ = writeln!(s, "add chain {f} {NFT_TABLE} {name} {{ {head} }}");
            for (i, r) in rules.iter().enumerate().filter(|(_, r)| r.chain == chain) {
                let _ = writeln!(
                    s,
                    "add rule {f} {NFT_TABLE} {name} {} comment \"{}\"",
                    nft_body(r),
                    comment(chain, &fp, i)
                );
            }
        }
        s
    }

    /// An `iptables-restore --noflush` script (`ip6tables-restore` for IPv6)
    /// that rewrites weft's chains with `family`'s wanted rules of `chains`,
    /// adding the jumps `state` lacks and dropping the duplicates it has; the
    /// chains of the others are removed.
    pub fn iptables_script(&self, family: Family, chains: &[Chain], state: &IptState) -> String {
        let fp = self.fingerprint(family);
        let rules = self.list(family);
        let mut s = String::new();
        for (chain, table, name, hook, jump_comment) in [
            (
                Chain::Masq,
                "nat",
                IPT_MASQ_CHAIN,
                "POSTROUTING",
                IPT_MASQ_JUMP_COMMENT,
            ),
            (
                Chain::Forward,
                "filter",
                IPT_FORWARD_CHAIN,
                "FORWARD",
                IPT_FORWARD_JUMP_COMMENT,
            ),
        ] {
            let wanted = chains.contains(&chain) && rules.iter().any(|r| r.chain == chain);
            let jumps = state.jumps(chain);
            let exists = state.chain_exists(chain);
            if !wanted && !exists && jumps == 0 {
                continue;
            }
            let _ = writeln!(s, "*{table}");
            let jump = format!("{hook} -m comment --comment \"{jump_comment}\" -j {name}");
            if wanted {
                let _ = writeln!(s, ":{name} - [0:0]");
                for (i, r) in rules.iter().enumerate().filter(|(_, r)| r.chain == chain) {
                    let _ = writeln!(
                        s,
                        "-A {name} {} -m comment --comment \"{}\" {}",
                        ipt_matches(r),
                        comment(chain, &fp, i),
                        ipt_verdict(r.verdict)
                    );
                }
                // One jump, first in the hook's chain, so a DROP after it
                // (Docker, ufw, firewalld) does not shadow weft's accepts.
                for _ in 1..jumps.max(1) {
                    let _ = writeln!(s, "-D {jump}");
                }
                if jumps == 0 {
                    let _ = writeln!(s, "-I {jump}");
                }
            } else {
                for _ in 0..jumps {
                    let _ = writeln!(s, "-D {jump}");
                }
                if exists {
                    let _ = writeln!(s, ":{name} - [0:0]\n-X {name}");
                }
            }
            let _ = writeln!(s, "COMMIT");
        }
        s
    }
}

fn comment(chain: Chain, fp: &str, i: usize) -> String {
    let role = match chain {
        Chain::Masq => "masq",
        Chain::Forward => "forward",
    };
    format!("weft {role} {fp}/{i}")
}

/// nft's address family keyword for a match on `n`.
fn nft_addr(n: &IpNet) -> &'static str {
    match n {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    }
}

/// A rule's body in nft syntax, without its comment.
pub fn nft_body(r: &Rule) -> String {
    let mut s = String::new();
    for m in &r.matches {
        let _ = match m {
            Match::KubeProxyMark => {
                write!(
                    s,
                    "meta mark & {KUBE_PROXY_MARK:#x} == {KUBE_PROXY_MARK:#x} "
                )
            }
            Match::Src(n) => write!(s, "{} saddr {n} ", nft_addr(n)),
            Match::NotSrc(n) => write!(s, "{} saddr != {n} ", nft_addr(n)),
            Match::Dst(n) => write!(s, "{} daddr {n} ", nft_addr(n)),
            Match::NotDst(n) => write!(s, "{} daddr != {n} ", nft_addr(n)),
        };
    }
    s.push_str(match r.verdict {
        Verdict::Return => "return",
        Verdict::Accept => "accept",
        Verdict::Masquerade { random_fully: true } => "masquerade fully-random",
        Verdict::Masquerade {
            random_fully: false,
        } => "masquerade",
    });
    s
}

fn ipt_matches(r: &Rule) -> String {
    let parts: Vec<String> = r
        .matches
        .iter()
        .map(|m| match m {
            Match::KubeProxyMark => {
                format!("-m mark --mark {KUBE_PROXY_MARK:#x}/{KUBE_PROXY_MARK:#x}")
            }
            Match::Src(n) => format!("-s {n}"),
            Match::NotSrc(n) => format!("! -s {n}"),
            Match::Dst(n) => format!("-d {n}"),
            Match::NotDst(n) => format!("! -d {n}"),
        })
        .collect();
    parts.join(" ")
}

fn ipt_verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Return => "-j RETURN",
        Verdict::Accept => "-j ACCEPT",
        Verdict::Masquerade { random_fully: true } => "-j MASQUERADE --random-fully",
        Verdict::Masquerade {
            random_fully: false,
        } => "-j MASQUERADE",
    }
}

/// Pulls the `comment "…"` strings out of `nft list table` output, per chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftState {
    pub table: bool,
    pub masq: Vec<String>,
    pub forward: Vec<String>,
}

impl NftState {
    /// Parses `nft list table ip weft` (or `ip6 weft`) output (empty text:
    /// no table).
    pub fn parse(listing: &str) -> NftState {
        let mut st = NftState::default();
        let mut chain: Option<Chain> = None;
        for line in listing.lines().map(str::trim) {
            if line.starts_with("table ip ") || line.starts_with("table ip6 ") {
                st.table = true;
            } else if let Some(rest) = line.strip_prefix("chain ") {
                let name = rest.trim_end_matches('{').trim();
                chain = match name {
                    NFT_MASQ_CHAIN => Some(Chain::Masq),
                    NFT_FORWARD_CHAIN => Some(Chain::Forward),
                    _ => None,
                };
            } else if let (Some(c), Some(com)) = (chain, quoted_after(line, "comment ")) {
                match c {
                    Chain::Masq => st.masq.push(com),
                    Chain::Forward => st.forward.push(com),
                }
            }
        }
        st
    }

    /// What differs from `want`'s rules of `family` (this listing being of
    /// `family`'s table), one line each (empty: in step).
    pub fn diff(&self, want: &Rules, family: Family) -> Vec<String> {
        let mut d = vec![];
        let f = family.nft();
        let any = !want.list(family).is_empty();
        if any && !self.table {
            d.push(format!("table {f} {NFT_TABLE} is missing"));
            return d;
        }
        if !any && self.table {
            d.push(format!("table {f} {NFT_TABLE} is not wanted"));
        }
        for (chain, name, have) in [
            (Chain::Masq, NFT_MASQ_CHAIN, &self.masq),
            (Chain::Forward, NFT_FORWARD_CHAIN, &self.forward),
        ] {
            let what = match family {
                Family::V4 => format!("chain {name}"),
                Family::V6 => format!("chain {f} {NFT_TABLE} {name}"),
            };
            diff_chain(&mut d, &what, have, &want.comments(family, chain));
        }
        d
    }
}

fn diff_chain(d: &mut Vec<String>, what: &str, have: &[String], want: &[String]) {
    if have != want {
        let missing = want.iter().filter(|w| !have.contains(w)).count();
        let extra = have.iter().filter(|h| !want.contains(h)).count();
        d.push(format!(
            "{what}: {} rules where {} are wanted ({missing} missing, {extra} not weft's current ones{})",
            have.len(),
            want.len(),
            if missing == 0 && extra == 0 {
                ", out of order"
            } else {
                ""
            }
        ));
    }
}

fn quoted_after(line: &str, key: &str) -> Option<String> {
    let at = line.rfind(key)? + key.len();
    let rest = line[at..].strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// What `iptables-save` shows of weft's chains, their jumps, and the FORWARD policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IptState {
    pub masq_chain: bool,
    pub forward_chain: bool,
    pub masq: Vec<String>,
    pub forward: Vec<String>,
    pub masq_jumps: usize,
    pub forward_jumps: usize,
    /// `filter FORWARD` drops what no rule accepts: policy DROP, or a rule
    /// that drops or rejects everything.
    pub forward_drops: bool,
}

impl IptState {
    /// Parses `iptables-save` (or `ip6tables-save`) output (of the nat and
    /// filter tables).
    pub fn parse(save: &str) -> IptState {
        let mut st = IptState::default();
        let mut table = "";
        for line in save.lines().map(str::trim) {
            if let Some(t) = line.strip_prefix('*') {
                table = if t == "nat" || t == "filter" { t } else { "" };
                continue;
            }
            match table {
                "nat" => {
                    if line.starts_with(&format!(":{IPT_MASQ_CHAIN} ")) {
                        st.masq_chain = true;
                    } else if line.starts_with(&format!("-A {IPT_MASQ_CHAIN} ")) {
                        st.masq.extend(quoted_after(line, "--comment "));
                    } else if line.starts_with("-A POSTROUTING ")
                        && line.ends_with(&format!("-j {IPT_MASQ_CHAIN}"))
                    {
                        st.masq_jumps += 1;
                    }
                }
                "filter" => {
                    if line.starts_with(&format!(":{IPT_FORWARD_CHAIN} ")) {
                        st.forward_chain = true;
                    } else if line.starts_with(&format!("-A {IPT_FORWARD_CHAIN} ")) {
                        st.forward.extend(quoted_after(line, "--comment "));
                    } else if line.starts_with("-A FORWARD ")
                        && line.ends_with(&format!("-j {IPT_FORWARD_CHAIN}"))
                    {
                        st.forward_jumps += 1;
                    } else if line.starts_with(":FORWARD DROP")
                        || line == "-A FORWARD -j DROP"
                        || line.starts_with("-A FORWARD -j REJECT")
                    {
                        st.forward_drops = true;
                    }
                }
                _ => {}
            }
        }
        st
    }

    pub fn jumps(&self, chain: Chain) -> usize {
        match chain {
            Chain::Masq => self.masq_jumps,
            Chain::Forward => self.forward_jumps,
        }
    }

    pub fn chain_exists(&self, chain: Chain) -> bool {
        match chain {
            Chain::Masq => self.masq_chain,
            Chain::Forward => self.forward_chain,
        }
    }

    /// An `iptables-restore --noflush` (or `ip6tables-restore`) script that
    /// removes weft's chains and their jumps (empty when there are none).
    pub fn remove_script(&self) -> String {
        let nothing = Rules {
            ipv4: None,
            masquerade: false,
            random_fully: false,
            forward: false,
            ipv6: None,
        };
        nothing.iptables_script(Family::V4, &[], self)
    }

    /// What differs from `want`'s rules of `family` and `chains` (weft's other
    /// chains should be absent), this being `family`'s tool's listing; one
    /// line each (empty: in step). IPv6 lines start with `ip6tables `.
    pub fn diff(&self, want: &Rules, family: Family, chains: &[Chain]) -> Vec<String> {
        let mut d = vec![];
        let tool = match family {
            Family::V4 => "",
            Family::V6 => "ip6tables ",
        };
        for (chain, name, hook, have) in [
            (Chain::Masq, IPT_MASQ_CHAIN, "nat POSTROUTING", &self.masq),
            (
                Chain::Forward,
                IPT_FORWARD_CHAIN,
                "filter FORWARD",
                &self.forward,
            ),
        ] {
            let wanted = want.comments(family, chain);
            let wanted = if chains.contains(&chain) {
                wanted
            } else {
                vec![]
            };
            let jumps = self.jumps(chain);
            if wanted.is_empty() {
                if self.chain_exists(chain) || jumps > 0 {
                    d.push(format!("{tool}chain {name} is not wanted"));
                }
                continue;
            }
            if !self.chain_exists(chain) {
                d.push(format!("{tool}chain {name} is missing"));
                continue;
            }
            diff_chain(&mut d, &format!("{tool}chain {name}"), have, &wanted);
            if jumps != 1 {
                d.push(format!("{tool}{hook} has {jumps} jumps to {name}, not 1"));
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(masquerade: bool, forward: bool) -> Rules {
        Rules {
            ipv4: Some(Rules4 {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.3.0/24".parse().unwrap(),
            }),
            masquerade,
            random_fully: true,
            forward,
            ipv6: None,
        }
    }

    #[test]
    fn flannel_rules_in_order() {
        let bodies: Vec<String> = rules(true, true)
            .list(Family::V4)
            .iter()
            .map(nft_body)
            .collect();
        assert_eq!(
            bodies,
            [
                "meta mark & 0x4000 == 0x4000 return",
                "ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
                "ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
                "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
                "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
                "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
                "ip saddr 10.244.0.0/16 accept",
                "ip daddr 10.244.0.0/16 accept",
            ]
        );
        let r = Rules {
            random_fully: false,
            ..rules(true, false)
        };
        assert!(nft_body(&r.list(Family::V4)[4]).ends_with("masquerade"));
        assert_eq!(r.list(Family::V4).len(), 6);
        assert_eq!(rules(false, true).list(Family::V4).len(), 2);
        assert!(rules(false, false).list(Family::V4).is_empty());
    }

    #[test]
    fn nft_script_replaces_the_table_atomically() {
        let r = rules(true, true);
        let s = r.nft_script(Family::V4);
        let fp = r.fingerprint(Family::V4);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "add table ip weft");
        assert_eq!(lines[1], "delete table ip weft");
        assert_eq!(lines[2], "add table ip weft");
        assert_eq!(
            lines[3],
            "add chain ip weft postrouting { type nat hook postrouting priority srcnat; policy accept; }"
        );
        assert_eq!(
            lines[4],
            format!(
                "add rule ip weft postrouting meta mark & 0x4000 == 0x4000 return comment \"weft masq {fp}/0\""
            )
        );
        assert!(s.contains(
            "add chain ip weft forward { type filter hook forward priority filter; policy accept; }"
        ));
        assert!(s.contains(&format!(
            "add rule ip weft forward ip daddr 10.244.0.0/16 accept comment \"weft forward {fp}/7\""
        )));
        assert_eq!(
            rules(false, false).nft_script(Family::V4),
            "add table ip weft\ndelete table ip weft\n"
        );
        assert!(
            !rules(false, true)
                .nft_script(Family::V4)
                .contains("postrouting")
        );
    }

    #[test]
    fn the_fingerprint_follows_network_subnet_and_options() {
        let a = rules(true, true);
        let a4 = a.ipv4.unwrap();
        let b = Rules {
            ipv4: Some(Rules4 {
                subnet: "10.244.4.0/24".parse().unwrap(),
                ..a4
            }),
            ..a
        };
        let c = Rules {
            ipv4: Some(Rules4 {
                network: "10.245.0.0/16".parse().unwrap(),
                ..a4
            }),
            ..a
        };
        let d = Rules {
            random_fully: false,
            ..a
        };
        let fps = [&a, &b, &c, &d].map(|r| r.fingerprint(Family::V4));
        for i in 0..4 {
            for j in 0..i {
                assert_ne!(fps[i], fps[j]);
            }
        }
        assert_eq!(
            a.fingerprint(Family::V4),
            rules(true, true).fingerprint(Family::V4)
        );
        // The value docs/pod-network.md shows for this Network and subnet.
        assert_eq!(a.fingerprint(Family::V4), "d1bdf61b");
    }

    // What `nft list table ip weft` printed for nft_script() on nftables 1.0.6.
    fn nft_listing(r: &Rules) -> String {
        let fp = r.fingerprint(Family::V4);
        format!(
            "table ip weft {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark & 0x00004000 == 0x00004000 return comment \"weft masq {fp}/0\"\n\
             \t\tip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return comment \"weft masq {fp}/1\"\n\
             \t\tip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return comment \"weft masq {fp}/2\"\n\
             \t\tip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return comment \"weft masq {fp}/3\"\n\
             \t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment \"weft masq {fp}/4\"\n\
             \t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment \"weft masq {fp}/5\"\n\
             \t}}\n\n\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip saddr 10.244.0.0/16 accept comment \"weft forward {fp}/6\"\n\
             \t\tip daddr 10.244.0.0/16 accept comment \"weft forward {fp}/7\"\n\t}}\n}}\n"
        )
    }

    #[test]
    fn nft_listing_in_step_flushed_or_stale() {
        let r = rules(true, true);
        let st = NftState::parse(&nft_listing(&r));
        assert!(st.table);
        assert_eq!(st.masq.len(), 6);
        assert!(
            st.diff(&r, Family::V4).is_empty(),
            "{:?}",
            st.diff(&r, Family::V4)
        );
        // Flushed by hand.
        let flushed = NftState::parse(
            "table ip weft {\n\tchain postrouting {\n\t}\n\tchain forward {\n\t}\n}\n",
        );
        let d = flushed.diff(&r, Family::V4);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].contains("0 rules where 6 are wanted (6 missing"),
            "{d:?}"
        );
        // Gone.
        assert_eq!(
            NftState::parse("").diff(&r, Family::V4),
            ["table ip weft is missing"]
        );
        // Left from another subnet.
        let other = Rules {
            ipv4: Some(Rules4 {
                subnet: "10.244.9.0/24".parse().unwrap(),
                ..r.ipv4.unwrap()
            }),
            ..r
        };
        let d = st.diff(&other, Family::V4);
        assert!(d[0].contains("6 not weft's current ones"), "{d:?}");
        // Nothing wanted, a table left.
        assert_eq!(st.diff(&rules(false, false), Family::V4).len(), 3);
        assert!(
            NftState::parse("")
                .diff(&rules(false, false), Family::V4)
                .is_empty()
        );
    }

    fn save(r: &Rules, masq_jumps: usize, policy: &str) -> String {
        let fp = r.fingerprint(Family::V4);
        let mut s = String::from(
            "# Generated by iptables-save v1.8.9\n*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:WEFT-POSTRTG - [0:0]\n",
        );
        for _ in 0..masq_jumps {
            s += "-A POSTROUTING -m comment --comment \"weft masq\" -j WEFT-POSTRTG\n";
        }
        s += &format!(
            "-A WEFT-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"weft masq {fp}/0\" -j RETURN\n"
        );
        for i in 1..6 {
            s += &format!(
                "-A WEFT-POSTRTG -s 10.244.0.0/16 -m comment --comment \"weft masq {fp}/{i}\" -j RETURN\n"
            );
        }
        s += &format!(
            "COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD {policy} [0:0]\n:WEFT-FWD - [0:0]\n-A FORWARD -m comment --comment \"weft forward\" -j WEFT-FWD\n\
             -A WEFT-FWD -s 10.244.0.0/16 -m comment --comment \"weft forward {fp}/6\" -j ACCEPT\n\
             -A WEFT-FWD -d 10.244.0.0/16 -m comment --comment \"weft forward {fp}/7\" -j ACCEPT\nCOMMIT\n"
        );
        s
    }

    #[test]
    fn iptables_save_in_step_duplicated_or_missing() {
        let r = rules(true, true);
        let both = [Chain::Masq, Chain::Forward];
        let st = IptState::parse(&save(&r, 1, "ACCEPT"));
        assert!(!st.forward_drops);
        assert_eq!((st.masq.len(), st.forward.len()), (6, 2));
        assert!(
            st.diff(&r, Family::V4, &both).is_empty(),
            "{:?}",
            st.diff(&r, Family::V4, &both)
        );
        assert!(IptState::parse(&save(&r, 1, "DROP")).forward_drops);
        let dup = IptState::parse(&save(&r, 2, "ACCEPT"));
        assert_eq!(
            dup.diff(&r, Family::V4, &both),
            ["nat POSTROUTING has 2 jumps to WEFT-POSTRTG, not 1"]
        );
        // The restore script deletes the duplicate and rewrites the chain.
        let s = r.iptables_script(Family::V4, &both, &dup);
        assert_eq!(
            s.matches("-D POSTROUTING -m comment --comment \"weft masq\" -j WEFT-POSTRTG")
                .count(),
            1
        );
        assert!(!s.contains("-I POSTROUTING"));
        assert!(s.contains(":WEFT-POSTRTG - [0:0]\n-A WEFT-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"weft masq "));
        assert!(s.contains("-A WEFT-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment"));
        assert!(s.contains("-j MASQUERADE --random-fully\n"));
        // Nothing there yet: chains and jumps first in their hooks.
        let fresh = r.iptables_script(Family::V4, &both, &IptState::default());
        assert!(
            fresh.contains("-I POSTROUTING -m comment --comment \"weft masq\" -j WEFT-POSTRTG\n")
        );
        assert!(fresh.contains("*filter\n:WEFT-FWD - [0:0]\n"));
        assert!(
            fresh
                .contains("-I FORWARD -m comment --comment \"weft forward\" -j WEFT-FWD\nCOMMIT\n")
        );
        let d = IptState::default().diff(&r, Family::V4, &both);
        assert_eq!(
            d,
            ["chain WEFT-POSTRTG is missing", "chain WEFT-FWD is missing"]
        );
        // Only forward wanted: the masquerade chain and its jump are removed.
        let s = r.iptables_script(Family::V4, &[Chain::Forward], &st);
        assert!(s.contains("*nat\n-D POSTROUTING -m comment --comment \"weft masq\" -j WEFT-POSTRTG\n:WEFT-POSTRTG - [0:0]\n-X WEFT-POSTRTG\nCOMMIT\n"), "{s}");
        assert_eq!(
            st.diff(&r, Family::V4, &[Chain::Forward]),
            ["chain WEFT-POSTRTG is not wanted"]
        );
        assert!(
            r.iptables_script(Family::V4, &[], &IptState::default())
                .is_empty()
        );
        // Uninstall: every chain and jump of weft's, nothing else.
        let rm = st.remove_script();
        assert!(rm.contains("-D POSTROUTING -m comment --comment \"weft masq\" -j WEFT-POSTRTG\n:WEFT-POSTRTG - [0:0]\n-X WEFT-POSTRTG"), "{rm}");
        assert!(rm.contains("-D FORWARD -m comment --comment \"weft forward\" -j WEFT-FWD\n:WEFT-FWD - [0:0]\n-X WEFT-FWD"), "{rm}");
        assert!(IptState::default().remove_script().is_empty());
    }

    fn dual(masquerade: bool, forward: bool) -> Rules {
        Rules {
            ipv6: Some(Rules6 {
                network: "fd00:10:244::/56".parse().unwrap(),
                subnet: "fd00:10:244:3::/64".parse().unwrap(),
            }),
            ..rules(masquerade, forward)
        }
    }

    // What main's nft_script() and iptables_script() wrote before IPv6 existed.
    const IPV4_NFT: &str = "add table ip weft\ndelete table ip weft\nadd table ip weft\n\
        add chain ip weft postrouting { type nat hook postrouting priority srcnat; policy accept; }\n\
        add rule ip weft postrouting meta mark & 0x4000 == 0x4000 return comment \"weft masq d1bdf61b/0\"\n\
        add rule ip weft postrouting ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return comment \"weft masq d1bdf61b/1\"\n\
        add rule ip weft postrouting ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return comment \"weft masq d1bdf61b/2\"\n\
        add rule ip weft postrouting ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return comment \"weft masq d1bdf61b/3\"\n\
        add rule ip weft postrouting ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment \"weft masq d1bdf61b/4\"\n\
        add rule ip weft postrouting ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment \"weft masq d1bdf61b/5\"\n\
        add chain ip weft forward { type filter hook forward priority filter; policy accept; }\n\
        add rule ip weft forward ip saddr 10.244.0.0/16 accept comment \"weft forward d1bdf61b/6\"\n\
        add rule ip weft forward ip daddr 10.244.0.0/16 accept comment \"weft forward d1bdf61b/7\"\n";
    const IPV4_IPT: &str = "*nat\n:WEFT-POSTRTG - [0:0]\n\
        -A WEFT-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"weft masq d1bdf61b/0\" -j RETURN\n\
        -A WEFT-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16 -m comment --comment \"weft masq d1bdf61b/1\" -j RETURN\n\
        -A WEFT-POSTRTG -s 10.244.0.0/16 -d 10.244.3.0/24 -m comment --comment \"weft masq d1bdf61b/2\" -j RETURN\n\
        -A WEFT-POSTRTG ! -s 10.244.0.0/16 -d 10.244.3.0/24 -m comment --comment \"weft masq d1bdf61b/3\" -j RETURN\n\
        -A WEFT-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"weft masq d1bdf61b/4\" -j MASQUERADE --random-fully\n\
        -A WEFT-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"weft masq d1bdf61b/5\" -j MASQUERADE --random-fully\n\
        -I POSTROUTING -m comment --comment \"weft masq\" -j WEFT-POSTRTG\nCOMMIT\n\
        *filter\n:WEFT-FWD - [0:0]\n\
        -A WEFT-FWD -s 10.244.0.0/16 -m comment --comment \"weft forward d1bdf61b/6\" -j ACCEPT\n\
        -A WEFT-FWD -d 10.244.0.0/16 -m comment --comment \"weft forward d1bdf61b/7\" -j ACCEPT\n\
        -I FORWARD -m comment --comment \"weft forward\" -j WEFT-FWD\nCOMMIT\n";

    #[test]
    fn ipv4_rules_are_the_same_with_or_without_ipv6() {
        let both = [Chain::Masq, Chain::Forward];
        let fresh = IptState::default();
        for r in [rules(true, true), dual(true, true)] {
            assert_eq!(r.nft_script(Family::V4), IPV4_NFT);
            assert_eq!(r.iptables_script(Family::V4, &both, &fresh), IPV4_IPT);
            assert_eq!(r.fingerprint(Family::V4), "d1bdf61b");
        }
        for (m, f) in [(true, false), (false, true), (false, false)] {
            let (a, b) = (rules(m, f), dual(m, f));
            assert_eq!(a.nft_script(Family::V4), b.nft_script(Family::V4));
            assert_eq!(
                a.iptables_script(Family::V4, &both, &fresh),
                b.iptables_script(Family::V4, &both, &fresh)
            );
        }
        // IPv4 only: no IPv6 rules, table or chains.
        let v4 = rules(true, true);
        assert_eq!(v4.families(), [Family::V4]);
        assert!(v4.list(Family::V6).is_empty());
        assert!(v4.comments(Family::V6, Chain::Masq).is_empty());
        assert_eq!(dual(true, true).families(), [Family::V4, Family::V6]);
    }

    #[test]
    fn ipv6_nft_script() {
        let r = dual(true, true);
        assert_eq!(r.fingerprint(Family::V6), "86702de7");
        assert_eq!(
            r.nft_script(Family::V6),
            "add table ip6 weft\ndelete table ip6 weft\nadd table ip6 weft\n\
             add chain ip6 weft postrouting { type nat hook postrouting priority srcnat; policy accept; }\n\
             add rule ip6 weft postrouting meta mark & 0x4000 == 0x4000 return comment \"weft masq 86702de7/0\"\n\
             add rule ip6 weft postrouting ip6 saddr fd00:10:244:3::/64 ip6 daddr fd00:10:244::/56 return comment \"weft masq 86702de7/1\"\n\
             add rule ip6 weft postrouting ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return comment \"weft masq 86702de7/2\"\n\
             add rule ip6 weft postrouting ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return comment \"weft masq 86702de7/3\"\n\
             add rule ip6 weft postrouting ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random comment \"weft masq 86702de7/4\"\n\
             add rule ip6 weft postrouting ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random comment \"weft masq 86702de7/5\"\n\
             add chain ip6 weft forward { type filter hook forward priority filter; policy accept; }\n\
             add rule ip6 weft forward ip6 saddr fd00:10:244::/56 accept comment \"weft forward 86702de7/6\"\n\
             add rule ip6 weft forward ip6 daddr fd00:10:244::/56 accept comment \"weft forward 86702de7/7\"\n"
        );
        // Without --random-fully, and forward rules only.
        let r = Rules {
            random_fully: false,
            ..dual(true, false)
        };
        let s = r.nft_script(Family::V6);
        assert!(
            s.contains("ip6 daddr != ff00::/8 masquerade comment"),
            "{s}"
        );
        assert!(!s.contains("fully-random") && !s.contains("chain ip6 weft forward"));
        let s = dual(false, true).nft_script(Family::V6);
        assert!(!s.contains("postrouting") && s.contains("ip6 daddr fd00:10:244::/56 accept"));
        // Nothing wanted, or IPv6 off: the table goes.
        let gone = "add table ip6 weft\ndelete table ip6 weft\n";
        assert_eq!(dual(false, false).nft_script(Family::V6), gone);
        assert_eq!(rules(true, true).nft_script(Family::V6), gone);
        assert_eq!(Rules::nft_remove_script(Family::V6), gone);
    }

    #[test]
    fn ipv6_iptables_script() {
        let r = dual(true, true);
        let both = [Chain::Masq, Chain::Forward];
        assert_eq!(
            r.iptables_script(Family::V6, &both, &IptState::default()),
            "*nat\n:WEFT-POSTRTG - [0:0]\n\
             -A WEFT-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"weft masq 86702de7/0\" -j RETURN\n\
             -A WEFT-POSTRTG -s fd00:10:244:3::/64 -d fd00:10:244::/56 -m comment --comment \"weft masq 86702de7/1\" -j RETURN\n\
             -A WEFT-POSTRTG -s fd00:10:244::/56 -d fd00:10:244:3::/64 -m comment --comment \"weft masq 86702de7/2\" -j RETURN\n\
             -A WEFT-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244:3::/64 -m comment --comment \"weft masq 86702de7/3\" -j RETURN\n\
             -A WEFT-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment \"weft masq 86702de7/4\" -j MASQUERADE --random-fully\n\
             -A WEFT-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244::/56 -m comment --comment \"weft masq 86702de7/5\" -j MASQUERADE --random-fully\n\
             -I POSTROUTING -m comment --comment \"weft masq\" -j WEFT-POSTRTG\nCOMMIT\n\
             *filter\n:WEFT-FWD - [0:0]\n\
             -A WEFT-FWD -s fd00:10:244::/56 -m comment --comment \"weft forward 86702de7/6\" -j ACCEPT\n\
             -A WEFT-FWD -d fd00:10:244::/56 -m comment --comment \"weft forward 86702de7/7\" -j ACCEPT\n\
             -I FORWARD -m comment --comment \"weft forward\" -j WEFT-FWD\nCOMMIT\n"
        );
        // IPv6 off: chains a dual-stack run left in ip6tables are removed.
        let left = IptState::parse(&ip6tables_save(&r, 1, "ACCEPT"));
        assert_eq!(
            rules(true, true).iptables_script(Family::V6, &both, &left),
            left.remove_script()
        );
        assert!(left.remove_script().contains("-X WEFT-POSTRTG"));
    }

    // What `nft list table ip6 weft` printed for dual(true, true)'s
    // nft_script(Family::V6) on nftables 1.0.6.
    const IPV6_LISTING: &str = "table ip6 weft {\n\tchain postrouting {\n\
        \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
        \t\tmeta mark & 0x00004000 == 0x00004000 return comment \"weft masq 86702de7/0\"\n\
        \t\tip6 saddr fd00:10:244:3::/64 ip6 daddr fd00:10:244::/56 return comment \"weft masq 86702de7/1\"\n\
        \t\tip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return comment \"weft masq 86702de7/2\"\n\
        \t\tip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return comment \"weft masq 86702de7/3\"\n\
        \t\tip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random comment \"weft masq 86702de7/4\"\n\
        \t\tip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random comment \"weft masq 86702de7/5\"\n\
        \t}\n\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\
        \t\tip6 saddr fd00:10:244::/56 accept comment \"weft forward 86702de7/6\"\n\
        \t\tip6 daddr fd00:10:244::/56 accept comment \"weft forward 86702de7/7\"\n\t}\n}\n";

    #[test]
    fn ipv6_nft_listing_in_step_missing_edited_or_foreign() {
        let r = dual(true, true);
        let st = NftState::parse(IPV6_LISTING);
        assert!(st.table);
        assert_eq!((st.masq.len(), st.forward.len()), (6, 2));
        assert!(
            st.diff(&r, Family::V6).is_empty(),
            "{:?}",
            st.diff(&r, Family::V6)
        );
        // The IPv6 listing is not what the IPv4 table should hold.
        assert!(!st.diff(&r, Family::V4).is_empty());
        // A rule deleted by hand.
        let missing = NftState::parse(&IPV6_LISTING.replace(
            "\t\tip6 daddr fd00:10:244::/56 accept comment \"weft forward 86702de7/7\"\n",
            "",
        ));
        assert_eq!(
            missing.diff(&r, Family::V6),
            [
                "chain ip6 weft forward: 1 rules where 2 are wanted (1 missing, 0 not weft's current ones)"
            ]
        );
        // A rule replaced by one of another rule set (another subnet's).
        let edited = NftState::parse(&IPV6_LISTING.replace("86702de7/1\"", "0badf00d/1\""));
        assert_eq!(
            edited.diff(&r, Family::V6),
            [
                "chain ip6 weft postrouting: 6 rules where 6 are wanted (1 missing, 1 not weft's current ones)"
            ]
        );
        // Someone else's rule in weft's chain.
        let foreign = NftState::parse(&IPV6_LISTING.replace(
            "\t}\n\n\tchain forward",
            "\t\tip6 saddr ::/0 masquerade comment \"someone else\"\n\t}\n\n\tchain forward",
        ));
        assert_eq!(
            foreign.diff(&r, Family::V6),
            [
                "chain ip6 weft postrouting: 7 rules where 6 are wanted (0 missing, 1 not weft's current ones)"
            ]
        );
        // Reordered.
        let swapped = NftState::parse(
            &IPV6_LISTING
                .replace("86702de7/6\"", "SWAP\"")
                .replace("86702de7/7\"", "86702de7/6\"")
                .replace("SWAP\"", "86702de7/7\""),
        );
        assert!(swapped.diff(&r, Family::V6)[0].ends_with(", out of order)"));
        // Gone; or left after IPv6 was turned off.
        assert_eq!(
            NftState::parse("").diff(&r, Family::V6),
            ["table ip6 weft is missing"]
        );
        let d = st.diff(&rules(true, true), Family::V6);
        assert_eq!(d[0], "table ip6 weft is not wanted");
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(
            NftState::parse("")
                .diff(&rules(true, true), Family::V6)
                .is_empty()
        );
    }

    // What `ip6tables-save` (v1.8.9, nf_tables) printed for dual(true, true)'s
    // iptables_script(Family::V6, ..) with `masq_jumps` jumps to WEFT-POSTRTG.
    fn ip6tables_save(r: &Rules, masq_jumps: usize, policy: &str) -> String {
        let fp = r.fingerprint(Family::V6);
        let mut s = format!(
            "# Generated by ip6tables-save v1.8.9 (nf_tables)\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD {policy} [0:0]\n\
             :OUTPUT ACCEPT [0:0]\n:WEFT-FWD - [0:0]\n-A FORWARD -m comment --comment \"weft forward\" -j WEFT-FWD\n\
             -A WEFT-FWD -s fd00:10:244::/56 -m comment --comment \"weft forward {fp}/6\" -j ACCEPT\n\
             -A WEFT-FWD -d fd00:10:244::/56 -m comment --comment \"weft forward {fp}/7\" -j ACCEPT\nCOMMIT\n\
             *nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
             :WEFT-POSTRTG - [0:0]\n"
        );
        for _ in 0..masq_jumps {
            s += "-A POSTROUTING -m comment --comment \"weft masq\" -j WEFT-POSTRTG\n";
        }
        s += &format!(
            "-A WEFT-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"weft masq {fp}/0\" -j RETURN\n\
             -A WEFT-POSTRTG -s fd00:10:244:3::/64 -d fd00:10:244::/56 -m comment --comment \"weft masq {fp}/1\" -j RETURN\n\
             -A WEFT-POSTRTG -s fd00:10:244::/56 -d fd00:10:244:3::/64 -m comment --comment \"weft masq {fp}/2\" -j RETURN\n\
             -A WEFT-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244:3::/64 -m comment --comment \"weft masq {fp}/3\" -j RETURN\n\
             -A WEFT-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment \"weft masq {fp}/4\" -j MASQUERADE --random-fully\n\
             -A WEFT-POSTRTG ! -s fd00:10:244::/56 -d fd00:10:244::/56 -m comment --comment \"weft masq {fp}/5\" -j MASQUERADE --random-fully\n\
             COMMIT\n"
        );
        s
    }

    #[test]
    fn ip6tables_save_in_step_missing_edited_or_foreign() {
        let r = dual(true, true);
        let both = [Chain::Masq, Chain::Forward];
        let save = ip6tables_save(&r, 1, "ACCEPT");
        let st = IptState::parse(&save);
        assert_eq!((st.masq.len(), st.forward.len()), (6, 2));
        assert!(!st.forward_drops);
        assert!(
            st.diff(&r, Family::V6, &both).is_empty(),
            "{:?}",
            st.diff(&r, Family::V6, &both)
        );
        assert!(IptState::parse(&ip6tables_save(&r, 1, "DROP")).forward_drops);
        // A rule deleted by hand.
        let missing = IptState::parse(&save.replace(
            "-A WEFT-FWD -d fd00:10:244::/56 -m comment --comment \"weft forward 86702de7/7\" -j ACCEPT\n",
            "",
        ));
        assert_eq!(
            missing.diff(&r, Family::V6, &both),
            [
                "ip6tables chain WEFT-FWD: 1 rules where 2 are wanted (1 missing, 0 not weft's current ones)"
            ]
        );
        // A rule of another rule set.
        let edited = IptState::parse(&save.replace("86702de7/4\"", "0badf00d/4\""));
        assert_eq!(
            edited.diff(&r, Family::V6, &both),
            [
                "ip6tables chain WEFT-POSTRTG: 6 rules where 6 are wanted (1 missing, 1 not weft's current ones)"
            ]
        );
        // Someone else's rule in weft's chain.
        let foreign = IptState::parse(&save.replace(
            "COMMIT\n*nat",
            "-A WEFT-FWD -j ACCEPT -m comment --comment \"someone else\"\nCOMMIT\n*nat",
        ));
        assert_eq!(
            foreign.diff(&r, Family::V6, &both),
            [
                "ip6tables chain WEFT-FWD: 3 rules where 2 are wanted (0 missing, 1 not weft's current ones)"
            ]
        );
        // A second jump; a chain gone.
        let dup = IptState::parse(&ip6tables_save(&r, 2, "ACCEPT"));
        assert_eq!(
            dup.diff(&r, Family::V6, &both),
            ["ip6tables nat POSTROUTING has 2 jumps to WEFT-POSTRTG, not 1"]
        );
        let s = r.iptables_script(Family::V6, &both, &dup);
        assert_eq!(s.matches("-D POSTROUTING").count(), 1, "{s}");
        assert_eq!(
            IptState::default().diff(&r, Family::V6, &both),
            [
                "ip6tables chain WEFT-POSTRTG is missing",
                "ip6tables chain WEFT-FWD is missing"
            ]
        );
        // IPv6 turned off: the chains a dual-stack run left are not wanted.
        assert_eq!(
            st.diff(&rules(true, true), Family::V6, &both),
            [
                "ip6tables chain WEFT-POSTRTG is not wanted",
                "ip6tables chain WEFT-FWD is not wanted"
            ]
        );
    }
}
