//! A model file mapped into memory (natively), whose pages go back to the kernel once the
//! tensor in them has been copied into its resident form.
//!
//! Why: the CLI read the 98 MB GGUF into one buffer and the CPU model packed its blocks into
//! their own arrays (112 MB), so both were resident while loading: a peak of 255 MB, 2.6x the
//! file (notes/issue-15-kernels.md). Mapped, a tensor's pages are only resident between its
//! first read and [`MappedFile::release`]; packing copies a tensor about 1 MiB at a time and
//! releases each part, so about that much of the file is resident beside the packed copy (the
//! 30 MB token embedding released whole made the loading peak: notes/issue-15-kernels.md).

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use memmap2::Mmap;

/// The alignment and size multiple of released ranges ([`MappedFile::release`]): Linux's
/// default fault-around window.
pub const RELEASE_GRANULE: usize = 64 << 10;

/// A read-only mapping of a whole file.
#[derive(Debug)]
pub struct MappedFile {
    map: Mmap,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        // SAFETY: the mapping is read-only. Like any mapped model file (llama.cpp maps its
        // GGUF too), its bytes change if another process rewrites the file while it is
        // mapped; this crate only maps the model files it was pointed at.
        let map = unsafe { Mmap::map(&file)? };
        Ok(MappedFile { map })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Tells the kernel that the pages under `range` (byte offsets) are not needed now: they
    /// leave this process's resident memory and are read from the file again if touched.
    /// Out-of-range parts are ignored; errors are ignored (this only lowers memory).
    ///
    /// The range is widened to whole [`RELEASE_GRANULE`]s: on a page fault the kernel maps
    /// the neighbouring pages already in the page cache too ("fault-around", 64 KiB by
    /// default), so reading a tensor brought back the edges of the ones released before it
    /// (10 MB of SmolLM2's GGUF after loading, in runs of up to 16 pages). Neighbours still to
    /// be read just fault in again.
    pub fn release(&self, range: Range<usize>) {
        if range.start >= range.end.min(self.map.len()) {
            return;
        }
        let start = range.start / RELEASE_GRANULE * RELEASE_GRANULE;
        let end = range
            .end
            .min(self.map.len())
            .next_multiple_of(RELEASE_GRANULE)
            .min(self.map.len());
        if start >= end {
            return;
        }
        #[cfg(unix)]
        // SAFETY: `MADV_DONTNEED` on a read-only file mapping that is never written drops
        // page-table entries only; a later read faults the same bytes in from the file, so
        // every `&[u8]` into the mapping still reads what it read before.
        unsafe {
            let _ = self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start,
                end - start,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_pages_read_back_the_same_bytes() {
        let dir = std::env::temp_dir().join(format!("webguard-mapped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mapped = MappedFile::open(&path).unwrap();
        assert_eq!(mapped.bytes(), &data[..]);
        mapped.release(10..2 * 4096 + 5);
        mapped.release(0..usize::MAX);
        mapped.release(5..5);
        assert_eq!(mapped.bytes(), &data[..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
