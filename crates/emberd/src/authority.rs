//! Accepting HTTP/2 requests whose `:authority` is not a URI authority.
//!
//! gRPC clients on unix sockets put all sorts of things in `:authority`: grpc-go
//! sends `localhost`, but other clients send the socket's path, percent-encoded
//! or not (grpcio does with some versions and options). containerd's server
//! ignores the authority; the HTTP/2 layer under tonic refuses the whole stream
//! (`RST_STREAM`, `PROTOCOL_ERROR`) when it does not parse as one.
//!
//! [`Http2Conn`] sits on the read side of a connection, between the socket and
//! the HTTP/2 server. It passes the client preface and every frame through, except
//! header blocks (`HEADERS` and its `CONTINUATION`s), which it decodes with the
//! client's HPACK state and encodes again, field for field, as literals that the
//! server indexes nowhere, leaving out an `:authority` that is not valid. The
//! server's decoder thus never needs a dynamic table, and the client's stays in
//! step with this filter's decoder. Anything it cannot make sense of switches it
//! to passing bytes through unchanged, so the server reports the error as before.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;
use tonic::transport::server::Connected;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame the server accepts before the client learns otherwise
/// (HTTP/2's initial `SETTINGS_MAX_FRAME_SIZE`, which the server keeps).
const MAX_FRAME: usize = 16_384;
/// The server's `SETTINGS_HEADER_TABLE_SIZE` (HTTP/2's initial value).
const HEADER_TABLE: usize = 4096;

/// A header block waiting for its `CONTINUATION` frames.
struct Pending {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    /// The frames as received, for passing through on error.
    frames: Vec<u8>,
}

/// The filter's state, apart from the socket.
struct Filter {
    preface_left: usize,
    raw: Vec<u8>,
    out: Vec<u8>,
    pending: Option<Pending>,
    decoder: loona_hpack::Decoder<'static>,
    passthrough: bool,
}

impl Filter {
    fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE);
        Filter {
            preface_left: PREFACE_LEN,
            raw: Vec::new(),
            out: Vec::new(),
            pending: None,
            decoder,
            passthrough: false,
        }
    }

    /// Takes bytes read from the client; what the server may read goes to `out`.
    fn feed(&mut self, data: &[u8]) {
        if self.passthrough {
            self.out.extend_from_slice(data);
            return;
        }
        self.raw.extend_from_slice(data);
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.raw.len());
            self.out.extend(self.raw.drain(..n));
            self.preface_left -= n;
        }
        while self.raw.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
            if len > MAX_FRAME {
                // The server refuses it at once: no waiting for all of it here.
                let rest = std::mem::take(&mut self.raw);
                return self.give_up(rest);
            }
            if self.raw.len() < FRAME_HEADER + len {
                break;
            }
            let frame: Vec<u8> = self.raw.drain(..FRAME_HEADER + len).collect();
            self.frame(frame);
            if self.passthrough {
                let rest = std::mem::take(&mut self.raw);
                self.out.extend(rest);
                return;
            }
        }
    }

    /// The client closed its side: whatever is left goes as it is.
    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            self.out.extend(p.frames);
        }
        let rest = std::mem::take(&mut self.raw);
        self.out.extend(rest);
    }

    fn give_up(&mut self, frames: Vec<u8>) {
        self.passthrough = true;
        if let Some(p) = self.pending.take() {
            self.out.extend(p.frames);
        }
        self.out.extend(frames);
    }

    fn frame(&mut self, frame: Vec<u8>) {
        let kind = frame[3];
        let flags = frame[4];
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match (kind, self.pending.as_mut()) {
            (CONTINUATION, Some(p)) if p.stream == stream => {
                p.block.extend_from_slice(payload);
                p.frames.extend_from_slice(&frame);
                if flags & END_HEADERS != 0 {
                    let p = self.pending.take().expect("pending block");
                    self.block(p);
                }
            }
            (_, Some(_)) => self.give_up(frame),
            (HEADERS, None) => {
                let Some((priority, block)) = headers_payload(flags, payload) else {
                    return self.give_up(frame);
                };
                let p = Pending {
                    stream,
                    flags,
                    priority,
                    block: block.to_vec(),
                    frames: frame,
                };
                if flags & END_HEADERS != 0 {
                    self.block(p);
                } else {
                    self.pending = Some(p);
                }
            }
            _ => self.out.extend(frame),
        }
    }

    /// Decodes a whole header block and writes it again.
    fn block(&mut self, p: Pending) {
        let mut fields = Vec::new();
        let decoded = self.decoder.decode_with_cb(&p.block, |name, value| {
            let bad_authority = &*name == b":authority" && Authority::try_from(&*value).is_err();
            if bad_authority {
                tracing::debug!(
                    authority = %String::from_utf8_lossy(&value),
                    "ignoring a request authority that is not a URI authority"
                );
            } else {
                literal(&mut fields, &name, &value);
            }
        });
        if decoded.is_err() {
            return self.give_up(p.frames);
        }
        let mut first = Vec::new();
        if let Some(priority) = p.priority {
            first.extend_from_slice(&priority);
        }
        let room = MAX_FRAME - first.len();
        let split = fields.len().min(room);
        first.extend_from_slice(&fields[..split]);
        let mut chunks: Vec<&[u8]> = fields[split..].chunks(MAX_FRAME).collect();
        let flags = p.flags & (END_STREAM | PRIORITY);
        let last = chunks.is_empty();
        write_frame(
            &mut self.out,
            HEADERS,
            flags | if last { END_HEADERS } else { 0 },
            p.stream,
            &first,
        );
        let n = chunks.len();
        for (i, c) in chunks.drain(..).enumerate() {
            let end = if i + 1 == n { END_HEADERS } else { 0 };
            write_frame(&mut self.out, CONTINUATION, end, p.stream, c);
        }
    }
}

/// The priority fields and the header block fragment of a `HEADERS` payload.
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut body = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = *body.first()? as usize;
        body = &body[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(body.get(..5)?.try_into().ok()?);
        body = &body[5..];
    }
    let end = body.len().checked_sub(pad)?;
    Some((priority, &body[..end]))
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK integer with an `n`-bit prefix after the bits in `first`.
fn integer(out: &mut Vec<u8>, first: u8, n: u8, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A "literal header field without indexing" with a literal name, no Huffman.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    integer(out, 0, 7, name.len());
    out.extend_from_slice(name);
    integer(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// A server-side connection whose header blocks pass through the filter.
pub struct Http2Conn<S> {
    inner: S,
    filter: Filter,
    /// How much of `filter.out` the server has read.
    served: usize,
    eof: bool,
    buf: Vec<u8>,
}

impl<S> Http2Conn<S> {
    pub fn new(inner: S) -> Self {
        Http2Conn {
            inner,
            filter: Filter::new(),
            served: 0,
            eof: false,
            buf: vec![0; MAX_FRAME + FRAME_HEADER],
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Http2Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let ready = &this.filter.out[this.served..];
            if !ready.is_empty() {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                this.served += n;
                if this.served == this.filter.out.len() {
                    this.filter.out.clear();
                    this.served = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                this.eof = true;
                this.filter.finish();
            } else {
                let buf = std::mem::take(&mut this.buf);
                this.filter.feed(&buf[..n]);
                this.buf = buf;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Http2Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for Http2Conn<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        write_frame(&mut f, HEADERS, flags, stream, block);
        f
    }

    /// Splits the filter's output into frames after the preface.
    fn frames(out: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&out[..PREFACE_LEN], PREFACE);
        let mut rest = &out[PREFACE_LEN..];
        let mut v = vec![];
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            v.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        v
    }

    fn decode(d: &mut loona_hpack::Decoder, block: &[u8]) -> Vec<(String, String)> {
        d.decode(block)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    #[test]
    fn drops_a_path_authority_and_keeps_the_client_table_in_step() {
        // Block 1: `:method POST` (indexed 3), `:authority /tmp/e.sock` as a literal
        // the table keeps (name index 1), `:path /x.Y/Z` literal (name index 4).
        let mut b1 = vec![0x83, 0x41, 11];
        b1.extend_from_slice(b"/tmp/e.sock");
        b1.extend_from_slice(&[0x44, 6]);
        b1.extend_from_slice(b"/x.Y/Z");
        // Block 2 refers to the authority through the dynamic table (index 63,
        // the older of the two entries) and to `:path` (index 62).
        let b2 = vec![0x83, 0xbf, 0xbe];
        let mut input = PREFACE.to_vec();
        input.extend(headers(1, END_HEADERS | END_STREAM, &b1));
        // A DATA frame passes through untouched.
        write_frame(&mut input, 0x0, 0, 1, b"abc");
        input.extend(headers(3, END_HEADERS, &b2));
        let mut f = Filter::new();
        // Byte by byte, to cross every boundary.
        for b in &input {
            f.feed(std::slice::from_ref(b));
        }
        let got = frames(&f.out);
        assert_eq!(got.len(), 3);
        let mut d = loona_hpack::Decoder::new();
        let want = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), "/x.Y/Z".to_string()),
        ];
        assert_eq!(
            (got[0].0, got[0].1, got[0].2),
            (HEADERS, END_HEADERS | END_STREAM, 1)
        );
        assert_eq!(decode(&mut d, &got[0].3), want);
        assert_eq!(got[1], (0x0, 0, 1, b"abc".to_vec()));
        assert_eq!((got[2].0, got[2].1, got[2].2), (HEADERS, END_HEADERS, 3));
        assert_eq!(decode(&mut d, &got[2].3), want);
    }

    #[test]
    fn keeps_a_valid_authority_and_joins_continuations() {
        let mut block = vec![0x41, 9];
        block.extend_from_slice(b"localhost");
        // PADDED and PRIORITY, with the block split over a CONTINUATION.
        let mut payload = vec![2];
        payload.extend_from_slice(&[0, 0, 0, 0, 15]);
        payload.extend_from_slice(&block[..4]);
        payload.extend_from_slice(&[0, 0]);
        let mut input = PREFACE.to_vec();
        write_frame(&mut input, HEADERS, PADDED | PRIORITY, 5, &payload);
        write_frame(&mut input, CONTINUATION, END_HEADERS, 5, &block[4..]);
        let mut f = Filter::new();
        f.feed(&input);
        let got = frames(&f.out);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].1), (HEADERS, PRIORITY | END_HEADERS));
        assert_eq!(&got[0].3[..5], &[0, 0, 0, 0, 15]);
        let mut d = loona_hpack::Decoder::new();
        assert_eq!(
            decode(&mut d, &got[0].3[5..]),
            vec![(":authority".to_string(), "localhost".to_string())]
        );
    }

    #[test]
    fn large_blocks_are_split_and_garbage_passes_through() {
        let mut block = vec![0x40, 3];
        block.extend_from_slice(b"big");
        let value = vec![b'v'; 40_000];
        integer(&mut block, 0, 7, value.len());
        block.extend_from_slice(&value);
        let mut input = PREFACE.to_vec();
        let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
        input.extend(headers(1, 0, chunks[0]));
        for (i, c) in chunks[1..].iter().enumerate() {
            let end = if i + 2 == chunks.len() {
                END_HEADERS
            } else {
                0
            };
            write_frame(&mut input, CONTINUATION, end, 1, c);
        }
        let mut f = Filter::new();
        f.feed(&input);
        let got = frames(&f.out);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|g| g.3.len() <= MAX_FRAME));
        assert_eq!((got[0].0, got[0].1), (HEADERS, 0));
        assert_eq!((got[1].0, got[1].1), (CONTINUATION, 0));
        assert_eq!((got[2].0, got[2].1), (CONTINUATION, END_HEADERS));

        // An index past both tables: the bytes go on unchanged, and so does all
        // that follows.
        let mut input = PREFACE.to_vec();
        let bad = headers(1, END_HEADERS, &[0xff, 0x7f]);
        input.extend(&bad);
        input.extend(headers(3, END_HEADERS, &[0x83]));
        let mut f = Filter::new();
        f.feed(&input);
        assert_eq!(f.out, input);

        // A frame over the size limit goes on as soon as its header is in.
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0x01, 0x00, 0x00, HEADERS, END_HEADERS, 0, 0, 0, 1]);
        let mut f = Filter::new();
        f.feed(&input);
        assert_eq!(f.out, input);
        f.feed(b"more");
        assert!(f.out.ends_with(b"more"));
    }
}
