// A static binary with its own entry point and no C runtime: what a kernel image
// looks like to the linker, minus the bare-metal target (this machine has no
// rust-src, so only the host target can be built).
fn main() {
    println!("cargo:rustc-link-arg-bins=-nostartfiles");
    println!("cargo:rustc-link-arg-bins=-nostdlib");
    println!("cargo:rustc-link-arg-bins=-static");
    // rustc asks for a PIE; with no loader to apply its relocations, link at a fixed address.
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rustc-link-arg-bins=-Wl,--gc-sections");
}
