//! The machine around the XSAVE unit: port I/O, the serial console, QEMU's
//! isa-debug-exit, control registers and MSRs, GDT/TSS/IDT, the legacy PIC and
//! the PIT, and the interrupt entry stubs.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::fmt;

/// A value shared between the boot code and interrupt handlers on this single
/// CPU. Every access is `unsafe` and says why no other reference is live
/// (interrupts off, or only one context ever touches it).
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: one CPU; every access site proves exclusivity (see `get`).
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// A global holding `v`.
    pub const fn new(v: T) -> Self {
        Self(UnsafeCell::new(v))
    }

    /// The value, mutably.
    ///
    /// # Safety
    /// No other reference to the value is live for as long as the returned one
    /// is used: the caller runs with interrupts off, or is the only context that
    /// ever touches this global.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self) -> &mut T {
        // SAFETY: exclusivity is the caller's contract.
        unsafe { &mut *self.0.get() }
    }
}

/// Write a byte to an I/O port.
///
/// # Safety
/// The port and value are ones this kernel owns the meaning of (serial, PIC,
/// PIT, debug exit): no memory is affected.
pub unsafe fn outb(port: u16, v: u8) {
    // SAFETY: the caller vouches for the device; OUT touches no memory or flags.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

/// Read a byte from an I/O port.
///
/// # Safety
/// As for [`outb`]: reading the port has no effect this kernel does not expect.
pub unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: the caller vouches for the device; IN touches no memory or flags.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

const COM1: u16 = 0x3f8;

/// COM1 at 115200 8N1, FIFOs on.
pub fn serial_init() {
    for (off, v) in [
        (1, 0x00),
        (3, 0x80),
        (0, 0x01),
        (1, 0x00),
        (3, 0x03),
        (2, 0xc7),
        (4, 0x0b),
    ] {
        // SAFETY: COM1's registers; programming the UART affects no memory.
        unsafe { outb(COM1 + off, v) };
    }
}

fn serial_byte(b: u8) {
    // SAFETY: reading COM1's line status register has no side effect.
    while unsafe { inb(COM1 + 5) } & 0x20 == 0 {}
    // SAFETY: COM1's transmit register.
    unsafe { outb(COM1, b) };
}

/// The serial console, for `core::fmt`.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                serial_byte(b'\r');
            }
            serial_byte(b);
        }
        Ok(())
    }
}

/// Print to the serial console.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::hw::Serial, format_args!($($arg)*));
    }};
}

/// Print a line to the serial console.
#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => {{
        $crate::kprint!($($arg)*);
        $crate::kprint!("\n");
    }};
}

/// The value written to isa-debug-exit on success: QEMU exits with status
/// `(0x10 << 1) | 1 = 33`. Any other status (0 is a triple fault) is a failure.
pub const EXIT_SUCCESS: u8 = 0x10;
/// Written when a check failed: QEMU exits with status 35.
pub const EXIT_FAILURE: u8 = 0x11;

/// End the run through QEMU's isa-debug-exit device (port 0xf4).
pub fn exit(code: u8) -> ! {
    // SAFETY: port 0xf4 is isa-debug-exit, which ends QEMU; without that
    // device the write does nothing and the loop below halts forever.
    unsafe { outb(0xf4, code) };
    loop {
        // SAFETY: interrupts off and halt: nothing runs after the exit request.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Read CR0.
pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 at CPL 0 has no effect.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Read CR4.
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 at CPL 0 has no effect.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Write CR4.
///
/// # Safety
/// Every bit set is supported by this CPU (CPUID) and its consequences are
/// handled by the caller (OSXSAVE enables XSAVE, PKE enables PKRU).
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: the caller guarantees the bits; a CR4 write touches no memory.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

/// CR4.OSXSAVE: XSAVE and XGETBV/XSETBV enabled.
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// CR4.PKE: protection keys for user-mode pages, RDPKRU/WRPKRU enabled.
pub const CR4_PKE: u64 = 1 << 22;

/// Write a model-specific register.
///
/// # Safety
/// The MSR exists on this CPU and `v` is valid for it.
pub unsafe fn wrmsr(msr: u32, v: u64) {
    // SAFETY: the caller guarantees the MSR and value; WRMSR touches no memory.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32,
             options(nomem, nostack, preserves_flags));
    }
}

// ---- GDT, TSS, IDT ------------------------------------------------------------

/// Kernel code selector (the boot GDT's, kept).
pub const KERNEL_CS: u64 = 0x08;
/// Kernel data selector.
pub const KERNEL_DS: u64 = 0x10;
const TSS_SEL: u16 = 0x18;

/// IST slot for the timer interrupt.
const IST_TIMER: u8 = 1;
/// IST slot for exceptions and other interrupts: a fault in the timer handler
/// gets a stack of its own.
const IST_OTHER: u8 = 2;

#[repr(C, align(16))]
struct Stack([u8; 16384]);

static IST_STACKS: Global<[Stack; 2]> = Global::new([Stack([0; 16384]), Stack([0; 16384])]);

/// The 64-bit TSS, as 26 dwords (it is 104 bytes with 8-byte fields at 4-byte
/// offsets). Only the IST pointers and the I/O map base are used.
#[repr(C, align(16))]
struct Tss([u32; 26]);

static TSS: Global<Tss> = Global::new(Tss([0; 26]));
static GDT: Global<[u64; 5]> = Global::new([0; 5]);

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct IdtEntry([u64; 2]);

static IDT: Global<[IdtEntry; 256]> = Global::new([IdtEntry([0; 2]); 256]);

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Vectors with a stub: exceptions 0..=31, the PIC's IRQs 32..=47.
pub const STUBS: usize = 48;
/// The timer's vector (PIC IRQ 0 remapped).
pub const TIMER_VECTOR: u64 = 32;

unsafe extern "C" {
    /// The entry stubs' addresses, one per vector below [`STUBS`] (from the asm below).
    static isr_table: [u64; STUBS];
}

/// Load a GDT with a TSS whose IST1/IST2 point at the interrupt stacks, and an
/// IDT sending every vector below [`STUBS`] to its stub on an IST stack. With
/// every interrupt on an IST stack the interrupted code's stack is never written
/// (the bare-metal target keeps no red zone, but a fault in a handler still
/// gets a stack of its own).
pub fn tables_init() {
    // SAFETY: called once at boot, interrupts off, before any handler can run:
    // no other reference to these statics exists.
    let (stacks, tss, gdt, idt) = unsafe { (IST_STACKS.get(), TSS.get(), GDT.get(), IDT.get()) };
    for (i, s) in stacks.iter().enumerate() {
        let top = s.0.as_ptr() as u64 + s.0.len() as u64;
        // IST n sits at byte 36 + 8 * (n - 1), dword 9 + 2 * (n - 1).
        tss.0[9 + 2 * i] = top as u32;
        tss.0[10 + 2 * i] = (top >> 32) as u32;
    }
    // I/O map base at the limit: no I/O bitmap.
    tss.0[25] = 104 << 16;
    let base = core::ptr::from_ref(&*tss) as u64;
    gdt[0] = 0;
    gdt[1] = 0x00af_9a00_0000_ffff;
    gdt[2] = 0x00cf_9200_0000_ffff;
    // A 16-byte system descriptor: limit 103, type 9 (available 64-bit TSS), present.
    gdt[3] = 103 | ((base & 0xff_ffff) << 16) | (0x89 << 40) | (((base >> 24) & 0xff) << 56);
    gdt[4] = base >> 32;
    let gdtr = DescriptorPointer {
        limit: (size_of::<[u64; 5]>() - 1) as u16,
        base: gdt.as_ptr() as u64,
    };
    // SAFETY: the GDT keeps the boot GDT's code and data selectors, so the loaded
    // segment registers stay valid; it is a static, so it outlives its use.
    unsafe { asm!("lgdt [{}]", in(reg) &gdtr, options(readonly, nostack, preserves_flags)) };
    // SAFETY: selector 0x18 is the TSS descriptor just written, not yet busy.
    unsafe { asm!("ltr {0:x}", in(reg) TSS_SEL, options(nostack, preserves_flags)) };
    // SAFETY: `isr_table` is immutable data the asm below defines.
    let table = unsafe { &isr_table };
    for (v, &addr) in table.iter().enumerate() {
        let ist = if v as u64 == TIMER_VECTOR {
            IST_TIMER
        } else {
            IST_OTHER
        };
        // Interrupt gate (type 0xE, IF cleared on entry), present, DPL 0.
        idt[v].0[0] = (addr & 0xffff)
            | (KERNEL_CS << 16)
            | (u64::from(ist) << 32)
            | (0x8e << 40)
            | (((addr >> 16) & 0xffff) << 48);
        idt[v].0[1] = addr >> 32;
    }
    let idtr = DescriptorPointer {
        limit: (size_of::<[IdtEntry; 256]>() - 1) as u16,
        base: idt.as_ptr() as u64,
    };
    // SAFETY: the IDT is a static whose gates point at the stubs below; vectors
    // without a stub are not present and cannot be raised by this kernel.
    unsafe { asm!("lidt [{}]", in(reg) &idtr, options(readonly, nostack, preserves_flags)) };
}

// ---- PIC and PIT --------------------------------------------------------------

/// Remap the 8259 PICs to vectors 32..=47 and mask every IRQ.
pub fn pic_init() {
    let seq: [(u16, u8); 10] = [
        (0x20, 0x11),
        (0xa0, 0x11), // ICW1: edge, cascade, ICW4 follows
        (0x21, 0x20),
        (0xa1, 0x28), // ICW2: vector bases
        (0x21, 0x04),
        (0xa1, 0x02), // ICW3: slave on IRQ 2
        (0x21, 0x01),
        (0xa1, 0x01), // ICW4: 8086 mode
        (0x21, 0xff),
        (0xa1, 0xff), // all masked
    ];
    for (port, v) in seq {
        // SAFETY: the PICs' command and data ports; no memory is affected.
        unsafe { outb(port, v) };
    }
}

/// Unmask (`on`) or mask IRQ 0, the PIT.
pub fn pic_timer(on: bool) {
    // SAFETY: the master PIC's mask register.
    unsafe { outb(0x21, if on { 0xfe } else { 0xff }) };
}

/// End of interrupt for an IRQ on the master PIC.
pub fn pic_eoi() {
    // SAFETY: the master PIC's command port; 0x20 is the non-specific EOI.
    unsafe { outb(0x20, 0x20) };
}

/// The PIT's input clock, Hz.
pub const PIT_HZ: u32 = 1_193_182;

/// PIT channel 0 as a rate generator (mode 2) with `divisor`.
pub fn pit_init(divisor: u16) {
    let [lo, hi] = divisor.to_le_bytes();
    for (port, v) in [(0x43, 0x34), (0x40, lo), (0x40, hi)] {
        // SAFETY: the PIT's command and channel-0 ports.
        unsafe { outb(port, v) };
    }
}

// ---- Interrupt entry ----------------------------------------------------------

/// What an interrupt stub leaves on the (IST) stack, lowest address first: the
/// interrupted code's XMM0-15 and general registers, the vector, the error code
/// (0 where the CPU pushes none) and the CPU's frame. A context switch copies
/// all of it; the rest of the vector state moves through the fpstates.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Frame {
    /// XMM0-15 (low 128 bits only).
    pub xmm: [u128; 16],
    /// r15, r14, ..., r8, rbp, rdi, rsi, rdx, rcx, rbx, rax.
    pub gpr: [u64; 15],
    /// The vector.
    pub vector: u64,
    /// The error code, or 0.
    pub error: u64,
    /// The interrupted instruction pointer.
    pub rip: u64,
    /// Its code segment.
    pub cs: u64,
    /// Its RFLAGS.
    pub rflags: u64,
    /// Its stack pointer.
    pub rsp: u64,
    /// Its stack segment.
    pub ss: u64,
}

/// Index of RDI in [`Frame::gpr`].
pub const GPR_RDI: usize = 9;

impl Frame {
    /// All zero.
    pub const ZERO: Self = Self {
        xmm: [0; 16],
        gpr: [0; 15],
        vector: 0,
        error: 0,
        rip: 0,
        cs: 0,
        rflags: 0,
        rsp: 0,
        ss: 0,
    };
}

const _: () = assert!(size_of::<Frame>() == 256 + 15 * 8 + 2 * 8 + 5 * 8);
// The stub's arithmetic: 176 bytes of frame + pushes keep RSP 16-byte aligned.
const _: () = assert!((size_of::<Frame>() - 256).is_multiple_of(16));

// Each stub pushes a 0 where the CPU pushes no error code (so every frame has
// the same shape), then its vector, and joins the common path. The common path
// saves the general registers and XMM0-15 (SysV caller-saved: the interrupted
// code may hold live values there, and the Rust handler uses them), calls
// `dispatch` with the frame, and returns through whatever the frame then holds.
// Alignment: an IST stack top is 16-aligned; 40 (CPU) + 16 + 120 + 256 bytes keep
// RSP 16-aligned at the call.
global_asm!(
    ".section .text",
    ".macro isr_noerr v",
    "isr_\\v:",
    "push 0",
    "push \\v",
    "jmp isr_common",
    ".endm",
    ".macro isr_err v",
    "isr_\\v:",
    "push \\v",
    "jmp isr_common",
    ".endm",
    // #NM (7) included: this kernel never sets CR0.TS (no lazy restore, see
    // README.md), so one is a failure like any other exception.
    ".irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31",
    "isr_noerr \\v",
    ".endr",
    ".irp v, 8,10,11,12,13,14,17,21,29,30",
    "isr_err \\v",
    ".endr",
    ".irp v, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47",
    "isr_noerr \\v",
    ".endr",
    "isr_common:",
    "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
    "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    "sub rsp, 256",
    "movdqa [rsp + 0x00], xmm0", "movdqa [rsp + 0x10], xmm1",
    "movdqa [rsp + 0x20], xmm2", "movdqa [rsp + 0x30], xmm3",
    "movdqa [rsp + 0x40], xmm4", "movdqa [rsp + 0x50], xmm5",
    "movdqa [rsp + 0x60], xmm6", "movdqa [rsp + 0x70], xmm7",
    "movdqa [rsp + 0x80], xmm8", "movdqa [rsp + 0x90], xmm9",
    "movdqa [rsp + 0xa0], xmm10", "movdqa [rsp + 0xb0], xmm11",
    "movdqa [rsp + 0xc0], xmm12", "movdqa [rsp + 0xd0], xmm13",
    "movdqa [rsp + 0xe0], xmm14", "movdqa [rsp + 0xf0], xmm15",
    "mov rdi, rsp",
    "cld",
    "call {dispatch}",
    "movdqa xmm0, [rsp + 0x00]", "movdqa xmm1, [rsp + 0x10]",
    "movdqa xmm2, [rsp + 0x20]", "movdqa xmm3, [rsp + 0x30]",
    "movdqa xmm4, [rsp + 0x40]", "movdqa xmm5, [rsp + 0x50]",
    "movdqa xmm6, [rsp + 0x60]", "movdqa xmm7, [rsp + 0x70]",
    "movdqa xmm8, [rsp + 0x80]", "movdqa xmm9, [rsp + 0x90]",
    "movdqa xmm10, [rsp + 0xa0]", "movdqa xmm11, [rsp + 0xb0]",
    "movdqa xmm12, [rsp + 0xc0]", "movdqa xmm13, [rsp + 0xd0]",
    "movdqa xmm14, [rsp + 0xe0]", "movdqa xmm15, [rsp + 0xf0]",
    "add rsp, 256",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
    "add rsp, 16",
    "iretq",
    "",
    ".section .rodata",
    ".p2align 3",
    ".globl isr_table",
    "isr_table:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47",
    ".quad isr_\\v",
    ".endr",
    dispatch = sym crate::dispatch,
);
