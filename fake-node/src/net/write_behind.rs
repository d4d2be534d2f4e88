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
    /// Bytes written by the server and not yet taken by the task.
    bytes: Vec<u8>,
    /// The task, waiting for bytes.
    task: Option<Waker>,
    /// The server, waiting for room or for the shutdown to finish.
    server: Option<Waker>,
    /// The socket failed; every later write fails the same way.
    failed: Option<io::ErrorKind>,
    /// The server shut the connection down or dropped it: send what is left, then end.
    closing: bool,
    /// The task has ended (everything sent and the write side shut down, or the socket failed).
    done: bool,
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
    if let Some(server) = q.server.take() {
        server.wake();
    }
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
        if q.bytes.len() >= LIMIT {
            q.server = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let was_empty = q.bytes.is_empty();
        q.bytes.extend_from_slice(buf);
        if was_empty {
            if let Some(task) = q.task.take() {
                task.wake();
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    /// Hands the bytes to the task without waiting for the kernel: waiting here would take away
    /// the gathering (the server flushes after every message). The task sends them at once.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.lock().failed {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Waits until everything buffered is sent and the write side is shut down.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut q = self.lock();
        if !q.closing {
            q.closing = true;
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
        q.closing = true;
        if let Some(task) = q.task.take() {
            task.wake();
        }
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
