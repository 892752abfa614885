//! `/proc` text: fdinfo, fd link targets, status, stat, and the `/proc/PID/net`
//! tables the socket listing falls back to. Byte 0 picks the parser.
#![no_main]
use fdgrab::fuzzing::{self, NetTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 9 {
        0 => {
            let _ = fuzzing::fdinfo(rest);
        }
        1 => {
            let (_, _, _, exact) = fuzzing::fd_link(rest);
            assert_eq!(exact, rest);
        }
        2 => {
            let _ = fuzzing::proc_status(&text);
        }
        3 => {
            let _ = fuzzing::proc_stat(&text);
        }
        4 => {
            let _ = fuzzing::proc_net(NetTable::Inet, &text);
        }
        5 => {
            let _ = fuzzing::proc_net(NetTable::Unix, &text);
        }
        6 => {
            let _ = fuzzing::proc_net(NetTable::Netlink, &text);
        }
        7 => {
            let _ = fuzzing::proc_net(NetTable::Packet, &text);
        }
        _ => {
            let _ = fuzzing::proc_net_endpoint(&text);
        }
    }
});
