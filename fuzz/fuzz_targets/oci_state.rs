//! The agent's reading of a connection from an OCI runtime: the
//! ContainerProcessState document, in chunks of the fuzzer's choosing, with a
//! number of descriptors attached to the first one, through `StateReader::read_from`
//! on a real unix stream socket.
//!
//! Input: byte 0 = how many descriptors to attach (mod 11), byte 1 = chunk size
//! seed, the rest = the bytes the "runtime" sends.
#![no_main]
use fdgrab::supervise::oci::ReadProgress;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [nfds, chunk, doc @ ..] = data else {
        return;
    };
    let nfds = usize::from(*nfds % 11);
    let chunk = usize::from(*chunk).max(1) * 16;
    // Once the runtime has hung up, the reader has its answer.
    if let Ok(ReadProgress::Pending) = fdgrab_testkit::oci::deliver_state(doc, nfds, chunk) {
        panic!("still pending after the runtime hung up");
    }
});
