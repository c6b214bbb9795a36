//! One session's bounded outgoing queue of frames: any thread pushes, the session's writer takes
//! everything queued at once.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::Waker;

use bytestring::ByteString;
use futures_util::task::AtomicWaker;

/// A frame queued for one session's outlet. (Control frames, pings, pongs and the close frame,
/// go through the session's `actix_ws::Session`.)
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A JSON text frame, encoded once and shared by every recipient.
    Text(ByteString),
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue holds its capacity already.
    Full,
    /// The session's writing has ended.
    Closed,
}

/// One session's bounded outgoing queue. Any thread pushes frames; the session's writer (the
/// connection's response body) takes everything queued at once, so a burst of frames is one
/// lock and one wake-up for the writer rather than one per frame. Nothing is allocated while the
/// queue has never held a frame.
pub struct OutQueue {
    cap: usize,
    inner: Mutex<OutInner>,
    waker: AtomicWaker,
}

#[derive(Default)]
struct OutInner {
    frames: VecDeque<Outbound>,
    closed: bool,
}

impl OutQueue {
    /// A queue holding at most `cap` frames (at least one).
    pub fn new(cap: usize) -> Self {
        Self { cap: cap.max(1), inner: Mutex::new(OutInner::default()), waker: AtomicWaker::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `out` unless the queue is full or closed; returns whether it was empty (then the
    /// writer, which takes everything each time, needs waking).
    fn enqueue(&self, out: Outbound) -> Result<bool, QueueError> {
        let mut q = self.lock();
        if q.closed {
            return Err(QueueError::Closed);
        }
        if q.frames.len() >= self.cap {
            return Err(QueueError::Full);
        }
        let was_empty = q.frames.is_empty();
        q.frames.push_back(out);
        Ok(was_empty)
    }

    /// Queues `out` unless the queue is full or closed; wakes the writer if it was empty.
    pub fn try_send(&self, out: Outbound) -> Result<(), QueueError> {
        if self.enqueue(out)? {
            self.waker.wake();
        }
        Ok(())
    }

    /// [`Self::try_send`], but the writer's waker (when it needs waking) is moved to `wakes`
    /// instead of being woken: a fan-out wakes writers once it has queued more frames.
    pub fn try_send_deferred(&self, out: Outbound, wakes: &mut Vec<Waker>) -> Result<(), QueueError> {
        if self.enqueue(out)? {
            if let Some(w) = self.waker.take() {
                wakes.push(w);
            }
        }
        Ok(())
    }

    /// Swaps everything queued into `into` (empty, its capacity reused) and returns whether the
    /// queue is closed. With nothing queued, `waker` is woken by the next frame.
    pub fn take_all(&self, into: &mut VecDeque<Outbound>, waker: &std::task::Waker) -> bool {
        self.waker.register(waker);
        let mut q = self.lock();
        std::mem::swap(&mut q.frames, into);
        q.closed
    }

    /// Accepts no more frames (what is queued can still be taken) and wakes the writer.
    pub fn close(&self) {
        self.lock().closed = true;
        self.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer taking everything at once from another thread, woken only as the queue says,
    /// gets every frame, in order, whether pushes wake it at once or in held-back batches.
    #[test]
    fn out_queue_loses_no_wake_up() {
        const N: usize = 200_000;
        let q = Arc::new(OutQueue::new(N));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut wakes = Vec::new();
                for i in 0..N {
                    let out = Outbound::Text(ByteString::from(i.to_string()));
                    if i % 3 == 0 {
                        q.try_send(out).expect("queued");
                    } else {
                        q.try_send_deferred(out, &mut wakes).expect("queued");
                        if i % 7 == 0 {
                            wakes.drain(..).for_each(Waker::wake);
                        }
                    }
                }
                wakes.drain(..).for_each(Waker::wake);
                q.close();
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let got = rt.block_on(async {
            let mut taken = VecDeque::new();
            let mut next = 0usize;
            std::future::poll_fn(|cx| loop {
                let closed = q.take_all(&mut taken, cx.waker());
                let empty = taken.is_empty();
                for out in taken.drain(..) {
                    let Outbound::Text(t) = out;
                    assert_eq!(t.parse::<usize>().expect("a number"), next, "frames in order");
                    next += 1;
                }
                if closed && empty {
                    return std::task::Poll::Ready(next);
                }
                if empty {
                    return std::task::Poll::Pending;
                }
            })
            .await
        });
        producer.join().expect("producer");
        assert_eq!(got, N);
    }
}
