//! `weftd`: parse the command line, set up logging, run the node (or the lab)
//! until SIGTERM/SIGINT, and map errors to an exit status.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use weft::cli::{Cli, Command};

fn main() -> ExitCode {
    // flanneld's command lines (Go flag syntax, FLANNELD_* variables, -v=N) as weftd's.
    let flannel = match weft::goflags::translate(std::env::args_os(), &|k| std::env::var(k).ok()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("weftd: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(flannel.args);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cli.run.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    for note in &flannel.notes {
        tracing::warn!("{note}");
    }

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weftd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut handed_over = None;
    let result: anyhow::Result<()> = rt.block_on(async {
        match cli.command {
            Some(Command::Lab(args)) => weft::lab::run(args, shutdown_signal())
                .await
                .map_err(Into::into),
            Some(Command::Uninstall(args)) => {
                let done = weft::daemon::uninstall(&args.tun_name).await?;
                if done.is_empty() {
                    println!("weftd uninstall: nothing of weft's was left here");
                }
                for d in done {
                    println!("weftd uninstall: removed {d}");
                }
                Ok(())
            }
            Some(Command::Doctor(args)) => {
                let report = weft::doctor::run(&args.run.options()?, &args.cni_dirs()).await;
                if args.output == "json" {
                    println!("{}", report.json());
                } else {
                    print!("{}", report.text());
                }
                if report.healthy() {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("doctor: the node is not healthy"))
                }
            }
            Some(Command::Status(args)) => {
                let views = weft::status::query(args.port)?;
                if args.output == "json" {
                    // One object per weftd (one, nearly always).
                    let one = match views.as_slice() {
                        [v] => serde_json::to_string_pretty(v)?,
                        all => serde_json::to_string_pretty(all)?,
                    };
                    println!("{one}");
                } else {
                    let text: Vec<String> = views.iter().map(weft::status::render).collect();
                    print!("{}", text.join("\n"));
                }
                Ok(())
            }
            None => {
                let opts = cli.run.options()?;
                match weft::daemon::run(opts, shutdown_signal()).await? {
                    weft::daemon::Stopped::HandedOver(s) => handed_over = Some(s),
                    weft::daemon::Stopped::Signal => {}
                }
                Ok(())
            }
        }
    });
    // Blocking tasks still sleeping (a store poll) must not delay the exit:
    // a restart's gap is as long as the old process takes to go.
    rt.shutdown_background();
    if let Some(s) = handed_over {
        weft::daemon::let_go(s);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, on stderr where the log goes too.
            eprintln!("weftd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
