//! Policy TOML files and `--allow-bind` specs. Whatever parses prints back as
//! specs that parse to the same policy.
#![no_main]
use fdgrab::supervise::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let from_file = Policy::from_toml_str(text);
    let specs: Vec<&str> = text.split(',').collect();
    for p in [from_file.ok(), Policy::from_specs(&specs).ok()]
        .into_iter()
        .flatten()
    {
        let printed = p.to_string();
        let again = if printed.is_empty() {
            Policy::empty()
        } else {
            Policy::from_specs(&printed.split(',').collect::<Vec<_>>())
                .unwrap_or_else(|e| panic!("{printed:?} does not parse back: {e}"))
        };
        assert_eq!(again, p, "{printed:?}");
    }
});
