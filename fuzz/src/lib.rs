//! The webguard source files the fuzz targets run, compiled here directly: the parsers of
//! every file a page can hand the library (GGUF, safetensors, filter heads and adapters) and
//! the chat template, without burn, wgpu or tokenizers (which would otherwise be rebuilt with
//! coverage instrumentation). `burn` here is `burn-stub/`, for safetensors.rs's one tensor.
#![allow(dead_code)]

pub mod filter;
pub mod text;
pub mod weights;

#[path = "../../src/error.rs"]
pub mod error;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the bytes live on the heap (per thread) and the most since [`reset_peak`], so a
/// target can check what a parser allocated at its peak.
pub struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call goes to `System` unchanged; the counting only reads sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize);
            count(-(layout.size() as isize));
        }
        p
    }
}

/// Starts measuring; returns the live bytes now.
pub fn reset_peak() -> isize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live));
    live
}

/// The most bytes live since [`reset_peak`] returned `start`, beyond `start`.
pub fn peak_since(start: isize) -> usize {
    (PEAK.with(Cell::get) - start).max(0) as usize
}
