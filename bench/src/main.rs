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
