//! `getent` as the name service (what a static musl build uses) gives the same
//! users, groups and errors as glibc's own NSS calls, for every kind of `--user`
//! spec. (That the musl binary finds users known only to an NSS module is
//! checked end to end by `run_user_known_only_through_nss`.)

use fdgrab::passwd::{NameService, User};

#[test]
fn getent_answers_as_glibc_does() {
    if !std::path::Path::new("/usr/bin/getent").exists() {
        fdgrab_testkit::skip("/usr/bin/getent is missing (libc-bin)");
        return;
    }
    // An id no passwd or group entry uses.
    let free = (40_000..60_000u32)
        .find(|id| {
            User::lookup_through(NameService::Libc, &format!("{id}"))
                .is_ok_and(|u| u.name == id.to_string())
        })
        .expect("a free id");
    // A number that names a group but no user: refused (it would borrow the group).
    let borrowed = std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok())
        .find(|gid| User::lookup_through(NameService::Libc, &gid.to_string()).is_err())
        .map(|gid| gid.to_string());
    let specs = [
        "root".to_string(),
        "0".into(),
        "root:root".into(),
        "root:0".into(),
        "nobody".into(),
        "65534".into(),
        "daemon:root".into(),
        "nobody:nogroup".into(),
        free.to_string(),
        format!("{free}:{free}"),
        // Refused, each for its own reason.
        "no-such-user-fdgrab".into(),
        "root:no-such-group-fdgrab".into(),
        "0:4294967295".into(),
        "".into(),
        // Names that `getent` reads as ids (`strtoul`), and the C library does not:
        // 4294967296 is uid 0 once cut to 32 bits.
        "4294967296".into(),
        " 5".into(),
        "\t0".into(),
        "-4294967295".into(),
        "+5".into(),
        "nobody:4294967296".into(),
        "nobody: 42".into(),
        "nobody:-4294967295".into(),
    ]
    .into_iter()
    .chain(borrowed);
    for spec in specs {
        let spec = &spec;
        let libc = User::lookup_through(NameService::Libc, spec);
        let getent = User::lookup_through(NameService::Getent, spec);
        match (&libc, &getent) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{spec}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{spec}"),
            _ => panic!("'{spec}': libc {libc:?}, getent {getent:?}"),
        }
    }
}
