//! A QEMU guest whose virtio disk is a spritedisk volume served over NBD
//! (the VM rig boots it with the `-drive` README's "Giving a VM a disk" shows):
//! the guest makes ext4, writes files with known checksums, syncs and powers
//! off; after detach, another machine attaches the volume from the store
//! alone and a second guest finds fsck clean and every file intact.

use std::path::Path;
use std::process::Command;

use spritedisk_e2e::*;

const GUEST_WRITES: &str = r#"set -eu
mkdir -p /tmp/m
mkfs.ext4 -q -F /dev/vda
mount /dev/vda /tmp/m
mkdir /tmp/m/files
for i in $(seq 1 40); do head -c $(( (i * 7919) % 500000 + 1 )) /dev/urandom > /tmp/m/files/f$i; done
head -c 16M /dev/urandom > /tmp/m/big
(cd /tmp/m && sha256sum files/* big) > "$SPRITEDISK_CTL/sums"
sync
umount /tmp/m
echo "guest wrote $(wc -l < "$SPRITEDISK_CTL/sums") files"
"#;

const GUEST_CHECKS: &str = r#"set -eu
mkdir -p /tmp/m
fsck.ext4 -n -f /dev/vda
mount /dev/vda /tmp/m
cd /tmp/m && sha256sum --quiet -c "$SPRITEDISK_CTL/sums"
echo "guest checked $(wc -l < "$SPRITEDISK_CTL/sums") files"
"#;

/// Boots a guest (the VM rig) whose /dev/vda is the daemon's NBD socket and
/// runs `script` in it; `ctl` is shared with it at the same path.
fn boot(d: &Daemon, ctl: &Path, script: &str) -> String {
    let file = ctl.join("script.sh");
    std::fs::write(&file, script).unwrap();
    let drive = format!(
        "file=nbd+unix:///?socket={},format=raw,if=virtio,cache=none",
        d.sock.display()
    );
    let o = Command::new(vm_runner())
        .args(["--mem", "1G", "--timeout", "600", "--drive", &drive, "--rw"])
        .arg(ctl)
        .args(["--", "bash"])
        .arg(&file)
        .env("SPRITEDISK_CTL", ctl)
        .current_dir(repo_root())
        .output()
        .expect("run the VM rig");
    let console = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "guest failed ({}):\n{console}\n{}\ndaemon log:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        d.log()
    );
    console
}

#[test]
fn a_qemu_guest_on_an_nbd_volume_keeps_its_files_on_another_machine() {
    let env = Env::new();
    let url = env.create("vol", "2G");
    let ctl = env.path("ctl");
    std::fs::create_dir_all(&ctl).unwrap();

    let d = Daemon::attach(&url, &env.sock(), &env.path("cache"), &[]);
    let console = boot(&d, &ctl, GUEST_WRITES);
    assert!(console.contains("guest wrote 41 files"), "{console}");
    assert_eq!(d.detach(), 0);

    let d = env.attach_copy_elsewhere("vol");
    let console = boot(&d, &ctl, GUEST_CHECKS);
    assert!(console.contains("guest checked 41 files"), "{console}");
    assert_eq!(d.detach(), 0);
}
