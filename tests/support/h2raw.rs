//! A raw HTTP/2 client over TLS (ALPN h2) for attacks a well-behaved client
//! library will not send: header blocks with upper-case names, forbidden
//! fields or CR/LF/NUL in values, CONTINUATION floods, streams past the
//! concurrency limit, bodies that disagree with their `content-length`.
//! Header blocks are encoded as HPACK literals without indexing (no Huffman);
//! the server's header blocks are decoded with a real HPACK decoder.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// One frame as read.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
    /// A HEADERS frame's decoded fields.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What became of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code, before the stream got an answer.
    GoAway(u32),
    /// The connection closed (or nothing came in time).
    Closed,
}

impl Outcome {
    /// Whether the request was not served: no 2xx or 3xx answer.
    pub fn refused(&self) -> bool {
        !matches!(self, Outcome::Status(s) if *s < 400)
    }
}

pub struct RawH2 {
    tls: Tls,
    buf: Vec<u8>,
    next_stream: u32,
    /// Frames read while looking for something else.
    pub seen: Vec<Frame>,
    decoder: loona_hpack::Decoder<'static>,
}

fn root_store(ca: &Path) -> rustls::RootCertStore {
    use base64::Engine as _;
    let text = std::fs::read_to_string(ca).expect("read ca");
    let b64: String = text
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .expect("a certificate")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).expect("add root");
    roots
}

/// An HPACK literal header field without indexing, new name, no Huffman.
pub fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0x00);
    integer(block, name.len(), 7, 0);
    block.extend_from_slice(name);
    integer(block, value.len(), 7, 0);
    block.extend_from_slice(value);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1).
fn integer(out: &mut Vec<u8>, value: usize, n: u32, flags: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128 + 128) as u8);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header block of `fields` in order, each as a literal.
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        literal(&mut out, name.as_bytes(), value.as_bytes());
    }
    out
}

/// The usual request fields for `path` on `authority` (https, GET).
pub fn request_fields<'a>(authority: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", authority),
        (":path", path),
    ]
}

impl RawH2 {
    /// Connects to `addr` with TLS for `name` trusting `ca`, sends the
    /// preface and empty SETTINGS.
    pub async fn connect(addr: SocketAddr, name: &str, ca: &Path) -> RawH2 {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(root_store(ca))
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let tls = connector.connect(server, tcp).await.expect("TLS handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "h2 not negotiated"
        );
        let mut raw = RawH2 {
            tls,
            buf: Vec::new(),
            next_stream: 1,
            seen: Vec::new(),
            decoder: loona_hpack::Decoder::new(),
        };
        raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        raw.frame(SETTINGS, 0, 0, &[]).await;
        raw
    }

    async fn write_all(&mut self, bytes: &[u8]) -> bool {
        self.tls.write_all(bytes).await.is_ok()
    }

    /// Writes one frame; false when the connection is gone.
    pub async fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> bool {
        let len = payload.len() as u32;
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        self.write_all(&out).await
    }

    /// A new client stream id.
    pub fn stream(&mut self) -> u32 {
        let id = self.next_stream;
        self.next_stream += 2;
        id
    }

    /// Opens a stream with `fields` as one HEADERS frame (END_HEADERS;
    /// END_STREAM unless a body follows); returns its id.
    pub async fn request(&mut self, fields: &[(&str, &str)], body_follows: bool) -> u32 {
        let id = self.stream();
        let flags = END_HEADERS | if body_follows { 0 } else { END_STREAM };
        self.frame(HEADERS, flags, id, &block(fields)).await;
        id
    }

    /// Reads the next frame (answering SETTINGS and PING as a client must);
    /// `None` when the connection closed or nothing came within `wait`.
    pub async fn read_frame(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let mut frame = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                        fields: Vec::new(),
                    };
                    self.buf.drain(..9 + len);
                    if frame.kind == HEADERS {
                        // The gateway sends whole blocks (END_HEADERS), and
                        // every one must be decoded, in order, to keep the
                        // dynamic table in step.
                        let mut block = &frame.payload[..];
                        if frame.flags & 0x8 != 0 {
                            let pad = usize::from(block[0]);
                            block = &block[1..block.len() - pad];
                        }
                        if frame.flags & 0x20 != 0 {
                            block = &block[5..];
                        }
                        frame.fields = self.decoder.decode(block).expect("HPACK from the gateway");
                    }
                    match frame.kind {
                        SETTINGS if frame.flags & 1 == 0 => {
                            self.frame(SETTINGS, 1, 0, &[]).await;
                        }
                        PING if frame.flags & 1 == 0 => {
                            let payload = frame.payload.clone();
                            self.frame(PING, 1, 0, &payload).await;
                        }
                        _ => {}
                    }
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout(wait, self.tls.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads until `stream` is answered, reset, or the connection goes away.
    pub async fn outcome(&mut self, stream: u32) -> Outcome {
        loop {
            let Some(frame) = self.read_frame(Duration::from_secs(10)).await else {
                return Outcome::Closed;
            };
            self.seen.push(frame.clone());
            match frame.kind {
                HEADERS if frame.stream == stream => {
                    return Outcome::Status(status(&frame.fields).expect("a :status"));
                }
                RST_STREAM if frame.stream == stream => {
                    return Outcome::Reset(u32::from_be_bytes(
                        frame.payload[..4].try_into().unwrap(),
                    ));
                }
                GOAWAY => {
                    return Outcome::GoAway(u32::from_be_bytes(
                        frame.payload[4..8].try_into().unwrap(),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Reads until `stream` is answered and its body has ended: the outcome
    /// and the body (empty unless the status came).
    pub async fn response(&mut self, stream: u32) -> (Outcome, Vec<u8>) {
        let outcome = self.outcome(stream).await;
        let mut body = Vec::new();
        if !matches!(outcome, Outcome::Status(_)) {
            return (outcome, body);
        }
        // The HEADERS frame that carried the status may have ended the stream.
        if let Some(last) = self.seen.last() {
            if last.kind == HEADERS && last.flags & END_STREAM != 0 {
                return (outcome, body);
            }
        }
        while let Some(frame) = self.read_frame(Duration::from_secs(10)).await {
            if frame.stream == stream && frame.kind == DATA {
                body.extend_from_slice(&frame.payload);
                if !frame.payload.is_empty() {
                    let n = frame.payload.len() as u32;
                    self.frame(WINDOW_UPDATE, 0, 0, &n.to_be_bytes()).await;
                }
            }
            let ended = frame.stream == stream
                && matches!(frame.kind, DATA | HEADERS | RST_STREAM)
                && (frame.flags & END_STREAM != 0 || frame.kind == RST_STREAM);
            self.seen.push(frame);
            if ended {
                break;
            }
        }
        (outcome, body)
    }

    /// Reads what comes until the connection closes or is quiet for `wait`;
    /// the GOAWAY error code if one came.
    pub async fn drain(&mut self, wait: Duration) -> Option<u32> {
        let mut goaway = None;
        while let Some(frame) = self.read_frame(wait).await {
            if frame.kind == GOAWAY {
                goaway = Some(u32::from_be_bytes(frame.payload[4..8].try_into().unwrap()));
            }
            self.seen.push(frame);
        }
        goaway
    }
}

/// The `:status` among a response's fields.
pub fn status(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<u16> {
    fields
        .iter()
        .find(|(name, _)| name == b":status")
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
}
