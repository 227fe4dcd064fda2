//! Users and groups of a container image: `/etc/passwd` and `/etc/group` read from the
//! container's rootfs, and the process user the CRI request (or the image's `USER`) asks for.
//!
//! Behaviour follows containerd's `oci.WithUser` / `oci.WithAdditionalGIDs` and the CRI
//! `SupplementalGroupsPolicy` (KEP-3619): a numeric uid need not exist in the image (its gid is
//! then the passwd entry's, or 0), a name must; `Merge` adds the groups that list the user as a
//! member in the image's `/etc/group`, `Strict` does not.

use std::path::Path;

use crate::cri;
use crate::error::{Error, Result};
use crate::safe_fs;

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The users and groups of one image. Empty when the image has no `/etc/passwd` (e.g. `FROM
/// scratch`); then only numeric users resolve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    pub users: Vec<PasswdEntry>,
    pub groups: Vec<GroupEntry>,
}

/// The process identity to put in the OCI spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// The passwd name of `uid`, when the image has one (used for `/etc/group` membership).
    pub username: Option<String>,
    /// Supplementary groups, primary gid first, without duplicates.
    pub additional_gids: Vec<u32>,
}

impl UserDb {
    /// Reads `etc/passwd` and `etc/group` of a rootfs directory. Symlinks are resolved inside
    /// `rootfs`, never on the host. A missing file is an empty database, not an error.
    pub fn from_rootfs(rootfs: &Path) -> Result<Self> {
        let passwd = read_in_root(rootfs, "etc/passwd")?;
        let group = read_in_root(rootfs, "etc/group")?;
        Ok(Self::parse(&passwd, &group))
    }

    /// Parses the text of `/etc/passwd` and `/etc/group`. Malformed lines are skipped, as libc does.
    pub fn parse(passwd: &str, group: &str) -> Self {
        let users = passwd
            .lines()
            .filter_map(|line| {
                let f = fields(line, 4)?;
                Some(PasswdEntry {
                    name: f[0].to_string(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                })
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|line| {
                let f = fields(line, 3)?;
                let members = f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                Some(GroupEntry {
                    name: f[0].to_string(),
                    gid: f[2].parse().ok()?,
                    members,
                })
            })
            .collect();
        UserDb { users, groups }
    }

    pub fn user_by_name(&self, name: &str) -> Option<&PasswdEntry> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn user_by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.users.iter().find(|u| u.uid == uid)
    }

    pub fn group_by_name(&self, name: &str) -> Option<&GroupEntry> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Gids of the groups that list `username` as a member.
    pub fn member_gids(&self, username: &str) -> Vec<u32> {
        self.groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == username))
            .map(|g| g.gid)
            .collect()
    }
}

/// Resolves the process user of a container.
///
/// The CRI security context wins (`run_as_username`, else `run_as_user`, each with an optional
/// `run_as_group`); without either the image's `USER` (`name`, `uid`, `name:group`, `uid:gid`)
/// applies; without that, root.
pub fn resolve_user(
    db: &UserDb,
    sc: Option<&cri::LinuxContainerSecurityContext>,
    image_user: Option<&str>,
) -> Result<ResolvedUser> {
    let username = sc.map(|s| s.run_as_username.as_str()).unwrap_or("");
    let uid = sc.and_then(|s| s.run_as_user.as_ref()).map(|v| v.value);
    let gid = sc.and_then(|s| s.run_as_group.as_ref()).map(|v| v.value);

    if gid.is_some() && username.is_empty() && uid.is_none() {
        return Err(Error::invalid(
            "security_context.run_as_group is set without run_as_user or run_as_username",
        ));
    }
    let gid = gid
        .map(|g| id_from_i64(g, "security_context.run_as_group"))
        .transpose()?;

    let (uid, mut primary, name) = if !username.is_empty() {
        let u = db.user_by_name(username).ok_or_else(|| {
            Error::invalid(format!(
                "security_context.run_as_username {username:?} is not in the image's /etc/passwd"
            ))
        })?;
        (u.uid, u.gid, Some(u.name.clone()))
    } else if let Some(uid) = uid {
        let uid = id_from_i64(uid, "security_context.run_as_user")?;
        let entry = db.user_by_uid(uid);
        (
            uid,
            entry.map_or(0, |e| e.gid),
            entry.map(|e| e.name.clone()),
        )
    } else {
        let spec = image_user.unwrap_or("").trim();
        parse_user_string(db, spec)?
    };
    if let Some(g) = gid {
        primary = g;
    }

    let policy = sc
        .map(|s| s.supplemental_groups_policy())
        .unwrap_or(cri::SupplementalGroupsPolicy::Merge);
    let mut gids = vec![primary];
    if policy == cri::SupplementalGroupsPolicy::Merge {
        if let Some(n) = &name {
            gids.extend(db.member_gids(n));
        }
    }
    for g in sc.map(|s| s.supplemental_groups.as_slice()).unwrap_or(&[]) {
        gids.push(id_from_i64(*g, "security_context.supplemental_groups")?);
    }
    let mut seen = std::collections::HashSet::new();
    gids.retain(|g| seen.insert(*g));

    Ok(ResolvedUser {
        uid,
        gid: primary,
        username: name,
        additional_gids: gids,
    })
}

/// Parses an image `USER` value: `""`, `user`, `uid`, `user:group`, `uid:gid` (and mixes).
fn parse_user_string(db: &UserDb, spec: &str) -> Result<(u32, u32, Option<String>)> {
    if spec.is_empty() {
        let name = db.user_by_uid(0).map(|e| e.name.clone());
        return Ok((0, 0, name));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, mut gid, name) = match user.parse::<u32>() {
        Ok(uid) => {
            let entry = db.user_by_uid(uid);
            (
                uid,
                entry.map_or(0, |e| e.gid),
                entry.map(|e| e.name.clone()),
            )
        }
        Err(_) => {
            let e = db.user_by_name(user).ok_or_else(|| {
                Error::invalid(format!(
                    "image user {spec:?}: user {user:?} is not in the image's /etc/passwd"
                ))
            })?;
            (e.uid, e.gid, Some(e.name.clone()))
        }
    };
    if let Some(group) = group {
        gid = match group.parse::<u32>() {
            Ok(g) => g,
            Err(_) => {
                db.group_by_name(group)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "image user {spec:?}: group {group:?} is not in the image's /etc/group"
                        ))
                    })?
                    .gid
            }
        };
    }
    Ok((uid, gid, name))
}

fn id_from_i64(v: i64, field: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(format!("{field}: {v} is not a valid id")))
}

/// The most of `/etc/passwd` or `/etc/group` peapod reads: far more than any real image
/// has, and small enough that a hostile image cannot exhaust memory with it.
pub const MAX_USER_DB_FILE: u64 = 4 << 20;

/// Reads `rel` under `root` through [`safe_fs`]: symlinks resolve inside `root`, only a
/// regular file of at most [`MAX_USER_DB_FILE`] bytes is read, and a FIFO or device is refused
/// without being opened. A missing file reads as "", as containerd treats it.
fn read_in_root(root: &Path, rel: &str) -> Result<String> {
    match safe_fs::read_in_root(root, Path::new(rel), MAX_USER_DB_FILE) {
        Ok(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Ok(None) => Ok(String::new()),
        Err(e) => Err(Error::invalid(format!("the image's /{rel} {e}"))),
    }
}

/// The `:`-separated fields of a passwd/group line with at least `min` fields and a name;
/// None for blank, comment and malformed lines.
fn fields(line: &str, min: usize) -> Option<Vec<&str>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let f: Vec<&str> = line.split(':').collect();
    (f.len() >= min && !f[0].is_empty()).then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # a comment\n\
        broken line\n\
        app:x:1000:1001:App:/home/app:/bin/sh\n\
        nobody:x:65534:65534:nobody:/:/bin/false\n";
    const GROUP: &str = "root:x:0:root\n\
        daemon:x:1:\n\
        wheel:x:10:root,app\n\
        appgrp:x:1001:\n\
        audio:x:29:app\n\
        nogroup:x:65534:\n";

    fn db() -> UserDb {
        UserDb::parse(PASSWD, GROUP)
    }

    fn sc() -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext::default()
    }

    #[test]
    fn parse_skips_comments_and_malformed_lines() {
        let db = db();
        assert_eq!(db.users.len(), 4);
        assert_eq!(db.groups.len(), 6);
        assert_eq!(
            db.group_by_name("wheel").unwrap().members,
            vec!["root", "app"]
        );
        assert!(db.group_by_name("daemon").unwrap().members.is_empty());
    }

    #[test]
    fn default_is_root_with_its_groups() {
        let u = resolve_user(&db(), None, None).unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        assert_eq!(u.username.as_deref(), Some("root"));
        assert_eq!(u.additional_gids, vec![0, 10]);
    }

    #[test]
    fn image_user_forms() {
        let db = db();
        let r = |s: &str| resolve_user(&db, None, Some(s));
        let u = r("app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1001));
        assert_eq!(u.additional_gids, vec![1001, 10, 29]);
        let u = r("1000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1001));
        let u = r("4242").unwrap();
        assert_eq!((u.uid, u.gid, u.username), (4242, 0, None));
        let u = r("app:audio").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 29));
        let u = r("1000:7").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
        let u = r("4242:4343").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 4343));
        assert_eq!(u.additional_gids, vec![4343]);
    }

    #[test]
    fn image_user_unknown_name_is_invalid() {
        let e = resolve_user(&db(), None, Some("ghost")).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("ghost")));
        let e = resolve_user(&db(), None, Some("app:ghosts")).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("ghosts")));
    }

    #[test]
    fn run_as_user_overrides_image_user() {
        let mut s = sc();
        s.run_as_user = Some(cri::Int64Value { value: 65534 });
        let u = resolve_user(&db(), Some(&s), Some("app")).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 65534));
        assert_eq!(u.username.as_deref(), Some("nobody"));
    }

    #[test]
    fn run_as_group_overrides_primary_gid() {
        let mut s = sc();
        s.run_as_user = Some(cri::Int64Value { value: 1000 });
        s.run_as_group = Some(cri::Int64Value { value: 3000 });
        let u = resolve_user(&db(), Some(&s), None).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 3000));
        assert_eq!(u.additional_gids, vec![3000, 10, 29]);
    }

    #[test]
    fn run_as_group_without_user_is_invalid() {
        let mut s = sc();
        s.run_as_group = Some(cri::Int64Value { value: 3000 });
        let e = resolve_user(&db(), Some(&s), Some("app")).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("run_as_group")));
    }

    #[test]
    fn run_as_username_resolves_or_fails() {
        let mut s = sc();
        s.run_as_username = "app".into();
        let u = resolve_user(&db(), Some(&s), None).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1001));
        s.run_as_username = "ghost".into();
        let e = resolve_user(&db(), Some(&s), None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(m) if m.contains("run_as_username")));
    }

    #[test]
    fn negative_ids_are_invalid() {
        let mut s = sc();
        s.run_as_user = Some(cri::Int64Value { value: -1 });
        assert!(matches!(
            resolve_user(&db(), Some(&s), None),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn supplemental_groups_merge_and_strict() {
        let mut s = sc();
        s.run_as_user = Some(cri::Int64Value { value: 1000 });
        s.supplemental_groups = vec![5000, 10];
        let u = resolve_user(&db(), Some(&s), None).unwrap();
        assert_eq!(u.additional_gids, vec![1001, 10, 29, 5000]);
        s.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
        let u = resolve_user(&db(), Some(&s), None).unwrap();
        assert_eq!(u.additional_gids, vec![1001, 5000, 10]);
    }

    #[test]
    fn from_rootfs_reads_files_and_tolerates_absence() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(UserDb::from_rootfs(dir.path()).unwrap(), UserDb::default());
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        assert_eq!(UserDb::from_rootfs(dir.path()).unwrap(), db());
    }

    #[test]
    fn symlinks_stay_inside_the_rootfs() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::create_dir_all(root.path().join("real")).unwrap();
        std::fs::write(root.path().join("real/passwd"), PASSWD).unwrap();
        // An absolute link that, followed on the host, would escape.
        let abs = host.path().join("passwd");
        std::os::unix::fs::symlink(&abs, root.path().join("etc/passwd")).unwrap();
        let db = UserDb::from_rootfs(root.path()).unwrap();
        assert!(db.user_by_name("evil").is_none());
        // A link to /real/passwd resolves inside the rootfs.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/real/passwd", root.path().join("etc/passwd")).unwrap();
        let db = UserDb::from_rootfs(root.path()).unwrap();
        assert!(db.user_by_name("app").is_some());
        // ../.. cannot climb above the root either.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../real/passwd", root.path().join("etc/passwd"))
            .unwrap();
        assert!(UserDb::from_rootfs(root.path())
            .unwrap()
            .user_by_name("app")
            .is_some());
    }

    #[test]
    fn hostile_user_files_fail_fast_with_a_clear_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        let passwd = root.path().join("etc/passwd");
        nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = UserDb::from_rootfs(root.path()).unwrap_err().to_string();
        assert!(e.contains("/etc/passwd") && e.contains("FIFO"), "{e}");
        std::fs::remove_file(&passwd).unwrap();
        let f = std::fs::File::create(&passwd).unwrap();
        f.set_len(MAX_USER_DB_FILE + 1).unwrap();
        let e = UserDb::from_rootfs(root.path()).unwrap_err().to_string();
        assert!(e.contains("/etc/passwd") && e.contains("more than"), "{e}");
        // A link to the host's kernel memory resolves inside the image, where it is absent.
        std::fs::remove_file(&passwd).unwrap();
        std::os::unix::fs::symlink("/proc/kcore", &passwd).unwrap();
        assert_eq!(UserDb::from_rootfs(root.path()).unwrap(), UserDb::default());
    }
}
