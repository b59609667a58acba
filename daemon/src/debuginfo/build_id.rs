//! The GNU build-id: the bytes of an ELF's `NT_GNU_BUILD_ID` note, which perf records per binary and
//! uses as the key of its build-id cache.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use object::Object;

use super::{map_file, Error};

/// A build-id: 1 to [`BuildId::MAX_LEN`] bytes (20 for the usual SHA-1 ids, 16 for MD5).
///
/// Stored inline so that it is `Copy` and cheap to use as a map key. Displays as lower-case hex, the
/// spelling of perf's cache (`.build-id/<2 hex>/<rest>`) and of `readelf -n`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId {
    len: u8,
    // Bytes past `len` are always zero, so the derived comparisons are correct.
    bytes: [u8; BuildId::MAX_LEN],
}

/// Why a string is not a build-id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseBuildIdError {
    /// Empty, or more than [`BuildId::MAX_LEN`] bytes.
    #[error("a build-id has 1 to {max} bytes, not {0}", max = BuildId::MAX_LEN)]
    Length(usize),
    /// An odd number of digits, or a character that is not a hex digit.
    #[error("not a hex string: {0:?}")]
    NotHex(String),
}

impl BuildId {
    /// The longest build-id this type holds. perf's own limit is 20 bytes.
    pub const MAX_LEN: usize = 32;

    /// A build-id of these bytes, or `None` when there are none or more than [`Self::MAX_LEN`].
    pub fn new(bytes: &[u8]) -> Option<BuildId> {
        if bytes.is_empty() || bytes.len() > Self::MAX_LEN {
            return None;
        }
        let mut id = BuildId {
            len: bytes.len() as u8,
            bytes: [0; Self::MAX_LEN],
        };
        id.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(id)
    }

    /// The bytes of the id.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Whether a recorded id (`self`) names the binary whose note holds `found`.
    ///
    /// Exact equality, except that a 20-byte recorded id may be a shorter id padded with zeros, as older
    /// perf versions wrote it into the BUILD_ID feature (perf's `dso__build_id_equal`).
    pub fn matches(&self, found: &BuildId) -> bool {
        let (rec, fnd) = (self.as_bytes(), found.as_bytes());
        if rec.len() > fnd.len() && rec.len() == 20 {
            return rec[..fnd.len()] == *fnd && rec[fnd.len()..].iter().all(|&b| b == 0);
        }
        rec == fnd
    }

    /// The build-id of the ELF image in `data`, if it has an `NT_GNU_BUILD_ID` note.
    pub fn from_elf_bytes(data: &[u8]) -> Result<Option<BuildId>, object::Error> {
        let file = object::File::parse(data)?;
        from_object(&file)
    }

    /// The build-id of the ELF file at `path`, if it has one.
    pub fn from_elf_file(path: &Path) -> Result<Option<BuildId>, Error> {
        let map = map_file(path)?;
        Self::from_elf_bytes(&map).map_err(|e| Error::not_elf(path, e))
    }
}

/// The build-id of a parsed object: `None` when it has no note (or an absurdly long one).
pub(crate) fn from_object(file: &object::File<'_>) -> Result<Option<BuildId>, object::Error> {
    Ok(file.build_id()?.and_then(BuildId::new))
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuildId({self})")
    }
}

impl FromStr for BuildId {
    type Err = ParseBuildIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let not_hex = || ParseBuildIdError::NotHex(s.to_owned());
        if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_hex());
        }
        let len = s.len() / 2;
        if len == 0 || len > Self::MAX_LEN {
            return Err(ParseBuildIdError::Length(len));
        }
        let mut bytes = [0u8; Self::MAX_LEN];
        for (i, byte) in bytes.iter_mut().take(len).enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| not_hex())?;
        }
        Ok(BuildId {
            len: len as u8,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let s = "0123456789abcdef0123456789abcdef01234567";
        let id: BuildId = s.parse().unwrap();
        assert_eq!(id.as_bytes().len(), 20);
        assert_eq!(id.to_string(), s);
        assert_eq!("ABCD".parse::<BuildId>().unwrap().as_bytes(), &[0xab, 0xcd]);
    }

    #[test]
    fn bad_hex() {
        assert!(matches!(
            "abc".parse::<BuildId>(),
            Err(ParseBuildIdError::NotHex(_))
        ));
        assert!(matches!(
            "zz".parse::<BuildId>(),
            Err(ParseBuildIdError::NotHex(_))
        ));
        assert!(matches!(
            "+1".parse::<BuildId>(),
            Err(ParseBuildIdError::NotHex(_))
        ));
        assert_eq!("".parse::<BuildId>(), Err(ParseBuildIdError::Length(0)));
        assert_eq!(
            "00".repeat(33).parse::<BuildId>(),
            Err(ParseBuildIdError::Length(33))
        );
    }

    #[test]
    fn padded_ids_match() {
        let short = BuildId::new(&[1; 16]).unwrap();
        let mut padded = [0u8; 20];
        padded[..16].copy_from_slice(&[1; 16]);
        let padded = BuildId::new(&padded).unwrap();
        assert!(padded.matches(&short));
        assert!(!short.matches(&padded));
        assert!(short.matches(&short));
        let other = BuildId::new(&[2; 16]).unwrap();
        assert!(!padded.matches(&other));
    }

    #[test]
    fn not_elf() {
        assert!(BuildId::from_elf_bytes(b"not an elf file").is_err());
    }
}
