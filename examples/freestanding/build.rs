// A static binary with its own entry point and no C runtime: what a kernel image
// looks like to the linker. It is a Linux process (raw syscalls), so it stays on
// the host target; the library's bare-metal build is `.ci/run`'s
// `--target x86_64-unknown-none` step.
fn main() {
    println!("cargo:rustc-link-arg-bins=-nostartfiles");
    println!("cargo:rustc-link-arg-bins=-nostdlib");
    println!("cargo:rustc-link-arg-bins=-static");
    // rustc asks for a PIE; with no loader to apply its relocations, link at a fixed address.
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rustc-link-arg-bins=-Wl,--gc-sections");
}
