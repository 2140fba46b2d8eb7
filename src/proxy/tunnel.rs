//! A WebSocket relayed by the lean path after its `101`: bytes pass as they
//! are, while the relay follows the frame boundaries in each direction
//! (headers only, never payloads), so that an exchange its session no
//! longer admits can be ended cleanly: at the next boundary on both sides,
//! a close frame with status 1008 (policy violation) goes to the client and
//! (masked, as a client's must be) to the upstream, then the relay waits
//! briefly for their answers and both connections close. Whatever does not
//! keep to the framing (or does not answer) is dropped when `live`'s grace
//! runs out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::server::HttpSession as DownstreamSession;
use pingora::Result;

use crate::live::Ending;

/// WebSocket close status 1008: policy violation (RFC 6455 7.4.1).
const POLICY_VIOLATION: u16 = 1008;

/// Relays an upgraded connection until either side closes, it has been idle
/// for `idle`, or `ending` says it is to end (then it is closed with 1008).
pub(super) async fn relay(
    down: &mut DownstreamSession,
    up: &mut UpstreamSession,
    ending: Option<Arc<Ending>>,
    idle: Duration,
) -> Result<()> {
    // An idle WebSocket is normal: the tunnel's own idle limit counts
    // silence in both directions, not in each.
    down.set_read_timeout(None);
    up.read_timeout = None;
    let mut from_client = Frames::default();
    let mut from_upstream = Frames::default();
    let mut reason: Option<&'static str> = None;
    let ended = async {
        match &ending {
            Some(ending) => ending.ended().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(ended);
    loop {
        if let Some(reason) = reason {
            if from_client.at_boundary() && from_upstream.at_boundary() {
                return close(down, up, reason).await;
            }
        }
        let event = tokio::select! {
            why = &mut ended, if reason.is_none() => Event::End(why),
            read = down.read_body_bytes() => Event::Client(read?),
            read = up.read_body_bytes() => Event::Upstream(read?),
            () = tokio::time::sleep(idle) => return Ok(()),
        };
        match event {
            Event::End(why) => reason = Some(why),
            Event::Client(Some(bytes)) => {
                // While ending: only up to the frame boundary; the rest is
                // dropped, as the close frame follows it.
                let n = from_client.feed(&bytes, reason.is_some());
                if n > 0 {
                    up.write_body(&bytes[..n]).await?;
                }
            }
            Event::Upstream(Some(bytes)) => {
                let n = from_upstream.feed(&bytes, reason.is_some());
                if n > 0 {
                    down.write_body(&bytes[..n]).await?;
                }
            }
            // Either side closing ends the tunnel.
            Event::Client(None) | Event::Upstream(None) => return Ok(()),
        }
    }
}

enum Event {
    End(&'static str),
    Client(Option<Bytes>),
    Upstream(Option<Bytes>),
}

/// Sends both sides a close frame (1008, the reason as its text) and waits
/// for both to answer with theirs or close.
async fn close(
    down: &mut DownstreamSession,
    up: &mut UpstreamSession,
    reason: &'static str,
) -> Result<()> {
    let to_client = down.write_body(&close_frame(reason, None)).await;
    let to_upstream = up
        .write_body(&close_frame(reason, Some(rand::random())))
        .await;
    let mut client_done = to_client.is_err();
    let mut upstream_done = to_upstream.is_err();
    let mut from_client = Frames::default();
    let mut from_upstream = Frames::default();
    while !(client_done && upstream_done) {
        tokio::select! {
            read = down.read_body_bytes(), if !client_done => match read {
                Ok(Some(bytes)) => {
                    from_client.feed(&bytes, false);
                    client_done = from_client.closed;
                }
                _ => client_done = true,
            },
            read = up.read_body_bytes(), if !upstream_done => match read {
                Ok(Some(bytes)) => {
                    from_upstream.feed(&bytes, false);
                    upstream_done = from_upstream.closed;
                }
                _ => upstream_done = true,
            },
        }
    }
    Ok(())
}

/// A close frame with status 1008 and `reason`; masked with `mask` (a
/// client's frames must be, a server's must not).
fn close_frame(reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = POLICY_VIOLATION.to_be_bytes().to_vec();
    // A control frame's payload is at most 125 bytes.
    payload.extend(reason.bytes().take(123));
    let mut frame = vec![0x88, payload.len() as u8];
    if let Some(mask) = mask {
        frame[1] |= 0x80;
        frame.extend_from_slice(&mask);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    frame.extend(payload);
    frame
}

/// Where one direction of a WebSocket byte stream is: in a frame header,
/// in a payload, or between frames.
#[derive(Default)]
struct Frames {
    /// The header of the frame being read, as far as read.
    header: [u8; 14],
    have: usize,
    /// Payload bytes left of the current frame.
    payload: u64,
    /// A close frame's header has been seen.
    closed: bool,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload == 0
    }

    /// Follows `bytes`; with `stop`, only up to the first frame boundary.
    /// Returns how many bytes were taken.
    fn feed(&mut self, bytes: &[u8], stop: bool) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            if stop && self.at_boundary() {
                break;
            }
            if self.payload > 0 {
                let n = self.payload.min((bytes.len() - i) as u64);
                self.payload -= n;
                i += n as usize;
                continue;
            }
            self.header[self.have] = bytes[i];
            self.have += 1;
            i += 1;
            if let Some((length, payload)) = self.header_length() {
                if self.have == length {
                    if self.header[0] & 0x0f == 0x8 {
                        self.closed = true;
                    }
                    self.have = 0;
                    self.payload = payload;
                }
            }
        }
        i
    }

    /// Once known: how long the header being read is, and its payload's length.
    fn header_length(&self) -> Option<(usize, u64)> {
        if self.have < 2 {
            return None;
        }
        let masked = self.header[1] & 0x80 != 0;
        let (extended, payload) = match self.header[1] & 0x7f {
            126 => {
                if self.have < 4 {
                    return None;
                }
                (
                    2,
                    u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                )
            }
            127 => {
                if self.have < 10 {
                    return None;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                (8, u64::from_be_bytes(b))
            }
            n => (0, u64::from(n)),
        };
        Some((2 + extended + if masked { 4 } else { 0 }, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        if let Some(mask) = mask {
            f.extend(mask);
        }
        f.extend(payload);
        f
    }

    #[test]
    fn boundaries_are_found_whatever_the_reads() {
        let mut stream = Vec::new();
        stream.extend(frame(1, b"hello", None));
        stream.extend(frame(2, &[7; 300], Some([1, 2, 3, 4])));
        stream.extend(frame(2, &[9; 70_000], None));
        stream.extend(frame(9, b"", Some([5, 6, 7, 8])));
        let ends = {
            let mut ends = Vec::new();
            let mut at = 0;
            for f in [
                frame(1, b"hello", None).len(),
                frame(2, &[7; 300], Some([1, 2, 3, 4])).len(),
                frame(2, &[9; 70_000], None).len(),
                frame(9, b"", Some([5, 6, 7, 8])).len(),
            ] {
                at += f;
                ends.push(at);
            }
            ends
        };
        for chunk in [1, 2, 3, 7, 13, 1000, stream.len()] {
            // Following every byte: a boundary exactly at each frame's end.
            let mut frames = Frames::default();
            let mut seen = Vec::new();
            let mut at = 0;
            for piece in stream.chunks(chunk) {
                for (i, b) in piece.iter().enumerate() {
                    frames.feed(std::slice::from_ref(b), false);
                    if frames.at_boundary() {
                        seen.push(at + i + 1);
                    }
                }
                at += piece.len();
            }
            assert_eq!(seen, ends, "chunk {chunk}");
            // Stopping: each feed ends at the next boundary.
            let mut frames = Frames::default();
            let mut rest = &stream[..];
            let mut stops = Vec::new();
            let mut at = 0;
            while !rest.is_empty() {
                let piece = &rest[..chunk.min(rest.len())];
                let mut n = frames.feed(piece, true);
                if n == 0 {
                    // At a boundary: step over it as the relay does between ends.
                    n = frames.feed(&piece[..1], false);
                }
                at += n;
                if frames.at_boundary() {
                    stops.push(at);
                }
                rest = &rest[n..];
            }
            assert_eq!(stops, ends, "chunk {chunk}");
        }
    }

    #[test]
    fn a_close_frame_is_noticed_and_ours_are_well_formed() {
        let mut frames = Frames::default();
        frames.feed(&frame(1, b"x", None), false);
        assert!(!frames.closed);
        frames.feed(&close_frame("revoked", None), false);
        assert!(frames.closed && frames.at_boundary());
        let ours = close_frame("revoked", None);
        assert_eq!(&ours[..4], &[0x88, 9, 0x03, 0xf0]);
        assert_eq!(&ours[4..], b"revoked");
        let masked = close_frame("revoked", Some([1, 2, 3, 4]));
        assert_eq!(masked[1], 0x80 | 9);
        let unmasked: Vec<u8> = masked[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
            .collect();
        assert_eq!(&unmasked[..2], &1008u16.to_be_bytes());
        let mut frames = Frames::default();
        frames.feed(&masked, false);
        assert!(frames.closed && frames.at_boundary());
    }
}
