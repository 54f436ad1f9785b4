//! Delegate mode, flannel-compatible: build a bridge + host-local
//! configuration from subnet.env, save it under `<dataDir>/delegate/<containerID>/<ifname>`,
//! run the delegate plugin from `CNI_PATH`, and on DEL run it again with the
//! saved copy (so a changed subnet.env cannot break the release).
//!
//! The delegate is asked in the newest version both speak (Debian's plugins
//! stop at 1.0.0), and its result is rewritten in the version the runtime
//! asked for.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::{Value, json};

use super::conf::NetConf;
use super::env::CniEnv;
use super::error::{CniError, code};
use super::log;
use super::result::CniResult;
use super::version::Version;
use crate::netlink::{Dad, Netlink};
use crate::subnet_env::SubnetEnv;
use crate::types::Family;

/// The first executable file named `name` in `path`.
pub fn find_plugin(path: &[PathBuf], name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    path.iter()
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn path_text(path: &[PathBuf]) -> String {
    path.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn require_plugin(env: &CniEnv, name: &str) -> Result<PathBuf, CniError> {
    find_plugin(&env.path, name).ok_or_else(|| {
        CniError::new(
            code::DELEGATE,
            format!(
                "delegate plugin {name:?} not found in CNI_PATH={}; install containernetworking-plugins there, or set \"mode\": \"builtin\"",
                path_text(&env.path)
            ),
        )
    })
}

/// What to change in the inherited environment for one delegate call.
struct Call<'a> {
    command: &'static str,
    /// `Some` overrides the container and interface (GC's DELs).
    ids: Option<(&'a str, &'a str)>,
}

fn exec(bin: &Path, call: &Call<'_>, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let mut cmd = Proc::new(bin);
    cmd.env("CNI_COMMAND", call.command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((cid, ifname)) = call.ids {
        cmd.env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", ifname)
            .env_remove("CNI_NETNS");
    }
    let spawn_err = |e: io::Error| {
        CniError::new(
            code::DELEGATE,
            format!("cannot run delegate {}: {e}", bin.display()),
        )
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(mut si) = child.stdin.take() {
        // A delegate that exits without reading stdin closes the pipe: its
        // exit status says what happened, so a write error is not reported.
        let _ = si.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        log(&format!(
            "delegate {} {}: {}",
            bin.display(),
            call.command,
            stderr.trim()
        ));
    }
    if out.status.success() {
        return Ok(out.stdout);
    }
    let name = bin
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(v) if v.get("code").and_then(Value::as_u64).is_some() => {
            // A code that does not fit is not the delegate's meaning: say "delegate failed".
            let c = v["code"]
                .as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(code::DELEGATE);
            let msg = v.get("msg").and_then(Value::as_str).unwrap_or("");
            let details = v.get("details").and_then(Value::as_str).unwrap_or("");
            Err(
                CniError::new(c, format!("delegate {name} {}: {msg}", call.command))
                    .with_details(details),
            )
        }
        _ => Err(CniError::new(
            code::DELEGATE,
            format!(
                "delegate {name} {} failed ({}): {}",
                call.command,
                out.status,
                if stderr.trim().is_empty() {
                    String::from_utf8_lossy(&out.stdout).trim().to_string()
                } else {
                    stderr.trim().to_string()
                }
            ),
        )),
    }
}

/// The newest version at most `want` that the delegate at `bin` speaks.
///
/// # Errors
/// Code 101 when the delegate answers VERSION with nonsense or shares no version.
pub fn negotiate(bin: &Path, want: Version) -> Result<Version, CniError> {
    let out = exec(
        bin,
        &Call {
            command: "VERSION",
            ids: None,
        },
        json!({ "cniVersion": want.as_str() })
            .to_string()
            .as_bytes(),
    )?;
    let v: Value = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            code::DELEGATE,
            format!(
                "delegate {} answered VERSION with invalid JSON: {e}",
                bin.display()
            ),
        )
    })?;
    let theirs: Vec<&str> = v
        .get("supportedVersions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Version::ALL
        .into_iter()
        .rev()
        .filter(|v| *v <= want)
        .find(|v| theirs.contains(&v.as_str()))
        .ok_or_else(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "delegate {} supports {theirs:?}, none of them usable for cniVersion {want}",
                    bin.display()
                ),
            )
        })
}

/// Where the delegate configuration of one attachment is saved.
pub fn saved_path(data_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    data_dir.join("delegate").join(container_id).join(ifname)
}

fn state_err(path: &Path, e: io::Error) -> CniError {
    CniError::new(
        code::STATE,
        format!(
            "cannot write {}: {e} (is dataDir writable by the runtime's user?)",
            path.display()
        ),
    )
}

fn save(path: &Path, bytes: &[u8]) -> Result<(), CniError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| state_err(dir, e))?;
    }
    crate::fsutil::write_atomic(path, bytes).map_err(|e| state_err(path, e))
}

fn forget(path: &Path) {
    let _ = fs::remove_file(path);
    if let Some(dir) = path.parent() {
        // Only succeeds when no other interface of the container remains.
        let _ = fs::remove_dir(dir);
    }
}

/// The saved configuration of an attachment: weft's path, else flannel's
/// (`<dataDir>/<containerID>` when a flannel conflist with its `dataDir` was
/// switched to weft, else `<flannelDataDir>/<containerID>`), for pods added
/// before a switch from flannel.
fn load_saved(conf: &NetConf, env: &CniEnv) -> Option<(PathBuf, Vec<u8>)> {
    let ours = saved_path(&conf.data_dir, &env.container_id, &env.ifname);
    let legacy = conf.data_dir.join(&env.container_id);
    let flannel = conf.flannel_data_dir.join(&env.container_id);
    [ours, legacy, flannel].into_iter().find_map(|p| {
        if !p.is_file() {
            return None;
        }
        fs::read(&p).ok().map(|b| (p, b))
    })
}

/// Whether an attachment was added in delegate mode (by weft or flannel).
pub fn has_saved(conf: &NetConf, env: &CniEnv) -> bool {
    load_saved(conf, env).is_some()
}

/// ADD: build, save, delegate; on failure the delegate's DEL undoes it.
///
/// # Errors
/// The delegate's error (its code), or 101/105 for weft's own failures.
pub fn add(conf: &NetConf, env: &CniEnv, senv: &SubnetEnv) -> Result<CniResult, CniError> {
    // Refused before the delegate runs: its DEL (the undo of a failed ADD)
    // would remove the interface of the pod that already has this name.
    super::builtin::refuse_existing(env)?;
    let dtype = conf.delegate_type();
    let bin = require_plugin(env, &dtype)?;
    let version = negotiate(&bin, conf.version)?;
    let dconf = conf.delegate_config(senv, version)?;
    let bytes =
        serde_json::to_vec(&dconf).map_err(|e| CniError::new(code::DELEGATE, e.to_string()))?;
    let saved = saved_path(&conf.data_dir, &env.container_id, &env.ifname);
    save(&saved, &bytes)?;
    let undo = |why: &CniError| {
        log(&format!(
            "ADD failed ({why}); undoing with the delegate's DEL"
        ));
        let del = Call {
            command: "DEL",
            ids: None,
        };
        if let Err(e) = exec(&bin, &del, &bytes) {
            log(&format!("undo DEL failed too: {e}"));
        }
        forget(&saved);
    };
    let call = Call {
        command: "ADD",
        ids: None,
    };
    let out = exec(&bin, &call, &bytes).inspect_err(|e| undo(e))?;
    let parsed = serde_json::from_slice::<Value>(&out)
        .map_err(|e| {
            CniError::new(
                code::DELEGATE,
                format!("delegate {dtype} ADD printed a result that is not JSON: {e}"),
            )
        })
        .and_then(|v| CniResult::from_json(&v))
        .inspect_err(|e| undo(e))?;
    if dtype == "bridge" {
        settle_gateways6(conf, &parsed).inspect_err(|e| undo(e))?;
    }
    Ok(parsed)
}

/// How long ADD waits for the bridge's IPv6 gateway to pass duplicate
/// address detection (the reference plugins' `SettleAddresses` waits as long).
const SETTLE: Duration = Duration::from_secs(10);

/// Waits until the IPv6 gateways of `result` on the delegate's bridge have
/// passed duplicate address detection. The bridge plugin adds its gateway
/// address with DAD and returns while it is still tentative: for a second
/// or two the bridge then neither answers the pod's neighbour solicitations
/// for it nor forwards for it, so a fresh node's first pod could not leave
/// the node. Past [`SETTLE`] it logs and returns; a failed detection (another
/// host on the bridge has the address) is an error.
///
/// # Errors
/// Code 102 when the detection failed.
fn settle_gateways6(conf: &NetConf, result: &CniResult) -> Result<(), CniError> {
    let gws: Vec<IpAddr> = result
        .ips
        .iter()
        .filter_map(|c| c.gateway.filter(IpAddr::is_ipv6))
        .collect();
    if gws.is_empty() {
        return Ok(());
    }
    let Ok(bridge) = conf.bridge_name() else {
        return Ok(());
    };
    let Ok(mut nl) = Netlink::new() else {
        return Ok(());
    };
    let Some(index) = nl.link(&bridge).ok().flatten().map(|l| l.index) else {
        return Ok(());
    };
    let start = Instant::now();
    loop {
        let addrs = nl.addresses_dad(index, Family::V6).unwrap_or_default();
        match gateway_dad(&addrs, &gws) {
            Dad::Done => return Ok(()),
            Dad::Failed => {
                return Err(CniError::new(
                    code::NETLINK,
                    format!(
                        "the IPv6 gateway {} on bridge {bridge} failed duplicate address detection: another host on {bridge} has that address",
                        gws.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ),
                )
                .with_details(format!(
                    "find it with `ip -6 neigh show dev {bridge}`; the gateway is the first address of FLANNEL_IPV6_SUBNET, which only this node's bridge should hold"
                )));
            }
            Dad::Tentative if start.elapsed() >= SETTLE => {
                log(&format!(
                    "the IPv6 gateway on {bridge} is still tentative after {SETTLE:?}; the pod's IPv6 traffic leaves the node once it is not"
                ));
                return Ok(());
            }
            Dad::Tentative => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Where the detection of the gateways `gws` stands on a link holding
/// `addrs`: failed if any failed, else tentative if any is, else done. A
/// gateway the link does not hold is not waited for. Pure.
pub fn gateway_dad(addrs: &[(IpNet, Dad)], gws: &[IpAddr]) -> Dad {
    let states = addrs
        .iter()
        .filter(|(n, _)| gws.contains(&n.addr()))
        .map(|(_, d)| *d);
    let mut worst = Dad::Done;
    for d in states {
        match d {
            Dad::Failed => return Dad::Failed,
            Dad::Tentative => worst = Dad::Tentative,
            Dad::Done => {}
        }
    }
    worst
}

/// DEL with the saved configuration; nothing saved means nothing to do.
///
/// # Errors
/// The delegate's error; the saved copy is kept so a retry can succeed.
pub fn del(conf: &NetConf, env: &CniEnv) -> Result<(), CniError> {
    let Some((path, bytes)) = load_saved(conf, env) else {
        return Ok(());
    };
    let Some(dtype) = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_string))
    else {
        log(&format!(
            "{}: not a delegate configuration; removing it (the pod's interface goes with its netns)",
            path.display()
        ));
        forget(&path);
        return Ok(());
    };
    let bin = require_plugin(env, &dtype)?;
    exec(
        &bin,
        &Call {
            command: "DEL",
            ids: None,
        },
        &bytes,
    )?;
    forget(&path);
    Ok(())
}

/// CHECK: the delegate's CHECK, with the saved configuration and `prevResult`.
///
/// # Errors
/// Code 7 without `prevResult`; the delegate's error when its check fails.
pub fn check(conf: &NetConf, env: &CniEnv) -> Result<(), CniError> {
    let Some((path, bytes)) = load_saved(conf, env) else {
        return Err(CniError::new(
            code::CHECK_FAILED,
            format!(
                "no saved delegate configuration for container {} interface {} under {}; was ADD called?",
                env.container_id,
                env.ifname,
                conf.data_dir.display()
            ),
        ));
    };
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "prevResult is missing: CHECK needs the ADD result",
        )
    })?;
    let mut dconf: Value = serde_json::from_slice(&bytes).map_err(|e| {
        CniError::new(
            code::STATE,
            format!("{}: invalid JSON: {e}", path.display()),
        )
    })?;
    let dversion = dconf
        .get("cniVersion")
        .and_then(Value::as_str)
        .and_then(|v| Version::parse(v).ok())
        .unwrap_or(conf.version);
    dconf["prevResult"] = prev_result_for_check(prev, dversion)?;
    let dtype = dconf["type"].as_str().unwrap_or("bridge").to_string();
    let bin = require_plugin(env, &dtype)?;
    let bytes =
        serde_json::to_vec(&dconf).map_err(|e| CniError::new(code::DELEGATE, e.to_string()))?;
    exec(
        &bin,
        &Call {
            command: "CHECK",
            ids: None,
        },
        &bytes,
    )?;
    Ok(())
}

/// The `prevResult` a delegate's CHECK gets: the runtime's, in the
/// delegate's version `dversion`, each route without a gateway given the
/// gateway of an address of its family. (host-local's routes carry no
/// gateway and the bridge plugin installs them via the address's gateway,
/// yet its CHECK looks for a route with one.) Pure; the fuzzer's entry point.
///
/// # Errors
/// Code 6 naming the malformed field of `prev`.
pub fn prev_result_for_check(prev: &Value, dversion: Version) -> Result<Value, CniError> {
    let mut prev = CniResult::from_json(prev)?;
    let gws: Vec<std::net::IpAddr> = prev.ips.iter().filter_map(|i| i.gateway).collect();
    for r in prev.routes.iter_mut().filter(|r| r.gw.is_none()) {
        r.gw = gws
            .iter()
            .copied()
            .find(|g| g.is_ipv4() == r.dst.addr().is_ipv4());
    }
    Ok(prev.to_json(dversion))
}

/// GC: DEL every saved attachment not in `valid`.
///
/// # Errors
/// The first failure; the others are logged and GC goes on.
pub fn gc(conf: &NetConf, env: &CniEnv, valid: &[(String, String)]) -> Result<(), CniError> {
    let root = conf.data_dir.join("delegate");
    let Ok(cids) = fs::read_dir(&root) else {
        return Ok(());
    };
    let mut first_err = None;
    for c in cids.flatten() {
        let cid = c.file_name().to_string_lossy().into_owned();
        let Ok(ifs) = fs::read_dir(c.path()) else {
            continue;
        };
        for i in ifs.flatten() {
            let ifname = i.file_name().to_string_lossy().into_owned();
            if ifname.contains(".tmp.") || valid.iter().any(|(vc, vi)| *vc == cid && *vi == ifname)
            {
                continue;
            }
            let path = i.path();
            let res = fs::read(&path)
                .map_err(|e| state_err(&path, e))
                .and_then(|bytes| {
                    let dtype = serde_json::from_slice::<Value>(&bytes)
                        .ok()
                        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_string))
                        .unwrap_or_else(|| "bridge".into());
                    let bin = require_plugin(env, &dtype)?;
                    exec(
                        &bin,
                        &Call {
                            command: "DEL",
                            ids: Some((&cid, &ifname)),
                        },
                        &bytes,
                    )
                });
            match res {
                Ok(_) => {
                    log(&format!("GC: released stale attachment {cid}/{ifname}"));
                    forget(&path);
                }
                Err(e) => {
                    log(&format!("GC: {cid}/{ifname}: {e}"));
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_dad_waits_for_the_gateways_only_and_fails_on_a_duplicate() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        let gw: IpAddr = "fc00:0:0:3::1".parse().unwrap();
        let addrs = [
            (n("fe80::1/64"), Dad::Tentative),
            (n("fc00:0:0:3::1/64"), Dad::Done),
        ];
        // The bridge's link-local address is not the pods' gateway.
        assert_eq!(gateway_dad(&addrs, &[gw]), Dad::Done);
        let addrs = [(n("fc00:0:0:3::1/64"), Dad::Tentative)];
        assert_eq!(gateway_dad(&addrs, &[gw]), Dad::Tentative);
        let addrs = [
            (n("fc00:0:0:3::1/64"), Dad::Tentative),
            (n("fc00:0:0:4::1/64"), Dad::Failed),
        ];
        let gw4: IpAddr = "fc00:0:0:4::1".parse().unwrap();
        assert_eq!(gateway_dad(&addrs, &[gw, gw4]), Dad::Failed);
        // A gateway the bridge does not hold is not waited for.
        assert_eq!(gateway_dad(&[], &[gw]), Dad::Done);
    }
}
