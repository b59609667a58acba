//! GNU build-ids and perf's build-id cache: `DIR/.build-id/<first 2 hex>/<other 38 hex>`, here a plain
//! copy of the binary (perf uses such a file directly).

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BuildIdError {
    #[error("{0}: not a 64-bit little-endian ELF file")]
    NotElf(String),
    #[error("{0}: has no GNU build-id note")]
    Missing(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

/// The GNU build-id of an ELF image (a file's bytes, or a `[vdso]` dump), from its PT_NOTE segments.
pub fn read(image: &[u8], name: &str) -> Result<Vec<u8>, BuildIdError> {
    let not_elf = || BuildIdError::NotElf(name.to_string());
    if image.len() < 64 || &image[..4] != b"\x7fELF" || image[4] != 2 || image[5] != 1 {
        return Err(not_elf());
    }
    let u16_at = |at: usize| {
        image
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        image
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |at: usize| {
        image
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let phoff = u64_at(32).ok_or_else(not_elf)? as usize;
    let phentsize = u16_at(54).ok_or_else(not_elf)? as usize;
    let phnum = u16_at(56).ok_or_else(not_elf)? as usize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph) != Some(PT_NOTE) {
            continue;
        }
        let off = u64_at(ph + 8).ok_or_else(not_elf)? as usize;
        let size = u64_at(ph + 32).ok_or_else(not_elf)? as usize;
        let notes = image
            .get(off..off.saturating_add(size))
            .ok_or_else(not_elf)?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let namesz = u32::from_le_bytes(notes[at..at + 4].try_into().unwrap()) as usize;
            let descsz = u32::from_le_bytes(notes[at + 4..at + 8].try_into().unwrap()) as usize;
            let ntype = u32::from_le_bytes(notes[at + 8..at + 12].try_into().unwrap());
            let name_at = at + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let end = desc_at + descsz.div_ceil(4) * 4;
            if ntype == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz) == Some(b"GNU\0") {
                if let Some(id) = notes.get(desc_at..desc_at + descsz) {
                    return Ok(id.to_vec());
                }
            }
            at = end;
        }
    }
    Err(BuildIdError::Missing(name.to_string()))
}

pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where perf looks for the binary with this build-id under the cache directory `dir`.
pub fn cache_path(dir: &Path, id: &[u8]) -> PathBuf {
    let h = hex(id);
    dir.join(".build-id").join(&h[..2]).join(&h[2..])
}

/// Puts `image` into the cache under `dir`; returns where.
pub fn store(dir: &Path, id: &[u8], image: &[u8]) -> Result<PathBuf, BuildIdError> {
    let path = cache_path(dir, id);
    let io_err = |source| BuildIdError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(path.parent().expect("cache path has a parent")).map_err(io_err)?;
    std::fs::write(&path, image).map_err(io_err)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_build_id_or_reports_missing() {
        // Whatever the test binary is, it is an ELF file: either it has an id or the error says so.
        let exe = std::env::current_exe().unwrap();
        let image = std::fs::read(&exe).unwrap();
        match read(&image, "test") {
            Ok(id) => assert!(!id.is_empty()),
            Err(e) => assert!(matches!(e, BuildIdError::Missing(_))),
        }
        assert!(matches!(
            read(b"#!/bin/sh", "x"),
            Err(BuildIdError::NotElf(_))
        ));
    }

    #[test]
    fn cache_layout() {
        let id = [0x12u8; 20];
        let p = cache_path(Path::new("/c"), &id);
        assert_eq!(
            p,
            Path::new("/c/.build-id/12/12121212121212121212121212121212121212")
        );
    }
}
