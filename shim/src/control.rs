//! The control socket: how `engine-shim handoff` reaches a running instance.
//!
//! A line protocol on a Unix socket, so the asking side learns when the hand-off is complete (the
//! engine reaped and the lock given back), which a bare SIGUSR1 cannot tell it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// The one request a client can make.
pub const HANDOFF: &str = "handoff";

/// A hand-off asked for over the socket; the answer goes back through `reply`.
#[derive(Debug)]
pub struct HandOffRequest {
    pub reply: oneshot::Sender<String>,
}

/// Listens on `path` and forwards requests to the run loop until the task is dropped.
/// A stale socket file left by a dead instance is replaced; a live one is an error.
pub async fn serve(path: PathBuf, requests: mpsc::Sender<HandOffRequest>) -> io::Result<()> {
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another instance already listens on {}", path.display()),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, requests.clone()));
                }
                Err(e) => warn!("control socket {}: {e}", path.display()),
            }
        }
    });
    Ok(())
}

async fn answer(stream: UnixStream, requests: mpsc::Sender<HandOffRequest>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let reply = match BufReader::new(read).read_line(&mut line).await {
        Ok(_) if line.trim() == HANDOFF => {
            let (reply, answer) = oneshot::channel();
            if requests.send(HandOffRequest { reply }).await.is_err() {
                "error: the instance is shutting down".to_string()
            } else {
                answer
                    .await
                    .unwrap_or_else(|_| "error: the instance is shutting down".to_string())
            }
        }
        Ok(_) => format!(
            "error: unknown request {:?}; the only request is {HANDOFF:?}",
            line.trim()
        ),
        Err(e) => format!("error: {e}"),
    };
    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
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
        serve(path.clone(), tx).await.unwrap();
        let client = tokio::spawn({
            let path = path.clone();
            async move { request_hand_off(&path, Duration::from_secs(30)).await }
        });
        let request = rx.recv().await.unwrap();
        request.reply.send("handed off".into()).unwrap();
        assert_eq!(client.await.unwrap(), Ok("handed off".to_string()));
    }

    #[tokio::test]
    async fn a_second_instance_on_the_same_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.sock");
        let (tx, _rx) = mpsc::channel(1);
        serve(path.clone(), tx.clone()).await.unwrap();
        let err = serve(path.clone(), tx.clone()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        serve(stale, tx).await.unwrap();
    }

    #[tokio::test]
    async fn no_instance_is_a_clear_error() {
        let err = request_hand_off(Path::new("/nonexistent/shim.sock"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.contains("is it running with --control-socket"), "{err}");
    }
}
