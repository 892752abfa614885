//! Users and groups through the C library's name service switch (NSS), so that
//! `run --user` finds whoever the system knows: `/etc/passwd`, LDAP, SSSD,
//! extrausers, systemd's dynamic users. The lookups run in the parent before
//! anything is spawned (NSS modules allocate and may talk to daemons).
//!
//! Only glibc loads NSS modules. A static musl build (the one fdgrab ships, see
//! docs/packaging.md) would see `/etc/passwd` and `/etc/group` alone, so it asks
//! glibc's `getent` instead, which answers through the modules nsswitch.conf names;
//! where `getent` is missing the C library's own lookups are all there is.

use crate::error::{Error, Result};
use std::ffi::{CStr, CString};

/// A user to run a program as, with its groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Login name, for `USER` and `LOGNAME`.
    pub name: String,
    /// Home directory, for `HOME`.
    pub home: String,
    /// The user id.
    pub uid: libc::uid_t,
    /// The primary group id (from the passwd entry, or the GROUP asked for).
    pub gid: libc::gid_t,
    /// Supplementary groups, `gid` included.
    pub groups: Vec<libc::gid_t>,
}

/// A passwd entry, copied out of the C library's buffer.
struct PasswdEntry {
    name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
    home: String,
}

impl User {
    /// Resolves `USER[:GROUP]`, each a name or a number: `getpwnam_r` (or
    /// `getpwuid_r` for a number), `getgrnam_r` for a group name, and
    /// `getgrouplist` for the supplementary groups. A number that names no user is
    /// used as is, with `/` as its home and, unless a group is given, the same
    /// number as its group, but only when no group has that number: `--user 27`
    /// must not quietly join Debian's `sudo` group (27), nor `shadow` or `kmem`.
    ///
    /// Errors: [`Error::InvalidArgument`] naming the user or group that NSS does not
    /// know, or the existing group an unknown uid would have borrowed.
    pub fn lookup(spec: &str) -> Result<User> {
        Self::lookup_through(NameService::system(), spec)
    }

    /// [`User::lookup`] through the given name service (for tests that compare
    /// the two).
    pub fn lookup_through(ns: NameService, spec: &str) -> Result<User> {
        let getpw = |key| ns.getpw(key);
        let getgr_name = |gid| ns.getgr_name(gid);
        let getgr_gid = |name| ns.getgr_gid(name);
        let group_list = |name, gid| ns.group_list(name, gid);
        let bad = |why: String| Error::InvalidArgument(format!("--user '{spec}': {why}"));
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user.is_empty() {
            return Err(bad("empty user name".into()));
        }
        let number = user.parse::<libc::uid_t>().ok();
        let entry = match getpw(Key::Name(user))? {
            Some(e) => Some(e),
            None => match number {
                Some(n) => getpw(Key::Uid(n))?,
                None => None,
            },
        };
        let (name, uid, mut gid, home, known) = match (entry, number) {
            (Some(e), _) => (e.name, e.uid, e.gid, e.home, true),
            (None, Some(n)) => (n.to_string(), n, n, "/".to_string(), false),
            (None, None) => {
                return Err(bad(format!(
                    "no user '{user}' (looked up through NSS, see /etc/nsswitch.conf)"
                )))
            }
        };
        if !known && group.is_none() {
            if let Some(taken) = getgr_name(gid)? {
                return Err(bad(format!(
                    "uid {uid} names no user, and group {gid} is '{taken}': give the group \
                     explicitly (--user {uid}:GROUP) rather than borrowing that one"
                )));
            }
        }
        if let Some(g) = group {
            gid = match g.parse::<libc::gid_t>() {
                Ok(n) => n,
                Err(_) => getgr_gid(g)?.ok_or_else(|| {
                    bad(format!(
                        "no group '{g}' (looked up through NSS, see /etc/nsswitch.conf)"
                    ))
                })?,
            };
        }
        let groups = if known {
            group_list(&name, gid)?
        } else {
            vec![gid]
        };
        // `(uid_t)-1` and `(gid_t)-1` mean "leave unchanged" to the set*id calls
        // and name nobody: a switch to them would fail with a bare `EINVAL`.
        const UNSET: u32 = u32::MAX;
        let unset = std::iter::once(("uid", uid))
            .chain(groups.iter().chain([&gid]).map(|&g| ("gid", g)))
            .find(|&(_, id)| id == UNSET);
        if let Some((kind, id)) = unset {
            return Err(bad(format!(
                "{kind} {id} is -1 as a 32-bit id, which set*id calls read as \"leave \
                 unchanged\" and no process can have"
            )));
        }
        Ok(User {
            name,
            home,
            uid,
            gid,
            groups,
        })
    }
}

/// Where users and groups are looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameService {
    /// The C library's `get*_r` functions (with glibc: NSS itself).
    Libc,
    /// glibc's `getent` program (NSS from a binary without glibc).
    Getent,
}

/// Where glibc installs `getent`; an absolute path, so that `PATH` plays no part
/// in a lookup made as root.
const GETENT: &str = "/usr/bin/getent";

impl NameService {
    /// Libc on glibc; elsewhere `getent` when it is installed.
    pub fn system() -> Self {
        if cfg!(target_env = "gnu") || !std::path::Path::new(GETENT).exists() {
            NameService::Libc
        } else {
            NameService::Getent
        }
    }

    fn getpw(self, key: Key<'_>) -> Result<Option<PasswdEntry>> {
        match self {
            NameService::Libc => getpw(key),
            NameService::Getent => {
                let k = match key {
                    Key::Name(n) => n.to_string(),
                    Key::Uid(u) => u.to_string(),
                };
                let line = match getent("passwd", &k)? {
                    Answer::Found(line) => line,
                    Answer::Missing => return Ok(None),
                    Answer::Unsupported => return getpw(key),
                };
                // name:password:uid:gid:gecos:home:shell, where only the gecos
                // of a directory (LDAP, SSSD) may hold a ':' of its own: the home
                // is the last field but one.
                let f: Vec<&str> = line.split(':').collect();
                match f[..] {
                    [name, ..] if !answers_name(&key, name) => Ok(None),
                    [name, _, uid, gid, _, .., home, _] => Ok(Some(PasswdEntry {
                        name: name.to_string(),
                        uid: number(uid, &line)?,
                        gid: number(gid, &line)?,
                        home: home.to_string(),
                    })),
                    _ => Err(odd_answer(&line)),
                }
            }
        }
    }

    fn getgr_gid(self, name: &str) -> Result<Option<libc::gid_t>> {
        match self {
            NameService::Libc => getgr_gid(name),
            NameService::Getent => match getent("group", name)? {
                // name:password:gid:members
                Answer::Found(line) => match line.split(':').collect::<Vec<_>>()[..] {
                    [found, ..] if !answers_name(&Key::Name(name), found) => Ok(None),
                    [_, _, gid, ..] => number(gid, &line).map(Some),
                    _ => Err(odd_answer(&line)),
                },
                Answer::Missing => Ok(None),
                Answer::Unsupported => getgr_gid(name),
            },
        }
    }

    fn getgr_name(self, gid: libc::gid_t) -> Result<Option<String>> {
        match self {
            NameService::Libc => getgr_name(gid),
            NameService::Getent => match getent("group", &gid.to_string())? {
                Answer::Found(line) => Ok(line.split(':').next().map(str::to_string)),
                Answer::Missing => Ok(None),
                Answer::Unsupported => getgr_name(gid),
            },
        }
    }

    fn group_list(self, name: &str, gid: libc::gid_t) -> Result<Vec<libc::gid_t>> {
        match self {
            NameService::Libc => group_list(name, gid),
            NameService::Getent => {
                // "NAME  GID GID...": the groups that list the user, as
                // `initgroups` would set them, without the primary one.
                let mut groups = vec![gid];
                let line = match getent("initgroups", name)? {
                    Answer::Found(line) => line,
                    Answer::Missing => return Ok(groups),
                    Answer::Unsupported => return group_list(name, gid),
                };
                for g in line.split_whitespace().skip(1) {
                    let g = number(g, &line)?;
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
                Ok(groups)
            }
        }
    }
}

/// What `getent` said about a key.
enum Answer {
    /// The first line of its answer.
    Found(String),
    /// NSS knows no such key (exit 2).
    Missing,
    /// This `getent` does not do that database (exit 1: musl's has no
    /// `initgroups`, for one): the C library's own lookup is asked instead.
    Unsupported,
}

/// Whether `getent`'s entry named `found` answers a lookup of `key`. `getent`
/// looks a key up as an id whenever `strtoul` reads all of it as a number, which
/// is more than digits: `" 5"`, `"+5"`, `"-4294967295"` (1), and `"4294967296"`
/// (0 once cut to 32 bits: root). A name lookup of such a key answered by an
/// entry of another name was an id lookup, and the C library's `getpwnam` or
/// `getgrnam` would have found nothing: the answer is "no such name", and
/// [`User::lookup`] then reads the key as a number itself, or refuses it. (A user
/// or group whose name is such a number can thus only be reached by its id here.)
fn answers_name(key: &Key<'_>, found: &str) -> bool {
    match key {
        Key::Name(name) => *name == found || !read_as_id_by_getent(name),
        Key::Uid(_) => true,
    }
}

/// Whether `strtoul(key, &end, 10)` takes all of `key` (glibc's `getent` then
/// calls `getpwuid`/`getgrgid`): white space, a sign, then digits only.
fn read_as_id_by_getent(key: &str) -> bool {
    let rest = key.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `getent DATABASE KEY`. A key that reads as a number is looked up as an id by
/// `getent` (see [`answers_name`]).
fn getent(database: &str, key: &str) -> Result<Answer> {
    nul_free(key)?;
    // glibc's `getent` reads a key that starts with '-' as an option unless `--`
    // comes first; Alpine's (musl-utils) takes every argument as a key, `--`
    // included, and stops at the first it does not find: `--` only where needed.
    let end_of_options = key.starts_with('-').then_some("--");
    let out = std::process::Command::new(GETENT)
        .arg(database)
        .args(end_of_options)
        .arg(key)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|source| Error::Local {
            op: "run getent",
            source,
        })?;
    match out.status.code() {
        Some(0) => match String::from_utf8_lossy(&out.stdout).lines().next() {
            Some(line) => Ok(Answer::Found(line.to_string())),
            None => Ok(Answer::Missing),
        },
        Some(1) => Ok(Answer::Unsupported),
        Some(2) => Ok(Answer::Missing),
        _ => Err(Error::Local {
            op: "getent",
            source: std::io::Error::other(format!(
                "getent {database} '{key}' failed ({})",
                out.status
            )),
        }),
    }
}

fn number(field: &str, line: &str) -> Result<u32> {
    field.parse().map_err(|_| odd_answer(line))
}

fn odd_answer(line: &str) -> Error {
    Error::Local {
        op: "getent",
        source: std::io::Error::other(format!("unexpected answer '{line}'")),
    }
}

enum Key<'a> {
    Name(&'a str),
    Uid(libc::uid_t),
}

fn nul_free(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("'{s}' contains a NUL byte")))
}

fn nss_error(op: &'static str, errno: i32) -> Error {
    Error::Local {
        op,
        source: std::io::Error::from_raw_os_error(errno),
    }
}

/// Calls a `get*_r` function with a buffer that grows on `ERANGE`.
fn with_buffer<T>(
    op: &'static str,
    mut call: impl FnMut(&mut [libc::c_char]) -> (i32, Option<T>),
) -> Result<Option<T>> {
    let mut len = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; len];
        match call(&mut buf) {
            (0, found) => return Ok(found),
            (libc::ERANGE, _) if len < 1 << 20 => len *= 4,
            // Some modules say "not found" with these instead of 0 and no entry.
            (libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM, _) => return Ok(None),
            (e, _) => return Err(nss_error(op, e)),
        }
    }
}

fn getpw(key: Key<'_>) -> Result<Option<PasswdEntry>> {
    let name = match &key {
        Key::Name(n) => Some(nul_free(n)?),
        Key::Uid(_) => None,
    };
    with_buffer("getpwnam_r", |buf| {
        // SAFETY: an all-zero passwd is a valid value for the call to overwrite.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `pw`, `buf` (with its true length) and `result` are valid for
        // writes; the name is NUL-terminated. The strings `pw` points to live in `buf`.
        let rc = unsafe {
            match (&key, &name) {
                (Key::Name(_), Some(n)) => libc::getpwnam_r(
                    n.as_ptr(),
                    &mut pw,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                ),
                (Key::Uid(uid), _) => {
                    libc::getpwuid_r(*uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result)
                }
                (Key::Name(_), None) => libc::EINVAL,
            }
        };
        if rc != 0 || result.is_null() {
            return (rc, None);
        }
        // SAFETY: on success the strings are NUL-terminated, inside `buf`, which is
        // alive here; they are copied before it goes.
        let text =
            |p: *const libc::c_char| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        let entry = PasswdEntry {
            name: text(pw.pw_name),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
            home: text(pw.pw_dir),
        };
        (0, Some(entry))
    })
}

fn getgr_gid(name: &str) -> Result<Option<libc::gid_t>> {
    let cname = nul_free(name)?;
    with_buffer("getgrnam_r", |buf| {
        // SAFETY: an all-zero group is a valid value for the call to overwrite.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `gr`, `buf` (with its true length) and `result` are valid for
        // writes; the name is NUL-terminated.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return (rc, None);
        }
        (0, Some(gr.gr_gid))
    })
}

/// The name of group `gid`, if NSS knows one.
fn getgr_name(gid: libc::gid_t) -> Result<Option<String>> {
    with_buffer("getgrgid_r", |buf| {
        // SAFETY: an all-zero group is a valid value for the call to overwrite.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `gr`, `buf` (with its true length) and `result` are valid for
        // writes.
        let rc =
            unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc != 0 || result.is_null() {
            return (rc, None);
        }
        // SAFETY: on success the name is NUL-terminated, inside `buf`, which is alive
        // here; it is copied before it goes.
        let name = unsafe { CStr::from_ptr(gr.gr_name) }
            .to_string_lossy()
            .into_owned();
        (0, Some(name))
    })
}

/// `getgrouplist(name, gid)`: `gid` and every group that lists the user.
fn group_list(name: &str, gid: libc::gid_t) -> Result<Vec<libc::gid_t>> {
    let cname = nul_free(name)?;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` gids, and `n` says so; the name is
        // NUL-terminated. On -1, `n` holds the number needed.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return Ok(groups);
        }
        if n as usize <= groups.len() || groups.len() >= 1 << 16 {
            return Err(nss_error("getgrouplist", libc::ERANGE));
        }
        groups.resize(n as usize, 0);
    }
}
