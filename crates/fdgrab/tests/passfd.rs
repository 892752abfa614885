//! SCM_RIGHTS helpers over real socket pairs.

use fdgrab::passfd::{recv_fds, send_all_fds, send_fds, SCM_MAX_FD};
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair")
}

fn ino(fd: impl AsFd) -> u64 {
    rustix::fs::fstat(fd).expect("fstat").st_ino
}

#[test]
fn fds_arrive_close_on_exec_and_identical() {
    let (a, b) = pair();
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    let sent = [r.as_fd(), w.as_fd()];
    assert_eq!(send_fds(&a, b"x", &sent).expect("send"), 1);
    let mut buf = [0u8; 8];
    let got = recv_fds(&b, &mut buf, 4).expect("recv");
    assert_eq!(got.len, 1);
    assert_eq!(got.fds.len(), 2);
    assert_eq!(ino(&got.fds[0]), ino(&r));
    for fd in &got.fds {
        let fl = rustix::io::fcntl_getfd(fd).expect("F_GETFD");
        assert!(
            fl.contains(rustix::io::FdFlags::CLOEXEC),
            "MSG_CMSG_CLOEXEC"
        );
    }
}

#[test]
fn too_many_fds_for_one_message_is_refused() {
    let (a, _b) = pair();
    let (r, _w) = rustix::pipe::pipe().expect("pipe");
    let many: Vec<BorrowedFd<'_>> = std::iter::repeat_n(r.as_fd(), SCM_MAX_FD + 1).collect();
    let e = send_fds(&a, b"x", &many).expect_err("254 fds");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("253"));
    let exactly: Vec<BorrowedFd<'_>> = std::iter::repeat_n(r.as_fd(), SCM_MAX_FD).collect();
    send_fds(&a, b"x", &exactly).expect("253 fds is the kernel's limit and fine");
}

#[test]
fn truncated_control_message_is_an_error() {
    let (a, b) = pair();
    let (r, _w) = rustix::pipe::pipe().expect("pipe");
    let ten: Vec<BorrowedFd<'_>> = std::iter::repeat_n(r.as_fd(), 10).collect();
    send_fds(&a, b"x", &ten).expect("send");
    let mut buf = [0u8; 8];
    let e = recv_fds(&b, &mut buf, 2).expect_err("room for 2 of 10");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    // Nothing leaked into our table: count our fds before and after another round
    // that must fail the same way (had it succeeded, dropping what it returned
    // would have closed the fds and made the count match whatever recv_fds did).
    let before = std::fs::read_dir("/proc/self/fd").expect("fd dir").count();
    send_fds(&a, b"x", &ten).expect("send");
    let e = recv_fds(&b, &mut buf, 2).expect_err("room for 2 of 10, again");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    let after = std::fs::read_dir("/proc/self/fd").expect("fd dir").count();
    assert_eq!(before, after, "the 2 fds that fit were not closed");
}

#[test]
fn long_lists_are_split_into_messages() {
    let (a, b) = pair();
    let files: Vec<OwnedFd> = (0..600)
        .map(|_| rustix::io::dup(std::io::stdin()).expect("dup"))
        .collect();
    let borrowed: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
    std::thread::scope(|s| {
        let sender = s.spawn(|| {
            send_all_fds(&a, &borrowed, |i, n| {
                format!("chunk {i} of {n}\n").into_bytes()
            })
        });
        receive_600(&b);
        sender.join().expect("sender").expect("send_all_fds");
    });
}

fn receive_600(b: &OwnedFd) {
    // Bounded: fds that never come must fail the test, not hang it.
    rustix::net::sockopt::set_socket_timeout(
        b,
        rustix::net::sockopt::Timeout::Recv,
        Some(fdgrab_testkit::TIMEOUT),
    )
    .expect("SO_RCVTIMEO");
    let mut total = 0;
    let mut chunks = 0;
    let mut buf = [0u8; 64];
    while total < 600 {
        let got = recv_fds(b, &mut buf, SCM_MAX_FD).expect("recv");
        assert!(got.len > 0);
        if !got.fds.is_empty() {
            chunks += 1;
            assert!(got.fds.len() <= SCM_MAX_FD);
        }
        total += got.fds.len();
    }
    assert_eq!(total, 600);
    assert_eq!(chunks, 3);
}
