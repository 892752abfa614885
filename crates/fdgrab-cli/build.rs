//! Links GCC's unwinder into the fdgrab binaries statically, so that no
//! `libgcc_s.so.1` is loaded at every start.
//!
//! On linux-gnu std asks the linker for `-lgcc_s` (the unwinder behind panics and
//! backtraces), and rustc has no stable counterpart of `gcc -static-libgcc`
//! (rust-lang/rust#29527). Loading that library costs every command a whole extra
//! shared object: an open, four mappings, its relocations and symbol-lookup scope,
//! and its constructor, which runs CPUID several times (each one a trap to the
//! hypervisor in a VM): about 0.1 ms of a 1 ms `fdgrab --version`
//! (docs/performance.md, "Start-up floor"). `-static-libgcc` links GCC's static
//! unwinder, `libgcc_eh.a`, instead; this script does the same by offering the
//! linker, ahead of the system directories, a `libgcc_s.a` that is that archive.
//! Panics still unwind and are caught (`attach` relies on it): the unwinder finds
//! every object's frames through `dl_iterate_phdr`, as the shared one does.
//!
//! Where the C toolchain has no `libgcc_eh.a`, nothing changes (a warning says so).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let static_crt = var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    // A static build already links libgcc_eh; other targets have no libgcc_s.
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" || static_crt {
        return;
    }
    // The C compiler rustc links with for this target (set for cross builds).
    let cc = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".to_owned());
    let archive = Command::new(&cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        // Without the file, gcc prints the bare name back.
        .filter(|path| path.is_absolute() && path.is_file());
    let Some(archive) = archive else {
        println!("cargo:warning={cc} has no libgcc_eh.a: fdgrab loads libgcc_s.so.1 at start");
        return;
    };
    let dir = PathBuf::from(var("OUT_DIR")).join("static-unwinder");
    let link = dir.join("libgcc_s.a");
    let made = std::fs::create_dir_all(&dir)
        .and_then(|()| match std::fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .and_then(|()| std::os::unix::fs::symlink(&archive, &link));
    match made {
        Ok(()) => println!("cargo:rustc-link-search=native={}", dir.display()),
        Err(e) => println!(
            "cargo:warning=no static unwinder ({}: {e}): fdgrab loads libgcc_s.so.1 at start",
            link.display()
        ),
    }
}
