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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_to_uid_zero() {
        let root = lookup_user("root").expect("lookup").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
    }

    #[test]
    fn unknown_user_is_none() {
        assert_eq!(lookup_user("no-such-user-pp").expect("lookup"), None);
    }
}
