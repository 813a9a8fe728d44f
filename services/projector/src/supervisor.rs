//! Keeps each sale's projector task running: a task that panics is logged (the sale and
//! the panic message) and started again after a backoff, each restart counted
//! (`yoink_projector_task_restarts_total{sale}`), so one bug cannot silently stop a
//! sale's projection.
//!
//! What a panicked task held stays pending under this consumer's name and is reclaimed
//! by the next run. Never restart once shutdown was asked for, and never let a panic
//! pass without an error log.
//!
//! An archived sale (`yoink sale archive`) has no Redis state left and must never get
//! any back: `supervise_sale` does not start its task, and stops a running one within
//! `ARCHIVED_POLL` of PostgreSQL recording the archive (before the archive removes the
//! keys: it waits longer than that), so the task's fence never suspends the emptied
//! sale and no rebuild brings it back.

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use yoink_core::SaleId;
use yoink_core::backoff::Backoff;

use crate::metrics;

/// How often a sale's supervisor asks PostgreSQL whether the sale was archived.
pub const ARCHIVED_POLL: Duration = Duration::from_millis(500);

/// `supervise`, for as long as the sale is not archived: PostgreSQL is asked before
/// the first run and every `ARCHIVED_POLL`; once it says archived, the task is stopped
/// (aborted: an archived sale was drained, there is nothing in hand) and never
/// restarted. A PostgreSQL that does not answer changes nothing: the task runs on.
pub async fn supervise_sale<F, Fut>(
    sale: SaleId,
    pool: deadpool_postgres::Pool,
    start: F,
    shutdown: watch::Receiver<bool>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if archived(&pool, &sale).await {
        tracing::info!(sale_id = %sale, "Sale archived: PostgreSQL alone holds it; not projecting it.");
        return;
    }
    let supervised = supervise(sale.clone(), start, shutdown);
    tokio::pin!(supervised);
    let mut poll = tokio::time::interval(ARCHIVED_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut supervised => return,
            _ = poll.tick() => {
                if archived(&pool, &sale).await {
                    tracing::info!(sale_id = %sale, "Sale archived: its projector task stops.");
                    return;
                }
            }
        }
    }
}

async fn archived(pool: &deadpool_postgres::Pool, sale: &SaleId) -> bool {
    match pool.get().await {
        Ok(client) => yoink_core::archive::is_archived(&client, sale)
            .await
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A run that lasted this long was healthy: the next panic waits the shortest backoff
/// again rather than the longest.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs `start()` as a task until it returns (it stopped for shutdown), restarting it
/// after each panic until `shutdown` turns true.
pub async fn supervise<F, Fut>(sale: SaleId, mut start: F, mut shutdown: watch::Receiver<bool>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::new();
    loop {
        let started = Instant::now();
        let mut task = AbortOnDrop(tokio::spawn(start()));
        let failure = match (&mut task.0).await {
            Ok(()) => return,
            Err(err) if err.is_panic() => panic_message(err.into_panic()),
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        };
        tracing::error!(sale_id = %sale, panic = %failure, "Sale projector task panicked.");
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        if backoff.wait(&mut shutdown).await {
            return;
        }
        metrics::task_restarted(&sale);
        tracing::info!(sale_id = %sale, "Restarting the sale projector task.");
    }
}

/// A task that is aborted when its supervisor is dropped, so an aborted projector
/// leaves no sale task running behind it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a payload that is not text".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn restarts(sale: &SaleId) -> f64 {
        yoink_testkit::sale_metric(metrics::TASK_RESTARTS, sale)
    }

    /// Starts a task that panics on its first `panics` runs and then runs until shutdown.
    fn flaky(
        panics: usize,
        runs: Arc<AtomicUsize>,
        shutdown: watch::Receiver<bool>,
    ) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        move || {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            let mut shutdown = shutdown.clone();
            Box::pin(async move {
                assert!(run >= panics, "run {run} fails");
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
        }
    }

    // One thread (the default): the supervisor logs on the test's thread, where the
    // capture is installed.
    #[tokio::test]
    async fn a_sale_task_that_panics_is_logged_counted_and_restarted() {
        let log = yoink_testkit::logs::capture();
        let sale = SaleId::parse("supervised-panics-once").expect("valid");
        // The recorder must exist before the supervisor counts anything.
        let _ = yoink_core::telemetry::prometheus();
        let before = restarts(&sale);
        let runs = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(
            sale.clone(),
            flaky(1, runs.clone(), stopped.clone()),
            stopped,
        ));

        let deadline = Instant::now() + Duration::from_secs(5);
        while runs.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "restarted once after the panic"
        );
        assert_eq!(restarts(&sale), before + 1.0);
        let printed = log.text();
        let errors: Vec<&str> = printed.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{printed}");
        assert!(
            errors[0].contains("supervised-panics-once") && errors[0].contains("run 0 fails"),
            "the sale and the panic message: {}",
            errors[0]
        );

        let _ = stop.send(true);
        tokio::time::timeout(Duration::from_secs(2), supervisor)
            .await
            .expect("stops on shutdown")
            .expect("the supervisor itself never panics");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "not restarted after stopping"
        );
    }

    #[tokio::test]
    async fn a_task_that_panics_during_shutdown_is_not_restarted_nor_counted() {
        let sale = SaleId::parse("supervised-panics-at-shutdown").expect("valid");
        let _ = yoink_core::telemetry::prometheus();
        let runs = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let _ = stop.send(true);
        tokio::time::timeout(
            Duration::from_secs(2),
            supervise(
                sale.clone(),
                flaky(usize::MAX, runs.clone(), stopped.clone()),
                stopped,
            ),
        )
        .await
        .expect("returns at once");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(restarts(&sale), 0.0);
    }
}
