//! The agent's reading of a connection from an OCI runtime: the
//! ContainerProcessState document, in chunks of the fuzzer's choosing, with a
//! number of descriptors attached to the first one, through `StateReader::read_from`
//! on a real unix stream socket.
//!
//! Input: byte 0 = how many descriptors to attach (mod 11), byte 1 = chunk size
//! seed, the rest = the bytes the "runtime" sends.
#![no_main]
use fdgrab::passfd::send_fds;
use fdgrab::supervise::oci::{ReadProgress, StateReader};
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

fuzz_target!(|data: &[u8]| {
    let [nfds, chunk, doc @ ..] = data else {
        return;
    };
    let nfds = usize::from(*nfds % 11);
    let chunk = usize::from(*chunk).max(1) * 16;
    let (runtime, agent) = UnixStream::pair().expect("socketpair");
    agent.set_nonblocking(true).expect("nonblocking");
    let fds: Vec<OwnedFd> = (0..nfds)
        .map(|_| rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd"))
        .collect();
    let mut reader = StateReader::new();
    for (i, piece) in doc.chunks(chunk).enumerate() {
        let attach: Vec<_> = if i == 0 {
            fds.iter().map(|f| f.as_fd()).collect()
        } else {
            Vec::new()
        };
        let sent = send_fds(runtime.as_fd(), piece, &attach).expect("send to a fresh socket");
        if sent < piece.len() {
            (&runtime).write_all(&piece[sent..]).expect("send the rest");
        }
        match reader.read_from(agent.as_fd()) {
            Ok(ReadProgress::Pending) => {}
            Ok(ReadProgress::Complete(_)) | Err(_) => return,
        }
    }
    runtime
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    // Once the runtime has hung up, the reader has its answer.
    if let Ok(ReadProgress::Pending) = reader.read_from(agent.as_fd()) {
        panic!(
            "still pending after the runtime hung up, {} bytes in",
            reader.len()
        );
    }
});
