//! The record batch: built once by the producer, then stored, replicated and served as the same
//! bytes.
//!
//! ```text
//! batch   := magic:u8 (=1) | crc:u32be | producer_id:u64be | base_sequence:u32be
//!            | record_count:u32be | record*
//!            crc = CRC32C of every byte after the crc field
//! record  := timestamp_ms:u64be | key_present:u8 | (key_len:u32be | key)?
//!            | header_count:u32be | header* | value_len:u32be | value
//! header  := name_len:u32be | name (utf-8) | value_len:u32be | value
//! ```
//!
//! Offsets are not inside the batch: the broker assigns the batch a base offset when it applies
//! it and keeps that next to the bytes, so the bytes never change after the producer built them.
//! The producer id and base sequence let the broker drop a retried batch it already has.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::wire::{self, DecodeError, DecodeResult};

/// Current batch format.
pub const BATCH_MAGIC: u8 = 1;

/// Record header naming the record for deduplication: the broker stores a record carrying it
/// at most once per partition within its dedup window (`dedup_window_ms`). The outbox relay
/// sets `<source>:<row id>`; any sender whose retries may cut batches differently can use it.
pub const DEDUP_ID_HEADER: &str = "ferry-dedup-id";

/// Longest accepted [`DEDUP_ID_HEADER`] value, in bytes.
pub const DEDUP_ID_BYTES_MAX: usize = 256;

/// Bytes before the first record.
pub const BATCH_HEADER_BYTES: usize = 1 + 4 + 8 + 4 + 4;

/// Smallest encoding of one record (timestamp, no key, no headers, empty value).
const RECORD_BYTES_MIN: usize = 8 + 1 + 4 + 4;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Creation time, milliseconds since the Unix epoch, stamped by the producer.
    pub timestamp_ms: u64,
    /// Optional key; records with the same key go to the same partition.
    pub key: Option<Bytes>,
    /// Application headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// The payload.
    pub value: Bytes,
}

impl Record {
    /// Bytes this record takes inside a batch.
    pub fn encoded_len(&self) -> usize {
        RECORD_BYTES_MIN
            + self.key.as_ref().map_or(0, |k| 4 + k.len())
            + self.headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum::<usize>()
            + self.value.len()
    }

    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.timestamp_ms);
        wire::put_option(buf, self.key.as_ref(), |b, k| wire::put_bytes(b, k));
        wire::put_array(buf, &self.headers, |b, (name, value)| {
            wire::put_string(b, name);
            wire::put_bytes(b, value);
        });
        wire::put_bytes(buf, &self.value);
    }

    /// The value of the record's first [`DEDUP_ID_HEADER`], if it has one.
    pub fn dedup_id(&self) -> Option<&Bytes> {
        self.headers.iter().find(|(name, _)| name == DEDUP_ID_HEADER).map(|(_, value)| value)
    }

    fn decode(buf: &mut Bytes) -> DecodeResult<Record> {
        let timestamp_ms = wire::get_u64(buf, "record.timestamp_ms")?;
        let key = wire::get_option(buf, "record.key", |b| wire::get_bytes(b, "record.key"))?;
        let headers = wire::get_array(buf, "record.headers", 8, |b| {
            Ok((wire::get_string(b, "header.name")?, wire::get_bytes(b, "header.value")?))
        })?;
        let value = wire::get_bytes(buf, "record.value")?;
        Ok(Record { timestamp_ms, key, headers, value })
    }
}

/// Builds a batch in one buffer; the CRC is filled in by [`RecordBatchBuilder::finish`].
#[derive(Debug)]
pub struct RecordBatchBuilder {
    buf: BytesMut,
    count: u32,
}

impl RecordBatchBuilder {
    /// Starts a batch for `producer_id`, whose first record has sequence `base_sequence`.
    pub fn new(producer_id: u64, base_sequence: u32, capacity_bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + capacity_bytes);
        buf.put_u8(BATCH_MAGIC);
        buf.put_u32(0); // crc, filled in by finish()
        buf.put_u64(producer_id);
        buf.put_u32(base_sequence);
        buf.put_u32(0); // record count, filled in by finish()
        RecordBatchBuilder { buf, count: 0 }
    }

    /// Appends a record.
    pub fn push(&mut self, record: &Record) {
        record.encode(&mut self.buf);
        self.count += 1;
    }

    /// Records pushed so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes the batch takes so far.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Seals the batch: writes the record count and the CRC.
    pub fn finish(mut self) -> Bytes {
        self.buf[BATCH_HEADER_BYTES - 4..BATCH_HEADER_BYTES]
            .copy_from_slice(&self.count.to_be_bytes());
        let crc = crc32c::crc32c(&self.buf[5..]);
        self.buf[1..5].copy_from_slice(&crc.to_be_bytes());
        self.buf.freeze()
    }
}

/// A validated batch: magic, CRC and record structure were checked by [`RecordBatch::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    bytes: Bytes,
    producer_id: u64,
    base_sequence: u32,
    count: u32,
    has_dedup_ids: bool,
}

impl RecordBatch {
    /// Checks `bytes` is a whole, intact batch with at least one record.
    pub fn parse(bytes: Bytes) -> DecodeResult<RecordBatch> {
        let mut buf = bytes.clone();
        let magic = wire::get_u8(&mut buf, "batch.magic")?;
        if magic != BATCH_MAGIC {
            return Err(DecodeError::Invalid { what: "batch.magic", detail: format!("{magic}") });
        }
        let crc = wire::get_u32(&mut buf, "batch.crc")?;
        let actual = crc32c::crc32c(&buf);
        if crc != actual {
            return Err(DecodeError::Invalid {
                what: "batch.crc",
                detail: format!("stored {crc:#010x}, computed {actual:#010x}"),
            });
        }
        let producer_id = wire::get_u64(&mut buf, "batch.producer_id")?;
        let base_sequence = wire::get_u32(&mut buf, "batch.base_sequence")?;
        let count = wire::get_u32(&mut buf, "batch.record_count")?;
        if count == 0 {
            return Err(DecodeError::Invalid { what: "batch.record_count", detail: "0".into() });
        }
        let mut has_dedup_ids = false;
        for _ in 0..count {
            let record = Record::decode(&mut buf)?;
            if let Some(id) = record.dedup_id() {
                if id.is_empty() || id.len() > DEDUP_ID_BYTES_MAX {
                    return Err(DecodeError::Invalid {
                        what: "record.dedup_id",
                        detail: format!(
                            "{DEDUP_ID_HEADER} is {} bytes; 1 to {DEDUP_ID_BYTES_MAX} allowed",
                            id.len()
                        ),
                    });
                }
                has_dedup_ids = true;
            }
        }
        if buf.has_remaining() {
            return Err(DecodeError::Trailing(buf.remaining()));
        }
        Ok(RecordBatch { bytes, producer_id, base_sequence, count, has_dedup_ids })
    }

    /// Wraps bytes that were validated before (e.g. read back from our own store) without the
    /// full walk; still checks the header so a corrupt store is noticed.
    pub fn from_trusted(bytes: Bytes) -> DecodeResult<RecordBatch> {
        let mut buf = bytes.clone();
        let magic = wire::get_u8(&mut buf, "batch.magic")?;
        if magic != BATCH_MAGIC {
            return Err(DecodeError::Invalid { what: "batch.magic", detail: format!("{magic}") });
        }
        let _crc = wire::get_u32(&mut buf, "batch.crc")?;
        let producer_id = wire::get_u64(&mut buf, "batch.producer_id")?;
        let base_sequence = wire::get_u32(&mut buf, "batch.base_sequence")?;
        let count = wire::get_u32(&mut buf, "batch.record_count")?;
        Ok(RecordBatch { bytes, producer_id, base_sequence, count, has_dedup_ids: false })
    }

    /// The batch's bytes, exactly as the producer built them.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Number of records.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The producer id stamped by the producer (0 = not idempotent).
    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// Sequence number of the first record.
    pub fn base_sequence(&self) -> u32 {
        self.base_sequence
    }

    /// True when some record carries a [`DEDUP_ID_HEADER`]. Known only for batches checked by
    /// [`RecordBatch::parse`]; `false` after [`RecordBatch::from_trusted`].
    pub fn has_dedup_ids(&self) -> bool {
        self.has_dedup_ids
    }

    /// Iterates over the records. Yields an error (and stops) on a malformed record.
    pub fn records(&self) -> RecordIter {
        let mut rest = self.bytes.clone();
        rest.advance(BATCH_HEADER_BYTES.min(rest.len()));
        RecordIter { rest, left: self.count }
    }
}

/// Iterator over a batch's records.
#[derive(Debug)]
pub struct RecordIter {
    rest: Bytes,
    left: u32,
}

impl Iterator for RecordIter {
    type Item = DecodeResult<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let item = Record::decode(&mut self.rest);
        if item.is_err() {
            self.left = 0;
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u64) -> Record {
        Record {
            timestamp_ms: 1_700_000_000_000 + i,
            key: i.is_multiple_of(2).then(|| Bytes::from(format!("k{i}"))),
            headers: vec![("h".into(), Bytes::from_static(b"v"))],
            value: Bytes::from(vec![i as u8; (i as usize) % 50]),
        }
    }

    #[test]
    fn batch_round_trip() {
        let mut b = RecordBatchBuilder::new(7, 100, 0);
        let records: Vec<Record> = (0..20).map(sample).collect();
        let mut expected_len = BATCH_HEADER_BYTES;
        for r in &records {
            b.push(r);
            expected_len += r.encoded_len();
        }
        let bytes = b.finish();
        assert_eq!(bytes.len(), expected_len);
        let batch = RecordBatch::parse(bytes).unwrap();
        assert_eq!(batch.count(), 20);
        assert_eq!(batch.producer_id(), 7);
        assert_eq!(batch.base_sequence(), 100);
        let back: Vec<Record> = batch.records().map(|r| r.unwrap()).collect();
        assert_eq!(back, records);
    }

    #[test]
    fn crc_catches_every_flipped_byte() {
        let mut b = RecordBatchBuilder::new(1, 0, 0);
        b.push(&sample(3));
        let bytes = b.finish();
        for i in 0..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[i] ^= 0x40;
            assert!(RecordBatch::parse(Bytes::from(bad)).is_err(), "flip at {i} not caught");
        }
    }

    #[test]
    fn empty_batch_refused() {
        let bytes = RecordBatchBuilder::new(1, 0, 0).finish();
        assert!(RecordBatch::parse(bytes).is_err());
    }
}
