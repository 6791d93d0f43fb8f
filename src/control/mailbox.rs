//! A channel a monoio task can await: a crossbeam channel whose sender also wakes the task
//! that drains it, so that a core sleeps until a message comes instead of looking on a timer.
//! Cores' inboxes are mailboxes, and so are the answers the admin console waits for.

use std::sync::Arc;
use std::task::{Poll, Waker};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

/// A new mailbox.
pub fn mailbox<T>() -> (Mailbox<T>, MailboxReceiver<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let bell = Arc::new(Doorbell::default());
    (
        Mailbox {
            tx: Some(tx),
            bell: bell.clone(),
        },
        MailboxReceiver { rx, bell },
    )
}

/// The waker of the task that drains a mailbox. The only lock between threads, taken once per
/// message (and never on the data path).
#[derive(Default)]
struct Doorbell {
    waker: std::sync::Mutex<Option<Waker>>,
}

impl Doorbell {
    fn ring(&self) {
        let waker = self.waker.lock().map(|mut w| w.take()).unwrap_or(None);
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn listen(&self, waker: &Waker) {
        if let Ok(mut w) = self.waker.lock() {
            match w.as_ref() {
                Some(old) if old.will_wake(waker) => {}
                _ => *w = Some(waker.clone()),
            }
        }
    }
}

/// Sends to a mailbox and wakes its reader.
pub struct Mailbox<T> {
    /// `None` only while it is dropped.
    tx: Option<Sender<T>>,
    bell: Arc<Doorbell>,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Mailbox {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Mailbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mailbox")
    }
}

/// Two senders are equal when they send to the same mailbox.
impl<T> PartialEq for Mailbox<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.bell, &other.bell)
    }
}

impl<T> Eq for Mailbox<T> {}

impl<T> Mailbox<T> {
    /// Queues `msg` and wakes the reader; fails once the reader is gone.
    pub fn send(&self, msg: T) -> Result<(), crossbeam_channel::SendError<T>> {
        match &self.tx {
            Some(tx) => tx.send(msg)?,
            None => return Err(crossbeam_channel::SendError(msg)),
        }
        self.bell.ring();
        Ok(())
    }
}

impl<T> Drop for Mailbox<T> {
    fn drop(&mut self) {
        // The last sender gone disconnects the channel: the reader must see it. The sender
        // goes first: a reader woken before it is gone would find the channel still connected,
        // go back to sleep, and never be woken again.
        drop(self.tx.take());
        self.bell.ring();
    }
}

/// The reading end of a mailbox (one task reads it).
pub struct MailboxReceiver<T> {
    rx: Receiver<T>,
    bell: Arc<Doorbell>,
}

impl<T> MailboxReceiver<T> {
    /// The next message within `limit`, blocking: for threads that are no core (the metrics
    /// server), never on a core.
    pub fn recv_blocking(&self, limit: std::time::Duration) -> Option<T> {
        self.rx.recv_timeout(limit).ok()
    }

    /// The next message; `None` once every sender is gone.
    pub async fn recv(&self) -> Option<T> {
        std::future::poll_fn(|cx| {
            match self.rx.try_recv() {
                Ok(msg) => return Poll::Ready(Some(msg)),
                Err(TryRecvError::Disconnected) => return Poll::Ready(None),
                Err(TryRecvError::Empty) => {}
            }
            self.bell.listen(cx.waker());
            // A message sent between the first look and the registration rang nobody.
            match self.rx.try_recv() {
                Ok(msg) => Poll::Ready(Some(msg)),
                Err(TryRecvError::Disconnected) => Poll::Ready(None),
                Err(TryRecvError::Empty) => Poll::Pending,
            }
        })
        .await
    }
}
