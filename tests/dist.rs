//! What `dist/` ships, as its callers use it: the systemd unit's command line
//! is one weftd accepts, and `mk-docker-opts.sh` writes what flanneld's
//! script writes, option for option.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use clap::Parser;
use weft::cli::Cli;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The unit's `ExecStart=` with its continuation lines joined and the
/// `${VAR}`s filled in as systemd would from /etc/default/weftd.
fn exec_start(unit: &str, vars: &[(&str, &str)]) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart= in the unit");
    line.split_whitespace()
        .map(|w| {
            vars.iter().fold(w.to_string(), |w, (k, v)| {
                w.replace(&format!("${{{k}}}"), v)
            })
        })
        .collect()
}

#[test]
fn the_systemd_unit_starts_weftd_as_flanneld_was_started() {
    let unit = std::fs::read_to_string(root().join("dist/weftd.service")).unwrap();
    assert!(unit.contains("\nType=notify\n"), "weftd sends READY=1");
    assert!(unit.contains("ExecStartPost=/usr/local/bin/mk-docker-opts.sh"));
    let argv = exec_start(
        &unit,
        &[
            (
                "ETCD_ENDPOINTS",
                "https://10.0.0.1:2379,https://10.0.0.2:2379",
            ),
            ("FLANNEL_ETCD_PREFIX", "/kubernetes/network"),
        ],
    );
    assert_eq!(argv[0], "/usr/local/bin/weftd");
    assert!(
        argv[1].starts_with("-etcd-"),
        "single-dash Go flags: {argv:?}"
    );
    let t = weft::goflags::translate(argv.into_iter().map(OsString::from), &|_| None).unwrap();
    assert!(t.notes.is_empty(), "{:?}", t.notes);
    let cli = Cli::try_parse_from(t.args).unwrap_or_else(|e| panic!("{e}"));
    let etcd = cli.run.etcd.resolve().unwrap();
    assert_eq!(
        etcd.endpoints,
        ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    );
    assert_eq!(etcd.prefix, "/kubernetes/network");
    assert_eq!(
        etcd.keyfile.as_deref(),
        Some(Path::new("/etc/flanneld/ssl/flanneld-key.pem"))
    );
    assert!(cli.run.ip_masq);
}

/// Runs dist/mk-docker-opts.sh with `args` on a subnet.env of `env`; the
/// file it wrote, or its stderr when it failed.
fn mk_docker_opts(env: &str, args: &[&str], vars: &[(&str, &str)]) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("subnet.env"), dir.path().join("docker"));
    std::fs::write(&input, env).unwrap();
    let out = Command::new("sh")
        .arg(root().join("dist/mk-docker-opts.sh"))
        .arg("-f")
        .arg(&input)
        .arg("-d")
        .arg(&output)
        .args(args)
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(std::fs::read_to_string(&output).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// flanneld's script writes these lines for these options (its output
/// format: each `DOCKER_OPT_*` variable, then the combined key with a
/// leading space per option).
#[test]
fn mk_docker_opts_writes_flannels_lines() {
    assert_eq!(
        mk_docker_opts(SUBNET_ENV, &[], &[]).unwrap(),
        "DOCKER_OPT_BIP=\"--bip=10.244.3.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --bip=10.244.3.1/24 --ip-masq=false --mtu=1450\"\n"
    );
    // Seed 001's ExecStartPost: -k DOCKER_NETWORK_OPTIONS.
    assert_eq!(
        mk_docker_opts(SUBNET_ENV, &["-k", "DOCKER_NETWORK_OPTIONS"], &[]).unwrap(),
        "DOCKER_OPT_BIP=\"--bip=10.244.3.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_NETWORK_OPTIONS=\" --bip=10.244.3.1/24 --ip-masq=false --mtu=1450\"\n"
    );
    assert_eq!(
        mk_docker_opts(SUBNET_ENV, &["-i"], &[]).unwrap(),
        "DOCKER_OPT_BIP=\"--bip=10.244.3.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n"
    );
    // -c -m, with the key's value from the environment first.
    assert_eq!(
        mk_docker_opts(SUBNET_ENV, &["-c", "-m"], &[("DOCKER_OPTS", "--debug")]).unwrap(),
        "DOCKER_OPTS=\"--debug  --bip=10.244.3.1/24 --mtu=1450\"\n"
    );
    // weftd without --ip-masq: Docker masquerades.
    let off = SUBNET_ENV.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=false");
    assert!(
        mk_docker_opts(&off, &["-c"], &[])
            .unwrap()
            .contains("--ip-masq=true")
    );
}

#[test]
fn mk_docker_opts_refuses_what_it_cannot_use() {
    let e = mk_docker_opts(&SUBNET_ENV.replace("=true", "=yes"), &[], &[]).unwrap_err();
    assert!(e.contains("FLANNEL_IPMASQ=yes"), "{e}");
    let e = mk_docker_opts(SUBNET_ENV, &["-k", "BAD-KEY"], &[]).unwrap_err();
    assert!(e.contains("not a shell variable name"), "{e}");
    // subnet.env is data: a line that is code is never run.
    let evil = format!("{SUBNET_ENV}$(touch /tmp/weft-mk-docker-opts-ran)\n");
    let _ = std::fs::remove_file("/tmp/weft-mk-docker-opts-ran");
    mk_docker_opts(&evil, &[], &[]).unwrap();
    assert!(!Path::new("/tmp/weft-mk-docker-opts-ran").exists());
    let out = Command::new("sh")
        .arg(root().join("dist/mk-docker-opts.sh"))
        .args(["-f", "/nonexistent/subnet.env"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("weftd writes it once it holds a lease"));
}
