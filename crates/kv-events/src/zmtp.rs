//! The consuming end of ZeroMQ (ZMTP 3.0, NULL security) over TCP: a SUB socket that takes
//! vLLM's KV-event stream, and a DEALER socket that asks its ROUTER for a replay.
//!
//! Why not the `zeromq` crate here, as on the publishing side: a consumer reads frames from a
//! server it does not control, and that crate sizes its read buffer from the frame header, so a
//! header claiming a terabyte aborts the process. libzmq guards against this with
//! `ZMQ_MAXMSGSIZE`; this reader does the same ([`Limits::max_message_bytes`]) and is small,
//! because a consumer needs only the greeting, the READY handshake, subscribing and reading
//! frames. It speaks ZMTP 3.0, which libzmq (pyzmq, hence vLLM) and the `zeromq` crate accept
//! from a peer, with subscriptions as messages (`0x01` + topic).

use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How much one message may hold, and how long the handshake may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A message (all its frames) larger than this closes the connection.
    pub max_message_bytes: usize,
    /// Frames one message may have.
    pub max_frames: usize,
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 << 20,
            max_frames: 16,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// The kind of socket this end is, as announced in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketType {
    Sub,
    Dealer,
}

impl SocketType {
    fn name(self) -> &'static [u8] {
        match self {
            SocketType::Sub => b"SUB",
            SocketType::Dealer => b"DEALER",
        }
    }
}

/// `tcp://host:port` as `host:port`; a wildcard host is where a server binds, not an address.
pub fn tcp_address(endpoint: &str) -> Result<&str, String> {
    let addr = endpoint
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("`{endpoint}`: a ZMQ endpoint must be tcp://HOST:PORT"))?;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("`{endpoint}`: no port (tcp://HOST:PORT)"))?;
    if host.is_empty() || host == "*" || host == "0.0.0.0" {
        return Err(format!(
            "`{endpoint}`: `{host}` is where vLLM binds; give the server's own address"
        ));
    }
    port.parse::<u16>()
        .map_err(|_| format!("`{endpoint}`: `{port}` is not a port"))?;
    Ok(addr)
}

/// One connection, handshake done.
pub struct Connection {
    stream: BufReader<TcpStream>,
    limits: Limits,
    /// The last frame read said more frames of its message follow.
    more: bool,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Connection {
    /// Connects to `endpoint` (`tcp://host:port`) as a `kind` socket.
    pub async fn connect(endpoint: &str, kind: SocketType, limits: Limits) -> io::Result<Self> {
        let addr = tcp_address(endpoint).map_err(bad)?;
        let handshake = async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut c = Connection {
                stream: BufReader::new(stream),
                limits,
                more: false,
            };
            c.handshake(kind).await?;
            Ok::<_, io::Error>(c)
        };
        tokio::time::timeout(limits.handshake_timeout, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "ZMTP handshake timed out"))?
    }

    async fn handshake(&mut self, kind: SocketType) -> io::Result<()> {
        let mut greeting = [0u8; 64];
        greeting[0] = 0xff;
        greeting[9] = 0x7f;
        greeting[10] = 3; // major
        greeting[11] = 0; // minor: 3.0
        greeting[12..16].copy_from_slice(b"NULL");
        let s = self.stream.get_mut();
        s.write_all(&greeting).await?;
        let mut peer = [0u8; 64];
        self.stream.read_exact(&mut peer).await?;
        if peer[0] != 0xff || peer[9] != 0x7f {
            return Err(bad("not a ZMTP peer (bad greeting signature)"));
        }
        if peer[10] < 3 {
            return Err(bad(format!(
                "ZMTP {}.x peer: 3.0 or later needed",
                peer[10]
            )));
        }
        if &peer[12..16] != b"NULL" {
            return Err(bad(
                "the peer asks for a security mechanism other than NULL",
            ));
        }
        // READY with our socket type.
        let mut ready = Vec::with_capacity(32);
        ready.push(5);
        ready.extend_from_slice(b"READY");
        ready.push(11);
        ready.extend_from_slice(b"Socket-Type");
        ready.extend_from_slice(&(kind.name().len() as u32).to_be_bytes());
        ready.extend_from_slice(kind.name());
        self.write_frame(&ready, false, true).await?;
        // The peer's READY (or ERROR).
        let (body, command) = self.read_frame(self.limits.max_message_bytes).await?;
        if !command {
            return Err(bad("the peer sent a message before READY"));
        }
        let name_len = *body.first().ok_or_else(|| bad("empty command"))? as usize;
        match body.get(1..1 + name_len) {
            Some(b"READY") => Ok(()),
            Some(b"ERROR") => Err(bad(format!(
                "the peer refused the connection: {}",
                String::from_utf8_lossy(body.get(2 + name_len..).unwrap_or_default())
            ))),
            _ => Err(bad("expected READY from the peer")),
        }
    }

    async fn write_frame(&mut self, body: &[u8], more: bool, command: bool) -> io::Result<()> {
        let mut head = Vec::with_capacity(9);
        let long = body.len() > 255;
        head.push(u8::from(more) | (u8::from(long) << 1) | (u8::from(command) << 2));
        if long {
            head.extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            head.push(body.len() as u8);
        }
        let s = self.stream.get_mut();
        s.write_all(&head).await?;
        s.write_all(body).await
    }

    /// Sends one message of `frames`.
    pub async fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        for (i, f) in frames.iter().enumerate() {
            self.write_frame(f, i + 1 < frames.len(), false).await?;
        }
        self.stream.get_mut().flush().await
    }

    /// Subscribes to messages whose first frame starts with `topic` (ZMTP 3.0 style).
    pub async fn subscribe(&mut self, topic: &[u8]) -> io::Result<()> {
        let mut body = Vec::with_capacity(1 + topic.len());
        body.push(1);
        body.extend_from_slice(topic);
        self.send(&[&body]).await
    }

    /// One frame: its body, and whether it is a command. `budget` is what the message may
    /// still hold.
    async fn read_frame(&mut self, budget: usize) -> io::Result<(Bytes, bool)> {
        let flags = self.stream.read_u8().await?;
        if flags & !0b111 != 0 {
            return Err(bad(format!("bad frame flags {flags:#04x}")));
        }
        let len = if flags & 0b10 != 0 {
            self.stream.read_u64().await?
        } else {
            u64::from(self.stream.read_u8().await?)
        };
        if len > budget as u64 {
            return Err(bad(format!(
                "a {len}-byte frame is over the {}-byte message limit",
                self.limits.max_message_bytes
            )));
        }
        let mut body = vec![0u8; len as usize];
        self.stream.read_exact(&mut body).await?;
        self.more = flags & 1 != 0;
        Ok((Bytes::from(body), flags & 0b100 != 0))
    }

    /// The next message (commands such as heartbeats skipped), within the limits.
    pub async fn recv(&mut self) -> io::Result<Vec<Bytes>> {
        loop {
            let mut frames = Vec::new();
            let mut left = self.limits.max_message_bytes;
            let (first, command) = self.read_frame(left).await?;
            if command {
                continue;
            }
            left -= first.len();
            frames.push(first);
            while self.more {
                if frames.len() >= self.limits.max_frames {
                    return Err(bad(format!(
                        "a message of more than {} frames",
                        self.limits.max_frames
                    )));
                }
                let (f, command) = self.read_frame(left).await?;
                if command {
                    return Err(bad("a command inside a message"));
                }
                left -= f.len();
                frames.push(f);
            }
            return Ok(frames);
        }
    }
}
