//! `weft-cni`: the CNI plugin binary. As a plugin it reads `CNI_*` and stdin
//! and prints one result or one error object; `weft-cni install` installs it.

use std::process::ExitCode;

use clap::Parser;
use weft::cni::{self, install};

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let _argv0 = args.next();
    if args.next().is_some_and(|a| a == "install") {
        let parsed = install::InstallArgs::parse_from(std::env::args_os().skip(1));
        return match install::install(&parsed) {
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
        };
    }
    let get = |k: &str| std::env::var(k).ok();
    let out = cni::run(&get, &mut std::io::stdin().lock());
    if !out.stdout.is_empty() {
        println!("{}", out.stdout);
    }
    ExitCode::from(out.exit)
}
