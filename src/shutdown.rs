//! Shutdown: one cancellation token that every service, background loop and connection
//! observes, and the signals (SIGTERM, SIGINT) that trip it.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::Poll,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// A cloneable handle on the process-wide shutdown flag.
///
/// A token rather than a watch channel because every idle RESP connection keeps a wait
/// pending: the token's wait future is half the size of a watch receiver's `wait_for`.
/// Beside it, a flag of our own: the token answers `is_cancelled` under a mutex, and
/// connections ask on every request, from every core.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    token: CancellationToken,
    triggered: AtomicBool,
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                token: CancellationToken::new(),
                triggered: AtomicBool::new(false),
            }),
        }
    }

    /// Starts the shutdown; every `wait()` returns. Idempotent.
    pub fn trigger(&self) {
        // The flag first: whoever the token wakes must find it set.
        self.inner.triggered.store(true, Ordering::Release);
        self.inner.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::Acquire)
    }

    /// Resolves once shutdown has been triggered (at once if it already was).
    pub fn wait(&self) -> WaitForCancellationFuture<'_> {
        self.inner.token.cancelled()
    }

    /// Resolves once triggered, asking only the flag: for a loop that polls it on every wake
    /// from a task that has `register`ed a wait of its own (which is what wakes it).
    pub fn triggered(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|_| {
            if self.is_triggered() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Polls `wait`, a pinned `self.wait()`, once: from then on the trigger wakes this task,
    /// and the task's loop asks `is_triggered()` (an atomic load) on each wake instead of
    /// polling `wait` again, which takes two process-wide locks (the token's, and its waiter
    /// list's to check the waker) on every poll.
    ///
    /// Only for a future kept pinned in the task that registered it: tokio hands a task the
    /// same waker on every poll, so the one registered stays the one to wake.
    ///
    /// A plain fn returning `poll_fn`: as an async fn its future was 16 bytes larger, and so
    /// was every idle RESP connection's task.
    pub fn register<'a, 'b>(
        mut wait: Pin<&'a mut WaitForCancellationFuture<'b>>,
    ) -> impl Future<Output = ()> + use<'a, 'b> {
        std::future::poll_fn(move |cx| {
            // Ready means already triggered, which the flag also says; not polled again.
            let _ = wait.as_mut().poll(cx);
            Poll::Ready(())
        })
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

    #[tokio::test]
    async fn a_registered_wait_wakes_its_task_on_trigger() {
        let s = Shutdown::new();
        let (registered_tx, registered) = tokio::sync::oneshot::channel();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move {
                let wait = s.wait();
                tokio::pin!(wait);
                Shutdown::register(wait.as_mut()).await;
                registered_tx.send(()).unwrap();
                let mut wakes = 0;
                std::future::poll_fn(|_| {
                    wakes += 1;
                    if s.is_triggered() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
                wakes
            }
        });
        registered.await.unwrap();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.trigger();
        assert_eq!(waiter.await.unwrap(), 2, "woken once, by the trigger");
    }
}
