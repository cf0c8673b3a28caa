//! Framing: a 4-byte big-endian length prefix, then a bincode payload.
//!
//! This is the only module that touches bytes on the wire. The length prefix is
//! checked against [`MAX_FRAME_LEN`] before any buffer is grown for the payload,
//! so a hostile or confused peer cannot make us allocate gigabytes, and the
//! bincode decoder is given the same limit for what it allocates while decoding.

use std::marker::PhantomData;

use bytes::{Buf, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::error::ProtoError;

/// Largest payload a frame may carry (1 MiB): far above any prompt or status
/// report we send, far below what would hurt a 4-8 GB board.
pub const MAX_FRAME_LEN: usize = 1 << 20;

const PREFIX_LEN: usize = 4;

/// The bincode configuration of every frame: varint integers, and a decode
/// allocation limit equal to the frame limit.
fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_LEN>,
> {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Encodes one message into a payload (without the length prefix).
///
/// # Errors
/// [`ProtoError::Encode`] if serde refuses the value, [`ProtoError::FrameTooLarge`]
/// if it would not fit in one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let bytes =
        bincode::serde::encode_to_vec(msg, config()).map_err(|source| ProtoError::Encode {
            what: std::any::type_name::<T>(),
            source,
        })?;
    if bytes.len() > MAX_FRAME_LEN {
        return Err(ProtoError::FrameTooLarge {
            len: bytes.len() as u64,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(bytes)
}

/// Decodes one payload (without the length prefix) into a message; the whole
/// payload must be consumed.
///
/// # Errors
/// [`ProtoError::Decode`] when the bytes are not exactly one `T`.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtoError> {
    let what = short_type_name::<T>();
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|source| ProtoError::Decode { what, source })?;
    if used != payload.len() {
        return Err(ProtoError::Decode {
            what,
            source: bincode::error::DecodeError::Other("trailing bytes after the message"),
        });
    }
    Ok(msg)
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Length-prefixed frame codec. Delegates the framing itself to tokio-util's
/// [`LengthDelimitedCodec`] and adds what it lacks: the announced length in the
/// too-large error, and a distinct error for a frame cut short by EOF.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    /// Whole length (prefix included) of the frame being read, once its
    /// prefix is in: the inner codec consumes the prefix, so this is what
    /// lets a truncation error say how much was missing.
    pending: Option<usize>,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(PREFIX_LEN)
                .big_endian()
                .max_frame_length(MAX_FRAME_LEN)
                .new_codec(),
            pending: None,
        }
    }
}

fn announced_len(src: &BytesMut) -> Option<u64> {
    (src.len() >= PREFIX_LEN).then(|| u64::from((&src[..PREFIX_LEN]).get_u32()))
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ProtoError> {
        // Check the prefix ourselves first so the error can name the length;
        // LengthDelimitedCodec would refuse it too, without saying how big.
        if self.pending.is_none() {
            if let Some(len) = announced_len(src) {
                if len > MAX_FRAME_LEN as u64 {
                    return Err(ProtoError::FrameTooLarge {
                        len,
                        max: MAX_FRAME_LEN,
                    });
                }
                // Checked against MAX_FRAME_LEN just above, so it fits.
                self.pending = Some(usize::try_from(len).unwrap_or(MAX_FRAME_LEN) + PREFIX_LEN);
            }
        }
        let frame = self.inner.decode(src)?;
        if frame.is_some() {
            self.pending = None;
        }
        Ok(frame)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ProtoError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if src.is_empty() {
            return Ok(None);
        }
        Err(match self.pending {
            Some(need) => ProtoError::Truncated {
                have: src.len() + PREFIX_LEN,
                need,
            },
            None => ProtoError::Truncated {
                have: src.len(),
                need: 0,
            },
        })
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = ProtoError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), ProtoError> {
        if item.len() > MAX_FRAME_LEN {
            return Err(ProtoError::FrameTooLarge {
                len: item.len() as u64,
                max: MAX_FRAME_LEN,
            });
        }
        Ok(self.inner.encode(item, dst)?)
    }
}

/// The receiving half of a connection: yields typed messages.
pub struct FrameReader<R> {
    inner: FramedRead<R, FrameCodec>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a byte stream.
    pub fn new(reader: R) -> Self {
        Self {
            inner: FramedRead::new(reader, FrameCodec::default()),
        }
    }

    /// Reads the next message; `Ok(None)` when the peer closed cleanly between frames.
    ///
    /// # Errors
    /// Socket errors, oversized or truncated frames, and payloads that do not
    /// decode as `T`.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtoError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(frame) => decode(&frame?).map(Some),
        }
    }

    /// Reads the next frame's payload without decoding it (the handshake
    /// decodes it twice: first the version prefix, then the whole hello).
    ///
    /// # Errors
    /// As `recv`, plus [`ProtoError::Closed`] on a clean close.
    pub async fn raw_frame(&mut self) -> Result<BytesMut, ProtoError> {
        self.inner.next().await.ok_or(ProtoError::Closed)?
    }

    /// Like [`recv`](Self::recv), but a clean close is an error too: for
    /// places where the conversation says a message must come.
    ///
    /// # Errors
    /// As `recv`, plus [`ProtoError::Closed`].
    pub async fn expect<T: DeserializeOwned>(&mut self) -> Result<T, ProtoError> {
        self.recv().await?.ok_or(ProtoError::Closed)
    }
}

/// The sending half of a connection.
pub struct FrameWriter<W> {
    inner: FramedWrite<W, FrameCodec>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a byte sink.
    pub fn new(writer: W) -> Self {
        Self {
            inner: FramedWrite::new(writer, FrameCodec::default()),
        }
    }

    /// Sends one message and flushes it: every frame is on the wire when this
    /// returns, which is what lets tokens stream without batching.
    ///
    /// # Errors
    /// Encoding errors and socket errors.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ProtoError> {
        let payload = encode(msg)?;
        self.inner.send(Bytes::from(payload)).await
    }
}

/// Both halves of a connection over one stream, typed per direction.
pub struct Connection<S, In, Out> {
    /// Receiving half.
    pub reader: FrameReader<ReadHalf<S>>,
    /// Sending half.
    pub writer: FrameWriter<WriteHalf<S>>,
    _types: PhantomData<fn(Out) -> In>,
}

impl<S: AsyncRead + AsyncWrite, In: DeserializeOwned, Out: Serialize> Connection<S, In, Out> {
    /// Splits a stream into typed halves.
    pub fn new(stream: S) -> Self {
        let (r, w) = tokio::io::split(stream);
        Self {
            reader: FrameReader::new(r),
            writer: FrameWriter::new(w),
            _types: PhantomData,
        }
    }

    /// Receives the next incoming message (`None` on a clean close).
    ///
    /// # Errors
    /// See [`FrameReader::recv`].
    pub async fn recv(&mut self) -> Result<Option<In>, ProtoError> {
        self.reader.recv().await
    }

    /// Sends one outgoing message.
    ///
    /// # Errors
    /// See [`FrameWriter::send`].
    pub async fn send(&mut self, msg: &Out) -> Result<(), ProtoError> {
        self.writer.send(msg).await
    }

    /// Gives up the typed wrapper, returning the halves for separate tasks.
    pub fn into_parts(self) -> (FrameReader<ReadHalf<S>>, FrameWriter<WriteHalf<S>>) {
        (self.reader, self.writer)
    }
}
