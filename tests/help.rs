//! What a person reads first: `weftd --help`, each `weftd <command> --help`
//! and `weft-cni --help` open with what the program or command is, and no
//! help text shows what was written for weft's developers (a doc comment of
//! a struct clap flattens becomes the command's description otherwise).

use std::process::{Command, Output};

use clap::CommandFactory;
use weft::cli::Cli;

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");
const WEFT_CNI: &str = env!("CARGO_BIN_EXE_weft-cni");

/// Text of weft's doc comments and clap attributes that must never reach a user.
const INTERNAL: [&str; 6] = [
    "#[",
    "flatten",
    "meant to be",
    "[`",
    "EtcdOptions",
    "RunArgs",
];

/// Runs `bin` with `args` in an empty environment (no `CNI_COMMAND`, no
/// `WEFT_*` or `FLANNELD_*` from the caller), stdin empty.
fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}"))
}

/// The help `bin args` prints, checked to exit 0 and to hold nothing internal.
fn help(bin: &str, args: &[&str]) -> String {
    let out = run(bin, args);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for phrase in INTERNAL {
        assert!(
            !text.contains(phrase),
            "{bin} {args:?} shows {phrase:?}, meant for weft's developers:\n{text}"
        );
    }
    text
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[test]
fn weftd_help_opens_with_what_weftd_is() {
    let first =
        "weftd: weft's node agent, a userspace VXLAN pod network that stands in for flanneld";
    let long = help(WEFTD, &["--help"]);
    assert_eq!(first_line(&long), format!("{first}."));
    assert!(
        long.contains("\nUsage: weftd [OPTIONS] [COMMAND]\n"),
        "{long}"
    );
    let short = help(WEFTD, &["-h"]);
    assert_eq!(first_line(&short), first);
    let version = run(WEFTD, &["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8(version.stdout).unwrap().trim_end(),
        format!("weftd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn every_weftd_command_opens_with_what_it_does() {
    let expected = [
        (
            "lab",
            "Run weft on this machine: N nodes in network namespaces and a live reachability matrix",
        ),
        (
            "uninstall",
            "Remove the rules and the TUN device weftd leaves in place when it stops",
        ),
        (
            "doctor",
            "Check this node end to end and say what to fix, changing nothing",
        ),
        (
            "status",
            "Show the running weftd of this network namespace: its lease, its store and its peers",
        ),
    ];
    let cli = Cli::command();
    let names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
    assert!(!names.is_empty());
    for name in names {
        let Some((_, first)) = expected.iter().find(|(n, _)| *n == name) else {
            panic!("weftd {name}: a new command; add the first line of its help here");
        };
        for flag in ["--help", "-h"] {
            let text = help(WEFTD, &[name, flag]);
            assert_eq!(first_line(&text), *first, "weftd {name} {flag}:\n{text}");
            assert!(
                text.contains(&format!("\nUsage: weftd {name} ")),
                "weftd {name} {flag}:\n{text}"
            );
        }
    }
}

#[test]
fn weft_cni_help_and_version_without_cni_command() {
    let first = "weft-cni: weft's CNI plugin, which wires each pod into the node's weft subnet";
    let long = help(WEFT_CNI, &["--help"]);
    assert_eq!(first_line(&long), format!("{first}."));
    assert!(long.contains("weft-cni install"), "{long}");
    assert_eq!(first_line(&help(WEFT_CNI, &["-h"])), first);
    assert_eq!(
        first_line(&help(WEFT_CNI, &["install", "--help"])),
        "Install weft-cni and its conflist on this node"
    );
    for flag in ["--version", "-V"] {
        let out = run(WEFT_CNI, &[flag]);
        assert!(out.status.success(), "weft-cni {flag}: {}", out.status);
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim_end(),
            format!("weft-cni {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

/// With `CNI_COMMAND` set weft-cni is a plugin whatever its arguments: the
/// runtime's VERSION call answers with CNI JSON, `--help` or not.
#[test]
fn weft_cni_with_cni_command_stays_a_plugin() {
    for args in [&[][..], &["--help"], &["--version"]] {
        let out = Command::new(WEFT_CNI)
            .args(args)
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", out.status);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {:?}", out.stdout));
        assert!(v["supportedVersions"].is_array(), "{args:?}: {v}");
    }
    // A person without CNI_COMMAND and without arguments is told what weft-cni is.
    let out = run(WEFT_CNI, &[]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 4);
}
