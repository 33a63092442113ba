//! Batch buffers: 64-byte-aligned memory recycled through a pool, from the heap or from an
//! [`Allocator`] (e.g. pinned memory from torch). A buffer returns to the pool only when its
//! last owner drops its [`PooledBuffer`] (in Python: when the last array or tensor viewing it
//! dies), so a batch that is still referenced is never overwritten.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// One 64-byte line of buffer storage: the alignment every output element type (and SIMD) needs.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Memory for batch buffers from outside this crate, e.g. page-locked ("pinned") memory
/// allocated by torch, so that batches can be copied to a GPU asynchronously without another
/// copy on the host.
pub trait Allocator: Send + Sync {
    /// At least `len` bytes, 64-byte aligned.
    fn allocate(&self, len: usize) -> Result<ExternalMemory>;
}

/// A block of memory owned by something else (`owner` keeps it alive).
pub struct ExternalMemory {
    ptr: std::ptr::NonNull<u8>,
    capacity: usize,
    _owner: Box<dyn std::any::Any + Send + Sync>,
}

// SAFETY: the memory is plain bytes, valid while `_owner` lives; the pool hands each block to
// one user at a time.
unsafe impl Send for ExternalMemory {}
unsafe impl Sync for ExternalMemory {}

impl ExternalMemory {
    /// # Safety
    /// `ptr .. ptr + capacity` must be writable memory that stays valid, and is used by nothing
    /// else, for as long as `owner` lives.
    pub unsafe fn new(
        ptr: *mut u8,
        capacity: usize,
        owner: Box<dyn std::any::Any + Send + Sync>,
    ) -> Result<Self> {
        let ptr = std::ptr::NonNull::new(ptr)
            .ok_or_else(|| Error::alloc("allocator returned a null pointer"))?;
        if !(ptr.as_ptr() as usize).is_multiple_of(64) {
            return Err(Error::invalid(
                "allocator returned memory that is not 64-byte aligned",
            ));
        }
        Ok(ExternalMemory {
            ptr,
            capacity,
            _owner: owner,
        })
    }
}

/// Where a buffer's bytes live.
enum Memory {
    /// 64-byte-aligned lines on our heap.
    Heap(Vec<Line>),
    External(ExternalMemory),
}

/// Storage of a batch buffer: `len` bytes at the start of 64-byte-aligned memory.
struct Storage {
    mem: Memory,
    len: usize,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            mem: Memory::Heap(Vec::new()),
            len: 0,
        }
    }
}

impl Storage {
    fn capacity(&self) -> usize {
        match &self.mem {
            Memory::Heap(lines) => lines.len() * 64,
            Memory::External(e) => e.capacity,
        }
    }
    /// Make the buffer `len` bytes long, keeping (and not rewriting) the memory it has.
    /// External memory cannot grow: the pool only hands it out when it is large enough.
    fn set_len(&mut self, len: usize) {
        if let Memory::Heap(lines) = &mut self.mem {
            let need = len.div_ceil(64);
            if lines.len() < need {
                lines.resize(need, Line([0; 64]));
            }
        }
        assert!(len <= self.capacity(), "buffer too small");
        self.len = len;
    }
    fn ptr(&self) -> *const u8 {
        match &self.mem {
            Memory::Heap(lines) => lines.as_ptr().cast::<u8>(),
            Memory::External(e) => e.ptr.as_ptr(),
        }
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: the memory holds at least `len` initialised bytes (`set_len`; external memory
        // comes from an allocated tensor).
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr().cast_mut(), self.len) }
    }
}

/// Free buffers waiting for reuse. Buffers are 64-byte-aligned allocations (from the heap, or
/// from an [`Allocator`]) that stay warm (already faulted in), which is what makes a recycled
/// batch cheaper than a fresh one.
pub struct BufferPool {
    free: Mutex<Vec<Storage>>,
    max_free: usize,
    allocator: Option<Arc<dyn Allocator>>,
}

impl BufferPool {
    /// A pool of heap buffers that keeps at most `max_free` free ones for reuse.
    pub fn new(max_free: usize) -> Arc<Self> {
        Self::with_allocator(max_free, None)
    }

    /// A pool whose new buffers come from `allocator` (the heap when `None`).
    pub fn with_allocator(max_free: usize, allocator: Option<Arc<dyn Allocator>>) -> Arc<Self> {
        Arc::new(BufferPool {
            free: Mutex::new(Vec::new()),
            max_free,
            allocator,
        })
    }

    /// A buffer of exactly `len` bytes, 64-byte aligned (contents unspecified), recycled when
    /// possible.
    pub fn get(self: &Arc<Self>, len: usize) -> Result<PooledBuffer> {
        let recycled = {
            let mut free = self.free.lock().unwrap();
            let pos = free.iter().position(|b| b.capacity() >= len);
            pos.map(|p| free.swap_remove(p))
        };
        let mut buf = match (recycled, &self.allocator) {
            (Some(buf), _) => buf,
            (None, Some(alloc)) => {
                let mem = alloc.allocate(len)?;
                if mem.capacity < len {
                    return Err(Error::invalid(format!(
                        "allocator returned {} bytes, {len} were asked for",
                        mem.capacity
                    )));
                }
                Storage {
                    mem: Memory::External(mem),
                    len: 0,
                }
            }
            (None, None) => Storage::default(),
        };
        buf.set_len(len);
        Ok(PooledBuffer {
            buf,
            pool: Arc::clone(self),
        })
    }

    fn put(&self, buf: Storage) {
        let mut free = self.free.lock().unwrap();
        if free.len() < self.max_free {
            free.push(buf);
        }
    }

    /// Number of buffers waiting for reuse.
    pub fn free_count(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

/// A buffer on loan from a [`BufferPool`]; returns itself to the pool when dropped.
pub struct PooledBuffer {
    buf: Storage,
    pool: Arc<BufferPool>,
}

impl Deref for PooledBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.as_slice()
    }
}

impl DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut_slice()
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_recycles_only_after_drop() {
        let pool = BufferPool::new(2);
        let a = pool.get(100).unwrap();
        let pa = a.as_ptr();
        let b = pool.get(100).unwrap();
        assert_ne!(pa, b.as_ptr());
        assert_eq!((pa as usize % 64, b.as_ptr() as usize % 64), (0, 0));
        assert_eq!((a.len(), b.len()), (100, 100));
        drop(a);
        assert_eq!(pool.free_count(), 1);
        let c = pool.get(100).unwrap();
        assert_eq!(c.as_ptr(), pa);
        drop((b, c));
        assert_eq!(pool.free_count(), 2);
    }
}
