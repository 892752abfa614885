//! `fdgrab attach`'s detach-escape detection over typed bytes: the answer does not
//! depend on how the bytes arrive in reads, no escape passes everything, and input
//! without the escape character passes unchanged. Byte 0: the escape character
//! (0 = none), byte 1: where to split, the rest: what the user typed.
#![no_main]
use fdgrab::fuzzing::pty_escape;
use fdgrab::pty::Escape;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [esc, split, typed @ ..] = data else {
        return;
    };
    let escape = if *esc == 0 {
        Escape::NONE
    } else {
        Escape::new(*esc)
    };
    let whole = pty_escape(escape, &[typed]);
    let step = usize::from(*split % 7) + 1;
    let pieces: Vec<&[u8]> = typed.chunks(step).collect();
    assert_eq!(pty_escape(escape, &pieces), whole, "split every {step}");
    let bytes: Vec<&[u8]> = typed.chunks(1).collect();
    assert_eq!(pty_escape(escape, &bytes), whole, "byte by byte");
    if escape.char().is_none_or(|c| !typed.contains(&c)) {
        assert_eq!(whole, (typed.to_vec(), false));
    }
});
