//! From QEMU's PVH entry to Rust: 32-bit protected mode, paging off, no stack.
//! Zero `.bss`, identity-map the first GiB, enter long mode, turn SSE on (the
//! compiled Rust code and the precompiled `core` use it), call `kmain`.

unsafe extern "C" {
    /// The physical address of PVH's `hvm_start_info`, as QEMU passed it in EBX
    /// (set by the entry code below, read-only afterwards).
    static pvh_start_info: u32;
}

/// `hvm_start_info.magic`.
const START_INFO_MAGIC: u32 = 0x336e_c578;

/// The kernel command line (QEMU's `-append`), empty if there is none.
pub fn cmdline() -> &'static [u8] {
    // SAFETY: written once by the entry code before any Rust code ran.
    let info = unsafe { pvh_start_info } as usize;
    if info == 0 || info >= 1 << 30 {
        return b"";
    }
    // SAFETY: QEMU put start_info in RAM below 1 GiB, which the boot page tables
    // identity-map; nothing writes it. Offsets: magic at 0, cmdline_paddr at 24.
    let (magic, cmd) = unsafe {
        (
            core::ptr::read_volatile(info as *const u32),
            core::ptr::read_volatile((info + 24) as *const u64) as usize,
        )
    };
    if magic != START_INFO_MAGIC || cmd == 0 || cmd >= 1 << 30 {
        return b"";
    }
    let mut len = 0;
    // SAFETY: the command line is a NUL-terminated string QEMU placed in
    // identity-mapped RAM; at most 256 bytes are read.
    while len < 256 && unsafe { core::ptr::read_volatile((cmd + len) as *const u8) } != 0 {
        len += 1;
    }
    // SAFETY: `len` bytes at `cmd` were just read; nothing writes them later.
    unsafe { core::slice::from_raw_parts(cmd as *const u8, len) }
}

use core::arch::global_asm;

global_asm!(
    // The PVH note: owner "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY), a 4-byte
    // 32-bit entry address. QEMU reads it from the ELF's PT_NOTE.
    ".section .note.Xen, \"a\"",
    ".p2align 2",
    ".long 4",
    ".long 4",
    ".long 18",
    ".asciz \"Xen\"",
    ".p2align 2",
    ".long pvh_start",
    "",
    ".section .text.boot, \"ax\"",
    ".code32",
    ".globl pvh_start",
    "pvh_start:",
    "cli",
    "cld",
    // .bss holds the page tables and the boot stack: zero it first.
    "mov $__bss_start, %edi",
    "mov $__bss_end, %ecx",
    "sub %edi, %ecx",
    "xor %eax, %eax",
    "rep stosb",
    // EBX holds the PVH start_info address (physical; below 1 GiB here).
    "mov %ebx, pvh_start_info",
    // 512 2-MiB pages (present, writable, PS) map 0..1 GiB onto itself.
    "mov $boot_pd, %edi",
    "mov $0x83, %eax",
    "mov $512, %ecx",
    "1:",
    "mov %eax, (%edi)",
    "add $0x200000, %eax",
    "add $8, %edi",
    "loop 1b",
    "mov $boot_pd + 3, %eax",
    "mov %eax, boot_pdpt",
    "mov $boot_pdpt + 3, %eax",
    "mov %eax, boot_pml4",
    "mov $boot_pml4, %eax",
    "mov %eax, %cr3",
    // CR4.PAE, EFER.LME, then CR0.PG | CR0.PE: long mode (compatibility submode
    // until the far jump loads a 64-bit code segment).
    "mov %cr4, %eax",
    "or $0x20, %eax",
    "mov %eax, %cr4",
    "mov $0xc0000080, %ecx",
    "rdmsr",
    "or $0x100, %eax",
    "wrmsr",
    "mov %cr0, %eax",
    "or $0x80000001, %eax",
    "mov %eax, %cr0",
    "lgdt boot_gdt_ptr",
    "ljmp $0x08, $2f",
    ".code64",
    "2:",
    "mov $0x10, %ax",
    "mov %ax, %ds",
    "mov %ax, %es",
    "mov %ax, %ss",
    "mov %ax, %fs",
    "mov %ax, %gs",
    "mov $boot_stack_top, %rsp",
    // SSE before any Rust code: CR0.EM = 0, CR0.MP = 1, CR0.NE = 1;
    // CR4.OSFXSR | CR4.OSXMMEXCPT. A #UD in `core` would triple-fault.
    "mov %cr0, %rax",
    "and $~4, %rax",
    "or $0x22, %rax",
    "mov %rax, %cr0",
    "mov %cr4, %rax",
    "or $0x600, %rax",
    "mov %rax, %cr4",
    "xor %ebp, %ebp",
    "call {kmain}",
    "ud2",
    "",
    ".section .rodata.boot, \"a\"",
    ".p2align 3",
    // Null, 64-bit ring-0 code (0x08), ring-0 data (0x10). `gdt::init` replaces
    // it with one that also has the TSS, keeping these two selectors.
    "boot_gdt:",
    ".quad 0",
    ".quad 0x00af9a000000ffff",
    ".quad 0x00cf92000000ffff",
    "boot_gdt_ptr:",
    ".word 23",
    ".quad boot_gdt",
    "",
    ".section .bss.boot, \"aw\", @nobits",
    ".p2align 2",
    ".globl pvh_start_info",
    "pvh_start_info: .skip 4",
    ".p2align 12",
    "boot_pml4: .skip 4096",
    "boot_pdpt: .skip 4096",
    "boot_pd: .skip 4096",
    ".p2align 4",
    "boot_stack: .skip 65536",
    "boot_stack_top:",
    kmain = sym crate::kmain,
    options(att_syntax),
);
