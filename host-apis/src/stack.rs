//! Running host work on a real thread stack while a guest is suspended.
//!
//! Async host functions run on the guest's fiber, a separate stack that the
//! thread does not know about. Code that checks its remaining stack against the
//! thread's limits (Cedar's evaluator does) reads nonsense there. A host
//! function hands such work to [`ThreadStack::run`]; the engine wraps every
//! guest call in [`OnThreadStack`], which runs the work between two polls of
//! the guest, on the thread that drives it, and resumes the guest right away.
//! There is no other thread and no syscall: one fiber switch out and back in.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

type Job = Box<dyn FnOnce() + Send>;

/// A one-job mailbox between a guest's host functions and the future that
/// drives the guest.
#[derive(Default)]
pub struct ThreadStack {
    job: Mutex<Option<Job>>,
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

    fn put(&self, job: Job) {
        *self.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(job);
    }

    fn take(&self) -> Option<Job> {
        self.job
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
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
        let slot: Arc<Mutex<Option<R>>> = Arc::new(Mutex::new(None));
        let out = slot.clone();
        self.put(Box::new(move || {
            let value = work();
            *out.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
        }));
        YieldOnce(false).await;
        // No driver took the job: run it here.
        if let Some(job) = self.take() {
            job();
        }
        let value = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        match value {
            Some(value) => value,
            // The job always fills the slot once it has run, and it has run.
            None => unreachable_job(),
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
}
