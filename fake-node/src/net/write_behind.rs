//! Write-behind for client sockets: a burst of small WebSocket frames leaves in a few large
//! writes instead of one system call each.
//!
//! jsonrpsee's WebSocket server flushes after every message, so every notification costs a
//! `write(2)` and a trip through the loopback stack: with 100 subscribers, 100 per block, which
//! is most of fake-node's CPU time when blocks are built in batches. [`WriteBehind`] takes the
//! server's writes into a per-connection buffer, and a small task per connection writes out
//! whatever has gathered by the time it runs. A lone message leaves at once (the task is woken by
//! the first byte); a burst (one subscriber catching up on a batch of blocks) leaves in one write.
//! Bytes and their order are unchanged. The buffer is bounded: a client that stops reading makes
//! the server wait, as a full socket would, instead of growing it.
//!
//! The node's own subscription tasks also write here, through an [`Injector`]: whole WebSocket
//! frames, added only between the server's messages (the server flushes after each message, so
//! a flush marks a frame boundary; bytes written since the last flush stay apart until it). That
//! spares every notification jsonrpsee's per-connection channel, its send task and its framing.
//! An injector can wait until the server has flushed a message holding a given marker (a
//! subscription's id), so a notification never overtakes the answer that announced the
//! subscription.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

/// Bytes buffered per connection before writes wait for the socket.
const LIMIT: usize = 256 * 1024;
/// Buffer capacity kept between bursts; a larger one (left by a burst) is given back, so idle
/// connections stay small.
const KEEP: usize = 16 * 1024;
/// How long a closed connection may take to send what was buffered before it is cut off (a client
/// that stopped reading would otherwise keep the socket open forever).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The writing side of a client connection, with writes gathered by a background task.
#[derive(Debug)]
pub struct WriteBehind {
    queue: Arc<Mutex<Queue>>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Whole messages (flushed by the server, or injected) not yet taken by the task.
    bytes: Vec<u8>,
    /// Bytes the server wrote since its last flush: part of a message, so nothing is injected
    /// before them until the flush moves them to `bytes`.
    open: Vec<u8>,
    /// Markers injectors wait for, each with whether a flushed message held it yet.
    markers: Vec<Marker>,
    next_marker: u64,
    /// The task, waiting for bytes.
    task: Option<Waker>,
    /// The server, waiting for room or for the shutdown to finish.
    server: Option<Waker>,
    /// Injectors waiting for room or for their marker.
    injectors: Vec<Waker>,
    /// The socket failed; every later write fails the same way.
    failed: Option<io::ErrorKind>,
    /// The server shut the connection down or dropped it: send what is left, then end.
    closing: bool,
    /// The task has ended (everything sent and the write side shut down, or the socket failed).
    done: bool,
}

/// Bytes an injector waits to see flushed by the server.
#[derive(Debug)]
struct Marker {
    token: u64,
    text: Box<[u8]>,
    seen: bool,
}

impl Queue {
    fn full(&self) -> bool {
        self.bytes.len() + self.open.len() >= LIMIT
    }

    /// Moves the server's message (written since its last flush) behind the whole messages, notes
    /// the markers it holds, and wakes the task.
    fn commit(&mut self) {
        if self.open.is_empty() {
            return;
        }
        for marker in self.markers.iter_mut().filter(|m| !m.seen) {
            marker.seen = contains(&self.open, &marker.text);
            if marker.seen {
                wake_all(&mut self.injectors);
            }
        }
        if self.bytes.is_empty() {
            std::mem::swap(&mut self.bytes, &mut self.open);
        } else {
            self.bytes.extend_from_slice(&self.open);
            self.open.clear();
        }
        if let Some(task) = self.task.take() {
            task.wake();
        }
    }

    /// The connection is gone or going: nothing more can be injected.
    fn ended(&self) -> Option<io::Error> {
        if let Some(kind) = self.failed {
            return Some(kind.into());
        }
        (self.closing || self.done).then(|| io::ErrorKind::BrokenPipe.into())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn wake_all(wakers: &mut Vec<Waker>) {
    for waker in wakers.drain(..) {
        waker.wake();
    }
}

/// What the task found in the queue.
enum Taken {
    /// Bytes to send (swapped into the task's buffer); `closing` if the server is done.
    Bytes { closing: bool },
    /// Nothing left and the server is done.
    Closed,
}

impl WriteBehind {
    /// Starts the writing task for `socket`. Must be called inside a tokio runtime.
    pub fn spawn(socket: OwnedWriteHalf) -> Self {
        let queue = Arc::new(Mutex::new(Queue::default()));
        tokio::spawn(send(Arc::clone(&queue), socket));
        WriteBehind { queue }
    }

    /// A handle for the node's own tasks to add whole frames to this connection.
    pub fn injector(&self) -> Injector {
        Injector {
            queue: Arc::clone(&self.queue),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        lock(&self.queue)
    }
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// The task: waits for bytes, sends everything gathered in one write, repeats; once the server
/// is done and the queue is empty, shuts the write side down.
async fn send(queue: Arc<Mutex<Queue>>, mut socket: OwnedWriteHalf) {
    let mut out = Vec::new();
    let failed = loop {
        let taken = poll_fn(|cx| {
            let mut q = lock(&queue);
            if !q.bytes.is_empty() {
                std::mem::swap(&mut q.bytes, &mut out);
                if let Some(server) = q.server.take() {
                    server.wake();
                }
                wake_all(&mut q.injectors);
                return Poll::Ready(Taken::Bytes { closing: q.closing });
            }
            if q.closing {
                return Poll::Ready(Taken::Closed);
            }
            q.task = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let sent = match taken {
            Taken::Closed => break None,
            Taken::Bytes { closing: false } => socket.write_all(&out).await,
            Taken::Bytes { closing: true } => {
                match tokio::time::timeout(CLOSE_GRACE, socket.write_all(&out)).await {
                    Ok(sent) => sent,
                    Err(_) => Err(io::ErrorKind::TimedOut.into()),
                }
            }
        };
        out.clear();
        if out.capacity() > KEEP {
            out = Vec::new();
        }
        if let Err(error) = sent {
            break Some(error.kind());
        }
    };
    if failed.is_none() {
        let _ = tokio::time::timeout(CLOSE_GRACE, socket.shutdown()).await;
    }
    let mut q = lock(&queue);
    q.failed = q.failed.or(failed);
    q.done = true;
    q.bytes = Vec::new();
    q.open = Vec::new();
    if let Some(server) = q.server.take() {
        server.wake();
    }
    wake_all(&mut q.injectors);
}

impl AsyncWrite for WriteBehind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut q = self.lock();
        if let Some(kind) = q.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if q.closing || q.done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if q.full() {
            q.server = Some(cx.waker().clone());
            return Poll::Pending;
        }
        q.open.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// Hands the message to the task without waiting for the kernel: waiting here would take away
    /// the gathering (the server flushes after every message). The task sends it at once.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut q = self.lock();
        if let Some(kind) = q.failed {
            return Poll::Ready(Err(kind.into()));
        }
        q.commit();
        Poll::Ready(Ok(()))
    }

    /// Waits until everything buffered is sent and the write side is shut down.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut q = self.lock();
        q.commit();
        if !q.closing {
            q.closing = true;
            wake_all(&mut q.injectors);
            if let Some(task) = q.task.take() {
                task.wake();
            }
        }
        if q.done {
            return Poll::Ready(q.failed.map_or(Ok(()), |kind| Err(kind.into())));
        }
        q.server = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for WriteBehind {
    /// The task still sends what was buffered (a close frame, a last answer), then ends.
    fn drop(&mut self) {
        let mut q = self.lock();
        q.commit();
        q.closing = true;
        wake_all(&mut q.injectors);
        if let Some(task) = q.task.take() {
            task.wake();
        }
    }
}

/// Adds whole WebSocket frames to a connection between the server's own messages.
#[derive(Clone, Debug)]
pub struct Injector {
    queue: Arc<Mutex<Queue>>,
}

/// A marker an [`Injector`] waits for; see [`Injector::watch`]. Dropping it stops the watch.
#[derive(Debug)]
pub struct Watched {
    queue: Arc<Mutex<Queue>>,
    token: u64,
}

impl Watched {
    /// Waits until a message holding the marker has been flushed by the server (and so is queued
    /// before anything injected from now on). Fails once the connection is gone.
    pub async fn seen(&self) -> io::Result<()> {
        poll_fn(|cx| {
            let mut q = lock(&self.queue);
            let marker = q.markers.iter().find(|m| m.token == self.token);
            if marker.is_some_and(|m| m.seen) {
                return Poll::Ready(Ok(()));
            }
            if let Some(error) = q.ended() {
                return Poll::Ready(Err(error));
            }
            q.injectors.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        lock(&self.queue).markers.retain(|m| m.token != self.token);
    }
}

impl Injector {
    /// Starts watching the server's messages for `text`: call it before the server can send the
    /// message, then [`Watched::seen`] waits for it.
    pub fn watch(&self, text: &[u8]) -> Watched {
        let mut q = lock(&self.queue);
        let token = q.next_marker;
        q.next_marker += 1;
        q.markers.push(Marker {
            token,
            text: text.into(),
            seen: false,
        });
        Watched {
            queue: Arc::clone(&self.queue),
            token,
        }
    }

    /// Waits for room, then lets `fill` append whole frames after the messages queued so far.
    /// Fails once the connection is gone.
    pub async fn send(&self, fill: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut fill = Some(fill);
        poll_fn(|cx| {
            let mut q = lock(&self.queue);
            if let Some(error) = q.ended() {
                return Poll::Ready(Err(error));
            }
            if q.full() {
                q.injectors.push(cx.waker().clone());
                return Poll::Pending;
            }
            let was_empty = q.bytes.is_empty();
            (fill.take().expect("filled once"))(&mut q.bytes);
            if was_empty && !q.bytes.is_empty() {
                if let Some(task) = q.task.take() {
                    task.wake();
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (WriteBehind, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (_read, write) = accepted.unwrap().0.into_split();
        (WriteBehind::spawn(write), client.unwrap())
    }

    #[tokio::test]
    async fn bytes_arrive_in_order_and_shutdown_sends_the_rest_first() {
        let (mut writer, mut client) = pair().await;
        let mut expected = Vec::new();
        for i in 0..10_000u32 {
            let message = format!("message {i};");
            writer.write_all(message.as_bytes()).await.unwrap();
            writer.flush().await.unwrap();
            expected.extend_from_slice(message.as_bytes());
        }
        writer.shutdown().await.unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, expected);
    }

    #[tokio::test]
    async fn a_dropped_writer_still_sends_what_it_buffered() {
        let (mut writer, mut client) = pair().await;
        writer.write_all(b"last words").await.unwrap();
        drop(writer);
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"last words");
    }

    /// Tries one write without waiting; `None` if it would wait.
    async fn write_now(writer: &mut WriteBehind, chunk: &[u8]) -> Option<usize> {
        tokio::select! {
            biased;
            written = writer.write(chunk) => Some(written.unwrap()),
            _ = std::future::ready(()) => None,
        }
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_makes_writes_wait_not_grow() {
        let (mut writer, _client) = pair().await;
        let chunk = vec![7u8; 64 * 1024];
        // The kernel's socket buffers take some megabytes; past them and LIMIT, writes wait.
        let mut written = 0usize;
        loop {
            assert!(written < 256 * 1024 * 1024, "writes never waited");
            if let Some(n) = write_now(&mut writer, &chunk).await {
                written += n;
                continue;
            }
            // Let the task move bytes into the kernel (this runtime has one thread).
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
            match write_now(&mut writer, &chunk).await {
                Some(n) => written += n,
                None => break,
            }
        }
        assert!(lock(&writer.queue).bytes.len() <= LIMIT + chunk.len());
    }

    #[tokio::test]
    async fn injected_bytes_never_land_inside_a_message_of_the_server() {
        let (mut writer, mut client) = pair().await;
        let injector = writer.injector();
        writer.write_all(b"<server 1").await.unwrap();
        injector
            .send(|out| out.extend_from_slice(b"[injected 1]"))
            .await
            .unwrap();
        writer.write_all(b" end>").await.unwrap();
        writer.flush().await.unwrap();
        injector
            .send(|out| out.extend_from_slice(b"[injected 2]"))
            .await
            .unwrap();
        writer.write_all(b"<server 2>").await.unwrap();
        writer.shutdown().await.unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(
            String::from_utf8(received).unwrap(),
            "[injected 1]<server 1 end>[injected 2]<server 2>"
        );
    }

    #[tokio::test]
    async fn a_watched_marker_is_seen_once_a_flushed_message_holds_it() {
        let (mut writer, _client) = pair().await;
        let injector = writer.injector();
        let watched = injector.watch(b"\"id-7\"");
        let seen = tokio::spawn(async move { watched.seen().await });
        writer.write_all(br#"{"result":"id-6"}"#).await.unwrap();
        writer.flush().await.unwrap();
        writer.write_all(br#"{"result":"id-7"}"#).await.unwrap();
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        assert!(!seen.is_finished(), "seen before the message was flushed");
        writer.flush().await.unwrap();
        seen.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn waiting_for_a_marker_or_room_fails_once_the_connection_closes() {
        let (writer, _client) = pair().await;
        let injector = writer.injector();
        let watched = injector.watch(b"never");
        drop(writer);
        assert!(watched.seen().await.is_err());
        assert!(injector.send(|out| out.push(0)).await.is_err());
    }

    #[tokio::test]
    async fn writes_fail_once_the_peer_is_gone() {
        let (mut writer, client) = pair().await;
        drop(client);
        let mut failed = false;
        for _ in 0..1000 {
            if writer.write_all(&[0u8; 4096]).await.is_err() || writer.flush().await.is_err() {
                failed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(failed, "writing to a closed peer must fail");
    }
}
