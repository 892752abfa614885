//! `fdgrab profile` on profiles whose rewrite could not keep their answers.

use fdgrab_testkit::oci::TempDir;
use fdgrab_testkit::run_fdgrab;

/// A profile that allows everything but denies `bind` on fd 3. libseccomp drops a
/// syscall's rules with `args` conditions once the syscall has an unconditional
/// rule, so the NOTIFY rule the allowing default needs would erase the denial:
/// refused (exit 2, naming the rule), nothing on stdout.
#[test]
fn a_denial_under_args_with_an_allowing_default_is_refused() {
    let dir = TempDir::new("fdgrab-profile-attack");
    let input = dir.path().join("deny-fd3.json");
    let text = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getpid"], "action": "SCMP_ACT_ERRNO"},
        {"names": ["bind"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
         "args": [{"index": 0, "value": 3, "op": "SCMP_CMP_EQ"}]}]}"#;
    std::fs::write(&input, text).expect("write");
    let out = run_fdgrab(["profile", "--from", input.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("syscalls[1]") && err.contains("args"), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&input).expect("read"), text);

    // The same denial without an allowing default is kept as it was.
    let input = dir.path().join("deny-fd3-default-errno.json");
    std::fs::write(
        &input,
        text.replace(
            r#""defaultAction": "SCMP_ACT_ALLOW", "syscalls": ["#,
            r#""defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["bind"], "action": "SCMP_ACT_ALLOW"},"#,
        ),
    )
    .expect("write");
    let out = run_fdgrab(["profile", "--from", input.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--output` goes through a temporary file whose name is predictable (it carries
/// fdgrab's pid). Whoever can write to the directory can put a symlink there first;
/// root running `fdgrab profile -o` must not write through it into another file.
#[test]
fn output_does_not_write_through_a_planted_temporary_symlink() {
    let dir = TempDir::new("fdgrab-profile-symlink");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").expect("write");
    let out_file = dir.path().join("out.json");
    // `exec` keeps the shell's pid, so $$ is fdgrab's pid.
    let script = format!(
        "ln -s {victim} {dir}/.out.json.tmp$$ && exec {fdgrab} profile -o {out}",
        victim = victim.display(),
        dir = dir.path().display(),
        fdgrab = fdgrab_testkit::bin("fdgrab").display(),
        out = out_file.display(),
    );
    let out = fdgrab_testkit::output_timeout(
        std::process::Command::new("sh").arg("-c").arg(&script),
        fdgrab_testkit::TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        std::fs::read_to_string(&victim).expect("victim") == "precious",
        "written through the symlink; fdgrab said {err}"
    );
    // Refused, naming the file, and the symlink is left for its owner to see.
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(".out.json.tmp"), "{err}");
    assert!(!out_file.exists());
    let planted = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .count();
    assert_eq!(planted, 1);
}

/// An endless `--from` (/dev/zero, a stream that never ends) is refused once it is
/// far larger than any profile, instead of filling memory (bounded here by
/// `ulimit -v` so that a regression fails without hurting the machine).
#[test]
fn an_endless_input_is_refused_without_filling_memory() {
    let script = format!(
        "ulimit -v 2000000 && exec {} profile --from /dev/zero",
        fdgrab_testkit::bin("fdgrab").display()
    );
    let out = fdgrab_testkit::output_timeout(
        std::process::Command::new("sh").arg("-c").arg(&script),
        fdgrab_testkit::TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/dev/zero") && err.contains("MiB"), "{err}");
    assert!(out.stdout.is_empty());
}

/// A `--socket` that is not UTF-8 cannot be written into JSON as it is; a lossy
/// `listenerPath` would name a socket that does not exist, and the runtime would
/// refuse every container. Refused (exit 2) instead.
#[test]
fn a_socket_path_that_is_not_utf8_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let mut cmd = fdgrab_testkit::fdgrab();
    cmd.args(["profile", "--socket"])
        .arg(std::ffi::OsStr::from_bytes(b"/run/fdgrab/\xffagent.sock"));
    let out = fdgrab_testkit::output_timeout(&mut cmd, fdgrab_testkit::TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--socket"), "{err}");
    assert!(out.stdout.is_empty());
}

/// `--metadata` is read by the agent for every container that uses the profile;
/// one it cannot read costs each of them every privileged port (the agent logs it
/// and denies). So it is checked here, with the agent's own parser: a typo is
/// exit 2 naming --metadata, before anything is written.
#[test]
fn metadata_the_agent_cannot_read_is_refused() {
    for bad in ["allow-bind=tcp:8O", "allow-binds=tcp:80", "tcp:80"] {
        let out = run_fdgrab(["profile", "--metadata", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("--metadata"), "{err}");
        assert!(out.stdout.is_empty());
    }
    // The same for metadata the input profile carries.
    let dir = TempDir::new("fdgrab-profile-meta");
    let input = dir.path().join("with-meta.json");
    std::fs::write(
        &input,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerMetadata": "allow-bind=tcp:8O"}"#,
    )
    .expect("write");
    let out = run_fdgrab(["profile", "--from", input.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("listenerMetadata"), "{err}");
    assert!(out.stdout.is_empty());
    for good in [
        "allow-bind=tcp:80,tcp:443",
        "allow-bind=udp:53 allow-bind=tcp:80",
        "",
    ] {
        let out = run_fdgrab(["profile", "--metadata", good]);
        assert!(
            out.status.success(),
            "{good}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
