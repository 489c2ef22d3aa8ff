//! `ferry-bench`: parse flags, run one workload, print the result (human or `--json`).
//!
//! Exit status: 0 on a clean run, 1 when the run finished but some sends, reads or
//! transactions failed or the run stopped early, 2 when the run could not be carried out
//! (including flags that do not go together).

use std::process::ExitCode;

use clap::Parser;
use ferry_bench::cli::Args;

#[tokio::main]
async fn main() -> ExitCode {
    // `ferry-bench chaos ...` has flags of its own.
    if std::env::args().nth(1).as_deref() == Some("chaos") {
        let args = ferry_bench::chaos::ChaosArgs::parse_from(
            std::env::args().enumerate().filter(|(i, _)| *i != 1).map(|(_, a)| a),
        );
        init_logging();
        return match ferry_bench::chaos::run(&args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    // `ferry-bench outbox ...` too.
    if std::env::args().nth(1).as_deref() == Some("outbox") {
        let args = ferry_bench::outbox::OutboxArgs::parse_from(
            std::env::args().enumerate().filter(|(i, _)| *i != 1).map(|(_, a)| a),
        );
        init_logging();
        return match ferry_bench::outbox::run(&args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    // `ferry-bench push ...` too.
    if std::env::args().nth(1).as_deref() == Some("push") {
        let args = ferry_bench::push::PushArgs::parse_from(
            std::env::args().enumerate().filter(|(i, _)| *i != 1).map(|(_, a)| a),
        );
        init_logging();
        return match ferry_bench::push::run(&args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let args = Args::parse();
    let result = match ferry_bench::run(&args).await {
        Ok(result) => result,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match result.to_json() {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", result.to_human());
    }
    if result.errors > 0 || result.incomplete.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Log lines of the chaos runner (faults injected, clients retrying) go to stderr when
/// `FERRY_LOG` asks for them (e.g. `FERRY_LOG=info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
