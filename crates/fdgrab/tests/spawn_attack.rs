//! Attacks on the spawner's inputs that its own tests did not try: users NSS does
//! not know, and what a started program is handed.

use fdgrab::passwd::User;

/// Ids named in the `files` databases (`/etc/passwd` or `/etc/group`).
fn ids_in(path: &str) -> Vec<(String, u32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.to_string();
            let id = f.nth(1)?.parse().ok()?;
            Some((name, id))
        })
        .collect()
}

/// `run --user 27` on Debian, where no user has uid 27 but group 27 is `sudo`:
/// "the same number as its group" would quietly make the program a member of
/// `sudo` (or `shadow`, `kmem`, `disk`...). A uid without a passwd entry whose
/// number names an existing group needs the group spelled out; a number that
/// names neither a user nor a group keeps working as before.
#[test]
fn unknown_uid_never_borrows_an_existing_group() {
    let users = ids_in("/etc/passwd");
    let groups = ids_in("/etc/group");
    let Some((gname, gid)) = groups
        .iter()
        .find(|(_, g)| *g != 0 && !users.iter().any(|(_, u)| u == g))
        .cloned()
    else {
        fdgrab_testkit::skip("every group in /etc/group has a user of the same number");
        return;
    };
    let err = User::lookup(&gid.to_string()).expect_err("must refuse");
    let msg = err.to_string();
    assert!(
        msg.contains(&gname) && msg.contains(&format!("{gid}:")),
        "{msg}"
    );
    assert!(matches!(err, fdgrab::Error::InvalidArgument(_)), "{err:?}");
    // Spelled out, it is the user's choice.
    let u = User::lookup(&format!("{gid}:{gid}")).expect("explicit group");
    assert_eq!((u.uid, u.gid, u.groups.clone()), (gid, gid, vec![gid]));
    // A number nobody uses is taken as is, group included.
    let free = (40000..60000)
        .find(|n| !users.iter().any(|(_, u)| u == n) && !groups.iter().any(|(_, g)| g == n))
        .expect("a free id");
    let u = User::lookup(&free.to_string()).expect("free id");
    assert_eq!((u.uid, u.gid, u.groups), (free, free, vec![free]));
}

/// A script whose `#!` names an interpreter that does not exist: `execve` says
/// ENOENT although the script is right there. Still 127, as `env` and bash give,
/// but "command './x' not found" sent the user looking for the wrong file.
#[test]
fn missing_interpreter_is_not_reported_as_a_missing_command() {
    use fdgrab::spawn::Spawn;
    let dir = std::env::temp_dir().join(format!("fdgrab-spawn-attack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let script = dir.join("needs-interp");
    std::fs::write(&script, "#!/nonexistent/interpreter\necho hi\n").expect("write");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let e = match Spawn::new(&[script.clone().into_os_string()])
        .expect("argv")
        .spawn()
    {
        Err(fdgrab::Error::Spawn(e)) => e,
        other => panic!("expected a spawn error, got {other:?}"),
    };
    assert!(e.is_not_found(), "127 like env and bash: {e:?}");
    let msg = e.to_string();
    assert!(!msg.contains("not found"), "{msg}");
    assert!(msg.contains("interpreter"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}
