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

/// mimalloc's `mi_option_purge_delay` (its `mi_option_e` value; libmimalloc-sys exports no
/// constant for it). The `child_reads_the_environment` test checks that this is the option the
/// `MIMALLOC_PURGE_DELAY` variable sets.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Frees pages back to the OS at once (`purge_delay` 0) instead of mimalloc's default 1 s. Under a
/// flood of large packets the pages freed by the ~1,024 packets in flight were kept for that
/// second: the at-most-once packets' flood peaked at 74.9 MiB RSS before, 42.0 MiB after
/// (BENCHMARKS.md, "Where the flood's memory goes" and the latest run). A `MIMALLOC_PURGE_DELAY`
/// in the environment still wins: `set_default` changes only an option mimalloc did not read
/// from there.
fn configure_allocator() {
    // SAFETY: mimalloc's options are plain values; this runs first in `main`, before any other
    // thread exists, which is what mimalloc asks of a caller ("not thread safe").
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, 0) };
}

fn main() -> ExitCode {
    configure_allocator();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn purge_delay() -> std::ffi::c_long {
        // SAFETY: reads a plain value; the tests that call this do not set options concurrently.
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
    }

    /// Run only as the child of `the_environment_overrides_the_default`, with
    /// `MIMALLOC_PURGE_DELAY=250` set.
    #[test]
    #[ignore = "run by the_environment_overrides_the_default in a child process"]
    fn child_reads_the_environment() {
        configure_allocator();
        assert_eq!(purge_delay(), 250);
    }

    #[test]
    fn the_environment_overrides_the_default() {
        // A child process: mimalloc reads its environment once, at process start.
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::child_reads_the_environment", "--ignored"])
            .env("MIMALLOC_PURGE_DELAY", "250")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed:\n{stdout}");
        // Not vacuous: the child ran exactly that one test.
        assert!(stdout.contains("1 passed"), "child output:\n{stdout}");
    }

    #[test]
    fn without_the_environment_pages_are_freed_at_once() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the environment decides; covered by the test above
        }
        configure_allocator();
        assert_eq!(purge_delay(), 0);
    }
}
