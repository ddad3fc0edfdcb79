//! Running host work on a real thread stack while a guest is suspended.
//!
//! Async host functions run on the guest's fiber, a separate stack that the
//! thread does not know about. Code that checks its remaining stack against the
//! thread's limits (Cedar's evaluator does) reads nonsense there. A host
//! function hands such work to [`ThreadStack::run`]; the engine wraps every
//! guest call in [`OnThreadStack`], which runs the work between two polls of
//! the guest, on the thread that drives it, and resumes the guest right away.
//! There is no other thread and no syscall: one fiber switch out and back in.
//!
//! Work may also come from tasks of its own (wasi:http sends each request
//! from a spawned task), several at once and from other threads: each job
//! has its own result, and whoever runs it, its caller or the driver, the
//! caller gets that result.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

type Job = Box<dyn FnOnce() + Send>;

/// The jobs waiting between a guest's host functions and the future that
/// drives the guest.
#[derive(Default)]
pub struct ThreadStack {
    jobs: Mutex<Vec<(u64, Job)>>,
    next: AtomicU64,
}

impl std::fmt::Debug for ThreadStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadStack").finish_non_exhaustive()
    }
}

impl ThreadStack {
    pub fn new() -> Arc<Self> {
        Arc::new(ThreadStack::default())
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Job)>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Any waiting job, for the driver.
    fn take(&self) -> Option<Job> {
        self.jobs().pop().map(|(_, job)| job)
    }

    /// Job `id`, if nobody has taken it yet.
    fn take_own(&self, id: u64) -> Option<Job> {
        let mut jobs = self.jobs();
        let at = jobs.iter().position(|(queued, _)| *queued == id)?;
        Some(jobs.swap_remove(at).1)
    }

    /// Run `work` on the stack of the thread that drives the guest.
    ///
    /// Without an [`OnThreadStack`] driver (a host function called directly,
    /// as in tests), the work runs inline on the caller's stack.
    pub async fn run<R, F>(&self, work: F) -> R
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (out, result) = tokio::sync::oneshot::channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.jobs().push((
            id,
            Box::new(move || {
                let _ = out.send(work());
            }),
        ));
        YieldOnce(false).await;
        // No driver took the job: run it here.
        if let Some(job) = self.take_own(id) {
            job();
        }
        // Run, or being run by the driver on another thread.
        match result.await {
            Ok(value) => value,
            // Whoever takes a job runs it, and `self` keeps it until then.
            Err(_) => unreachable_job(),
        }
    }
}

#[cold]
fn unreachable_job() -> ! {
    #[allow(clippy::panic)]
    {
        panic!("thread-stack job did not produce a value")
    }
}

/// Returns `Pending` once, waking itself so that nothing hangs without a driver.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

pin_project_lite::pin_project! {
    /// Drives a guest call and runs its [`ThreadStack`] jobs between polls.
    ///
    /// Must be polled from a real thread stack (a tokio task), not from inside
    /// another guest's host function.
    pub struct OnThreadStack<F> {
        #[pin]
        inner: F,
        stack: Arc<ThreadStack>,
    }
}

impl<F> OnThreadStack<F> {
    pub fn new(stack: Arc<ThreadStack>, inner: F) -> Self {
        OnThreadStack { inner, stack }
    }
}

impl<F: Future> Future for OnThreadStack<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        loop {
            if let Poll::Ready(value) = this.inner.as_mut().poll(cx) {
                return Poll::Ready(value);
            }
            match this.stack.take() {
                Some(job) => job(),
                None => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_inline_without_a_driver() {
        let stack = ThreadStack::new();
        assert_eq!(stack.run(|| 6 * 7).await, 42);
    }

    #[tokio::test]
    async fn driver_runs_work_between_polls() {
        let stack = ThreadStack::new();
        let inner_stack = stack.clone();
        let caller = std::thread::current().id();
        let ran_on = OnThreadStack::new(stack, async move {
            let a = inner_stack.run(|| std::thread::current().id()).await;
            let b = inner_stack.run(|| 1 + 1).await;
            (a, b)
        })
        .await;
        assert_eq!(ran_on, (caller, 2));
    }

    /// Two callers in flight at once (as two wasi:http requests are) each
    /// get their own result, whoever runs their job.
    #[tokio::test]
    async fn callers_in_flight_at_once_each_get_their_own_result() {
        let stack = ThreadStack::new();
        let (a, b) = tokio::join!(stack.run(|| "a"), stack.run(|| "b"));
        assert_eq!((a, b), ("a", "b"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_on_other_threads_and_a_driver_share_one_stack() {
        let stack = ThreadStack::new();
        let mut callers = Vec::new();
        for task in 0..4u64 {
            let stack = stack.clone();
            callers.push(tokio::spawn(async move {
                for n in 0..500u64 {
                    assert_eq!(stack.run(move || task * 1000 + n).await, task * 1000 + n);
                }
            }));
        }
        let inner_stack = stack.clone();
        let driven = OnThreadStack::new(stack, async move {
            for n in 0..500u64 {
                assert_eq!(inner_stack.run(move || n).await, n);
            }
        });
        driven.await;
        for caller in callers {
            caller.await.unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
