//! `fdgrab exec` socket selectors: whatever parses prints back as itself.
#![no_main]
use fdgrab::activation::selector::Selector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sel) = text.parse::<Selector>() else {
        return;
    };
    let printed = sel.to_string();
    let again: Selector = printed
        .parse()
        .unwrap_or_else(|e| panic!("{printed:?} does not parse back: {e}"));
    assert_eq!(again, sel);
    let _ = sel.default_fd_name();
});
