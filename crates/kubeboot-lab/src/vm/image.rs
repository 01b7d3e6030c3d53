//! The VM lab's base image: Debian 12 built once with mmdebstrap from Debian's packages, kept in the lab's
//! cache under a hash of everything that went into it, with the kernel and initrd copied out for direct kernel
//! boot. The downloaded .debs stay in the cache too, so a rebuild (a changed package list) downloads only what
//! is new.
//!
//! The image holds what a freshly installed minimal server has; the packages the shipped stages install
//! themselves (curl, jq, socat, conntrack, containerd, open-iscsi, ...) are left out on purpose, so the install
//! path really runs. Nothing in it is specific to one VM: each VM's host key, hostname, addresses and login
//! password come from its own small seed disk at first boot (see `seed`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::super::{LabError, io};
use super::host::{HostTools, mirror};
use super::{GUEST_USER, lock_cache};

/// The packages of the base image (mmdebstrap's `minbase` variant adds the essential ones).
pub(crate) const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    // Without it every sudo warns "unable to resolve host" (the guest has no name server).
    "libnss-myhostname",
    "openssh-server",
    "sudo",
    "linux-image-amd64",
    "initramfs-tools",
    "iproute2",
    "iputils-ping",
    "kmod",
    "procps",
    // The stand-ins of the later stages are Python.
    "python3",
    "iptables",
    "ebtables",
    "ethtool",
    "e2fsprogs",
    "netbase",
];

/// Root file system size (sparse: only what is written takes room).
const DISK_SIZE: &str = "6G";

/// A built base image.
#[derive(Debug, Clone)]
pub(crate) struct BaseImage {
    pub rootfs: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Builds the base image unless the cache has it; returns where it is.
pub(crate) fn ensure(tools: &HostTools, cache: &Path) -> Result<BaseImage, LabError> {
    let key = key();
    let dir = cache.join("images").join(&key);
    let image = BaseImage {
        rootfs: dir.join("rootfs.raw"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    let _lock = lock_cache(cache)?;
    if image.rootfs.exists() && image.kernel.exists() && image.initrd.exists() {
        return Ok(image);
    }
    let started = Instant::now();
    eprintln!("lab: building the VM base image {key} (Debian 12, mmdebstrap; once per package list)");
    let work = cache.join("images").join(format!("{key}.build"));
    let _ = fs::remove_dir_all(&work);
    let root = work.join("root");
    let debs = cache.join("debs");
    for d in [&root, &debs] {
        fs::create_dir_all(d).map_err(io(format!("cannot create {}", d.display())))?;
    }
    let hook = work.join("customize.sh");
    fs::write(&hook, customize_script()).map_err(io("cannot write the image hook"))?;
    super::super::set_mode(&hook, 0o755)?;

    let (debian, security) = mirror();
    let mut cmd = Command::new(&tools.mmdebstrap);
    cmd.arg("--variant=minbase")
        .arg("--skip=essential/unlink")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives/",
            debs.display()
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            debs.display()
        ))
        .arg(format!("--customize-hook={}", hook.display()))
        .arg("bookworm")
        .arg(&root)
        .arg(format!("deb {debian} bookworm main"))
        .arg(format!("deb {debian} bookworm-updates main"))
        .arg(format!("deb {security} bookworm-security main"));
    checked(cmd, "mmdebstrap")?;

    let boot = root.join("boot");
    let kernel = newest(&boot, "vmlinuz-")?;
    let initrd = newest(&boot, "initrd.img-")?;
    fs::copy(&kernel, work.join("vmlinuz")).map_err(io("cannot copy the kernel out of the image"))?;
    fs::copy(&initrd, work.join("initrd.img")).map_err(io("cannot copy the initrd out of the image"))?;
    let raw = work.join("rootfs.raw");
    let mut mkfs = Command::new(&tools.mkfs_ext4);
    mkfs.args(["-q", "-F", "-L", "kbroot", "-d"])
        .arg(&root)
        .arg(&raw)
        .arg(DISK_SIZE);
    checked(mkfs, "mkfs.ext4")?;
    fs::remove_dir_all(&root).map_err(io("cannot remove the image's build tree"))?;
    for f in ["rootfs.raw", "vmlinuz", "initrd.img"] {
        super::super::set_mode(&work.join(f), 0o644)?;
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&work, &dir).map_err(io(format!("cannot move the image to {}", dir.display())))?;
    eprintln!("lab: base image built in {:.0?}", started.elapsed());
    Ok(image)
}

/// A hash of everything the image is made from: a changed list or hook builds a new image.
fn key() -> String {
    let mut h = Sha256::new();
    h.update(PACKAGES.join(",").as_bytes());
    h.update(customize_script().as_bytes());
    h.update(DISK_SIZE.as_bytes());
    let (debian, security) = mirror();
    h.update(debian.as_bytes());
    h.update(security.as_bytes());
    format!("bookworm-{}", &hex::encode(h.finalize())[..16])
}

fn newest(dir: &Path, prefix: &str) -> Result<PathBuf, LabError> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(format!("cannot read {}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| LabError::Io {
        what: format!("the image has no {prefix}* in /boot"),
        source: std::io::ErrorKind::NotFound.into(),
    })
}

pub(crate) fn checked(mut cmd: Command, what: &str) -> Result<(), LabError> {
    // Their progress goes to stderr; stdout (mke2fs's "Creating regular file") is noise.
    cmd.stdout(std::process::Stdio::null());
    let status = cmd.status().map_err(io(format!("cannot run {what}")))?;
    if !status.success() {
        return Err(LabError::Command {
            command: format!("{cmd:?}"),
            status: status.to_string(),
            stderr: "see the output above".into(),
        });
    }
    Ok(())
}

/// mmdebstrap's customize hook (`$1` = the image tree): what turns a bootstrap into a node that boots and
/// takes its own settings from its seed disk.
fn customize_script() -> String {
    format!(
        r#"#!/bin/sh
# Written by kubeboot's VM lab: mmdebstrap customize hook ($1 = the image tree).
set -eu
r="$1"
# mmdebstrap copies the host's resolv.conf and hostname in: an air-gapped node has no name server.
: > "$r/etc/resolv.conf"
echo kubeboot-vm > "$r/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$r/etc/hosts"
# Empty: every VM makes its own at first boot.
: > "$r/etc/machine-id"
rm -f "$r/var/lib/dbus/machine-id"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$r/etc/fstab"
# Each VM gets its own host key from its seed disk.
rm -f "$r"/etc/ssh/ssh_host_*
# The VMs boot the kernel and initrd copied out of this image (direct kernel boot), so a guest never reads its
# own initramfs; rebuilding it when a package asks (open-iscsi's trigger) took 10-15 minutes per VM under TCG,
# most of longhorn-prereqs. update-initramfs -u then does nothing (initramfs-tools: update-initramfs.conf).
sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$r/etc/initramfs-tools/update-initramfs.conf"
grep -qx 'update_initramfs=no' "$r/etc/initramfs-tools/update-initramfs.conf"
# No package sources: the install configures the ones it uses (the lab's, served by kubeboot).
rm -f "$r/etc/apt/sources.list" "$r"/etc/apt/sources.list.d/*
chroot "$r" useradd -m -s /bin/bash -G sudo {user}
chroot "$r" passwd -l root
mkdir -p "$r/etc/ssh/sshd_config.d"
cat > "$r/etc/ssh/sshd_config.d/kubeboot-lab.conf" <<'CONF'
# Written by kubeboot's VM lab: key login only; sudo asks for the user's password.
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
CONF
mkdir -p "$r/usr/lib/kubeboot-lab"
cat > "$r/usr/lib/kubeboot-lab/seed" <<'SEED'
#!/bin/sh
# kubeboot's VM lab: this VM's own settings from its seed disk (/dev/vdb), once, at first boot.
set -eu
m=/run/kubeboot-seed
mkdir -p "$m"
mount -o ro /dev/vdb "$m"
cp -a "$m/files/." /
printf '{user}:%s\n' "$(cat "$m/password.hash")" | chpasswd -e
install -d -o {user} -g {user} -m 0700 /home/{user}/.ssh
install -o {user} -g {user} -m 0600 "$m/authorized_keys" /home/{user}/.ssh/authorized_keys
# Services the seed brings (enabled by their links in files/): this boot's systemd read its units before they
# were there, so they are started once here; later boots start them as enabled.
start=
if [ -f "$m/start-units" ]; then start=$(cat "$m/start-units"); fi
umount "$m"
for unit in $start; do systemctl --no-block start "$unit" || echo "kubeboot seed: cannot start $unit" >&2; done
# A swap file, as many real servers have: os-prep must turn it off and keep it off across reboots.
fallocate -l 64M /swapfile
chmod 0600 /swapfile
mkswap /swapfile >/dev/null
echo '/swapfile none swap sw 0 0' >> /etc/fstab
swapon /swapfile
touch /var/lib/kubeboot-seed.done
SEED
chmod 0755 "$r/usr/lib/kubeboot-lab/seed"
cat > "$r/etc/systemd/system/kubeboot-seed.service" <<'UNIT'
[Unit]
Description=kubeboot lab: this VM's own settings from its seed disk
DefaultDependencies=no
Requires=dev-vdb.device
After=dev-vdb.device local-fs.target
Before=sysinit.target systemd-networkd.service ssh.service
ConditionPathExists=!/var/lib/kubeboot-seed.done

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/kubeboot-lab/seed

[Install]
WantedBy=sysinit.target
UNIT
chroot "$r" systemctl enable systemd-networkd.service kubeboot-seed.service
# Both links are static: nothing to wait for.
chroot "$r" systemctl mask systemd-networkd-wait-online.service
"#,
        user = GUEST_USER
    )
}
