//! `Spawn::exec_in_place` refuses what only a child can have, before it changes
//! anything in this process. (What the program sees after an exec in place is
//! checked end to end through `fdgrab get`, in the CLI's `grab_cmds` tests.)

use fdgrab::spawn::{Credentials, Session, Spawn};
use std::ffi::OsString;

#[test]
fn exec_in_place_refuses_child_only_settings_and_changes_nothing() {
    let argv = vec![OsString::from("/bin/true")];
    let cases: Vec<(&str, Spawn)> = vec![
        ("listen_pid", Spawn::new(&argv).expect("argv").listen_pid()),
        (
            "session",
            Spawn::new(&argv).unwrap().session(Session::NewProcessGroup),
        ),
        (
            "credentials",
            Spawn::new(&argv).expect("argv").credentials(Credentials {
                uid: 0,
                gid: 0,
                groups: vec![],
            }),
        ),
        (
            "death_signal",
            Spawn::new(&argv).expect("argv").death_signal(9),
        ),
        (
            "no_new_privs",
            Spawn::new(&argv).expect("argv").no_new_privs(),
        ),
    ];
    let fds_before = std::fs::read_dir("/proc/self/fd").expect("fd dir").count();
    for (what, s) in cases {
        // Returning at all means this process was not replaced.
        let e = s.exec_in_place();
        assert!(
            matches!(e, fdgrab::Error::InvalidArgument(_)),
            "{what}: {e:?}"
        );
        assert!(e.to_string().contains("need a child"), "{what}: {e}");
    }
    assert_eq!(
        std::fs::read_dir("/proc/self/fd").expect("fd dir").count(),
        fds_before
    );
    // no_new_privs was not set on this process.
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    assert!(status.contains("NoNewPrivs:\t0"), "{status}");
}
