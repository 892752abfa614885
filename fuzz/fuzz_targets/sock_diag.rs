//! sock_diag replies: one netlink datagram walked as the transport does, each
//! `SOCK_DIAG_BY_FAMILY` payload decoded by the inet_diag and unix_diag parsers
//! (attributes included). Byte 0 picks dump or exact-lookup mode.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((mode, datagram)) = data.split_first() else {
        return;
    };
    let (_, found) = fdgrab::fuzzing::sock_diag_reply(datagram, mode & 1 == 1);
    for (_, info) in found {
        let _ = info.describe_bytes();
        let _ = serde_json::to_string(&info).expect("serializes");
    }
});
