//! A finalized-head subscriber that costs next to nothing, so a benchmark measures the node and
//! not its clients.
//!
//! A jsonrpsee client parses every notification into a `serde_json::Value`, routes it through a
//! background task and a channel per subscription: with 100 of them in the benchmark's process,
//! the clients need two to three times the node's CPU, and on a small machine the rate measured is
//! theirs. This one speaks just enough WebSocket (RFC 6455: the upgrade, unmasked server frames,
//! masked client frames, ping/pong) over one buffered socket, checks that every frame is a
//! `chain_finalizedHead` notification for its own subscription, byte for byte up to the header,
//! and reads only the header's `number`.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One `chain_subscribeFinalizedHeads` subscription on its own connection.
pub struct LeanSubscriber {
    socket: BufReader<TcpStream>,
    /// The notification's bytes before the header, as the node sends them for this subscription.
    envelope: Vec<u8>,
    frame: Vec<u8>,
}

impl LeanSubscriber {
    /// Connects to `url` (`ws://host:port`), subscribes, and returns the subscriber with the
    /// number of the head sent on subscribe.
    pub async fn subscribe(url: &str) -> io::Result<(Self, u64)> {
        let host = url
            .strip_prefix("ws://")
            .ok_or_else(|| invalid(format!("not a ws:// URL: {url}")))?
            .trim_end_matches('/');
        let mut socket = BufReader::with_capacity(256 * 1024, TcpStream::connect(host).await?);
        socket.get_mut().set_nodelay(true)?;
        // The key is any 16 bytes in base64; the server's accept hash is not checked here.
        let upgrade = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        socket.get_mut().write_all(upgrade.as_bytes()).await?;
        let mut status = String::new();
        socket.read_line(&mut status).await?;
        if !status.starts_with("HTTP/1.1 101") {
            return Err(invalid(format!("upgrade refused: {status:?}")));
        }
        loop {
            let mut line = String::new();
            if socket.read_line(&mut line).await? == 0 {
                return Err(invalid("connection closed during the upgrade".into()));
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut subscriber = LeanSubscriber {
            socket,
            envelope: Vec::new(),
            frame: Vec::new(),
        };
        subscriber
            .send(
                TEXT,
                br#"{"jsonrpc":"2.0","id":1,"method":"chain_subscribeFinalizedHeads","params":[]}"#,
            )
            .await?;
        subscriber.next_text().await?;
        let answer: serde_json::Value = serde_json::from_slice(&subscriber.frame)?;
        let id = answer
            .get("result")
            .ok_or_else(|| invalid(format!("subscription refused: {answer}")))?;
        subscriber.envelope = format!(
            r#"{{"jsonrpc":"2.0","method":"chain_finalizedHead","params":{{"subscription":{id},"result":"#
        )
        .into_bytes();
        let first = subscriber.next_number().await?;
        Ok((subscriber, first))
    }

    /// Reads the next notification and returns its header's number.
    pub async fn next_number(&mut self) -> io::Result<u64> {
        self.next_text().await?;
        let header = self
            .frame
            .strip_prefix(self.envelope.as_slice())
            .ok_or_else(|| {
                invalid(format!(
                    "not a chain_finalizedHead notification for this subscription: {}",
                    String::from_utf8_lossy(&self.frame)
                ))
            })?;
        header_number(header).ok_or_else(|| {
            invalid(format!(
                "no hex number in the header: {}",
                String::from_utf8_lossy(header)
            ))
        })
    }

    /// Reads frames until a whole text message is in `self.frame`, answering pings.
    async fn next_text(&mut self) -> io::Result<()> {
        self.frame.clear();
        loop {
            let mut head = [0u8; 2];
            self.socket.read_exact(&mut head).await?;
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0F;
            if head[1] & 0x80 != 0 {
                return Err(invalid("a server frame is masked".into()));
            }
            let len = match head[1] & 0x7F {
                126 => u64::from(self.socket.read_u16().await?),
                127 => self.socket.read_u64().await?,
                n => u64::from(n),
            };
            let start = self.frame.len();
            self.frame.resize(start + len as usize, 0);
            self.socket.read_exact(&mut self.frame[start..]).await?;
            match opcode {
                TEXT | 0x0 if fin => return Ok(()),
                TEXT | 0x0 => continue,
                PING => {
                    let payload = self.frame.split_off(start);
                    self.send(PONG, &payload).await?;
                }
                PONG => self.frame.truncate(start),
                CLOSE => return Err(invalid("the node closed the connection".into())),
                other => return Err(invalid(format!("unexpected frame opcode {other}"))),
            }
        }
    }

    /// Sends one masked frame (RFC 6455 requires clients to mask; a zero mask leaves the payload
    /// as is).
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(payload);
        self.socket.get_mut().write_all(&frame).await
    }
}

/// The number in a header's `"number":"0x…"` field.
fn header_number(header: &[u8]) -> Option<u64> {
    const FIELD: &[u8] = br#""number":"0x"#;
    let at = header.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let digits = &header[at..];
    let end = digits.iter().position(|&b| b == b'"')?;
    u64::from_str_radix(std::str::from_utf8(&digits[..end]).ok()?, 16).ok()
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
