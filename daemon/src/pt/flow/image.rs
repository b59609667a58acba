//! Code images: where the flow decoder reads instruction bytes.
//!
//! The decoder knows nothing of files or perf.data: it asks an [`Image`] for the bytes at an
//! address in a [`Context`] (the address space the trace says is current). A perf.data-backed
//! image can pick the process (or guest) from the context; [`RawImage`] ignores it.

use std::sync::Arc;

/// The address space code is read in, as far as the trace tells it.
///
/// `cr3` and `nr` come from PIP packets, `vmcs` from VMCS packets; `space` is a caller-defined
/// address-space id (for example a pid chosen from sideband) set with
/// [`super::BlockDecoder::set_space`]. The block cache is keyed by the whole context, so an image
/// may return different bytes for different contexts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Context {
    /// CR3 from the last PIP, if any.
    pub cr3: Option<u64>,
    /// VMX non-root (guest) operation, from the last PIP.
    pub nr: bool,
    /// VMCS base address from the last VMCS packet, if any.
    pub vmcs: Option<u64>,
    /// Caller-defined address-space id.
    pub space: u64,
}

/// Code bytes by address. Implementations must be immutable while a decoder uses them (the
/// decoder caches what it decodes), and `Send + Sync` so PSB segments can decode in parallel.
pub trait Image: Send + Sync {
    /// Copies the bytes at `ip` into `buf` and returns how many were copied: as many as are
    /// mapped contiguously from `ip`, at most `buf.len()`; 0 when nothing is mapped at `ip`.
    fn read(&self, ctx: &Context, ip: u64, buf: &mut [u8]) -> usize;
}

impl<T: Image + ?Sized> Image for &T {
    fn read(&self, ctx: &Context, ip: u64, buf: &mut [u8]) -> usize {
        (**self).read(ctx, ip, buf)
    }
}

impl<T: Image + ?Sized> Image for Arc<T> {
    fn read(&self, ctx: &Context, ip: u64, buf: &mut [u8]) -> usize {
        (**self).read(ctx, ip, buf)
    }
}

/// One section of a [`RawImage`]: bytes loaded at an address.
#[derive(Debug, Clone)]
pub struct Section {
    pub address: u64,
    pub bytes: Arc<[u8]>,
}

impl Section {
    fn end(&self) -> u64 {
        self.address.saturating_add(self.bytes.len() as u64)
    }

    fn contains(&self, ip: u64) -> bool {
        self.address <= ip && ip < self.end()
    }
}

/// Flat code images at fixed addresses, the same in every context (libipt's `--raw FILE:ADDR`).
///
/// A later section overrides earlier ones where they overlap, as `pt_image_add` does.
#[derive(Debug, Clone, Default)]
pub struct RawImage {
    sections: Vec<Section>,
}

impl RawImage {
    pub fn new() -> Self {
        RawImage::default()
    }

    /// Adds `bytes` at `address`, on top of the sections added before.
    pub fn add(&mut self, address: u64, bytes: impl Into<Arc<[u8]>>) {
        self.sections.push(Section {
            address,
            bytes: bytes.into(),
        });
    }

    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The section that provides `ip` and how many bytes it provides before a later section
    /// takes over or it ends.
    fn lookup(&self, ip: u64) -> Option<(&Section, u64)> {
        let (index, section) = self
            .sections
            .iter()
            .enumerate()
            .rev()
            .find(|(_, section)| section.contains(ip))?;
        // A later section starting above `ip` cuts this one short.
        let end = self.sections[index + 1..]
            .iter()
            .filter(|later| later.address > ip)
            .map(|later| later.address)
            .fold(section.end(), u64::min);
        Some((section, end - ip))
    }
}

impl Image for RawImage {
    fn read(&self, _ctx: &Context, ip: u64, buf: &mut [u8]) -> usize {
        let mut done = 0usize;
        while done < buf.len() {
            let at = ip.wrapping_add(done as u64);
            let Some((section, avail)) = self.lookup(at) else {
                break;
            };
            let start = (at - section.address) as usize;
            let len = (buf.len() - done).min(avail.min(usize::MAX as u64) as usize);
            buf[done..done + len].copy_from_slice(&section.bytes[start..start + len]);
            done += len;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_sections_override_and_reads_cross_sections() {
        let mut image = RawImage::new();
        image.add(0x1000, vec![1u8, 2, 3, 4]);
        image.add(0x1002, vec![9u8, 9, 9]);
        let mut buf = [0u8; 8];
        let n = image.read(&Context::default(), 0x1000, &mut buf);
        assert_eq!(&buf[..n], &[1, 2, 9, 9, 9]);
        assert_eq!(image.read(&Context::default(), 0x2000, &mut buf), 0);
        // An earlier section is cut short by a later one starting inside it.
        image.add(0x0fff, vec![7u8, 7]);
        let n = image.read(&Context::default(), 0x0fff, &mut buf);
        assert_eq!(&buf[..n], &[7, 7, 2, 9, 9, 9]);
    }
}
