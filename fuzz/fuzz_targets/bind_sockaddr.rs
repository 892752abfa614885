//! The bind supervisor's decoding of a sockaddr read from the supervised program:
//! any family, any length the kernel lets through (2..=128 bytes).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;

fuzz_target!(|raw: &[u8]| {
    if raw.len() > 128 {
        return;
    }
    let Ok(addr) = fdgrab::fuzzing::bind_sockaddr(raw) else {
        return;
    };
    // What was decoded is what the bytes say, field by field.
    assert_eq!(addr.port(), u16::from_be_bytes([raw[2], raw[3]]));
    match addr {
        SocketAddr::V4(a) => {
            assert!(raw.len() >= 16);
            assert_eq!(a.ip().octets(), raw[4..8]);
        }
        SocketAddr::V6(a) => {
            assert!(raw.len() >= 24);
            assert_eq!(a.ip().octets(), raw[8..24]);
        }
    }
});
