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
