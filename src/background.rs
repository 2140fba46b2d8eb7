//! Background work on a thread of its own with a current-thread runtime:
//! what must keep running whatever the worker threads do (the cache's
//! invalidation channel, ACME orders).

use std::future::Future;

/// Runs the future `work` makes on a new thread named `name`; `failed` is
/// logged if the thread's runtime cannot be built.
pub fn spawn<W, F>(name: &str, failed: &'static str, work: W) -> std::io::Result<()>
where
    W: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(work()),
                Err(e) => tracing::error!(error = %e, "{failed}"),
            }
        })
        .map(|_| ())
}
