//! `weft-cni`: the CNI plugin binary. As a plugin (`CNI_COMMAND` set) it reads
//! `CNI_*` and stdin and prints one result or one error object; a person runs
//! `weft-cni install`, `--help` or `--version`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft::cni::{self, install};

const ABOUT: &str = "weft-cni: weft's CNI plugin, which wires each pod into the node's weft subnet";

const LONG_ABOUT: &str = "\
weft-cni: weft's CNI plugin, which wires each pod into the node's weft subnet.

A container runtime runs it with CNI_COMMAND (ADD, DEL, CHECK, VERSION, STATUS or GC) \
and the other CNI_* variables set, and the network configuration on stdin. It reads the \
node's subnet from the subnet.env weftd writes, delegates to the bridge and host-local \
plugins as flannel's plugin does when they are installed, and wires the pod itself \
otherwise. It speaks CNI 0.3.0 to 1.1.0.

Run by a person (CNI_COMMAND unset), it installs itself: weft-cni install.";

// weft-cni's command line, for a person; a runtime passes no arguments.
#[derive(Parser)]
#[command(name = "weft-cni", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand)]
enum Sub {
    Install(install::InstallArgs),
}

fn main() -> ExitCode {
    let first = std::env::args_os().nth(1);
    let plugin = std::env::var_os("CNI_COMMAND").is_some_and(|c| !c.is_empty());
    // `install` whatever the environment; anything else given by a person
    // (no CNI_COMMAND) is weft-cni's own command line: --help, --version.
    if first.as_ref().is_some_and(|a| a == "install") || (first.is_some() && !plugin) {
        if let Some(Sub::Install(args)) = Cli::parse().command {
            return run_install(&args);
        }
    }
    let get = |k: &str| std::env::var(k).ok();
    let out = cni::run(&get, &mut std::io::stdin().lock());
    if !out.stdout.is_empty() {
        println!("{}", out.stdout);
    }
    ExitCode::from(out.exit)
}

fn run_install(args: &install::InstallArgs) -> ExitCode {
    match install::install(args) {
        Ok(done) => {
            match &done.conflist {
                Some(c) => eprintln!(
                    "weft-cni: installed {} and {}",
                    done.bin.display(),
                    c.display()
                ),
                None => eprintln!(
                    "weft-cni: installed {} (the conflist is weftd's to write once the node forwards)",
                    done.bin.display()
                ),
            }
            for note in done.notes {
                eprintln!("weft-cni install: {note}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-cni install: {e}");
            ExitCode::from(2)
        }
    }
}
