//! Reading a client's WebSocket frames: actix-http's codec behind checks that bound what a
//! connection can make the broker hold.
//!
//! actix-http's parser keeps reading a frame until its whole payload is buffered, and only
//! then compares its length with the limit. [`check_header`] reads each frame's header
//! first and refuses, before any of the payload is kept, a frame (or a fragmented message
//! so far) declared larger than `limits.max_frame_bytes`, a control frame over 125 bytes or
//! fragmented, and reserved bits. [`FrameReader`] cuts a frame whose bytes stop arriving
//! half-way, after `limits.frame_timeout`. A connection thus holds at most one frame of at
//! most the limit, for at most the timeout.

use std::borrow::Cow;
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use bytes::BytesMut;
use futures_util::Stream;
use tokio::io::AsyncRead;
use tokio::time::Sleep;
use tokio_util::codec::{Decoder, FramedRead};

/// Size of an idle session's read buffer: enough for a typical frame (it grows for larger
/// ones, see [`ReadCodec`]).
pub const READ_BUFFER: usize = 512;

/// Most a busy session's read buffer grows to, so that a client sending fast is read several
/// frames per system call (the floor's actix-http reads 8 KiB at a time).
pub const READ_BUFFER_BUSY: usize = 8 * 1024;

/// Largest payload of a control frame (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Why reading a client's frames stopped; each becomes one close code.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A frame, or a fragmented message so far, declared over the limit (close 1009).
    #[error("{0}")]
    TooLarge(&'static str),
    /// A WebSocket protocol violation (close 1002).
    #[error("{0}")]
    Protocol(Cow<'static, str>),
    /// A frame began but did not complete within `limits.frame_timeout` (close 1008).
    #[error("frame not completed within the frame timeout")]
    Stalled,
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<ProtocolError> for ReadError {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Overflow => ReadError::TooLarge("frame too large"),
            ProtocolError::Io(e) => ReadError::Io(e),
            other => ReadError::Protocol(Cow::Owned(other.to_string())),
        }
    }
}

/// Checks what the frame header at the start of `src` declares, before its payload is read.
/// `fragmented` is what the fragmented message in progress holds so far (0 if none).
/// Returns `Ok` while the header is incomplete, and for a header that may be read on.
pub fn check_header(src: &[u8], max: usize, fragmented: usize) -> Result<(), ReadError> {
    let (Some(&first), Some(&second)) = (src.first(), src.get(1)) else {
        return Ok(());
    };
    if first & 0x70 != 0 {
        return Err(ReadError::Protocol(Cow::Borrowed(
            "reserved bits set, and no extension was negotiated",
        )));
    }
    let fin = first & 0x80 != 0;
    let opcode = first & 0x0F;
    let control = opcode & 0x08 != 0;
    let len7 = u64::from(second & 0x7F);
    if control && !fin {
        return Err(ReadError::Protocol(Cow::Borrowed(
            "fragmented control frame",
        )));
    }
    if control && len7 > MAX_CONTROL_PAYLOAD {
        return Err(ReadError::TooLarge("control frame over 125 bytes"));
    }
    let declared = match len7 {
        126 => match src.get(2..4) {
            Some(b) => u64::from(u16::from_be_bytes([b[0], b[1]])),
            None => return Ok(()),
        },
        127 => match src.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => u64::from_be_bytes(b),
            None => return Ok(()),
        },
        n => n,
    };
    // A continuation adds to the message it continues; a new data frame starts one.
    let total = if opcode == 0 {
        declared.saturating_add(fragmented as u64)
    } else {
        declared
    };
    if total > max as u64 {
        return Err(ReadError::TooLarge("frame too large"));
    }
    Ok(())
}

/// What the session asks of its reader, shared between them (one allocation per
/// connection for both requests).
#[derive(Default)]
pub struct ReadControl {
    /// Release a grown read buffer once it is empty (set by the heartbeat tick).
    shed: Cell<bool>,
    /// No further frame is read until released.
    held: Cell<bool>,
    /// The reader's task, parked while held.
    waker: Cell<Option<Waker>>,
}

impl ReadControl {
    /// Asks for a grown read buffer back, once it is empty.
    pub fn shed_buffer(&self) {
        self.shed.set(true);
    }

    /// No further frame is read until [`ReadControl::release`].
    pub fn hold(&self) {
        self.held.set(true);
    }

    /// Reading goes on.
    pub fn release(&self) {
        self.held.set(false);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// actix-http's WebSocket codec behind [`check_header`], sizing the read buffer to the
/// traffic as it decodes.
///
/// `FramedRead` reads into what is free in its buffer and grows it only for a frame that
/// does not fit, so with an idle-sized buffer a busy client would cost a `recv` per frame or
/// two. A read that fills the buffer doubles it (up to [`READ_BUFFER_BUSY`]). The session's
/// heartbeat tick asks for a grown buffer back (the `shed` flag): it is replaced by an
/// idle-sized one the next time it is empty (an idle client answers every ping, so that
/// comes within one heartbeat interval).
pub struct ReadCodec {
    inner: Codec,
    max: usize,
    /// Bytes of the fragmented message in progress.
    fragmented: usize,
    /// Bytes left in the buffer after the previous decode: more now means a read happened.
    left: usize,
    control: Rc<ReadControl>,
}

impl ReadCodec {
    /// A codec for client frames of at most `max_frame` bytes, taking requests from
    /// `control`.
    pub fn new(max_frame: usize, control: Rc<ReadControl>) -> Self {
        ReadCodec {
            inner: Codec::new().max_size(max_frame),
            max: max_frame,
            fragmented: 0,
            left: 0,
            control,
        }
    }
}

impl Decoder for ReadCodec {
    type Item = Frame;
    type Error = ReadError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ReadError> {
        check_header(src, self.max, self.fragmented)?;
        let filled = src.len() > self.left && src.len() == src.capacity();
        if filled && src.capacity() < READ_BUFFER_BUSY {
            src.reserve(src.capacity().min(READ_BUFFER_BUSY - src.capacity()));
        }
        let frame = self.inner.decode(src)?;
        if let Some(Frame::Continuation(item)) = &frame {
            self.fragmented = match item {
                Item::FirstText(b) | Item::FirstBinary(b) => b.len(),
                Item::Continue(b) => self.fragmented.saturating_add(b.len()),
                Item::Last(_) => 0,
            };
        }
        if src.is_empty() && src.capacity() > READ_BUFFER && self.control.shed.take() {
            *src = BytesMut::with_capacity(READ_BUFFER);
        }
        self.left = src.len();
        Ok(frame)
    }
}

/// The session's stream of client frames: [`ReadCodec`] over the socket, ending with
/// [`ReadError::Stalled`] when a frame has begun and its next bytes do not come within the
/// timeout. The timer exists only while a frame is incomplete. While its codec's
/// [`ReadControl`] is held it yields nothing (the socket's buffers then hold the client
/// back).
pub struct FrameReader<R> {
    frames: FramedRead<R, ReadCodec>,
    timeout: Duration,
    /// Made for the first incomplete frame after an idle spell, then moved, not remade.
    stall: Option<Pin<Box<Sleep>>>,
    /// Buffered bytes when the timer was last set: more means the frame is progressing.
    /// [`NO_PARTIAL`] when the last poll ended on a whole frame.
    stall_at: u32,
    /// A stalled frame ended the stream.
    ended: bool,
}

impl<R: AsyncRead> FrameReader<R> {
    /// Reads frames from `io` with `codec`, cutting a frame stalled for `timeout`.
    pub fn new(io: R, codec: ReadCodec, timeout: Duration) -> Self {
        FrameReader {
            frames: FramedRead::with_capacity(io, codec, READ_BUFFER),
            timeout,
            stall: None,
            stall_at: NO_PARTIAL,
            ended: false,
        }
    }
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = Result<Frame, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let control = &this.frames.decoder().control;
        if control.held.get() {
            // The wait is the broker's, not the client's: no stall timer meanwhile.
            control.waker.set(Some(cx.waker().clone()));
            this.stall = None;
            return Poll::Pending;
        }
        if let Poll::Ready(item) = Pin::new(&mut this.frames).poll_next(cx) {
            this.stall_at = NO_PARTIAL;
            return Poll::Ready(item);
        }
        let buffered = this.frames.read_buffer().len();
        if buffered == 0 {
            this.stall = None;
            this.stall_at = NO_PARTIAL;
            return Poll::Pending;
        }
        // Part of a frame is here: the rest must follow within the timeout (each read that
        // brings more starts the wait again).
        let buffered = u32::try_from(buffered).unwrap_or(NO_PARTIAL - 1);
        if buffered != this.stall_at {
            this.stall_at = buffered;
            let deadline = tokio::time::Instant::now() + this.timeout;
            match &mut this.stall {
                Some(s) => s.as_mut().reset(deadline),
                None => this.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match this.stall.as_mut().map(|s| s.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                this.stall = None;
                this.ended = true;
                Poll::Ready(Some(Err(ReadError::Stalled)))
            }
            _ => Poll::Pending,
        }
    }
}

/// `stall_at` when no frame is incomplete.
const NO_PARTIAL: u32 = u32::MAX;

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::{OpCode, Parser};

    /// `n` masked client text frames of `len` bytes each, as a client sends them.
    fn client_frames(n: usize, len: usize) -> Vec<u8> {
        let mut buf = BytesMut::new();
        for _ in 0..n {
            Parser::write_message(&mut buf, "x".repeat(len), OpCode::Text, true, true);
        }
        buf.to_vec()
    }

    /// Reads `bytes` into `buf` as `FramedRead` does (reserves one byte, reads into what is
    /// free) and decodes every whole frame.
    fn read_and_decode(codec: &mut ReadCodec, buf: &mut BytesMut, bytes: &mut &[u8]) -> usize {
        buf.reserve(1);
        let free = buf.capacity() - buf.len();
        let (now, later) = bytes.split_at(free.min(bytes.len()));
        buf.extend_from_slice(now);
        *bytes = later;
        let mut frames = 0;
        while let Some(f) = codec.decode(buf).expect("valid frames") {
            assert!(matches!(f, Frame::Text(_)));
            frames += 1;
        }
        frames
    }

    #[test]
    fn the_read_buffer_grows_for_a_fast_client_and_is_shed_when_idle() {
        let control = Rc::new(ReadControl::default());
        let mut codec = ReadCodec::new(64 * 1024, control.clone());
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        let burst = client_frames(200, 100);
        let mut rest = &burst[..];
        let mut frames = 0;
        while !rest.is_empty() {
            frames += read_and_decode(&mut codec, &mut buf, &mut rest);
        }
        assert_eq!(frames, 200);
        assert!(buf.capacity() >= READ_BUFFER_BUSY, "{}", buf.capacity());

        // Not shed while the client is busy, only after a heartbeat tick asked for it.
        let one = client_frames(1, 20);
        assert_eq!(read_and_decode(&mut codec, &mut buf, &mut &one[..]), 1);
        assert!(buf.capacity() >= READ_BUFFER_BUSY);
        control.shed_buffer();
        assert_eq!(read_and_decode(&mut codec, &mut buf, &mut &one[..]), 1);
        assert_eq!(buf.capacity(), READ_BUFFER);
        assert!(!control.shed.get());
    }

    fn codec(max: usize) -> ReadCodec {
        ReadCodec::new(max, Rc::default())
    }

    /// A masked client frame header declaring `len` bytes (zero mask key).
    fn header(first: u8, len: u64) -> Vec<u8> {
        let mut h = vec![first];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xFFFF => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[0, 0, 0, 0]);
        h
    }

    #[test]
    fn a_header_over_the_limit_is_refused_before_its_payload() {
        for (first, len) in [(0x81, 1 << 20), (0x81, (1u64 << 63) - 1), (0x82, 65_537)] {
            let mut buf = BytesMut::from(&header(first, len)[..]);
            let e = codec(65_536).decode(&mut buf).expect_err("too large");
            assert!(matches!(e, ReadError::TooLarge(_)), "{e:?}");
            assert!(
                buf.capacity() < 1024,
                "payload room reserved: {}",
                buf.capacity()
            );
        }
        // At the limit it waits for the payload.
        let mut buf = BytesMut::from(&header(0x81, 65_536)[..]);
        assert!(matches!(codec(65_536).decode(&mut buf), Ok(None)));
    }

    #[test]
    fn control_frames_over_125_bytes_or_fragmented_and_reserved_bits_are_refused() {
        let mut buf = BytesMut::from(&header(0x89, 126)[..]);
        assert!(matches!(
            codec(65_536).decode(&mut buf),
            Err(ReadError::TooLarge(_))
        ));
        let mut buf = BytesMut::from(&header(0x09, 4)[..]);
        assert!(matches!(
            codec(65_536).decode(&mut buf),
            Err(ReadError::Protocol(_))
        ));
        for rsv in [0x40, 0x20, 0x10] {
            let mut buf = BytesMut::from(&header(0x81 | rsv, 4)[..]);
            assert!(matches!(
                codec(65_536).decode(&mut buf),
                Err(ReadError::Protocol(_))
            ));
        }
    }

    #[test]
    fn a_fragmented_message_is_refused_once_its_fragments_would_pass_the_limit() {
        let mut c = codec(1000);
        let mut buf = BytesMut::new();
        Parser::write_message(&mut buf, vec![b'a'; 600], OpCode::Text, false, true);
        assert!(matches!(
            c.decode(&mut buf),
            Ok(Some(Frame::Continuation(Item::FirstText(_))))
        ));
        let mut buf = BytesMut::from(&header(0x00, 300)[..]);
        assert!(matches!(c.decode(&mut buf), Ok(None)), "900 bytes fit");
        let mut buf = BytesMut::from(&header(0x80, 401)[..]);
        assert!(matches!(c.decode(&mut buf), Err(ReadError::TooLarge(_))));
    }

    #[tokio::test]
    async fn a_frame_that_stops_half_way_ends_the_stream_after_the_timeout() {
        use futures_util::StreamExt;
        let (client, server) = tokio::io::duplex(4096);
        let mut frames = FrameReader::new(server, codec(65_536), Duration::from_millis(200));
        let mut client = client;
        let mut whole = BytesMut::new();
        Parser::write_message(&mut whole, "x".repeat(1000), OpCode::Text, true, true);
        tokio::io::AsyncWriteExt::write_all(&mut client, &whole[..500])
            .await
            .expect("write");
        let started = std::time::Instant::now();
        let next = tokio::time::timeout(Duration::from_secs(5), frames.next()).await;
        assert!(matches!(next, Ok(Some(Err(ReadError::Stalled)))));
        assert!(started.elapsed() >= Duration::from_millis(190));
        assert!(
            frames.next().await.is_none(),
            "the stream ends with the stall"
        );
    }
}
