fn main() {
    println!("cargo:rerun-if-changed=src/exec_variadic.c");
    cc::Build::new()
        .file("src/exec_variadic.c")
        .warnings(true)
        .compile("zmtrace_exec_variadic");
    println!("cargo:rerun-if-changed=src/maps.c");
    cc::Build::new()
        .file("src/maps.c")
        .warnings(true)
        .compile("zmtrace_maps");
    println!("cargo:rerun-if-changed=src/entry.S");
    cc::Build::new()
        .file("src/entry.S")
        .compile("zmtrace_entry");
    // rustc's version script exports only Rust items from a cdylib; the C hooks must be exported
    // too, and kept although nothing in the library calls them.
    println!("cargo:rerun-if-changed=exports.map");
    for sym in [
        "execl",
        "execlp",
        "execle",
        "exit",
        "_exit",
        "_Exit",
        "mmap",
        "mmap64",
        "munmap",
        "mremap",
        "zmtrace_leak_check",
    ] {
        println!("cargo:rustc-cdylib-link-arg=-Wl,--undefined={sym}");
    }
    let map =
        std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("exports.map");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        map.display()
    );
}
