//! Code bytes of a recording: the sideband says which file is mapped at an address for a
//! process at a moment, the debug-info layer finds that file and its bytes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use crate::debuginfo::{BinaryCache, BuildId};
use crate::pt::flow::{Context, Image};
use crate::sideband::{Instant, Map, Model, When};

/// An [`Image`] over a recording, immutable while decoding: the address space is named by the
/// decoder's [`Context::space`], which [`RecordingImage::space`] builds from a pid and a
/// sideband epoch (how many map-changing records perf has applied). Code is never read "now":
/// a segment decoded in parallel asks about its own moment.
#[derive(Debug)]
pub struct RecordingImage<'m> {
    model: &'m Model,
    binaries: &'m BinaryCache,
    /// Perf times of the records that can change an address space (MMAP, MMAP2, COMM, FORK,
    /// EXIT), ascending: epoch `e` has the first `e` of them applied.
    epochs: Vec<u64>,
    /// Binaries that could not be found: name → reads that failed. Diagnostics only: what the
    /// image returns never depends on it.
    missing: Mutex<BTreeMap<String, u64>>,
    /// Kernel maps read through vmlinux or kcore (see `kernel.rs`).
    kernel: super::kernel::KernelCode,
}

impl<'m> RecordingImage<'m> {
    /// `epochs`: the perf times of the address-space-changing records.
    pub fn new(model: &'m Model, binaries: &'m BinaryCache, mut epochs: Vec<u64>) -> Self {
        epochs.sort_unstable();
        epochs.dedup();
        RecordingImage {
            model,
            binaries,
            epochs,
            missing: Mutex::new(BTreeMap::new()),
            kernel: super::kernel::KernelCode::new(),
        }
    }

    /// The epoch at perf time `time`: every map change at or before it applied.
    pub fn epoch_at(&self, time: u64) -> u32 {
        let n = self.epochs.partition_point(|&t| t <= time);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The last epoch (everything applied), for timeless decoding.
    pub fn last_epoch(&self) -> u32 {
        u32::try_from(self.epochs.len()).unwrap_or(u32::MAX)
    }

    /// The address-space id of process `pid` (-1: unknown) at `epoch`.
    pub fn space(pid: i32, epoch: u32) -> u64 {
        u64::from(epoch) << 32 | u64::from(pid as u32)
    }

    fn split(space: u64) -> (i32, u32) {
        (space as u32 as i32, (space >> 32) as u32)
    }

    fn instant(&self, epoch: u32) -> Instant {
        match epoch.checked_sub(1) {
            None => Instant::START,
            Some(i) => match self.epochs.get(i as usize) {
                Some(&t) => self.model.instant(When::Time(t)),
                None => Instant::END,
            },
        }
    }

    /// The binaries that could not be found, with how many code reads each failed.
    pub fn missing(&self) -> BTreeMap<String, u64> {
        self.missing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn note_missing(&self, name: &str) {
        let mut missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner);
        *missing.entry(name.to_owned()).or_default() += 1;
    }
}

impl RecordingImage<'_> {
    /// The sideband mapping the code at `ip` is read through in `ctx`, so that other layers
    /// (the index) name code exactly as the decoder read it.
    pub fn map_for(&self, ctx: &Context, ip: u64) -> Option<&Map> {
        let (pid, epoch) = Self::split(ctx.space);
        let at = self.instant(epoch);
        // Guests (NR set) are not resolved yet: their code reads as unmapped.
        if ctx.nr {
            return None;
        }
        self.model.map_at(0, pid, ip, at)
    }
}

impl Image for RecordingImage<'_> {
    fn read(&self, ctx: &Context, ip: u64, buf: &mut [u8]) -> usize {
        let Some(map) = self.map_for(ctx, ip) else {
            return 0;
        };
        if super::kernel::is_kernel_map(map) {
            let search = self.binaries.search_paths();
            let read = self.kernel.read(search, map, ip, buf);
            return read.unwrap_or_else(|name| {
                self.note_missing(name);
                0
            });
        }
        let build_id = map
            .build_id
            .as_ref()
            .and_then(|b| BuildId::new(b.as_bytes()));
        let binary = match self
            .binaries
            .get(Path::new(&*map.filename), build_id.as_ref())
        {
            Ok(binary) => binary,
            Err(_) => {
                self.note_missing(&map.filename);
                return 0;
            }
        };
        let Some(vaddr) = binary.file_offset_to_vaddr(map.file_offset(ip)) else {
            return 0;
        };
        let Some(code) = binary.code_at(vaddr) else {
            return 0;
        };
        // Stop at the end of the mapping: the next one may hold another file.
        let in_map = map.end().saturating_sub(ip);
        let len = buf
            .len()
            .min(code.len())
            .min(usize::try_from(in_map).unwrap_or(usize::MAX));
        buf[..len].copy_from_slice(&code[..len]);
        len
    }
}
