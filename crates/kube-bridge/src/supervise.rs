//! Node-wide background tasks, supervised: a panic (a bug, or input nobody bounded) is caught, logged
//! with the task's name, counted in `task_panics_total{task}`, and the task starts again after a
//! backoff. While a task waits to restart, or crash-loops, readiness says so by name.
//!
//! Work done per volume or per object inside a task is isolated too ([`isolate`]): one tenant's
//! input that panics fails that tenant's refresh, not everyone's.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::FutureExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// First restart delay; doubles per crash in a row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long resets the crash count: the task is healthy again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Crashes in a row (each run shorter than [`HEALTHY_RUN`]) after which readiness turns false.
const CRASH_LOOP: u32 = 3;

/// `task_panics_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

#[derive(Clone, Copy, Debug)]
struct State {
    crashes_in_a_row: u32,
    restarting: bool,
    started: Instant,
}

/// The supervised tasks of one process.
#[derive(Clone, Default)]
pub struct Tasks {
    panics: Family<TaskLabels, Counter>,
    states: Arc<Mutex<BTreeMap<&'static str, State>>>,
}

impl Tasks {
    /// The process's tasks: one `task_panics_total` family for the node driver, its watches and the
    /// SecretSync controller.
    pub fn global() -> &'static Tasks {
        static GLOBAL: std::sync::OnceLock<Tasks> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(Tasks::default)
    }

    /// Registers `task_panics_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "task_panics",
            "Panics caught in node-wide background tasks, by task (each one restarts the task)",
            self.panics.clone(),
        );
    }

    /// Panics caught in `task` so far.
    pub fn panics(&self, task: &str) -> u64 {
        self.panics.get_or_create(&TaskLabels { task: task.into() }).get()
    }

    /// Counts a panic caught inside `task` while working for one tenant (see [`isolate`]).
    pub fn record_isolated(&self, task: &'static str, message: &str) {
        self.panics.get_or_create(&TaskLabels { task: task.into() }).inc();
        tracing::error!(task, panic = %message, "caught a panic in one volume's work; the task goes on");
    }

    /// Tasks that cannot run now (waiting to restart, or crash-looping): empty when all are fine.
    pub fn unhealthy(&self) -> Vec<&'static str> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states
            .iter()
            .filter(|(_, s)| s.restarting || s.crashes_in_a_row >= CRASH_LOOP && s.started.elapsed() < HEALTHY_RUN)
            .map(|(n, _)| *n)
            .collect()
    }

    fn update(&self, name: &'static str, f: impl FnOnce(&mut State)) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let s = states.entry(name).or_insert(State { crashes_in_a_row: 0, restarting: false, started: Instant::now() });
        f(s);
    }

    /// Runs the task `make(stop())` builds until it returns (it watches its own `stop()`, so a stop
    /// lets it finish its current step); a panic restarts it after a backoff.
    pub async fn supervise<S, SF, F, Fut>(&self, name: &'static str, stop: S, mut make: F)
    where
        S: Fn() -> SF,
        SF: Future<Output = ()> + Send + 'static,
        F: FnMut(SF) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            self.update(name, |s| {
                s.restarting = false;
                s.started = Instant::now();
            });
            let result = tokio::spawn(make(stop())).await;
            let panic = match result {
                Ok(()) => return,
                Err(e) if e.is_panic() => e.into_panic(),
                Err(_) => return, // cancelled: the runtime is shutting down
            };
            let mut delay = FIRST_BACKOFF;
            self.update(name, |s| {
                s.crashes_in_a_row = if s.started.elapsed() >= HEALTHY_RUN { 1 } else { s.crashes_in_a_row + 1 };
                s.restarting = true;
                delay = FIRST_BACKOFF.saturating_mul(1 << s.crashes_in_a_row.min(8)).min(MAX_BACKOFF);
            });
            self.panics.get_or_create(&TaskLabels { task: name.into() }).inc();
            tracing::error!(task = name, panic = %panic_message(&*panic), restart_in = ?delay,
                "background task panicked; restarting it");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop() => return,
            }
        }
    }
}

/// Runs `fut`, turning a panic into `Err(message)`: for work done on behalf of one tenant inside a
/// node-wide task.
pub async fn isolate<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(fut).catch_unwind().await.map_err(|p| panic_message(&*p))
}

/// A panic's message, bounded (a panic message is ours, but keep logs sane whatever it says).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into());
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_counted_reported_unready_and_restarted() {
        let tasks = Tasks::default();
        let runs = Arc::new(AtomicU32::new(0));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stop = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let t = tasks.clone();
        let r = runs.clone();
        let supervisor = tokio::spawn(async move {
            t.supervise("hostile", stop, move |stop| {
                let r = r.clone();
                async move {
                    let n = r.fetch_add(1, Ordering::SeqCst);
                    if n < 4 {
                        let huge = Duration::MAX;
                        let _ = tokio::time::Instant::now() + huge; // what an unbounded annotation did
                    }
                    stop.await
                }
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(tasks.panics("hostile"), 1);
        assert_eq!(tasks.unhealthy(), ["hostile"], "waiting to restart");
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 5, "restarted after each panic");
        assert_eq!(tasks.panics("hostile"), 4);
        assert!(tasks.unhealthy().is_empty(), "running again for a minute: ready");
        stop_tx.send(true).unwrap();
        supervisor.await.unwrap();
    }

    #[tokio::test]
    async fn isolate_turns_a_panic_into_an_error() {
        assert_eq!(isolate(async { 1 }).await, Ok(1));
        let e = isolate(async { panic!("boom") }).await.unwrap_err();
        assert_eq!(e, "boom");
    }
}
