//! Connection tasks: every connection runs in a task of its own, and a panic in one (a bug
//! reached by some input) is caught, counted and logged, and ends only that connection —
//! its socket is closed as the task unwinds — never the process or the accept loop.

use futures_util::FutureExt;
use prometheus::IntCounter;
use std::{future::Future, panic::AssertUnwindSafe};

pub fn spawn_isolated<F>(panics: IntCounter, conn: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    // A combinator, not an `async move` block: awaiting a captured future inside an async
    // block stores it twice in the task (rust-lang/rust#62958), and an idle RESP connection's
    // task is mostly this future.
    tokio::spawn(AssertUnwindSafe(conn).catch_unwind().map(move |done| {
        if let Err(panic) = done {
            panics.inc();
            let what = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            tracing::error!(
                panic = what,
                "a connection task panicked; that connection was closed"
            );
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_connection_is_counted_and_others_carry_on() {
        let panics = IntCounter::new("p", "p").unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        spawn_isolated(panics.clone(), async move {
            let _socket_stand_in = dropped_tx; // dropped as the task unwinds
            panic!("boom");
        });
        spawn_isolated(panics.clone(), async move {
            tx.send(()).unwrap();
        });
        rx.await.expect("the other connection ran");
        assert!(
            dropped_rx.await.is_err(),
            "the panicking task released what it held"
        );
        assert_eq!(panics.get(), 1);
    }
}
