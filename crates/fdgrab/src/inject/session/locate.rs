//! Locating a `syscall` instruction in the target to run injected calls from.

use crate::error::{Error, Result};
use crate::inject::arch::{find_syscall_insn as find_insn_in, Regs, SYSCALL_INSN};
use crate::{procfs, Pid};
use rustix::io::Errno;

/// Finds the address of a `syscall` instruction the target can execute: the one the
/// thread is stopped right after, if it is in a syscall (one 2-byte read); else in
/// the vDSO, whose clock fallbacks contain one (found through `AT_SYSINFO_EHDR`);
/// else in any executable mapping.
///
/// Memory is always addressed through the thread id: once the leader has exited,
/// `/proc/PID/maps` is empty and `process_vm_readv(PID)` fails.
pub(super) fn find_syscall_insn(pid: Pid, tid: Pid, regs: &Regs) -> Result<u64> {
    if regs.syscall_nr().is_some() {
        let at = regs
            .instruction_pointer()
            .wrapping_sub(SYSCALL_INSN.len() as u64);
        let mut b = [0u8; SYSCALL_INSN.len()];
        if crate::sys::process_vm_read(tid, at, &mut b).is_ok() && b == SYSCALL_INSN {
            return Ok(at);
        }
    }
    if let Some(at) = vdso_base(pid, tid).and_then(|base| scan_pages(tid, base, 8)) {
        return Ok(at);
    }
    let maps = procfs::thread_maps(pid, tid).map_err(|_| Error::NoSuchProcess { pid })?;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !perms.starts_with("r-x") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        if let Some(at) = scan(tid, a, b.min(a + (4 << 20))) {
            return Ok(at);
        }
    }
    Err(Error::io(
        "finding a syscall instruction in the target",
        pid,
        None,
        Errno::NOEXEC,
    ))
}

/// `AT_SYSINFO_EHDR` from the thread's auxiliary vector: where the vDSO is mapped.
fn vdso_base(pid: Pid, tid: Pid) -> Option<u64> {
    const AT_SYSINFO_EHDR: u64 = 33;
    let auxv = procfs::thread_auxv(pid, tid).ok()?;
    auxv.chunks_exact(16).find_map(|pair| {
        let mut k = [0u8; 8];
        let mut v = [0u8; 8];
        k.copy_from_slice(&pair[..8]);
        v.copy_from_slice(&pair[8..]);
        (u64::from_ne_bytes(k) == AT_SYSINFO_EHDR).then_some(u64::from_ne_bytes(v))
    })
}

/// Scans up to `max` pages from `base`, stopping at the first unreadable one.
fn scan_pages(tid: Pid, base: u64, max: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    let mut buf = Vec::new();
    for i in 0..max {
        let mut page = vec![0u8; PAGE as usize];
        if crate::sys::process_vm_read(tid, base + i * PAGE, &mut page).is_err() {
            break;
        }
        buf.extend_from_slice(&page);
        if let Some(pos) = find_insn_in(&buf) {
            return Some(base + pos as u64);
        }
    }
    None
}

fn scan(tid: Pid, start: u64, end: u64) -> Option<u64> {
    let mut buf = vec![0u8; (end - start) as usize];
    crate::sys::process_vm_read(tid, start, &mut buf).ok()?;
    find_insn_in(&buf).map(|i| start + i as u64)
}
