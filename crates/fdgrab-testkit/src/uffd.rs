//! A page of memory that nobody fills: registered with a userfaultfd for
//! missing-page faults that no one serves, so that another process reading it
//! (`process_vm_readv`, a supervisor copying a sockaddr) blocks until this process
//! exits.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const PAGE: usize = 4096;

/// The userfaultfd (keep it open: closing it fills the page with zeroes) and the
/// page's address. The page stays mapped for the life of the process.
pub fn unfilled_page() -> Result<(OwnedFd, usize), String> {
    // SAFETY: userfaultfd(2) takes flags only and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(format!("userfaultfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: raw is a new fd we own.
    let ufd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let mut api = UffdioApi {
        api: 0xAA,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes the struct we pass.
    if unsafe { libc::ioctl(ufd.as_raw_fd(), UFFDIO_API as _, &mut api) } != 0 {
        return Err(format!("UFFDIO_API: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh private anonymous mapping of one page, never unmapped.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let mut reg = UffdioRegister {
        start: page as u64,
        len: PAGE as u64,
        mode: 1, // UFFDIO_REGISTER_MODE_MISSING
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes the struct we pass.
    if unsafe { libc::ioctl(ufd.as_raw_fd(), UFFDIO_REGISTER as _, &mut reg) } != 0 {
        return Err(format!(
            "UFFDIO_REGISTER: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((ufd, page as usize))
}
