//! A finalized-head subscriber that costs next to nothing, so a benchmark measures the node and
//! not its clients.
//!
//! A jsonrpsee client parses every notification into a `serde_json::Value`, routes it through a
//! background task and a channel per subscription: with 100 of them in the benchmark's process,
//! the clients need two to three times the node's CPU, and on a small machine the rate measured is
//! theirs. This one speaks just enough WebSocket (RFC 6455: the upgrade, unmasked server frames,
//! masked client frames, ping/pong) over one socket, checks that every frame is a
//! `chain_finalizedHead` notification for its own subscription, byte for byte up to the header,
//! and reads only the header's `number`. Frames are parsed where they were read, in a buffer
//! that takes many notifications per read, so a notification costs a few comparisons and no copy.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One `chain_subscribeFinalizedHeads` subscription on its own connection.
pub struct LeanSubscriber {
    socket: TcpStream,
    /// Bytes read from the socket; frames are parsed in place, from `start` on.
    inbox: Vec<u8>,
    start: usize,
    /// The notification's bytes before the header, as the node sends them for this subscription.
    envelope: Vec<u8>,
}

/// Bytes asked of the socket per read: many notifications at once.
const READ: usize = 256 * 1024;

/// One frame's place in the inbox.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: std::ops::Range<usize>,
}

impl LeanSubscriber {
    /// Connects to `url` (`ws://host:port`), subscribes, and returns the subscriber with the
    /// number of the head sent on subscribe.
    pub async fn subscribe(url: &str) -> io::Result<(Self, u64)> {
        let host = url
            .strip_prefix("ws://")
            .ok_or_else(|| invalid(format!("not a ws:// URL: {url}")))?
            .trim_end_matches('/');
        let socket = TcpStream::connect(host).await?;
        socket.set_nodelay(true)?;
        let mut subscriber = LeanSubscriber {
            socket,
            inbox: Vec::with_capacity(READ),
            start: 0,
            envelope: Vec::new(),
        };
        // The key is any 16 bytes in base64; the server's accept hash is not checked here.
        let upgrade = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        subscriber.socket.write_all(upgrade.as_bytes()).await?;
        let head_end = loop {
            if let Some(at) = subscriber.inbox.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            subscriber.read_more().await?;
        };
        let head = String::from_utf8_lossy(&subscriber.inbox[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(invalid(format!("upgrade refused: {head:?}")));
        }
        subscriber.start = head_end;
        subscriber
            .send(
                TEXT,
                br#"{"jsonrpc":"2.0","id":1,"method":"chain_subscribeFinalizedHeads","params":[]}"#,
            )
            .await?;
        let answer = subscriber.next_text().await?;
        let answer: serde_json::Value = serde_json::from_slice(&subscriber.inbox[answer])?;
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
        let text = self.next_text().await?;
        let frame = &self.inbox[text];
        let header = frame
            .strip_prefix(self.envelope.as_slice())
            .ok_or_else(|| {
                invalid(format!(
                    "not a chain_finalizedHead notification for this subscription: {}",
                    String::from_utf8_lossy(frame)
                ))
            })?;
        header_number(header).ok_or_else(|| {
            invalid(format!(
                "no hex number in the header: {}",
                String::from_utf8_lossy(header)
            ))
        })
    }

    /// Reads until a whole single-frame text message is in the inbox, answering pings, and
    /// returns where its payload is. (The node never fragments its messages; a fragment is an
    /// error here.)
    async fn next_text(&mut self) -> io::Result<std::ops::Range<usize>> {
        loop {
            let Some(frame) = self.parse()? else {
                self.read_more().await?;
                continue;
            };
            self.start = frame.payload.end;
            match frame.opcode {
                TEXT if frame.fin => return Ok(frame.payload),
                PING => {
                    let payload = self.inbox[frame.payload].to_vec();
                    self.send(PONG, &payload).await?;
                }
                PONG => {}
                CLOSE => return Err(invalid("the node closed the connection".into())),
                other => {
                    return Err(invalid(format!(
                        "unexpected frame: opcode {other}, fin {}",
                        frame.fin
                    )))
                }
            }
        }
    }

    /// The whole frame at `start`, if it has arrived.
    fn parse(&self) -> io::Result<Option<Frame>> {
        let bytes = &self.inbox[self.start..];
        if bytes.len() < 2 {
            return Ok(None);
        }
        if bytes[1] & 0x80 != 0 {
            return Err(invalid("a server frame is masked".into()));
        }
        let (len, head) = match bytes[1] & 0x7F {
            126 if bytes.len() >= 4 => (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => (
                u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")),
                10,
            ),
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len).map_err(|_| invalid("frame too large".into()))?;
        if bytes.len() < head + len {
            return Ok(None);
        }
        let at = self.start + head;
        Ok(Some(Frame {
            fin: bytes[0] & 0x80 != 0,
            opcode: bytes[0] & 0x0F,
            payload: at..at + len,
        }))
    }

    /// Drops the frames already read and appends what the socket has.
    async fn read_more(&mut self) -> io::Result<()> {
        self.inbox.drain(..self.start);
        self.start = 0;
        self.inbox.reserve(READ);
        if self.socket.read_buf(&mut self.inbox).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
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
        self.socket.write_all(&frame).await
    }
}

/// The number in a header's `"number":"0x…"` field. Found by its first letter, which no hex
/// digit shares, rather than by comparing the whole field name at every byte (which cost more
/// than all else a subscriber does).
fn header_number(header: &[u8]) -> Option<u64> {
    const FIELD: &[u8] = br#""number":"0x"#;
    let mut from = 0;
    let at = loop {
        let candidate = from + header[from..].iter().position(|&b| b == b'n')?;
        if candidate > 0 && header[candidate - 1..].starts_with(FIELD) {
            break candidate - 1 + FIELD.len();
        }
        from = candidate + 1;
    };
    let digits = &header[at..];
    let end = digits.iter().position(|&b| b == b'"')?;
    u64::from_str_radix(std::str::from_utf8(&digits[..end]).ok()?, 16).ok()
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
