//! Name escaping for the table and the JSON form: every byte string comes back
//! exact, and the table form is one printable line.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|name: &[u8]| {
    let shown = fdgrab::inventory::escape(name);
    assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
    assert_eq!(fdgrab::fuzzing::unescape(&shown).as_deref(), Some(name));

    let (s, bytes) = fdgrab::fuzzing::json_name(name);
    let json = serde_json::to_string(&(&s, &bytes)).expect("a string and bytes serialize");
    let (s2, bytes2): (String, Option<Vec<u8>>) =
        serde_json::from_str(&json).expect("our own JSON parses");
    assert_eq!(fdgrab::fuzzing::json_name_bytes(&s2, &bytes2), name);
});
