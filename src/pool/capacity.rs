//! A counted capacity that can be resized while permits are out: the pool size of a tenant
//! and the global budget are both one of these.
//!
//! Growing adds permits at once. Shrinking forgets the permits that are free and remembers
//! the rest as owed; the next permits to come back are forgotten instead of returned, so
//! the number out never exceeds the new size for longer than the transactions running.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A resizable FIFO semaphore.
#[derive(Debug)]
pub struct Capacity {
    semaphore: Arc<Semaphore>,
    size: AtomicUsize,
    owed: AtomicUsize,
}

/// One unit of a [`Capacity`], returned (or forgotten, if owed) on drop.
#[derive(Debug)]
pub struct Permit {
    inner: Option<OwnedSemaphorePermit>,
    capacity: Arc<Capacity>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let paid = self
            .capacity
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1));
        if paid.is_ok() {
            inner.forget();
        }
    }
}

/// The wait ended without a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// The deadline passed.
    Timeout,
    /// The capacity was closed.
    Closed,
}

impl Capacity {
    /// A capacity of `size`.
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(Self {
            semaphore: Arc::new(Semaphore::new(size)),
            size: AtomicUsize::new(size),
            owed: AtomicUsize::new(0),
        })
    }

    /// The configured size.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Acquire)
    }

    /// Permits currently out.
    pub fn in_use(&self) -> usize {
        let total = self.size() + self.owed.load(Ordering::Acquire);
        total.saturating_sub(self.semaphore.available_permits())
    }

    /// A permit if one is free now.
    pub fn try_take(self: &Arc<Self>) -> Option<Permit> {
        let inner = self.semaphore.clone().try_acquire_owned().ok()?;
        Some(self.wrap(inner))
    }

    /// Waits in FIFO order until `deadline` for a permit.
    pub async fn take(self: &Arc<Self>, deadline: Instant) -> Result<Permit, TakeError> {
        let wait = self.semaphore.clone().acquire_owned();
        match tokio::time::timeout_at(deadline.into(), wait).await {
            Ok(Ok(inner)) => Ok(self.wrap(inner)),
            Ok(Err(_)) => Err(TakeError::Closed),
            Err(_) => Err(TakeError::Timeout),
        }
    }

    fn wrap(self: &Arc<Self>, inner: OwnedSemaphorePermit) -> Permit {
        Permit {
            inner: Some(inner),
            capacity: self.clone(),
        }
    }

    /// Changes the size; see the module docs for shrinking.
    pub fn resize(&self, size: usize) {
        let old = self.size.swap(size, Ordering::AcqRel);
        if size > old {
            let grow = size - old;
            let cancelled = self.cancel_owed(grow);
            self.semaphore.add_permits(grow - cancelled);
        } else if size < old {
            let shrink = old - size;
            let forgotten = self.semaphore.forget_permits(shrink);
            self.owed.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
    }

    /// Cancels up to `n` owed permits; returns how many.
    fn cancel_owed(&self, n: usize) -> usize {
        let mut cancelled = 0;
        let _ = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                cancelled = owed.min(n);
                Some(owed - cancelled)
            });
        cancelled
    }

    /// Fails every waiter and every later take.
    pub fn close(&self) {
        self.semaphore.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_below_permits_out_is_paid_back_on_return() {
        let cap = Capacity::new(3);
        let a = cap.try_take().expect("1");
        let b = cap.try_take().expect("2");

        cap.resize(1);
        assert!(cap.try_take().is_none(), "already over the new size");

        drop(a);
        assert!(cap.try_take().is_none(), "the first return pays the debt");
        drop(b);
        let c = cap.try_take().expect("now one is free");
        assert_eq!(cap.in_use(), 1);
        drop(c);
    }

    #[test]
    fn growing_cancels_debt_first() {
        let cap = Capacity::new(2);
        let a = cap.try_take().expect("1");
        let b = cap.try_take().expect("2");
        cap.resize(0);
        cap.resize(2);
        drop(a);
        drop(b);
        let _x = cap.try_take().expect("1 again");
        let _y = cap.try_take().expect("2 again");
        assert!(cap.try_take().is_none());
    }
}
