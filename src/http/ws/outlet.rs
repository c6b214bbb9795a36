//! The writing half of a WebSocket session: its response body.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::{BufMut, Bytes, BytesMut};

use confab_actors::registry::{OutQueue, Outbound};

/// Capacity of the outlet's spare queue kept between polls; a larger one (after a burst) is freed.
const OUTLET_KEEP: usize = 64;

/// actix-ws's response body (the frames sent through the session's `actix_ws::Session`), as a
/// stream of encoded frames.
pub type ControlBody = Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, Box<dyn std::error::Error>>>>>;

/// The response body of a WebSocket connection: the writing half of its session.
///
/// Each poll takes everything in the session's outgoing queue and returns it as one chunk of
/// encoded frames, and passes on what actix-ws's own body has (control frames). The close frame,
/// sent through actix-ws once the session stopped, goes out only after every frame queued before
/// it: the session closes its queue before it sends the close frame, so a close frame that
/// arrives while the queue still looks open is held until the queue is drained. The body ends
/// when both have ended. Dropping the outlet (the connection is gone) closes the queue, so
/// senders see the session as closed, and drops actix-ws's body, which ends the incoming stream.
pub struct Outlet {
    queue: Arc<OutQueue>,
    /// Frames taken from the queue; its storage is swapped back in on the next take.
    taken: VecDeque<Outbound>,
    /// The queue was closed and drained.
    done: bool,
    control: Option<ControlBody>,
    /// Tells whether `control` has anything: it is polled only then, not at every wake-up of
    /// the connection (each poll of actix-ws's channel costs a visit to its cold memory).
    control_wake: Arc<ControlWake>,
    /// A waker for `control` made of `control_wake`.
    control_waker: std::task::Waker,
    /// A chunk of control frames ending with the close frame, waiting for the queue to drain.
    held: Option<Bytes>,
}

/// The waker `control` is polled with: it notes that `control` has something, then wakes the
/// connection's task.
struct ControlWake {
    /// Set when `control` woke, or returned something (so it is polled again); initially set.
    ready: std::sync::atomic::AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for ControlWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
        self.task.wake();
    }
}

impl Outlet {
    /// The outlet of `queue`, carrying `control` (actix-ws's response body) too.
    pub fn new(queue: Arc<OutQueue>, control: ControlBody) -> Outlet {
        let control_wake = Arc::new(ControlWake {
            ready: std::sync::atomic::AtomicBool::new(true),
            task: futures_util::task::AtomicWaker::new(),
        });
        let control_waker = std::task::Waker::from(control_wake.clone());
        Outlet {
            queue,
            taken: VecDeque::new(),
            done: false,
            control: Some(control),
            control_wake,
            control_waker,
            held: None,
        }
    }

    /// Everything queued, encoded; `None` when nothing is (or the queue is done).
    fn take(&mut self, cx: &mut TaskContext<'_>) -> Option<Bytes> {
        if self.done {
            return None;
        }
        // A close is seen under the same lock as the frames queued before it: they all go first.
        let closed = self.queue.take_all(&mut self.taken, cx.waker());
        let size: usize = self.taken.iter().map(|Outbound::Text(t)| t.len() + 10).sum();
        let mut buf = BytesMut::with_capacity(size);
        for Outbound::Text(t) in self.taken.drain(..) {
            put_frame(&mut buf, 0x1, &[t.as_bytes()]);
        }
        if self.taken.capacity() > OUTLET_KEEP {
            self.taken = VecDeque::new();
        }
        self.done = closed;
        (!buf.is_empty()).then(|| buf.freeze())
    }
}

/// Appends one unmasked (server-to-client) frame with FIN set.
fn put_frame(buf: &mut BytesMut, opcode: u8, payload: &[&[u8]]) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    buf.reserve(len + 10);
    buf.put_u8(0x80 | opcode);
    if len < 126 {
        buf.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        buf.put_u8(126);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
    for p in payload {
        buf.put_slice(p);
    }
}

/// Whether a chunk of encoded server frames (unmasked) holds a close frame.
fn holds_close(mut b: &[u8]) -> bool {
    while b.len() >= 2 {
        if b[0] & 0x0f == 0x8 {
            return true;
        }
        let (head, len): (usize, usize) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (4, usize::from(u16::from_be_bytes([b[2], b[3]]))),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (10, usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX))
            }
            126 | 127 => return false,
            n => (2, usize::from(n)),
        };
        b = &b[head.saturating_add(len).min(b.len())..];
    }
    false
}

impl futures_util::Stream for Outlet {
    type Item = Result<Bytes, Box<dyn std::error::Error>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(data) = this.take(cx) {
            return Poll::Ready(Some(Ok(data)));
        }
        if this.held.is_some() {
            // Only frames queued before the close were left, and they were just taken.
            return match this.done {
                true => Poll::Ready(this.held.take().map(Ok)),
                false => Poll::Pending,
            };
        }
        let Some(control) = this.control.as_mut() else {
            return if this.done { Poll::Ready(None) } else { Poll::Pending };
        };
        // Registered before the flag is read: a wake-up in between is not lost.
        this.control_wake.task.register(cx.waker());
        if !this.control_wake.ready.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = control.as_mut().poll_next(&mut TaskContext::from_waker(&this.control_waker));
        if polled.is_ready() {
            // It may have more without waking (actix-ws ends its body after the close frame).
            this.control_wake.ready.store(true, std::sync::atomic::Ordering::Release);
        }
        match polled {
            Poll::Ready(Some(Ok(chunk))) if !this.done && holds_close(&chunk) => {
                // The queue was closed before this close frame was sent: drain it first.
                this.held = Some(chunk);
                match this.take(cx) {
                    Some(data) => Poll::Ready(Some(Ok(data))),
                    None if this.done => Poll::Ready(this.held.take().map(Ok)),
                    None => Poll::Pending,
                }
            }
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Ready(None) => {
                // actix-ws's body ended (after the close frame, or every `Session` was dropped).
                this.control = None;
                if this.done {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Outlet {
    fn drop(&mut self) {
        self.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytestring::ByteString;
    use futures_util::StreamExt;

    fn frame(opcode: u8, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        put_frame(&mut b, opcode, &[payload]);
        b
    }

    #[test]
    fn a_close_frame_is_found_among_other_frames() {
        let mut chunk = frame(0x1, &[b'x'; 200]);
        chunk.extend_from_slice(&frame(0xA, b"pong"));
        assert!(!holds_close(&chunk));
        chunk.extend_from_slice(&frame(0x8, &1000u16.to_be_bytes()));
        assert!(holds_close(&chunk));
        let mut big = frame(0x1, &vec![b'y'; 70_000]);
        assert!(!holds_close(&big), "a 64-bit length is skipped whole");
        big.extend_from_slice(&frame(0x8, &[]));
        assert!(holds_close(&big));
    }

    /// The close frame reaches actix-ws's body after the session closed its queue; when it
    /// arrives while the outlet still saw the queue open, what was queued meanwhile goes first.
    #[tokio::test]
    async fn the_close_frame_goes_after_every_frame_queued_before_it() {
        let queue = Arc::new(OutQueue::new(16));
        let q = queue.clone();
        let close = frame(0x8, &1001u16.to_be_bytes()).freeze();
        let sent = close.clone();
        // actix-ws's body as the race makes it look: when first polled, the session queues a
        // last frame, closes its queue and sends the close frame, all after the outlet's take.
        let mut first = true;
        let control: ControlBody = Box::pin(futures_util::stream::poll_fn(move |_| {
            if !std::mem::take(&mut first) {
                return Poll::Ready(None);
            }
            q.try_send(Outbound::Text(ByteString::from_static("late"))).unwrap();
            q.close();
            Poll::Ready(Some(Ok(sent.clone())))
        }));
        queue.try_send(Outbound::Text(ByteString::from_static("early"))).unwrap();
        let mut outlet = Outlet::new(queue, control);
        let mut written = BytesMut::new();
        while let Some(chunk) = outlet.next().await {
            written.extend_from_slice(&chunk.unwrap());
        }
        let mut want = frame(0x1, b"early");
        want.extend_from_slice(&frame(0x1, b"late"));
        want.extend_from_slice(&close);
        assert_eq!(written, want);
    }

    /// Control frames are polled only when actix-ws's body woke: one sent while the outlet waits
    /// wakes it and goes out; the data queue keeps working meanwhile.
    #[tokio::test]
    async fn control_frames_sent_later_wake_the_outlet() {
        let queue = Arc::new(OutQueue::new(16));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let control: ControlBody =
            Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok))));
        let mut outlet = Outlet::new(queue.clone(), control);
        let quiet = std::time::Duration::from_millis(50);
        assert!(tokio::time::timeout(quiet, outlet.next()).await.is_err(), "nothing to write yet");
        queue.try_send(Outbound::Text(ByteString::from_static("data"))).unwrap();
        let got = tokio::time::timeout(quiet, outlet.next()).await.expect("data written").unwrap().unwrap();
        assert_eq!(got, frame(0x1, b"data"));
        let ping = frame(0x9, b"").freeze();
        let sender = tokio::spawn({
            let ping = ping.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                tx.send(ping).await.unwrap();
                tx
            }
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(2), outlet.next())
            .await
            .expect("the control frame woke the outlet")
            .unwrap()
            .unwrap();
        assert_eq!(got, ping);
        queue.close();
        drop(sender.await.unwrap());
        assert!(tokio::time::timeout(std::time::Duration::from_secs(2), outlet.next()).await.unwrap().is_none());
    }
}
