//! A FUSE file system served by a thread of the test, with one empty file, `f`,
//! whose server is slow to answer what only a stranger to the file would ask: an
//! extended attribute, or its attributes once it is open (they are never cached).
//! Each such request is counted and answered after two seconds, so a supervisor
//! that asks stalls visibly, and the count proves it asked.
//!
//! A second file, `page`, holds [`PAGES`] pages of 4096 bytes: with
//! [`FuseFile::hold_reads`], every `READ` of it is taken and left unanswered
//! until [`FuseFile::release_reads`] (or the server's end,
//! [`FuseFile::kill_server`]), as a daemon that hangs would. The kernel waits
//! out a request its daemon has taken uninterruptibly, so whoever faults the page
//! in (a `process_vm_readv` of a mapping of it) stays in that read, a `SIGKILL`
//! notwithstanding. The file system has no `FUSE_ASYNC_READ` and no readahead:
//! each page is one `READ`, made by the faulting task.
//!
//! A third file, `g (deleted)`, carries in its name the suffix the kernel gives
//! an unlinked file's link; with [`FuseFile::slow_lookups`], every name lookup
//! (a walk through the file system whose cached entry has expired: entries are
//! valid for one second) is answered late and counted, as the attributes are.
//!
//! A fourth name, `sock`, is a unix socket's (nothing is bound to it), and
//! the file system's statistics (`statfs`) are answered late too.
//!
//! Only requests made by the test's own process tree count: other tests running at
//! the same time may `stat` every open fd of the host (`fdgrab ls --path`, `fuser`,
//! `lsof`), and their questions say nothing about the supervisor under test.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const OPEN: u32 = 14;
const STATFS: u32 = 17;
const READ: u32 = 15;
const RELEASE: u32 = 18;
const GETXATTR: u32 = 22;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const INTERRUPT: u32 = 36;
const BATCH_FORGET: u32 = 42;

/// How long a slow request waits for its answer.
const SLOW: Duration = Duration::from_secs(2);

/// `page`'s node id, and its size in pages.
const PAGE_NODE: u64 = 3;
/// The node id and name of the file whose name ends in " (deleted)".
const NAMED_DELETED_NODE: u64 = 4;
const NAMED_DELETED: &str = "g (deleted)";
/// The node id of `sock`, a unix socket's name (nothing is bound to it).
const SOCK_NODE: u64 = 5;
pub const PAGES: usize = 80;
const PAGE_SIZE: u64 = 4096 * PAGES as u64;

/// The mounted file system; unmounted on drop.
#[derive(Debug)]
pub struct FuseFile {
    dir: PathBuf,
    slow: Arc<AtomicU64>,
    strangers: Arc<AtomicU64>,
    flushes: Arc<HeldFlushes>,
    reads: Arc<HeldReads>,
    late_lookups: Arc<AtomicBool>,
    dev: Arc<File>,
    /// Written to end the server ([`FuseFile::kill_server`]).
    stop: Arc<std::os::fd::OwnedFd>,
    server: Option<std::thread::JoinHandle<()>>,
}

/// `struct fuse_attr` of inode `ino` with `mode`, owned by root; `page` is
/// [`PAGES`] pages long, the others are empty.
fn attr(ino: u64, mode: u32) -> Vec<u8> {
    let size = if ino == PAGE_NODE { PAGE_SIZE } else { 0 };
    let mut a = Vec::with_capacity(88);
    for v in [ino, size, 1, 0, 0, 0] {
        a.extend_from_slice(&u64::to_ne_bytes(v));
    }
    for v in [0u32, 0, 0, mode, 1, 0, 0, 0, 4096, 0] {
        a.extend_from_slice(&v.to_ne_bytes());
    }
    a
}

fn reply(dev: &File, unique: u64, error: i32, body: &[u8]) {
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&error.to_ne_bytes());
    out.extend_from_slice(&unique.to_ne_bytes());
    out.extend_from_slice(body);
    // A request the kernel gave up on is answered ENOENT: nothing to do.
    let _ = (&*dev).write(&out);
}

fn mode_of(node: u64) -> u32 {
    match node {
        1 => libc::S_IFDIR | 0o755,
        SOCK_NODE => libc::S_IFSOCK | 0o755,
        _ => libc::S_IFREG | 0o644,
    }
}

/// A numeric field of `/proc/PID/status`.
fn status_field(pid: u32, key: &str) -> Option<u32> {
    crate::status_field(i32::try_from(pid).ok()?, key)?
        .parse()
        .ok()
}

/// Whether the thread `tid` (the kernel names a request's thread, not its
/// process) belongs to this test process or one of its descendants. The requester
/// waits in its request, so it is alive while this is asked. A requester that
/// cannot be read counts as ours: the test must not pass by losing track of it.
fn ours(tid: u32) -> bool {
    let me = std::process::id();
    let Some(mut pid) = status_field(tid, "Tgid") else {
        return true;
    };
    while pid > 1 {
        if pid == me {
            return true;
        }
        match status_field(pid, "PPid") {
            Some(parent) => pid = parent,
            None => return true,
        }
    }
    false
}

/// `FLUSH` requests (sent at every close of the file) kept unanswered while
/// `hold` is set, until [`FuseFile::release_flushes`].
#[derive(Debug, Default)]
struct HeldFlushes {
    hold: AtomicBool,
    /// The answer to a `FLUSH` not held: 0, or a negative errno.
    error: std::sync::atomic::AtomicI32,
    held: std::sync::Mutex<Vec<u64>>,
}

/// `READ` requests of `page` kept unanswered while `hold` is set, with the
/// size each asked for.
#[derive(Debug, Default)]
struct HeldReads {
    hold: AtomicBool,
    /// Unique id, offset and size of each.
    held: std::sync::Mutex<Vec<(u64, u64, u32)>>,
    /// Reads taken so far (held or not).
    taken: AtomicU64,
}

/// What a read of `page` at `offset` returns: the byte at offset `i` is
/// `i % 251`.
fn page_bytes(offset: u64, size: u32) -> Vec<u8> {
    let end = PAGE_SIZE.min(offset + u64::from(size));
    (offset.min(end)..end).map(|i| (i % 251) as u8).collect()
}

/// Waits until `dev` has a request or `stop` was written; false for the
/// latter (or a failed poll).
fn next_request(dev: &File, stop: &std::os::fd::OwnedFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    loop {
        let mut pfds = [
            PollFd::new(dev, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match poll(&mut pfds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
        if !pfds[1].revents().is_empty() {
            return false;
        }
        return true;
    }
}

/// Serves requests until the file system is unmounted (the read fails) or
/// `stop` is written.
fn serve(
    dev: Arc<File>,
    stop: Arc<std::os::fd::OwnedFd>,
    slow: Arc<AtomicU64>,
    strangers: Arc<AtomicU64>,
    flushes: Arc<HeldFlushes>,
    reads: Arc<HeldReads>,
    late_lookups: Arc<AtomicBool>,
) {
    let opened = AtomicBool::new(false);
    let mut buf = vec![0u8; (1 << 20) + 4096];
    while next_request(&dev, &stop) {
        let n = match (&*dev).read(&mut buf) {
            Ok(n) => n,
            // Withdrawn before we read it (an interrupted requester).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(_) => break,
        };
        if n < 40 {
            continue;
        }
        let u32_at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap_or_default());
        let (op, unique, node) = (u32_at(4), u64_at(8), u64_at(16));
        // struct fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid.
        let requester = u32_at(32);
        let answer_late = |error: i32, body: Vec<u8>| {
            let counter = if ours(requester) { &slow } else { &strangers };
            counter.fetch_add(1, Ordering::SeqCst);
            let dev = Arc::clone(&dev);
            std::thread::spawn(move || {
                std::thread::sleep(SLOW);
                reply(&dev, unique, error, &body);
            });
        };
        match op {
            INIT => {
                let mut init = Vec::new();
                // No readahead: a fault reads its one page.
                for v in [7u32, 31, 0, 0] {
                    init.extend_from_slice(&v.to_ne_bytes());
                }
                init.extend_from_slice(&16u16.to_ne_bytes());
                init.extend_from_slice(&12u16.to_ne_bytes());
                init.extend_from_slice(&4096u32.to_ne_bytes());
                init.extend_from_slice(&1u32.to_ne_bytes());
                init.resize(64, 0);
                reply(&dev, unique, 0, &init);
            }
            LOOKUP if node == 1 => {
                let name = &buf[40..n];
                let name = name.split(|&b| b == 0).next().unwrap_or_default();
                let child = match name {
                    b"f" => Some(2),
                    b"page" => Some(PAGE_NODE),
                    n if n == NAMED_DELETED.as_bytes() => Some(NAMED_DELETED_NODE),
                    b"sock" => Some(SOCK_NODE),
                    _ => None,
                };
                match child {
                    Some(child) => {
                        // nodeid, generation 0, entry valid 1 s, attributes never.
                        let mut e = Vec::new();
                        for v in [child, 0, 1, 0] {
                            e.extend_from_slice(&v.to_ne_bytes());
                        }
                        e.extend_from_slice(&[0u8; 8]);
                        e.extend_from_slice(&attr(child, mode_of(child)));
                        if late_lookups.load(Ordering::SeqCst) {
                            answer_late(0, e);
                        } else {
                            reply(&dev, unique, 0, &e);
                        }
                    }
                    None if late_lookups.load(Ordering::SeqCst) => {
                        answer_late(-libc::ENOENT, Vec::new())
                    }
                    None => reply(&dev, unique, -libc::ENOENT, &[]),
                }
            }
            READ if node == PAGE_NODE => {
                // struct fuse_read_in: fh, offset, size, ...
                let (offset, size) = (u64_at(40 + 8), u32_at(40 + 16));
                reads.taken.fetch_add(1, Ordering::SeqCst);
                let mut held = reads.held.lock().unwrap_or_else(|p| p.into_inner());
                if reads.hold.load(Ordering::SeqCst) {
                    held.push((unique, offset, size));
                } else {
                    drop(held);
                    reply(&dev, unique, 0, &page_bytes(offset, size));
                }
            }
            LOOKUP => reply(&dev, unique, -libc::ENOENT, &[]),
            GETATTR => {
                let mut a = vec![0u8; 16];
                a.extend_from_slice(&attr(node, mode_of(node)));
                if node == 2 && opened.load(Ordering::SeqCst) {
                    answer_late(0, a);
                } else {
                    reply(&dev, unique, 0, &a);
                }
            }
            OPEN if node == PAGE_NODE => {
                // struct fuse_open_out: fh, open_flags (FOPEN_KEEP_CACHE: an
                // open must not drop the cache, which waits for a held read's
                // page), padding.
                let mut o = [0u8; 16];
                o[8..12].copy_from_slice(&2u32.to_ne_bytes());
                reply(&dev, unique, 0, &o);
            }
            OPEN => {
                opened.store(true, Ordering::SeqCst);
                reply(&dev, unique, 0, &[0u8; 16]);
            }
            FLUSH => {
                // Decided under the lock the release takes, so that none is
                // held after it.
                let mut held = flushes.held.lock().unwrap_or_else(|p| p.into_inner());
                if flushes.hold.load(Ordering::SeqCst) {
                    held.push(unique);
                } else {
                    drop(held);
                    reply(&dev, unique, flushes.error.load(Ordering::SeqCst), &[]);
                }
            }
            RELEASE => reply(&dev, unique, 0, &[]),
            GETXATTR => answer_late(-libc::ENODATA, Vec::new()),
            // struct fuse_statfs_out: blocks, free, available, files, free
            // files; block size, name length, fragment size, padding; spare.
            STATFS => answer_late(0, vec![0u8; 80]),
            FORGET | BATCH_FORGET | INTERRUPT => {}
            _ => reply(&dev, unique, -libc::ENOSYS, &[]),
        }
    }
}

/// Maps the first [`PAGES`] pages of the file at `path` shared and read-only,
/// for good (a thread may read it at any time), and returns the address; the
/// pages are never touched here, so whoever reads them first faults them in.
pub fn map_pages(path: &str) -> Result<usize, String> {
    use std::os::fd::AsRawFd;
    let file = File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    // SAFETY: a fresh shared read-only mapping of the file, which is never
    // unmapped; the descriptor may close after it.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096 * PAGES,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(format!("mmap {path}: {}", std::io::Error::last_os_error()));
    }
    Ok(at as usize)
}

impl FuseFile {
    /// Mounts a fresh one (readable by every user); `None` when FUSE cannot be
    /// mounted here.
    pub fn mount(tag: &str) -> Option<FuseFile> {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("fdgrab-fuse-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .ok()?;
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        );
        let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
        let opts = std::ffi::CString::new(opts).ok()?;
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                c"fdgrab-test".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        let slow = Arc::new(AtomicU64::new(0));
        let strangers = Arc::new(AtomicU64::new(0));
        let flushes = Arc::new(HeldFlushes::default());
        let reads = Arc::new(HeldReads::default());
        let late_lookups = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).ok()?);
        let dev = Arc::new(dev);
        let (count, others) = (Arc::clone(&slow), Arc::clone(&strangers));
        let (server_dev, held) = (Arc::clone(&dev), Arc::clone(&flushes));
        let (server_reads, server_stop) = (Arc::clone(&reads), Arc::clone(&stop));
        let server_lookups = Arc::clone(&late_lookups);
        let server = std::thread::spawn(move || {
            serve(
                server_dev,
                server_stop,
                count,
                others,
                held,
                server_reads,
                server_lookups,
            )
        });
        Some(FuseFile {
            dir,
            slow,
            strangers,
            flushes,
            reads,
            late_lookups,
            dev,
            stop,
            server: Some(server),
        })
    }

    /// The mount point: the directory holding the file system's names.
    pub fn dir(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    /// The path of the file.
    pub fn file(&self) -> String {
        self.dir.join("f").to_string_lossy().into_owned()
    }

    /// The path of `sock`, a unix socket's name that nothing is bound to.
    pub fn socket_name(&self) -> String {
        self.dir.join("sock").to_string_lossy().into_owned()
    }

    /// The path of the file named `g (deleted)`: alive, with one link.
    pub fn named_deleted(&self) -> String {
        self.dir.join(NAMED_DELETED).to_string_lossy().into_owned()
    }

    /// From now on, every name lookup is answered late (and counted in
    /// [`FuseFile::slow_requests`]): a walk by name through the file system
    /// once its cached entries have expired (after one second) waits for it.
    pub fn slow_lookups(&self) {
        self.late_lookups.store(true, Ordering::SeqCst);
    }

    /// Requests answered late so far: extended attributes of anything, the
    /// file system's statistics, the file's attributes after it was opened,
    /// and name lookups after
    /// [`FuseFile::slow_lookups`].
    /// Made by this test process or its descendants only.
    pub fn slow_requests(&self) -> u64 {
        self.slow.load(Ordering::SeqCst)
    }

    /// From now on, every close of the file waits (its `FLUSH` goes
    /// unanswered) until [`FuseFile::release_flushes`].
    pub fn hold_flushes(&self) {
        self.flushes.hold.store(true, Ordering::SeqCst);
    }

    /// From now on, every close of the file fails with `errno` (as a close
    /// whose last write to a network file failed), its fd closed all the same.
    pub fn fail_flushes(&self, errno: i32) {
        self.flushes.error.store(-errno, Ordering::SeqCst);
    }

    /// Answers the held `FLUSH` requests and stops holding new ones; returns
    /// how many were held.
    pub fn release_flushes(&self) -> usize {
        let held = {
            let mut held = self.flushes.held.lock().unwrap_or_else(|p| p.into_inner());
            self.flushes.hold.store(false, Ordering::SeqCst);
            std::mem::take(&mut *held)
        };
        for &unique in &held {
            reply(&self.dev, unique, 0, &[]);
        }
        held.len()
    }

    /// The path of the one-page file whose reads [`FuseFile::hold_reads`]
    /// holds.
    pub fn page(&self) -> String {
        self.dir.join("page").to_string_lossy().into_owned()
    }

    /// From now on, every `READ` of `page` is taken and left unanswered until
    /// [`FuseFile::release_reads`].
    pub fn hold_reads(&self) {
        self.reads.hold.store(true, Ordering::SeqCst);
    }

    /// `READ`s of `page` taken and not answered yet.
    pub fn held_reads(&self) -> usize {
        self.reads
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// `READ`s of `page` taken so far, answered or not.
    pub fn reads_taken(&self) -> u64 {
        self.reads.taken.load(Ordering::SeqCst)
    }

    /// Answers the held `READ`s (the byte at offset `i` is `i % 251`) and
    /// stops holding new ones; returns how many were held.
    pub fn release_reads(&self) -> usize {
        let held = {
            let mut held = self.reads.held.lock().unwrap_or_else(|p| p.into_inner());
            self.reads.hold.store(false, Ordering::SeqCst);
            std::mem::take(&mut *held)
        };
        for &(unique, offset, size) in &held {
            reply(&self.dev, unique, 0, &page_bytes(offset, size));
        }
        held.len()
    }

    /// Ends the server as a daemon that dies would: its thread stops and the
    /// last `/dev/fuse` descriptor closes, which aborts the connection, so
    /// every request still waiting (a held `READ` or `FLUSH`) fails at once
    /// and later ones fail with `ENOTCONN`. Nothing is answered first.
    pub fn kill_server(&mut self) {
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
        self.reads
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.flushes
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // The server's copy went with its thread; this is the last one.
        if let Ok(dev) = File::open("/dev/null") {
            let old = std::mem::replace(&mut self.dev, Arc::new(dev));
            drop(old);
        }
    }

    /// Slow requests made by processes outside this test's tree.
    pub fn stranger_requests(&self) -> u64 {
        self.strangers.load(Ordering::SeqCst)
    }
}

impl Drop for FuseFile {
    fn drop(&mut self) {
        self.release_flushes();
        self.release_reads();
        // Ends the server even while a mapping keeps the file system alive
        // past the unmount.
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
        if let Ok(target) = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()) {
            // SAFETY: a NUL-terminated path; a lazy unmount ends the connection,
            // and with it the server's read.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    fn wait_for(count: impl Fn() -> u64, want: u64) -> u64 {
        let until = Instant::now() + Duration::from_secs(20);
        while count() < want && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        count()
    }

    /// A thread of the test and a child of it are the test's own; a process that
    /// left the tree (its parent exited, it was reparented) is a stranger.
    #[test]
    fn only_the_test_trees_questions_count() {
        if !crate::is_root() {
            crate::skip("mounting FUSE needs root");
            return;
        }
        let Some(fs) = FuseFile::mount("self-check") else {
            crate::skip("cannot mount a FUSE file system here");
            return;
        };
        let file = File::open(fs.file()).expect("open the FUSE file");
        let link = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        let from_thread = link.clone();
        std::thread::spawn(move || std::fs::metadata(from_thread))
            .join()
            .expect("thread")
            .expect("stat from a thread");
        assert_eq!(fs.slow_requests(), 1, "a thread of the test");
        let st = std::process::Command::new("stat")
            .args(["-L", &link])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("stat");
        assert!(st.success());
        assert_eq!(fs.slow_requests(), 2, "a child of the test");
        // The subshell's parent exits at once; by the time it asks it is orphaned.
        let st = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("(sleep 0.3; stat -L {link}) >/dev/null 2>&1 </dev/null &"),
            ])
            .status()
            .expect("sh");
        assert!(st.success());
        // At least: a system-wide scan another test runs meanwhile (`ls --path`
        // stats every process's fds, this one's too) asks as a stranger as well.
        assert!(wait_for(|| fs.stranger_requests(), 1) >= 1, "an orphan");
        assert_eq!(
            fs.slow_requests(),
            2,
            "the orphan was counted as the test's"
        );
    }
}
