//! Primitive encoders and decoders shared by every message body.
//!
//! Everything is big-endian. Variable-length fields carry a `u32` length prefix; arrays carry a
//! `u32` element count. Every decoder checks the length against the bytes that remain *before*
//! it slices or allocates, so no input can make it panic or allocate more than the input holds.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated input while reading {what}")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// A field holds a value that is not allowed.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The field being read.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// Bytes were left over after a complete body.
    #[error("{0} trailing bytes after the body")]
    Trailing(usize),
}

/// Result of decoding.
pub type DecodeResult<T> = Result<T, DecodeError>;

/// A type with a wire encoding.
pub trait Encode {
    /// Appends the encoding of `self` to `buf`.
    fn encode(&self, buf: &mut BytesMut);

    /// Encodes into a fresh buffer.
    fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }
}

/// A type that can be read back from its wire encoding.
pub trait Decode: Sized {
    /// Reads one value from the front of `buf`, advancing it. Byte fields are zero-copy slices
    /// of `buf`.
    fn decode(buf: &mut Bytes) -> DecodeResult<Self>;

    /// Decodes a whole body: the value must use every byte.
    fn decode_all(mut buf: Bytes) -> DecodeResult<Self> {
        let value = Self::decode(&mut buf)?;
        if buf.has_remaining() {
            return Err(DecodeError::Trailing(buf.remaining()));
        }
        Ok(value)
    }
}

fn need(buf: &Bytes, n: usize, what: &'static str) -> DecodeResult<()> {
    if buf.remaining() < n {
        Err(DecodeError::Truncated { what })
    } else {
        Ok(())
    }
}

/// Reads a `u8`.
pub fn get_u8(buf: &mut Bytes, what: &'static str) -> DecodeResult<u8> {
    need(buf, 1, what)?;
    Ok(buf.get_u8())
}

/// Reads a big-endian `u16`.
pub fn get_u16(buf: &mut Bytes, what: &'static str) -> DecodeResult<u16> {
    need(buf, 2, what)?;
    Ok(buf.get_u16())
}

/// Reads a big-endian `u32`.
pub fn get_u32(buf: &mut Bytes, what: &'static str) -> DecodeResult<u32> {
    need(buf, 4, what)?;
    Ok(buf.get_u32())
}

/// Reads a big-endian `u64`.
pub fn get_u64(buf: &mut Bytes, what: &'static str) -> DecodeResult<u64> {
    need(buf, 8, what)?;
    Ok(buf.get_u64())
}

/// Reads a `bool` encoded as one byte, 0 or 1.
pub fn get_bool(buf: &mut Bytes, what: &'static str) -> DecodeResult<bool> {
    match get_u8(buf, what)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(DecodeError::Invalid { what, detail: format!("bool byte {other}") }),
    }
}

/// Reads `len:u32 | bytes` as a zero-copy slice.
pub fn get_bytes(buf: &mut Bytes, what: &'static str) -> DecodeResult<Bytes> {
    let len = get_u32(buf, what)? as usize;
    need(buf, len, what)?;
    Ok(buf.split_to(len))
}

/// Reads `len:u32 | utf-8 bytes`.
pub fn get_string(buf: &mut Bytes, what: &'static str) -> DecodeResult<String> {
    let raw = get_bytes(buf, what)?;
    String::from_utf8(raw.to_vec())
        .map_err(|_| DecodeError::Invalid { what, detail: "not utf-8".into() })
}

/// Reads `present:u8 | value?`.
pub fn get_option<T>(
    buf: &mut Bytes,
    what: &'static str,
    read: impl FnOnce(&mut Bytes) -> DecodeResult<T>,
) -> DecodeResult<Option<T>> {
    if get_bool(buf, what)? {
        Ok(Some(read(buf)?))
    } else {
        Ok(None)
    }
}

/// Reads `count:u32 | element*`. `min_element_bytes` (at least 1) is the smallest encoding of one
/// element; a count that cannot fit in the remaining input is refused before anything is
/// allocated.
pub fn get_array<T>(
    buf: &mut Bytes,
    what: &'static str,
    min_element_bytes: usize,
    mut read: impl FnMut(&mut Bytes) -> DecodeResult<T>,
) -> DecodeResult<Vec<T>> {
    let count = get_u32(buf, what)? as usize;
    let fits = buf.remaining() / min_element_bytes.max(1);
    if count > fits {
        return Err(DecodeError::Invalid {
            what,
            detail: format!("count {count} cannot fit in {} bytes", buf.remaining()),
        });
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(read(buf)?);
    }
    Ok(out)
}

/// Writes `len:u32 | bytes`.
///
/// # Panics
/// Never for inputs below 4 GiB; frames are capped far below that (`FRAME_BYTES_MAX`).
pub fn put_bytes(buf: &mut BytesMut, value: &[u8]) {
    buf.put_u32(len_u32(value.len()));
    buf.put_slice(value);
}

/// Writes `len:u32 | utf-8 bytes`.
pub fn put_string(buf: &mut BytesMut, value: &str) {
    put_bytes(buf, value.as_bytes());
}

/// Writes a bool as one byte.
pub fn put_bool(buf: &mut BytesMut, value: bool) {
    buf.put_u8(u8::from(value));
}

/// Writes `present:u8 | value?`.
pub fn put_option<T>(buf: &mut BytesMut, value: Option<&T>, write: impl FnOnce(&mut BytesMut, &T)) {
    match value {
        Some(v) => {
            buf.put_u8(1);
            write(buf, v);
        }
        None => buf.put_u8(0),
    }
}

/// Writes `count:u32 | element*`.
pub fn put_array<T>(buf: &mut BytesMut, items: &[T], mut write: impl FnMut(&mut BytesMut, &T)) {
    buf.put_u32(len_u32(items.len()));
    for item in items {
        write(buf, item);
    }
}

/// Converts a length to the `u32` the wire carries, saturating. Lengths on the wire are bounded
/// by the frame size, so saturation only happens for a value that the peer will refuse anyway.
pub fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}
