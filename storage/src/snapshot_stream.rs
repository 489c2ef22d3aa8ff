//! Encoder and decoder of the snapshot stream that [`crate::StateStore::export`] writes and
//! [`crate::StateStore::import`] reads; shared by both stores so their streams are byte-identical.
//!
//! Both stores write families in [`Cf::ALL`] order and keys in ascending byte order, so the same
//! state always produces the same stream (a simulation on `MemStore` and a replica on
//! `RocksStore` can compare snapshots byte for byte).

use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};

use crate::{Cf, Result, StorageError};

/// First bytes of every stream; the trailing digit is the format version.
const MAGIC: &[u8; 8] = b"FRYSNAP1";
/// Tag of a key/value record.
const TAG_RECORD: u8 = 0x01;
/// Tag of the end marker (followed by the record count).
const TAG_END: u8 = 0x00;
/// What a decoding error names in [`StorageError::Corrupt`].
const WHAT: &str = "snapshot stream";

/// Writes a stream through a `BufWriter` so each record is not a separate write on `out`.
///
/// ```text
/// stream := magic "FRYSNAP1" | record* | end
/// record := 0x01 | cf:u8 | key_len:u32be | key | value_len:u32be | value
/// end    := 0x00 | record_count:u64be
/// ```
pub struct StreamWriter<W: Write> {
    out: BufWriter<W>,
    records: u64,
    bytes_written: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Starts a stream (writes the magic).
    pub fn new(out: W) -> Result<Self> {
        let mut writer = StreamWriter { out: BufWriter::new(out), records: 0, bytes_written: 0 };
        writer.write_all(MAGIC)?;
        Ok(writer)
    }

    /// Appends one record. Keys and values longer than `u32::MAX` bytes cannot be encoded and are
    /// refused rather than truncated.
    pub fn record(&mut self, cf: Cf, key: &[u8], value: &[u8]) -> Result<()> {
        let key_len = encode_len(key.len())?;
        let value_len = encode_len(value.len())?;
        self.write_all(&[TAG_RECORD, cf as u8])?;
        self.write_all(&key_len.to_be_bytes())?;
        self.write_all(key)?;
        self.write_all(&value_len.to_be_bytes())?;
        self.write_all(value)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the end marker, flushes, and returns the number of bytes in the whole stream.
    pub fn finish(mut self) -> Result<u64> {
        self.write_all(&[TAG_END])?;
        let records = self.records;
        self.write_all(&records.to_be_bytes())?;
        self.out.flush()?;
        Ok(self.bytes_written)
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        // usize -> u64 never loses bits on the 64-bit targets we build for; saturate otherwise.
        self.bytes_written += u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        Ok(())
    }
}

fn encode_len(len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| {
        StorageError::Invalid(format!("snapshot record field of {len} bytes exceeds u32::MAX"))
    })
}

/// One decoded record.
#[derive(Debug)]
pub struct Record {
    /// Family.
    pub cf: Cf,
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
}

/// Reads a stream record by record, checking its shape. Never panics on bad input: every
/// malformation (bad magic, unknown tag or family, truncation, wrong record count, bytes after
/// the end marker) is a [`StorageError::Corrupt`].
pub struct StreamReader<R: Read> {
    input: BufReader<R>,
    records: u64,
    finished: bool,
}

impl<R: Read> StreamReader<R> {
    /// Reads and checks the magic.
    pub fn new(input: R) -> Result<Self> {
        let mut reader = StreamReader { input: BufReader::new(input), records: 0, finished: false };
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic, "magic")?;
        if &magic != MAGIC {
            return Err(corrupt(format!("bad magic {magic:02x?}")));
        }
        Ok(reader)
    }

    /// The next record, or `None` once the end marker has been read and checked.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.finished {
            return Ok(None);
        }
        match self.read_u8("record tag")? {
            TAG_RECORD => {
                let tag = self.read_u8("family tag")?;
                let cf = Cf::from_tag(tag)
                    .ok_or_else(|| corrupt(format!("unknown family tag {tag}")))?;
                let key = self.read_field("key")?;
                let value = self.read_field("value")?;
                self.records += 1;
                Ok(Some(Record { cf, key, value }))
            }
            TAG_END => {
                let mut count = [0u8; 8];
                self.read_exact(&mut count, "record count")?;
                let count = u64::from_be_bytes(count);
                if count != self.records {
                    return Err(corrupt(format!(
                        "end marker says {count} records, stream held {}",
                        self.records
                    )));
                }
                // A stream is exactly one snapshot: anything after the end marker means the
                // producer and this reader disagree about the format.
                let mut extra = [0u8; 1];
                if self.input.read(&mut extra)? != 0 {
                    return Err(corrupt("bytes after the end marker".to_owned()));
                }
                self.finished = true;
                Ok(None)
            }
            other => Err(corrupt(format!("unknown record tag {other:#04x}"))),
        }
    }

    fn read_u8(&mut self, field: &str) -> Result<u8> {
        let mut byte = [0u8; 1];
        self.read_exact(&mut byte, field)?;
        Ok(byte[0])
    }

    /// Reads `len:u32be | bytes`. Reads through `take` instead of allocating `len` up front, so a
    /// garbage length cannot make us allocate gigabytes before noticing the stream is short.
    fn read_field(&mut self, field: &str) -> Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.read_exact(&mut len, field)?;
        let len = u32::from_be_bytes(len);
        let mut bytes = Vec::new();
        (&mut self.input).take(u64::from(len)).read_to_end(&mut bytes)?;
        if bytes.len() != len as usize {
            return Err(corrupt(format!(
                "truncated {field}: expected {len} bytes, got {}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    fn read_exact(&mut self, buf: &mut [u8], field: &str) -> Result<()> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => corrupt(format!("truncated at {field}")),
            _ => StorageError::Io(e),
        })
    }
}

fn corrupt(detail: String) -> StorageError {
    StorageError::Corrupt { what: WHAT, detail }
}
