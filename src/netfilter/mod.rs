//! The node's packet-filter rules, in the node's own network namespace:
//! masquerade for pods' traffic that leaves the pod Network (flannel's
//! `--ip-masq`) and FORWARD accepts for the Network (`--iptables-forward-rules`).
//!
//! [`plan`] says what is wanted (no I/O); this module runs the tools the
//! Kubernetes ecosystem drives for it: `nft -f` transactions in weft's own
//! table `ip weft` (as kube-proxy's nftables mode does in its own), or
//! `iptables-restore --noflush` on weft's own chains. Nothing else of the
//! host's, kube-proxy's or Docker's rules is touched, except one jump into
//! weft's chain from `POSTROUTING` / `FORWARD` in iptables mode.
//!
//! nftables cannot override another table's drop: an `accept` in `ip weft`
//! ends only weft's chain, and a packet still meets the FORWARD policy DROP
//! that Docker, ufw or firewalld set through iptables. So in nftables mode,
//! when iptables' FORWARD drops, the forward accepts also go into an iptables
//! chain `WEFT-FWD`, jumped to first from FORWARD.
//!
//! On a dual-stack node the IPv6 rules go the same way through table
//! `ip6 weft` or `ip6tables-restore`, after the IPv4 ones and apart from them:
//! an IPv4-only node runs exactly the IPv4 commands (and, once at start,
//! removes IPv6 rules a dual-stack run left, as flannel does).

pub mod plan;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

pub use plan::{Chain, Family, IptState, NftState, Rules, Rules4, Rules6};

/// Which tool holds weft's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        })
    }
}

/// The flags that govern the rules (flannel's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `--ip-masq`.
    pub masquerade: bool,
    /// Not `--ip-masq-fully-random-disable`.
    pub random_fully: bool,
    /// `--iptables-forward-rules`.
    pub forward: bool,
    /// `--iptables-resync`: how often the rules are checked and restored.
    pub resync: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            masquerade: false,
            random_fully: true,
            forward: true,
            resync: Duration::from_secs(5),
        }
    }
}

/// Why the rules could not be installed, checked or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error(
        "neither nft nor iptables works here ({nft}; {iptables}), so {what} cannot be installed. Install nftables (apt-get install nftables) or iptables, or run where CAP_NET_ADMIN covers this network namespace"
    )]
    NoTool {
        what: &'static str,
        nft: String,
        iptables: String,
    },
    #[error(
        "net-conf.json asks for {backend} (EnableNFTables: {}) but it does not work here: {why}. Install it{}",
        *.backend == Backend::Nftables,
        if *.backend == Backend::Nftables { " (apt-get install nftables), or set EnableNFTables to false to use iptables" } else { " (apt-get install iptables), or set EnableNFTables to true to use nftables" }
    )]
    Unusable { backend: Backend, why: String },
    #[error("`{cmd}` failed: {why}")]
    Tool { cmd: String, why: String },
    /// The IPv4 rules are in place but the IPv6 ones cannot be: the tool or
    /// the kernel's IPv6 netfilter support is missing.
    #[error(
        "the IPv6 pod network's rules cannot be installed in {place}: `{cmd}` failed: {why}. {}",
        ipv6_fix(.place)
    )]
    Ipv6 {
        /// `nftables table ip6 weft`, or `ip6tables`.
        place: String,
        cmd: String,
        why: String,
    },
}

fn ipv6_fix(place: &str) -> &'static str {
    if place.starts_with("nftables") {
        "This kernel's nf_tables needs IPv6 NAT (CONFIG_NF_TABLES_IPV6, modprobe nft_chain_nat nft_masq nf_nat); load it, or set EnableIPv6 to false"
    } else {
        "Install ip6tables (apt-get install iptables ships ip6tables-restore and ip6tables-save) and its kernel tables (modprobe ip6table_nat ip6table_filter), or set EnableIPv6 to false"
    }
}

impl NetfilterError {
    /// A failure of `family`'s tool, typed as IPv6's where it is one.
    fn in_family(self, family: Family, place: &str) -> NetfilterError {
        match (family, self) {
            (Family::V6, NetfilterError::Tool { cmd, why }) => NetfilterError::Ipv6 {
                place: place.to_string(),
                cmd,
                why,
            },
            (_, e) => e,
        }
    }
}

/// Runs `program args`, feeding `stdin`; returns stdout, or why it failed.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetfilterError> {
    let cmd = format!("{program} {}", args.join(" "));
    let fail = |why: String| NetfilterError::Tool {
        cmd: cmd.clone(),
        why,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| fail(format!("writing its input: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for it: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        Err(fail(if err.is_empty() {
            format!("{}", out.status)
        } else {
            err.lines().take(4).collect::<Vec<_>>().join(" / ")
        }))
    }
}

fn nft_works() -> Result<(), String> {
    run("nft", &["list", "tables"], None)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn iptables_works() -> Result<(), String> {
    run("iptables-save", &["-t", "filter"], None)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The backend, chosen as flannel chooses: net-conf.json's `EnableNFTables`
/// when it is set; otherwise nftables where `nft` works, else iptables. The
/// second value says why, for the log.
///
/// # Errors
/// [`NetfilterError::Unusable`] when the configured one does not work,
/// [`NetfilterError::NoTool`] when neither does.
pub fn choose(
    enable_nftables: Option<bool>,
    what: &'static str,
) -> Result<(Backend, &'static str), NetfilterError> {
    match enable_nftables {
        Some(true) => nft_works()
            .map(|()| (Backend::Nftables, "net-conf.json sets EnableNFTables"))
            .map_err(|why| NetfilterError::Unusable {
                backend: Backend::Nftables,
                why,
            }),
        Some(false) => iptables_works()
            .map(|()| {
                (
                    Backend::Iptables,
                    "net-conf.json sets EnableNFTables to false",
                )
            })
            .map_err(|why| NetfilterError::Unusable {
                backend: Backend::Iptables,
                why,
            }),
        None => match nft_works() {
            Ok(()) => Ok((Backend::Nftables, "nft works here")),
            Err(nft) => match iptables_works() {
                Ok(()) => Ok((Backend::Iptables, "nft does not work here")),
                Err(iptables) => Err(NetfilterError::NoTool {
                    what,
                    nft,
                    iptables,
                }),
            },
        },
    }
}

/// weft's rules on this node, kept in step with [`Rules`].
#[derive(Debug)]
pub struct Netfilter {
    pub backend: Backend,
    pub rules: Rules,
    /// Whether the last apply put the forward accepts into iptables too
    /// (nftables mode on a host whose iptables FORWARD drops).
    iptables_forward: bool,
    /// The same for ip6tables.
    ip6tables_forward: bool,
}

/// What [`Netfilter::apply`] did, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// What was found out of step (empty on a fresh install).
    pub repaired: Vec<String>,
    /// nftables mode: iptables' FORWARD drops, so WEFT-FWD was added there
    /// (set when this apply added it, not when it was there already).
    pub iptables_forward: bool,
    /// The same for ip6tables' FORWARD and the IPv6 Network.
    pub ip6tables_forward: bool,
    /// `--random-fully` was refused by the kernel or tool and left out.
    pub random_fully_refused: bool,
}

impl Netfilter {
    pub fn new(backend: Backend, rules: Rules) -> Netfilter {
        Netfilter {
            backend,
            rules,
            iptables_forward: false,
            ip6tables_forward: false,
        }
    }

    /// The iptables chains wanted in this mode, given iptables' state.
    fn ipt_chains(&self, ipt: &IptState) -> Vec<Chain> {
        match self.backend {
            Backend::Iptables => vec![Chain::Masq, Chain::Forward],
            Backend::Nftables if self.rules.forward && ipt.forward_drops => vec![Chain::Forward],
            Backend::Nftables => vec![],
        }
    }

    /// What `state` shows out of step with the wanted rules (empty: all in place).
    fn diff(&self, state: &State) -> Vec<String> {
        let mut d = self.diff_family(Family::V4, &state.v4);
        if let Some(v6) = &state.v6 {
            d.extend(self.diff_family(Family::V6, v6));
        }
        d
    }

    fn diff_family(&self, family: Family, state: &FamilyState) -> Vec<String> {
        let mut d = vec![];
        let wanted = !self.rules.list(family).is_empty();
        match self.backend {
            Backend::Nftables => {
                d.extend(state.nft.diff(&self.rules, family));
                if let Ok(ipt) = &state.ipt {
                    d.extend(ipt.diff(&self.rules, family, &self.ipt_chains(ipt)));
                }
            }
            Backend::Iptables => {
                match &state.ipt {
                    Ok(ipt) => d.extend(ipt.diff(&self.rules, family, &self.ipt_chains(ipt))),
                    Err(_) if family == Family::V4 => d.push("iptables-save failed".into()),
                    Err(why) if wanted => d.push(format!("ip6tables-save failed: {why}")),
                    // No ip6tables: nothing of weft's can be there.
                    Err(_) => {}
                }
                if state.nft.table {
                    d.push(format!(
                        "nftables table {} {} is left from nftables mode",
                        family.nft(),
                        plan::NFT_TABLE
                    ));
                }
            }
        }
        d
    }

    /// What is out of step with the wanted rules now (empty: all in place).
    pub fn check(&self) -> Vec<String> {
        self.diff(&State::read(self.rules.ipv6.is_some()))
    }

    /// Installs the wanted rules, replacing weft's own (never duplicating
    /// them), and removes what the other backend left, and the IPv6 rules
    /// a dual-stack run left on a node now IPv4-only.
    ///
    /// # Errors
    /// [`NetfilterError::Tool`] with the command and its error output;
    /// [`NetfilterError::Ipv6`] when only the IPv6 rules failed.
    pub fn apply(&mut self) -> Result<Applied, NetfilterError> {
        let state = State::read(true);
        let repaired = self.diff(&state);
        self.apply_on(&state, repaired)
    }

    /// Checks the rules and restores them when they are out of step; returns
    /// what was wrong (None: all was in place). One listing of each tool
    /// (of each family on a dual-stack node).
    ///
    /// # Errors
    /// As [`Netfilter::apply`].
    pub fn resync(&mut self) -> Result<Option<Applied>, NetfilterError> {
        let state = State::read(self.rules.ipv6.is_some());
        let repaired = self.diff(&state);
        if repaired.is_empty() {
            return Ok(None);
        }
        self.apply_on(&state, repaired).map(Some)
    }

    fn apply_on(
        &mut self,
        state: &State,
        repaired: Vec<String>,
    ) -> Result<Applied, NetfilterError> {
        let mut applied = Applied {
            repaired,
            ..Applied::default()
        };
        let had = (self.iptables_forward, self.ip6tables_forward);
        let mut families = vec![(Family::V4, &state.v4)];
        families.extend(state.v6.as_ref().map(|v6| (Family::V6, v6)));
        // IPv4 first, then IPv6, each on its own: a family's change is atomic,
        // so a failed one left its `state` as it was for the retry.
        for (family, st) in families {
            match self.install_family(family, st) {
                Err(e) if self.rules.random_fully && self.rules.masquerade => {
                    self.rules.random_fully = false;
                    if self.install_family(family, st).is_err() {
                        // Not --random-fully's fault (an IPv6 table or tool
                        // missing, say): keep asking for it.
                        self.rules.random_fully = true;
                        return Err(e);
                    }
                    applied.random_fully_refused = true;
                }
                r => r?,
            }
        }
        applied.iptables_forward = self.iptables_forward && !had.0;
        applied.ip6tables_forward = self.ip6tables_forward && !had.1;
        Ok(applied)
    }

    fn install_family(
        &mut self,
        family: Family,
        state: &FamilyState,
    ) -> Result<(), NetfilterError> {
        let wanted = !self.rules.list(family).is_empty();
        let table = format!("nftables table {} {}", family.nft(), plan::NFT_TABLE);
        // IPv4's script also removes the table when nothing is wanted; IPv6's
        // runs only when wanted, so an IPv4-only node needs no ip6 nftables.
        if self.backend == Backend::Nftables && (family == Family::V4 || wanted) {
            run("nft", &["-f", "-"], Some(&self.rules.nft_script(family)))
                .map_err(|e| e.in_family(family, &table))?;
        } else if state.nft.table {
            run("nft", &["-f", "-"], Some(&Rules::nft_remove_script(family)))
                .map_err(|e| e.in_family(family, &table))?;
        }
        let ipt = match &state.ipt {
            Ok(ipt) => ipt,
            // No iptables: nothing of weft's can be there to replace or remove.
            Err(why) => {
                self.set_iptables_forward(family, false);
                return match (self.backend, family) {
                    (Backend::Iptables, Family::V4) => Err(NetfilterError::Tool {
                        cmd: "iptables-save".into(),
                        why: "failed".into(),
                    }),
                    (Backend::Iptables, Family::V6) if wanted => Err(NetfilterError::Ipv6 {
                        place: "ip6tables".into(),
                        cmd: "ip6tables-save".into(),
                        why: why.clone(),
                    }),
                    _ => Ok(()),
                };
            }
        };
        let chains = self.ipt_chains(ipt);
        let script = self.rules.iptables_script(family, &chains, ipt);
        let list = self.rules.list(family);
        let added = self.backend == Backend::Nftables
            && chains.iter().any(|c| list.iter().any(|r| r.chain == *c));
        self.set_iptables_forward(family, added);
        if !script.is_empty() {
            run(
                family.iptables_restore(),
                &["-w", "5", "--noflush"],
                Some(&script),
            )
            .map_err(|e| e.in_family(family, family.iptables()))?;
        }
        Ok(())
    }

    fn set_iptables_forward(&mut self, family: Family, on: bool) {
        match family {
            Family::V4 => self.iptables_forward = on,
            Family::V6 => self.ip6tables_forward = on,
        }
    }
}

/// What one family's tools show of weft's rules now: one `nft list table`
/// and one `iptables-save` (its error where that does not work).
struct FamilyState {
    nft: NftState,
    ipt: Result<IptState, String>,
}

impl FamilyState {
    fn read(family: Family) -> FamilyState {
        FamilyState {
            // A missing table makes `nft list` fail: that is the empty state.
            nft: NftState::parse(
                &run(
                    "nft",
                    &["list", "table", family.nft(), plan::NFT_TABLE],
                    None,
                )
                .unwrap_or_default(),
            ),
            ipt: run(family.iptables_save(), &[], None)
                .map(|save| IptState::parse(&save))
                .map_err(|e| match e {
                    NetfilterError::Tool { why, .. } => why,
                    e => e.to_string(),
                }),
        }
    }
}

/// Both families' state (IPv6's only when asked for).
struct State {
    v4: FamilyState,
    v6: Option<FamilyState>,
}

impl State {
    fn read(v6: bool) -> State {
        State {
            v4: FamilyState::read(Family::V4),
            v6: v6.then(|| FamilyState::read(Family::V6)),
        }
    }
}

/// Removes every rule weft installed, in both backends and both families
/// (`weftd uninstall`); returns what was removed, one line each.
///
/// # Errors
/// [`NetfilterError::Tool`] with the command and its error output.
pub fn remove_all() -> Result<Vec<String>, NetfilterError> {
    let mut done = vec![];
    let state = State::read(true);
    for (family, st) in [
        (Family::V4, Some(&state.v4)),
        (Family::V6, state.v6.as_ref()),
    ] {
        let Some(st) = st else { continue };
        if st.nft.table {
            run("nft", &["-f", "-"], Some(&Rules::nft_remove_script(family)))?;
            done.push(format!(
                "nftables table {} {}",
                family.nft(),
                plan::NFT_TABLE
            ));
        }
        if let Ok(ipt) = &st.ipt {
            let script = ipt.remove_script();
            if !script.is_empty() {
                run(
                    family.iptables_restore(),
                    &["-w", "5", "--noflush"],
                    Some(&script),
                )?;
                for (exists, name) in [
                    (ipt.masq_chain, plan::IPT_MASQ_CHAIN),
                    (ipt.forward_chain, plan::IPT_FORWARD_CHAIN),
                ] {
                    if exists {
                        done.push(format!("{} chain {name} and its jump", family.iptables()));
                    }
                }
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_failure_names_the_tool_table_and_fix() {
        let tool = || NetfilterError::Tool {
            cmd: "ip6tables-restore -w 5 --noflush".into(),
            why: "cannot run ip6tables-restore: No such file or directory (os error 2)".into(),
        };
        let e = tool().in_family(Family::V6, "ip6tables");
        assert!(matches!(e, NetfilterError::Ipv6 { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with(
                "the IPv6 pod network's rules cannot be installed in ip6tables: `ip6tables-restore -w 5 --noflush` failed: cannot run ip6tables-restore"
            ),
            "{text}"
        );
        assert!(text.contains("apt-get install iptables") && text.contains("EnableIPv6 to false"));
        let e = NetfilterError::Tool {
            cmd: "nft -f -".into(),
            why: "Error: Could not process rule: No such file or directory".into(),
        }
        .in_family(Family::V6, "nftables table ip6 weft");
        let text = e.to_string();
        assert!(
            text.contains("in nftables table ip6 weft: `nft -f -` failed"),
            "{text}"
        );
        assert!(text.contains("modprobe nft_chain_nat"), "{text}");
        // IPv4's failures stay as they were.
        assert!(matches!(
            tool().in_family(Family::V4, "iptables"),
            NetfilterError::Tool { .. }
        ));
    }
}
