//! Looking up the unprivileged user by name.

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;

/// A resolved system user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Resolves `name` through NSS (`getpwnam_r`). `Ok(None)` when no such user.
pub fn lookup_user(name: &str) -> std::io::Result<Option<User>> {
    let cname = CString::new(name).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "user name contains NUL")
    })?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut pwd = MaybeUninit::<libc::passwd>::zeroed();
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live buffer of the size passed.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            pwd.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Ok(None);
    }
    // SAFETY: getpwnam_r succeeded and filled `pwd`; pw_name points into `buf`.
    let (uid, gid, pw_name) = unsafe {
        let p = pwd.assume_init_ref();
        (p.pw_uid, p.pw_gid, CStr::from_ptr(p.pw_name))
    };
    Ok(Some(User {
        name: pw_name.to_string_lossy().into_owned(),
        uid,
        gid,
    }))
}

/// The users of group `name` through NSS: the members it lists
/// (`getgrnam_r`) and the users whose primary group it is (`getpwent`).
/// `Ok(None)` when no such group. Not thread-safe (`getpwent`): for the
/// single-threaded start.
pub fn lookup_group_users(name: &str) -> std::io::Result<Option<Vec<User>>> {
    let cname = CString::new(name).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "group name contains NUL")
    })?;
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut grp = MaybeUninit::<libc::group>::zeroed();
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live buffer of the size passed.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            grp.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Ok(None);
    }
    let mut names = Vec::new();
    // SAFETY: getgrnam_r succeeded: gr_mem is a NULL-terminated array of
    // C strings in `buf`.
    let gid = unsafe {
        let g = grp.assume_init_ref();
        let mut member = g.gr_mem;
        while !member.is_null() && !(*member).is_null() {
            names.push(CStr::from_ptr(*member).to_string_lossy().into_owned());
            member = member.add(1);
        }
        g.gr_gid
    };
    let mut users = Vec::new();
    for n in names {
        if let Some(u) = lookup_user(&n)? {
            users.push(u);
        }
    }
    // SAFETY: setpwent/getpwent/endpwent walk the user database; each
    // entry is read before the next call reuses its storage.
    unsafe {
        libc::setpwent();
        loop {
            let p = libc::getpwent();
            if p.is_null() {
                break;
            }
            let p = &*p;
            if p.pw_gid == gid && !users.iter().any(|u| u.uid == p.pw_uid) {
                users.push(User {
                    name: CStr::from_ptr(p.pw_name).to_string_lossy().into_owned(),
                    uid: p.pw_uid,
                    gid: p.pw_gid,
                });
            }
        }
        libc::endpwent();
    }
    Ok(Some(users))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_to_uid_zero() {
        let root = lookup_user("root").expect("lookup").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
    }

    #[test]
    fn a_group_has_its_listed_members_and_its_primary_users() {
        let root = lookup_group_users("root")
            .expect("lookup")
            .expect("group root");
        assert!(root.iter().any(|u| u.uid == 0), "{root:?}");
        assert_eq!(
            lookup_group_users("no-such-group-pp").expect("lookup"),
            None
        );
    }

    #[test]
    fn unknown_user_is_none() {
        assert_eq!(lookup_user("no-such-user-pp").expect("lookup"), None);
    }
}
