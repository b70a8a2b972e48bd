//! Mount options of the OCI spec: fstab-style strings to mount(2) flags.

/// What a spec mount's options ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// MS_* flags for the mount call (MS_BIND/MS_REC included for binds).
    pub flags: libc::c_ulong,
    /// Propagation flags applied by a second call (MS_PRIVATE, MS_SLAVE,
    /// MS_SHARED, MS_UNBINDABLE, with MS_REC for the `r` forms).
    pub propagation: libc::c_ulong,
    /// Options passed to the file system (`mode=755`, `size=65536k`).
    pub data: String,
}

impl MountOptions {
    /// Whether this is a bind mount.
    #[must_use]
    pub fn is_bind(&self) -> bool {
        self.flags & libc::MS_BIND != 0
    }

    /// The flags a bind mount needs in its read-only/nosuid/... remount:
    /// the kernel ignores them in the first bind call.
    #[must_use]
    pub fn bind_remount_flags(&self) -> Option<libc::c_ulong> {
        let extra = self.flags
            & (libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC
                | libc::MS_NOATIME
                | libc::MS_RELATIME
                | libc::MS_STRICTATIME
                | libc::MS_NODIRATIME);
        (self.is_bind() && extra != 0).then_some(libc::MS_BIND | libc::MS_REMOUNT | extra)
    }
}

/// Parses a mount's type and options.
#[must_use]
pub fn parse(kind: Option<&str>, options: &[String]) -> MountOptions {
    let mut out = MountOptions::default();
    if kind == Some("bind") {
        out.flags |= libc::MS_BIND;
    }
    let mut data = Vec::new();
    for opt in options {
        let (set, clear, prop): (libc::c_ulong, libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "ro" => (libc::MS_RDONLY, 0, 0),
            "rw" => (0, libc::MS_RDONLY, 0),
            "bind" => (libc::MS_BIND, 0, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0, 0),
            "nosuid" => (libc::MS_NOSUID, 0, 0),
            "suid" => (0, libc::MS_NOSUID, 0),
            "nodev" => (libc::MS_NODEV, 0, 0),
            "dev" => (0, libc::MS_NODEV, 0),
            "noexec" => (libc::MS_NOEXEC, 0, 0),
            "exec" => (0, libc::MS_NOEXEC, 0),
            "sync" => (libc::MS_SYNCHRONOUS, 0, 0),
            "async" => (0, libc::MS_SYNCHRONOUS, 0),
            "dirsync" => (libc::MS_DIRSYNC, 0, 0),
            "remount" => (libc::MS_REMOUNT, 0, 0),
            "mand" => (libc::MS_MANDLOCK, 0, 0),
            "nomand" => (0, libc::MS_MANDLOCK, 0),
            "atime" => (0, libc::MS_NOATIME, 0),
            "noatime" => (libc::MS_NOATIME, 0, 0),
            "diratime" => (0, libc::MS_NODIRATIME, 0),
            "nodiratime" => (libc::MS_NODIRATIME, 0, 0),
            "relatime" => (libc::MS_RELATIME, 0, 0),
            "norelatime" => (0, libc::MS_RELATIME, 0),
            "strictatime" => (libc::MS_STRICTATIME, 0, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME, 0),
            "private" => (0, 0, libc::MS_PRIVATE),
            "rprivate" => (0, 0, libc::MS_PRIVATE | libc::MS_REC),
            "slave" => (0, 0, libc::MS_SLAVE),
            "rslave" => (0, 0, libc::MS_SLAVE | libc::MS_REC),
            "shared" => (0, 0, libc::MS_SHARED),
            "rshared" => (0, 0, libc::MS_SHARED | libc::MS_REC),
            "unbindable" => (0, 0, libc::MS_UNBINDABLE),
            "runbindable" => (0, 0, libc::MS_UNBINDABLE | libc::MS_REC),
            // Options of other tools that the kernel does not take.
            "defaults" | "" => (0, 0, 0),
            other => {
                data.push(other);
                (0, 0, 0)
            }
        };
        out.flags = (out.flags | set) & !clear;
        out.propagation |= prop;
    }
    out.data = data.join(",");
    out
}

/// The flags of a read-only remount of an existing mount point.
pub const READONLY_REMOUNT: libc::c_ulong =
    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC;

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_flags_and_data() {
        let m = parse(
            Some("tmpfs"),
            &opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]),
        );
        assert_eq!(m.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(m.data, "mode=755,size=65536k");
        assert!(!m.is_bind());
        assert_eq!(m.bind_remount_flags(), None);
    }

    #[test]
    fn read_only_binds_need_a_remount() {
        let m = parse(Some("bind"), &opts(&["rbind", "ro", "nosuid", "rprivate"]));
        assert!(m.is_bind());
        assert_eq!(m.flags & libc::MS_REC, libc::MS_REC);
        assert_eq!(m.propagation, libc::MS_PRIVATE | libc::MS_REC);
        assert_eq!(
            m.bind_remount_flags(),
            Some(libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID)
        );
        // "bind" in the options alone makes a bind mount.
        let m = parse(Some("none"), &opts(&["bind", "rw"]));
        assert!(m.is_bind());
        assert_eq!(m.bind_remount_flags(), None);
    }

    #[test]
    fn later_options_win() {
        let m = parse(None, &opts(&["ro", "rw", "noexec", "exec", "nodev"]));
        assert_eq!(m.flags, libc::MS_NODEV);
    }
}
