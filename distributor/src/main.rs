//! `distributor`: parses the command line, sets up logging and the runtime, and runs the
//! subcommand from the library. Exit codes: 0 ok, 1 runtime failure, 2 bad usage (from clap).

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use distributor::{Cli, Command};

/// mimalloc instead of glibc's malloc: every packet allocates (the client's message and header
/// map, the batch's lists), and glibc's malloc and free were ~20 % of the distributor's
/// instructions. Measured in the commit that added it: −14 % instructions a single message.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let command = Cli::parse().into_command();
    if let Command::Run(args) = &command {
        // Flags that are valid alone but not together: bad usage, exit 2 like clap's own.
        if let Err(e) = args.formats.mapping_and_subjects(&args.names) {
            Cli::command()
                .error(clap::error::ErrorKind::ArgumentConflict, e)
                .exit();
        }
    }
    logdist::init_logging();
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("distributor: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let threads = match &command {
        Command::Run(args) => args.worker_threads,
        Command::Stats(_) | Command::Weights(_) => Some(1),
        // Files only: no runtime, no NATS.
        Command::Auth(args) => {
            return distributor::run_auth(args).context("distributor auth failed");
        }
    };
    let runtime = logdist::build_runtime(threads).context("cannot start the async runtime")?;
    // Spawned, not run by `block_on` on this thread: on a multi-thread runtime the loops then
    // run on the workers with the tasks that feed them (NATS connections, HTTP connections),
    // and waking them is a local queue push, not a wake-up of another thread.
    let task = runtime.spawn(async move {
        let shutdown = logdist::shutdown_on_signal();
        match command {
            Command::Run(args) => distributor::run(args, shutdown)
                .await
                .context("distributor failed"),
            Command::Stats(args) => distributor::run_stats(args, shutdown)
                .await
                .context("distributor stats failed"),
            Command::Weights(args) => distributor::run_weights(args, shutdown)
                .await
                .context("distributor weights failed"),
            Command::Auth(_) => unreachable!("handled before the runtime starts"),
        }
    });
    match runtime.block_on(task) {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(anyhow::anyhow!(
            "the distributor's main task was cancelled: {e}"
        )),
    }
}
