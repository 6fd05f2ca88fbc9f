//! Accepts whatever `:authority` a Unix-socket gRPC client sends, as grpc-go servers do.
//!
//! A Unix socket has no host, and clients disagree on what to send for it: grpc-go and Kubernetes
//! send `localhost`, grpc-core (Python, Ruby, C++) since 1.57 the percent-encoded socket path
//! (`tmp%2Fcsi.sock`), grpc-java the path itself. `h2` (under tonic) checks `:authority` against
//! RFC 3986 and resets the stream with `PROTOCOL_ERROR` for the last two (hyperium/h2#487, open). The
//! upstream driver and provider are Go and accept anything, so a client that works with them must work
//! with us.
//!
//! [`LenientAuthority`] sits between the socket and `h2`: it passes every byte through except header
//! blocks, which it decodes ([`hpack`], the client's compression state) and re-encodes as literals with an
//! `:authority` that does not parse as one replaced by `localhost`. Nothing else changes: the headers
//! and their order are the client's, and DATA frames stream through without being buffered. It is
//! bounded like `h2` itself: a header block over [`MAX_BLOCK`] compressed or [`MAX_HEADER_LIST`]
//! decoded (an HPACK bomb of indexed references) closes the connection.

use std::io;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

mod hpack;
use hpack::Decoder;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame `h2` accepts unless told otherwise (SETTINGS_MAX_FRAME_SIZE's initial value):
/// re-encoded blocks are split into frames of at most this.
const MAX_FRAME: usize = 16_384;
/// The dynamic table size the server allows (SETTINGS_HEADER_TABLE_SIZE's initial value; tonic does
/// not change it): the client's encoder may use at most this much.
const TABLE_SIZE: usize = 4_096;
/// The largest compressed header block (HEADERS plus CONTINUATIONs) accepted.
pub const MAX_BLOCK: usize = 64 * 1024;
/// The largest decoded header list (names plus values plus 32 per field, as RFC 9113 counts it).
pub const MAX_HEADER_LIST: usize = 256 * 1024;
/// What replaces an `:authority` that is not one.
const LOCALHOST: &[u8] = b"localhost";

/// A server-side connection whose header blocks carry an `:authority` `h2` accepts.
pub struct LenientAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    /// Bytes read from the client, not yet turned into output.
    raw: Vec<u8>,
    eof: bool,
}

impl<S> LenientAuthority<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        Self { inner, rewriter: Rewriter::new(), raw: Vec::new(), eof: false }
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LenientAuthority<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.rewriter.pending_output() > 0 {
                this.rewriter.drain_into(buf);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What is left is a partial frame: h2 sees it and the end of the stream, and says so.
                let n = this.raw.len().min(buf.remaining());
                buf.put_slice(&this.raw[..n]);
                this.raw.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let consumed = this.rewriter.feed(&this.raw)?;
            this.raw.drain(..consumed);
            if this.rewriter.pending_output() > 0 {
                continue;
            }
            let mut chunk = [0u8; 8 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => this.raw.extend_from_slice(read.filled()),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LenientAuthority<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for LenientAuthority<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A header block being gathered (HEADERS, then CONTINUATIONs until END_HEADERS).
struct Block {
    stream: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    fragments: Vec<u8>,
}

/// The client-to-server byte stream, frame by frame: a pure state machine (no I/O), so it is tested
/// and fuzzed on its own.
pub struct Rewriter {
    preface_left: usize,
    /// Payload bytes of a non-header frame still to pass through unchanged.
    passthrough: usize,
    block: Option<Block>,
    decoder: Decoder,
    out: Vec<u8>,
    out_pos: usize,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter at the start of a connection (the preface not yet seen).
    pub fn new() -> Self {
        let decoder = Decoder::new(TABLE_SIZE);
        Self { preface_left: PREFACE_LEN, passthrough: 0, block: None, decoder, out: Vec::new(), out_pos: 0 }
    }

    /// Output bytes not yet handed to the server.
    pub fn pending_output(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Takes the output produced so far (tests and fuzzing).
    pub fn take_output(&mut self) -> Vec<u8> {
        let out = self.out.split_off(self.out_pos);
        self.out.clear();
        self.out_pos = 0;
        out
    }

    fn drain_into(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.pending_output().min(buf.remaining());
        buf.put_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Consumes what it can of `input` (returns how much) and appends the output. An error is a
    /// connection error: the connection is closed, as `h2` would close it.
    pub fn feed(&mut self, input: &[u8]) -> io::Result<usize> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            if self.preface_left > 0 {
                let n = self.preface_left.min(rest.len());
                self.out.extend_from_slice(&rest[..n]);
                self.preface_left -= n;
                at += n;
                if self.preface_left > 0 {
                    return Ok(at);
                }
                continue;
            }
            if self.passthrough > 0 {
                let n = self.passthrough.min(rest.len());
                self.out.extend_from_slice(&rest[..n]);
                self.passthrough -= n;
                at += n;
                if self.passthrough > 0 || n == 0 {
                    return Ok(at);
                }
                continue;
            }
            if rest.len() < FRAME_HEADER_LEN {
                return Ok(at);
            }
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = [rest[5], rest[6], rest[7], rest[8]];
            if kind != HEADERS && kind != CONTINUATION {
                if self.block.is_some() {
                    return Err(invalid("a header block interrupted by another frame"));
                }
                // Everything but header blocks streams through, whatever its size (h2 judges it).
                self.out.extend_from_slice(&rest[..FRAME_HEADER_LEN]);
                self.passthrough = len;
                at += FRAME_HEADER_LEN;
                continue;
            }
            if len > MAX_FRAME {
                return Err(invalid("a header frame over SETTINGS_MAX_FRAME_SIZE"));
            }
            if rest.len() < FRAME_HEADER_LEN + len {
                return Ok(at);
            }
            let payload = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
            at += FRAME_HEADER_LEN + len;
            match (kind, self.block.as_mut()) {
                (HEADERS, None) => {
                    let mut fragment = payload;
                    let mut pad = 0;
                    if flags & PADDED != 0 {
                        let (&p, tail) = fragment.split_first().ok_or_else(|| invalid("a padded frame too short"))?;
                        pad = usize::from(p);
                        fragment = tail;
                    }
                    let mut priority = None;
                    if flags & PRIORITY != 0 {
                        if fragment.len() < 5 {
                            return Err(invalid("a priority frame too short"));
                        }
                        priority = Some([fragment[0], fragment[1], fragment[2], fragment[3], fragment[4]]);
                        fragment = &fragment[5..];
                    }
                    if pad > fragment.len() {
                        return Err(invalid("padding longer than the frame"));
                    }
                    let fragment = &fragment[..fragment.len() - pad];
                    self.block = Some(Block { stream, flags, priority, fragments: fragment.to_vec() });
                }
                (CONTINUATION, Some(block)) if block.stream == stream => {
                    if block.fragments.len() + payload.len() > MAX_BLOCK {
                        return Err(invalid("a header block over the limit"));
                    }
                    block.fragments.extend_from_slice(payload);
                }
                _ => return Err(invalid("a CONTINUATION without its HEADERS")),
            }
            if flags & END_HEADERS != 0 {
                let block = self.block.take().expect("a block is being gathered");
                self.emit(block)?;
            }
        }
    }

    /// Decodes one complete block with the client's compression state and writes it back as
    /// HEADERS (+ CONTINUATION) frames of literals, which leave the server's dynamic table empty.
    fn emit(&mut self, block: Block) -> io::Result<()> {
        let mut encoded = Vec::with_capacity(block.fragments.len() + 16);
        let mut listed = 0usize;
        let mut over = false;
        self.decoder
            .decode(&block.fragments, |name, value| {
                listed += name.len() + value.len() + 32;
                if listed > MAX_HEADER_LIST {
                    over = true;
                    return ControlFlow::Break(());
                }
                let value = if name == b":authority" && http::uri::Authority::try_from(value).is_err() {
                    LOCALHOST
                } else {
                    value
                };
                // Literal Header Field without Indexing, new name (RFC 7541 §6.2.2), no Huffman.
                encoded.push(0x00);
                encode_string(name, &mut encoded);
                encode_string(value, &mut encoded);
                ControlFlow::Continue(())
            })
            .map_err(|_| invalid("a header block that does not decode (HPACK)"))?;
        if over {
            return Err(invalid("a header list over the limit"));
        }
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        let first_room = MAX_FRAME - priority.len();
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = block.flags & (END_STREAM | PRIORITY);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame(HEADERS, flags, block.stream, &[priority, first]);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            self.frame(CONTINUATION, if rest.is_empty() { END_HEADERS } else { 0 }, block.stream, &[chunk]);
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: [u8; 4], parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
        self.out.extend_from_slice(&stream);
        for p in parts {
            self.out.extend_from_slice(p);
        }
    }
}

/// An HPACK string literal without Huffman coding (RFC 7541 §5.2): a 7-bit-prefix length, the bytes.
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    let mut len = s.len();
    if len < 0x7f {
        out.push(len as u8);
    } else {
        out.push(0x7f);
        len -= 0x7f;
        while len >= 0x80 {
            out.push((len & 0x7f) as u8 | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests;
