//! The classic-BPF interpreter against the kernel: the builder accepts exactly the
//! programs the kernel accepts, and for those, a forked child that installs the
//! filter and makes each of a set of harmless calls (two ABIs, real and
//! unimplemented numbers) ends the way the interpreter's verdict says.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let insns = fdgrab_testkit::seccomp_oracle::insns_from_bytes(data);
    if let Err(mismatch) = fdgrab_testkit::seccomp_oracle::check(insns) {
        panic!("{mismatch}");
    }
});
