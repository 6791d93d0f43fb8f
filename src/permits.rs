//! The connection permits of one pool, served first come, first served.
//!
//! A semaphore that wakes a waiter without reserving the unit for it (glommio's did) lets a
//! client that asks between the wake-up and the waiter's turn take the unit, and the waiter
//! queues again at the back: under steady load a few clients ran hot while others waited for seconds. Here a
//! released permit passes straight to the oldest waiter, and nobody takes a free permit while
//! anyone waits.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Permits of one pool.
pub struct Permits {
    free: Cell<usize>,
    waiters: RefCell<VecDeque<Rc<Slot>>>,
    /// Permits to take back as they are released (a reload made the pool smaller than what is
    /// in use).
    owed: Cell<usize>,
}

/// A place in the queue.
struct Slot {
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    since: Instant,
}

/// One unit of a pool's capacity; dropping it passes it on.
pub struct Permit {
    permits: Rc<Permits>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.permits.release();
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

/// Leaves the queue if the waiting future goes away, and passes on a permit granted to it
/// that it never took.
struct Queued<'a> {
    permits: &'a Rc<Permits>,
    slot: Rc<Slot>,
    taken: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        if self.slot.granted.get() {
            self.permits.release();
        } else {
            self.permits
                .waiters
                .borrow_mut()
                .retain(|s| !Rc::ptr_eq(s, &self.slot));
        }
    }
}

impl Permits {
    /// `n` permits, all free.
    pub fn new(n: usize) -> Rc<Permits> {
        Rc::new(Permits {
            free: Cell::new(n),
            waiters: RefCell::new(VecDeque::new()),
            owed: Cell::new(0),
        })
    }

    /// A free permit, unless none is free or someone is already waiting.
    pub fn try_acquire(self: &Rc<Self>) -> Option<Permit> {
        if self.free.get() == 0 || !self.waiters.borrow().is_empty() {
            return None;
        }
        self.free.set(self.free.get() - 1);
        Some(Permit {
            permits: self.clone(),
        })
    }

    /// A permit within `wait`, in the order of asking; `None` when the wait ran out.
    pub async fn acquire(self: &Rc<Self>, wait: Duration) -> Option<Permit> {
        if let Some(p) = self.try_acquire() {
            return Some(p);
        }
        let mut queued = Queued {
            permits: self,
            slot: Rc::new(Slot {
                granted: Cell::new(false),
                waker: RefCell::new(None),
                since: Instant::now(),
            }),
            taken: false,
        };
        self.waiters.borrow_mut().push_back(queued.slot.clone());
        let slot = queued.slot.clone();
        let granted = poll_fn(move |cx| {
            if slot.granted.get() {
                Poll::Ready(())
            } else {
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        let _ = monoio::time::timeout(wait, granted).await;
        // A grant that raced with the timer still counts.
        if queued.slot.granted.get() {
            queued.taken = true;
            return Some(Permit {
                permits: self.clone(),
            });
        }
        None
    }

    /// Free permits right now.
    pub fn available(&self) -> usize {
        self.free.get()
    }

    /// Clients waiting right now.
    pub fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }

    /// How long the first in the queue has waited (zero when nobody waits).
    pub fn longest_wait(&self, now: Instant) -> Duration {
        self.waiters
            .borrow()
            .front()
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s.since))
    }

    /// Grows or shrinks the number of permits from `from` to `to`: new ones go to waiters
    /// first; ones in use that are too many are taken back as they are released.
    pub fn resize(&self, from: usize, to: usize) {
        if to > from {
            let mut more = to - from;
            // Owed permits are forgiven before new ones are made.
            let forgiven = more.min(self.owed.get());
            self.owed.set(self.owed.get() - forgiven);
            more -= forgiven;
            for _ in 0..more {
                self.release();
            }
        } else {
            let fewer = from - to;
            let now = fewer.min(self.free.get());
            self.free.set(self.free.get() - now);
            self.owed.set(self.owed.get() + fewer - now);
        }
    }

    fn release(&self) {
        if self.owed.get() > 0 {
            self.owed.set(self.owed.get() - 1);
            return;
        }
        let next = self.waiters.borrow_mut().pop_front();
        match next {
            Some(slot) => {
                slot.granted.set(true);
                if let Some(w) = slot.waker.borrow_mut().take() {
                    w.wake();
                }
            }
            None => self.free.set(self.free.get() + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::poll_once;

    fn run(test: impl std::future::Future<Output = ()>) {
        crate::worker::block_on(test);
    }

    /// Lets the other tasks run: monoio polls a future that woke itself again before them, so
    /// a plain yield is not enough.
    async fn let_others_run() {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }

    #[test]
    fn waiters_are_served_in_order_and_nobody_jumps_the_queue() {
        run(async {
            let permits = Permits::new(1);
            let held = permits.try_acquire().expect("one free");
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for i in 0..3 {
                let (mine, order) = (permits.clone(), order.clone());
                tasks.push(monoio::spawn(async move {
                    let p = mine.acquire(Duration::from_secs(5)).await;
                    order.borrow_mut().push((i, p.is_some()));
                    let_others_run().await;
                    drop(p);
                }));
                let_others_run().await;
            }
            assert_eq!(permits.waiting(), 3);
            drop(held);
            // The permit went to the first waiter, not back to the free count.
            assert_eq!(permits.available(), 0);
            assert!(permits.try_acquire().is_none(), "jumped the queue");
            for t in tasks {
                t.await;
            }
            assert_eq!(*order.borrow(), vec![(0, true), (1, true), (2, true)]);
            assert_eq!(permits.available(), 1);
            assert_eq!(permits.waiting(), 0);
        });
    }

    #[test]
    fn a_timed_out_or_dropped_waiter_leaves_no_permit_behind() {
        run(async {
            let permits = Permits::new(1);
            let held = permits.try_acquire().expect("one free");
            assert!(permits.acquire(Duration::from_millis(20)).await.is_none());
            assert_eq!(permits.waiting(), 0, "the timed-out waiter left the queue");
            {
                let mut waiting = Box::pin(permits.acquire(Duration::from_secs(5)));
                assert!(poll_once(&mut waiting).await.is_none(), "still waiting");
                assert_eq!(permits.waiting(), 1);
            }
            assert_eq!(permits.waiting(), 0, "a dropped waiter left the queue");
            {
                let mut waiting = Box::pin(permits.acquire(Duration::from_secs(5)));
                assert!(poll_once(&mut waiting).await.is_none(), "still waiting");
                drop(held); // granted to the waiter, which is dropped before it runs
                assert_eq!(permits.available(), 0);
            }
            assert_eq!(permits.available(), 1, "the unclaimed grant came back");
        });
    }

    #[test]
    fn a_pool_grows_at_once_and_shrinks_as_permits_come_back() {
        let permits = Permits::new(2);
        let a = permits.try_acquire().unwrap();
        let b = permits.try_acquire().unwrap();
        assert!(permits.try_acquire().is_none());
        permits.resize(2, 3);
        let c = permits.try_acquire().expect("a third permit after growing");
        // Down to 1 while 3 are in use: the first two that come back are kept.
        permits.resize(3, 1);
        drop(a);
        drop(b);
        assert!(permits.try_acquire().is_none(), "two taken back");
        drop(c);
        let d = permits.try_acquire().expect("the one that stays");
        assert!(permits.try_acquire().is_none());
        // Growing again forgives what is still owed first.
        permits.resize(1, 1);
        drop(d);
        assert_eq!(permits.available(), 1);
        permits.resize(1, 0);
        assert_eq!(permits.available(), 0);
        permits.resize(0, 2);
        assert_eq!(permits.available(), 2);
    }
}
