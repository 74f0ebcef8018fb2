// A kernel image for QEMU's `-kernel`, on the bare-metal target (rust-lld, no C
// runtime to leave out): only the addresses of `linker.ld` to give. The arguments
// go to the binary only (in RUSTFLAGS they would also reach this build script's
// own link).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rustc-link-arg-bins=--build-id=none");
    println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
}
