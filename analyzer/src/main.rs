//! `analyzer`: parse the flags (bad values exit 2 before any network access), then run the
//! service until SIGINT/SIGTERM. Exit codes: 0 after a clean shutdown, 1 on a runtime failure,
//! 2 on bad usage.

use std::process::ExitCode;

use analyzer::AnalyzerConfig;
use anyhow::Context;
use clap::Parser;

fn main() -> ExitCode {
    // clap prints the usage error naming the flag and exits with code 2.
    let config = AnalyzerConfig::parse();
    logdist::init_logging();
    let built =
        logdist::build_runtime(config.worker_threads).context("cannot start the async runtime");
    let runtime = match built {
        Ok(runtime) => runtime,
        Err(e) => return fail(e),
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn run(config: AnalyzerConfig) -> anyhow::Result<()> {
    let shutdown = logdist::shutdown_on_signal();
    let instance = config.instance_name();
    analyzer::run(&config, &instance, shutdown)
        .await
        .with_context(|| format!("analyzer {}/{instance} failed", config.id))?;
    Ok(())
}

fn fail(error: anyhow::Error) -> ExitCode {
    // Not through tracing: the reason must reach the user whatever RUST_LOG says.
    eprintln!("error: {error:#}");
    ExitCode::from(1)
}
