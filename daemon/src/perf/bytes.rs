//! Bounds-checked reads in the writer's byte order, reporting file offsets on failure.

use super::error::{Error, Result};

/// The byte order a perf.data file was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
}

/// A slice of a perf.data file together with its file offset and byte order. Cheap to copy.
#[derive(Clone, Copy, Debug)]
pub struct Bytes<'a> {
    pub data: &'a [u8],
    /// File offset of `data[0]`.
    pub offset: u64,
    pub endian: Endian,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8], offset: u64, endian: Endian) -> Self {
        Bytes {
            data,
            offset,
            endian,
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// `len` bytes at `at`, or a truncation error naming `what`.
    pub fn slice(&self, at: usize, len: usize, what: &'static str) -> Result<&'a [u8]> {
        match at.checked_add(len) {
            Some(end) if end <= self.data.len() => Ok(&self.data[at..end]),
            _ => Err(Error::truncated(
                self.offset + at as u64,
                what,
                len as u64,
                self.data.len().saturating_sub(at) as u64,
            )),
        }
    }

    pub fn sub(&self, at: usize, len: usize, what: &'static str) -> Result<Bytes<'a>> {
        Ok(Bytes::new(
            self.slice(at, len, what)?,
            self.offset + at as u64,
            self.endian,
        ))
    }

    /// Everything from `at` on (empty when `at` is past the end).
    pub fn tail(&self, at: usize) -> Bytes<'a> {
        let at = at.min(self.data.len());
        Bytes::new(&self.data[at..], self.offset + at as u64, self.endian)
    }

    fn array<const N: usize>(&self, at: usize, what: &'static str) -> Result<[u8; N]> {
        Ok(self
            .slice(at, N, what)?
            .try_into()
            .expect("slice has length N"))
    }

    pub fn u8(&self, at: usize, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(at, what)?[0])
    }

    pub fn u16(&self, at: usize, what: &'static str) -> Result<u16> {
        let b = self.array(at, what)?;
        Ok(match self.endian {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        })
    }

    pub fn u32(&self, at: usize, what: &'static str) -> Result<u32> {
        let b = self.array(at, what)?;
        Ok(match self.endian {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        })
    }

    pub fn i32(&self, at: usize, what: &'static str) -> Result<i32> {
        Ok(self.u32(at, what)? as i32)
    }

    pub fn u64(&self, at: usize, what: &'static str) -> Result<u64> {
        let b = self.array(at, what)?;
        Ok(match self.endian {
            Endian::Little => u64::from_le_bytes(b),
            Endian::Big => u64::from_be_bytes(b),
        })
    }

    /// A u64 if the slice holds it, else `None` (for fields newer writers append).
    pub fn opt_u64(&self, at: usize) -> Option<u64> {
        self.u64(at, "").ok()
    }

    /// A NUL-terminated string from `at` to the end of the slice (the bytes before the first NUL).
    pub fn cstr(&self, at: usize) -> &'a [u8] {
        let rest = self.tail(at).data;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }
}

/// Rounds up to a multiple of 8, the alignment of perf records and AUXTRACE payloads.
pub(crate) fn align8(n: u64) -> u64 {
    n.saturating_add(7) & !7
}
