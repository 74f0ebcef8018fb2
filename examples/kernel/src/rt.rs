//! What the precompiled `core` expects a freestanding binary to provide: the
//! memory functions (no C library is linked) and the unwinder's personality
//! symbol (nothing unwinds with `panic = "abort"`).

use core::arch::asm;

/// Never called: `panic = "abort"`, but `core` still names it.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

// Written with `rep` string instructions, so the compiler cannot turn their
// loops back into calls to themselves.

/// # Safety
/// As C's `memcpy`: `dst` and `src` valid for `n` bytes, not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both regions; DF is clear (SysV ABI).
    unsafe {
        asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// As C's `memmove`: `dst` and `src` valid for `n` bytes, possibly overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if n == 0 || (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: a forward copy never reads a byte it already wrote when dst
        // starts before src or past its end.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: dst lies inside src's region: copy from the last byte down (DF
    // set for the copy, cleared again as the ABI requires). n >= 1 here.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rdi") dst.wrapping_add(n - 1) => _, inout("rsi") src.wrapping_add(n - 1) => _,
             inout("rcx") n => _, options(nostack));
    }
    dst
}

/// # Safety
/// As C's `memset`: `dst` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the region; DF is clear (SysV ABI).
    unsafe {
        asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// As C's `memcmp`: `a` and `b` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n, and the caller guarantees n readable bytes at `a`.
        // Volatile so the loop is not recognised as a memcmp call.
        let x = unsafe { core::ptr::read_volatile(a.add(i)) };
        // SAFETY: as above, for `b`.
        let y = unsafe { core::ptr::read_volatile(b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// As `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
