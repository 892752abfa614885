//! Link-time choices that make every fdgrab command start faster
//! (docs/performance.md, "Start-up floor").

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    static_unwinder();
    startup_functions_first();
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// Links GCC's unwinder statically, so that no `libgcc_s.so.1` is loaded at every
/// start.
///
/// On linux-gnu std asks the linker for `-lgcc_s` (the unwinder behind panics and
/// backtraces), and rustc has no stable counterpart of `gcc -static-libgcc`
/// (rust-lang/rust#29527). Loading that library costs every command a whole extra
/// shared object: an open, four mappings, its relocations and symbol-lookup scope,
/// and its constructor, which runs CPUID several times (each one a trap to the
/// hypervisor in a VM): about 0.1 ms of a 1 ms `fdgrab --version`.
/// `-static-libgcc` links GCC's static unwinder, `libgcc_eh.a`, instead; this does
/// the same by offering the linker, ahead of the system directories, a
/// `libgcc_s.a` that is that archive. Panics still unwind and are caught (`attach`
/// relies on it): the unwinder finds every object's frames through
/// `dl_iterate_phdr`, as the shared one does. Where the C toolchain has no
/// `libgcc_eh.a`, nothing changes (a warning says so).
fn static_unwinder() {
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

/// Has the linker place the functions that run while commands start
/// (`startup-order.txt`, written by `scripts/startup-order`) together at the start
/// of `.text`.
///
/// The kernel maps code on a fault in aligned 64 KiB windows ("fault-around"). Left
/// where the linker puts them, the few hundred functions that `fdgrab --version`,
/// `get` or `ls` run are spread over most of the 3 MB of code, and each window they
/// touch is a page fault; grouped, they fill a few windows. Release builds only
/// (the names carry hashes of the release build), and only with rust-lld, rustc's
/// own linker for x86_64 Linux since 1.90: GNU ld has no such option. Names the
/// linker does not find (the file went stale) are skipped.
fn startup_functions_first() {
    let order = PathBuf::from(var("CARGO_MANIFEST_DIR")).join("startup-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    if var("PROFILE") != "release"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || std::env::var_os("RUSTC_LINKER").is_some()
        || !order.is_file()
        || !rustc_links_with_lld()
    {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=fdgrab=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=fdgrab=-Wl,--no-warn-symbol-ordering");
}

/// Whether rustc links with its own lld: version 1.90 or later, and no flag that
/// picks another linker.
fn rustc_links_with_lld() -> bool {
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    if flags.contains("linker") || flags.contains("fuse-ld") {
        return false;
    }
    let Ok(out) = Command::new(var("RUSTC")).arg("-vV").output() else {
        return false;
    };
    let info = String::from_utf8_lossy(&out.stdout);
    let minor = info
        .lines()
        .find_map(|l| l.strip_prefix("release: 1."))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
