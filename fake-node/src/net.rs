//! Sockets: the listening socket and the registry of live client connections.
//!
//! jsonrpsee has no "kill this connection" API, so the node accepts connections itself and keeps a
//! duplicate of each socket's descriptor. Dropping connections is then a `shutdown(2)` on those
//! duplicates: the client sees the TCP stream end without a WebSocket close frame, as when a node
//! dies, and the server side sees end-of-stream and cleans up. No proxy hop sits in the data path.
//!
//! Writes to a client go through [`write_behind`], which gathers the server's per-message flushes
//! into few system calls.

mod write_behind;

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use write_behind::WriteBehind;

/// Binds a listening socket with `SO_REUSEADDR`, so a node restarted on the same port can bind
/// again at once even while old connections linger in TIME_WAIT.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Live client connections by id (the id jsonrpsee also reports as the `ConnectionId`).
#[derive(Debug, Default)]
pub struct Connections {
    live: Mutex<HashMap<usize, std::net::TcpStream>>,
}

impl Connections {
    /// Registers an accepted connection; the returned stream unregisters it when dropped.
    pub fn track(self: &Arc<Self>, id: usize, stream: TcpStream) -> io::Result<Tracked> {
        let duplicate = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?);
        self.live.lock().unwrap().insert(id, duplicate);
        let (read, write) = stream.into_split();
        Ok(Tracked {
            read,
            write: WriteBehind::spawn(write),
            id,
            registry: Arc::clone(self),
        })
    }

    /// Shuts down every live connection except `spare` (the caller's own, so it gets its answer).
    /// Returns how many were dropped.
    pub fn drop_all(&self, spare: Option<usize>) -> usize {
        let mut live = self.live.lock().unwrap();
        let doomed: Vec<usize> = live
            .keys()
            .copied()
            .filter(|id| Some(*id) != spare)
            .collect();
        for id in &doomed {
            if let Some(socket) = live.remove(id) {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
        doomed.len()
    }

    pub fn count(&self) -> usize {
        self.live.lock().unwrap().len()
    }
}

/// An accepted TCP stream that leaves the registry when the server is done with it.
#[derive(Debug)]
pub struct Tracked {
    read: OwnedReadHalf,
    write: WriteBehind,
    id: usize,
    registry: Arc<Connections>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.registry.live.lock().unwrap().remove(&self.id);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

/// Accepts connections and serves each with jsonrpsee, registering it so it can be dropped.
///
/// Each connection gets its registry id as jsonrpsee's `ConnectionId`, so a control method can
/// tell which connection called it.
pub async fn serve(
    listener: TcpListener,
    config: jsonrpsee::server::ServerConfig,
    methods: jsonrpsee::server::Methods,
    stop: jsonrpsee::server::StopHandle,
    conns: Arc<Connections>,
) {
    let builder = jsonrpsee::server::Server::builder()
        .set_config(config)
        .to_service_builder();
    let mut next_id: usize = 0;
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(error) => {
                // Out of descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let id = next_id;
        next_id += 1;
        let stream = match conns.track(id, socket) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot track connection; closing it");
                continue;
            }
        };
        let service = builder
            .clone()
            .connection_id(id as u32)
            .build(methods.clone(), stop.clone());
        let stopped = stop.clone().shutdown();
        tokio::spawn(async move {
            if let Err(error) =
                jsonrpsee::server::serve_with_graceful_shutdown(stream, service, stopped).await
            {
                tracing::debug!(%error, connection = id, "connection ended");
            }
        });
    }
}
