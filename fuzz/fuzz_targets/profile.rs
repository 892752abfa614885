//! Seccomp profiles read by `fdgrab profile --from`: any text gives a profile or
//! an error, never a panic, and the rewrite is deterministic.
#![no_main]
use fdgrab::seccomp::profile::{to_agent_profile, ProfileListener};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let listener = ProfileListener::default();
    if let Ok(out) = to_agent_profile(text, &listener) {
        let again = to_agent_profile(text, &listener).expect("same input, same answer");
        assert_eq!(out.profile, again.profile);
    }
});
