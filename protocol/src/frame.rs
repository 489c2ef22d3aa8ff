//! Frames and their headers.
//!
//! ```text
//! frame    := len:u32be | payload                   (LengthDelimitedCodec, max length set)
//! request  := api_key:u16 | api_version:u16 | correlation_id:u32 | flags:u16 | body
//! response := correlation_id:u32 | error_code:u16 | flags:u16 | body
//!             body is the api's response when error_code == 0, else an ErrorBody
//! ```
//!
//! A response header carries flags too, so that broker→client pushes (flag `PUSH`) can share
//! the response direction of a connection.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::LengthDelimitedCodec;

use crate::api::{ApiKey, ErrorCode};
use crate::types::{NodeId, TxnState};
use crate::wire::{self, Decode, DecodeError, DecodeResult, Encode};

/// Default largest frame accepted or sent, in bytes. Bounds memory per connection; a producer
/// batch must fit in one frame with its header.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// Size of the request header in bytes.
pub const REQUEST_HEADER_BYTES: usize = 10;

/// Size of the response header in bytes.
pub const RESPONSE_HEADER_BYTES: usize = 8;

/// Frame flag: a broker→client message that answers no request.
pub const FLAG_PUSH: u16 = 0x0001;

/// The protocol version this build speaks (lowest and highest are equal for now).
pub const PROTOCOL_VERSION: u16 = 1;

/// A frame codec with the maximum frame length always set (used for reading frames).
pub fn codec(frame_bytes_max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(frame_bytes_max)
        .new_codec()
}

/// An outgoing frame in two parts: a small head (frame header, error body) and a body that may
/// be large (a record batch, fetched batches). [`FrameEncoder`] copies each once, straight into
/// the socket's write buffer, instead of first joining them into a new buffer.
#[derive(Debug, Clone)]
pub struct OutFrame {
    /// Header bytes.
    pub head: Bytes,
    /// Body bytes.
    pub body: Bytes,
}

/// Writes [`OutFrame`]s as `len:u32be | head | body`, refusing any larger than the maximum.
#[derive(Debug, Clone, Copy)]
pub struct FrameEncoder {
    frame_bytes_max: usize,
}

impl FrameEncoder {
    /// An encoder for frames of at most `frame_bytes_max` payload bytes.
    pub fn new(frame_bytes_max: usize) -> Self {
        FrameEncoder { frame_bytes_max }
    }
}

impl tokio_util::codec::Encoder<OutFrame> for FrameEncoder {
    type Error = std::io::Error;

    fn encode(&mut self, frame: OutFrame, dst: &mut BytesMut) -> Result<(), Self::Error> {
        let len = frame.head.len() + frame.body.len();
        if len > self.frame_bytes_max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("frame of {len} bytes exceeds the maximum {}", self.frame_bytes_max),
            ));
        }
        dst.reserve(4 + len);
        dst.put_u32(crate::wire::len_u32(len));
        dst.extend_from_slice(&frame.head);
        dst.extend_from_slice(&frame.body);
        Ok(())
    }
}

/// The fixed part of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// The operation.
    pub api_key: ApiKey,
    /// The operation's version.
    pub api_version: u16,
    /// Chosen by the client; echoed in the response.
    pub correlation_id: u32,
    /// Flag bits.
    pub flags: u16,
}

impl RequestHeader {
    /// Writes the header.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u16(self.api_key as u16);
        buf.put_u16(self.api_version);
        buf.put_u32(self.correlation_id);
        buf.put_u16(self.flags);
    }

    /// Reads the header from the front of a frame. An unknown api key is reported with the
    /// correlation id so the server can still answer it.
    pub fn decode(buf: &mut Bytes) -> Result<RequestHeader, (Option<u32>, DecodeError)> {
        let raw_key = wire::get_u16(buf, "api_key").map_err(|e| (None, e))?;
        let api_version = wire::get_u16(buf, "api_version").map_err(|e| (None, e))?;
        let correlation_id = wire::get_u32(buf, "correlation_id").map_err(|e| (None, e))?;
        let flags = wire::get_u16(buf, "flags").map_err(|e| (Some(correlation_id), e))?;
        let api_key = ApiKey::from_u16(raw_key).ok_or_else(|| {
            (
                Some(correlation_id),
                DecodeError::Invalid { what: "api_key", detail: format!("unknown {raw_key}") },
            )
        })?;
        Ok(RequestHeader { api_key, api_version, correlation_id, flags })
    }
}

/// The fixed part of a response or push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The request's correlation id (0 for pushes).
    pub correlation_id: u32,
    /// The outcome.
    pub error_code: ErrorCode,
    /// Flag bits.
    pub flags: u16,
}

impl ResponseHeader {
    /// Writes the header.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.correlation_id);
        buf.put_u16(self.error_code as u16);
        buf.put_u16(self.flags);
    }

    /// Reads the header from the front of a frame.
    pub fn decode(buf: &mut Bytes) -> DecodeResult<ResponseHeader> {
        let correlation_id = wire::get_u32(buf, "correlation_id")?;
        let raw = wire::get_u16(buf, "error_code")?;
        let error_code = ErrorCode::from_u16(raw).ok_or_else(|| DecodeError::Invalid {
            what: "error_code",
            detail: format!("unknown {raw}"),
        })?;
        let flags = wire::get_u16(buf, "flags")?;
        Ok(ResponseHeader { correlation_id, error_code, flags })
    }
}

/// Where the leader is, as far as the answering node knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's node id.
    pub leader_id: NodeId,
    /// The leader's client address (`host:port`).
    pub leader_addr: String,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// Human-readable detail.
    pub message: String,
    /// Set with `NotLeader` when the leader is known.
    pub leader: Option<LeaderHint>,
    /// Set with `TransactionAlreadyResolved`: the state the transaction is in.
    pub txn_state: Option<TxnState>,
}

impl Encode for ErrorBody {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.message);
        wire::put_option(buf, self.leader.as_ref(), |b, l| {
            b.put_u64(l.leader_id.0);
            wire::put_string(b, &l.leader_addr);
        });
        wire::put_option(buf, self.txn_state.as_ref(), |b, s| b.put_u8(*s as u8));
    }
}

// error := message:string | leader:option<id:u64 | addr:string> | txn_state:option<u8>
// (txn_state was added later: a body that ends before it means None.)
impl Decode for ErrorBody {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        let message = wire::get_string(buf, "error.message")?;
        let leader = wire::get_option(buf, "error.leader", |b| {
            Ok(LeaderHint {
                leader_id: NodeId(wire::get_u64(b, "error.leader_id")?),
                leader_addr: wire::get_string(b, "error.leader_addr")?,
            })
        })?;
        let txn_state = if buf.is_empty() {
            None
        } else {
            wire::get_option(buf, "error.txn_state", |b| {
                let raw = wire::get_u8(b, "error.txn_state")?;
                TxnState::from_u8(raw).ok_or_else(|| DecodeError::Invalid {
                    what: "error.txn_state",
                    detail: format!("{raw}"),
                })
            })?
        };
        Ok(ErrorBody { message, leader, txn_state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = RequestHeader {
            api_key: ApiKey::Fetch,
            api_version: 3,
            correlation_id: 77,
            flags: FLAG_PUSH,
        };
        let mut buf = BytesMut::new();
        h.encode(&mut buf);
        assert_eq!(buf.len(), REQUEST_HEADER_BYTES);
        assert_eq!(RequestHeader::decode(&mut buf.freeze()), Ok(h));

        let r = ResponseHeader { correlation_id: 9, error_code: ErrorCode::NotLeader, flags: 0 };
        let mut buf = BytesMut::new();
        r.encode(&mut buf);
        assert_eq!(buf.len(), RESPONSE_HEADER_BYTES);
        assert_eq!(ResponseHeader::decode(&mut buf.freeze()), Ok(r));
    }

    #[test]
    fn encoder_writes_what_the_reader_reads() {
        use tokio_util::codec::{Decoder, Encoder};
        let mut enc = FrameEncoder::new(64);
        let mut buf = BytesMut::new();
        enc.encode(
            OutFrame { head: Bytes::from_static(b"hd"), body: Bytes::from_static(b"body") },
            &mut buf,
        )
        .unwrap();
        let frame = codec(64).decode(&mut buf).unwrap().unwrap();
        assert_eq!(&frame[..], b"hdbody");
        let too_big = OutFrame { head: Bytes::new(), body: Bytes::from(vec![0u8; 65]) };
        assert!(enc.encode(too_big, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn unknown_api_key_keeps_correlation_id() {
        let mut buf = BytesMut::new();
        buf.put_u16(999);
        buf.put_u16(0);
        buf.put_u32(42);
        buf.put_u16(0);
        let err = RequestHeader::decode(&mut buf.freeze()).err();
        assert!(matches!(err, Some((Some(42), DecodeError::Invalid { .. }))));
    }
}
