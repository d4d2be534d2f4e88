//! The control socket: how `engine-shim handoff` reaches a running instance.
//!
//! A line protocol on a Unix socket, so the asking side learns when the hand-off is complete (the
//! engine reaped and the lock given back), which a bare SIGUSR1 cannot tell it. A hand-off stops
//! the engine, so the socket is guarded like the power switch it is: mode 0600, only the shim's own
//! uid or root may ask (checked with the peer's credentials), and every request is bounded in size
//! and time, so no client can make the shim grow or hold a connection for ever.

mod listen;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::accept::AcceptLoop;
pub use listen::{ListenError, SocketPath};

/// The one request a client can make.
pub const HANDOFF: &str = "handoff";

/// The longest request line read; `handoff\n` is 8 bytes.
pub const MAX_REQUEST: usize = 1024;

/// How long a client has to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A hand-off asked for over the socket; the answer goes back through `reply`.
#[derive(Debug)]
pub struct HandOffRequest {
    pub reply: oneshot::Sender<String>,
}

/// The listening control socket. Dropping it stops listening and removes the socket file, if the
/// path still names the socket this instance created.
#[derive(Debug)]
pub struct ControlSocket {
    task: JoinHandle<()>,
    _path: SocketPath,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `path` (see [`listen::bind`] for what may be there already) and forwards requests to
/// the run loop until the returned [`ControlSocket`] is dropped.
pub async fn serve(
    path: PathBuf,
    requests: mpsc::Sender<HandOffRequest>,
) -> Result<ControlSocket, ListenError> {
    let (listener, owned) = listen::bind(&path)?;
    let io_error = |source| ListenError::Io {
        path: path.clone(),
        source,
    };
    listener.set_nonblocking(true).map_err(io_error)?;
    let listener = UnixListener::from_std(listener).map_err(io_error)?;
    info!(
        "listening for hand-off requests on the control socket {}",
        path.display()
    );
    let task = tokio::spawn(async move {
        let mut accepts = AcceptLoop::new(format!("control socket {}", path.display()));
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    accepts.accepted();
                    tokio::spawn(answer(stream, requests.clone()));
                }
                Err(e) => accepts.failed(&e).await,
            }
        }
    });
    Ok(ControlSocket { task, _path: owned })
}

/// Whether a peer with `peer_uid` may ask an instance running as `own_uid` to hand off.
pub fn may_hand_off(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid || peer_uid == 0
}

/// Why no request line could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    TooLong,
    TimedOut,
    Io(String),
}

impl BadRequest {
    fn answer(&self) -> String {
        match self {
            BadRequest::TooLong => format!(
                "error: request longer than {MAX_REQUEST} bytes; the only request is {HANDOFF:?}"
            ),
            BadRequest::TimedOut => format!(
                "error: no request line within {}; the only request is {HANDOFF:?}",
                humantime::format_duration(REQUEST_TIMEOUT)
            ),
            BadRequest::Io(e) => format!("error: {e}"),
        }
    }
}

/// Reads one request line of at most `max` bytes within `timeout`; the end of the stream also ends
/// the line. Never buffers more than `max` bytes, whatever the client sends.
pub async fn read_request(
    read: impl AsyncRead + Unpin,
    max: usize,
    timeout: Duration,
) -> Result<String, BadRequest> {
    let mut line = Vec::new();
    let mut bounded = BufReader::new(read.take(max as u64));
    match tokio::time::timeout(timeout, bounded.read_until(b'\n', &mut line)).await {
        Err(_) => Err(BadRequest::TimedOut),
        Ok(Err(e)) => Err(BadRequest::Io(e.to_string())),
        Ok(Ok(_)) if line.len() >= max && line.last() != Some(&b'\n') => Err(BadRequest::TooLong),
        Ok(Ok(_)) => Ok(String::from_utf8_lossy(&line).trim().to_string()),
    }
}

async fn answer(stream: UnixStream, requests: mpsc::Sender<HandOffRequest>) {
    // The peer's credentials were fixed at connect time; the request is read first all the same,
    // so a refused client that is still writing gets its answer rather than a broken pipe.
    let refusal = refuse_peer(&stream);
    let (read, mut write) = stream.into_split();
    let request = read_request(read, MAX_REQUEST, REQUEST_TIMEOUT).await;
    let reply = match (refusal, request) {
        (Some(refusal), _) => refusal,
        (None, Ok(line)) if line == HANDOFF => {
            let (reply, answer) = oneshot::channel();
            if requests.send(HandOffRequest { reply }).await.is_err() {
                "error: the instance is shutting down".to_string()
            } else {
                answer
                    .await
                    .unwrap_or_else(|_| "error: the instance is shutting down".to_string())
            }
        }
        (None, Ok(line)) => format!(
            "error: unknown request {:?}; the only request is {HANDOFF:?}",
            line.chars().take(64).collect::<String>()
        ),
        (None, Err(bad)) => bad.answer(),
    };
    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
}

/// The answer for a peer that may not ask for a hand-off (logged), or `None` if it may.
fn refuse_peer(stream: &UnixStream) -> Option<String> {
    let own = rustix::process::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) if may_hand_off(cred.uid(), own) => None,
        Ok(cred) => {
            let pid = cred.pid().map_or("unknown".to_string(), |p| p.to_string());
            warn!(
                "control socket: refused a request from uid {} (pid {pid}): only uid {own} \
                 (this instance's) or root may ask for a hand-off",
                cred.uid()
            );
            Some(format!(
                "error: uid {} may not ask for a hand-off; only uid {own} or root may",
                cred.uid()
            ))
        }
        Err(e) => {
            warn!("control socket: refused a request whose sender is unknown: {e}");
            Some(format!("error: cannot tell who is asking ({e})"))
        }
    }
}

/// Asks the instance listening on `path` to hand off, and returns its answer once it is done.
pub async fn request_hand_off(path: &Path, timeout: Duration) -> Result<String, String> {
    let work = async {
        let stream = UnixStream::connect(path).await.map_err(|e| {
            format!(
                "cannot reach an engine-shim at {}: {e} (is it running with --control-socket {}?)",
                path.display(),
                path.display()
            )
        })?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(format!("{HANDOFF}\n").as_bytes())
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        let mut answer = String::new();
        BufReader::new(read)
            .read_line(&mut answer)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let answer = answer.trim().to_string();
        match answer.strip_prefix("error: ") {
            Some(error) => Err(error.to_string()),
            None if answer.is_empty() => {
                Err("the instance closed the socket without answering".into())
            }
            None => Ok(answer),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hand_off_request_gets_the_run_loops_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.sock");
        let (tx, mut rx) = mpsc::channel(1);
        let _socket = serve(path.clone(), tx).await.unwrap();
        let client = tokio::spawn({
            let path = path.clone();
            async move { request_hand_off(&path, Duration::from_secs(30)).await }
        });
        let request = rx.recv().await.unwrap();
        request.reply.send("handed off".into()).unwrap();
        assert_eq!(client.await.unwrap(), Ok("handed off".to_string()));
    }

    #[tokio::test]
    async fn a_second_instance_on_the_same_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.sock");
        let (tx, _rx) = mpsc::channel(1);
        let _socket = serve(path.clone(), tx.clone()).await.unwrap();
        let err = serve(path.clone(), tx).await.unwrap_err();
        assert!(matches!(err, ListenError::Refused(_)), "{err:?}");
    }

    #[tokio::test]
    async fn dropping_the_socket_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.sock");
        let (tx, _rx) = mpsc::channel(1);
        drop(serve(path.clone(), tx).await.unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn only_the_same_uid_or_root_may_hand_off() {
        assert!(may_hand_off(1000, 1000));
        assert!(may_hand_off(0, 1000));
        assert!(may_hand_off(0, 0));
        assert!(!may_hand_off(65534, 1000));
        assert!(!may_hand_off(1000, 0));
    }

    #[tokio::test]
    async fn a_request_line_is_bounded_in_size_and_time() {
        let read = |bytes: &'static [u8]| read_request(bytes, 16, Duration::from_secs(5));
        assert_eq!(read(b"handoff\n").await, Ok("handoff".to_string()));
        assert_eq!(read(b"handoff").await, Ok("handoff".to_string()));
        assert_eq!(read(b"0123456789abcdef").await, Err(BadRequest::TooLong));
        assert_eq!(
            read(b"0123456789abcdefXYZ\n").await,
            Err(BadRequest::TooLong)
        );
        assert_eq!(read(b"0123456789abcde\n").await.unwrap().len(), 15);
        // A client that never finishes its line.
        let (_client, server) = tokio::io::duplex(64);
        let slow = read_request(server, 16, Duration::from_millis(50)).await;
        assert_eq!(slow, Err(BadRequest::TimedOut));
    }

    #[tokio::test]
    async fn no_instance_is_a_clear_error() {
        let err = request_hand_off(Path::new("/nonexistent/shim.sock"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.contains("is it running with --control-socket"), "{err}");
    }
}
