//! Shutdown: one cancellation token that every service, background loop and connection
//! observes, and the signals (SIGTERM, SIGINT) that trip it.

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// A cloneable handle on the process-wide shutdown flag.
///
/// A token rather than a watch channel because every idle RESP connection keeps a wait
/// pending: the token's wait future is half the size of a watch receiver's `wait_for`.
#[derive(Clone)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            token: CancellationToken::new(),
        }
    }

    /// Starts the shutdown; every `wait()` returns. Idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has been triggered (at once if it already was).
    pub fn wait(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_on_trigger_and_after_it() {
        let s = Shutdown::new();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait().await }
        });
        assert!(!s.is_triggered());
        s.trigger();
        waiter.await.unwrap();
        s.wait().await;
        assert!(s.is_triggered());
    }
}
