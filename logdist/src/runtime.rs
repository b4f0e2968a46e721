//! The async runtime of the long-running binaries, sized by their `--worker-threads` flag: one
//! thread (a current-thread runtime, no cross-thread wake-ups) or a multi-thread runtime with
//! the given number of workers, or one per core when the flag is absent.

/// Builds the runtime for `worker_threads` (`None`: one worker per core; `Some(1)`: everything
/// on the calling thread).
pub fn build_runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_runs_a_task() {
        for threads in [None, Some(1), Some(3)] {
            let runtime = build_runtime(threads).expect("runtime");
            let answer = runtime.block_on(async { tokio::spawn(async { 42 }).await.unwrap() });
            assert_eq!(answer, 42);
            let workers = runtime.metrics().num_workers();
            match threads {
                Some(n) => assert_eq!(workers, n),
                None => assert!(workers >= 1),
            }
        }
    }
}
