//! agent-sim binary: parses flags, runs the simulation, prints the report, and exits 0 (ok),
//! 1 (runtime failure or failed --verify) or 2 (bad usage).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = agent_sim::Config::parse();
    if let Err(message) = config.validate() {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    logdist::init_logging();
    let json = config.json;
    let shutdown = logdist::shutdown_on_signal();
    match agent_sim::run(config, shutdown).await {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
