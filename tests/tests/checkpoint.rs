//! Checkpoint and restore with a real client (qemu-io over NBD): online
//! through the daemon's control socket, offline on a detached volume, and
//! on a fresh machine from the store alone.

use spritedisk_e2e::*;

fn ok(args: &[&str]) -> String {
    let o = spritedisk(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn write_a_checkpoint_write_b_restore_reads_a() {
    require("qemu-io", "qemu-utils");
    let env = Env::new();
    let url = env.create("vol", "1G");
    let cache = env.path("cache");
    let c = cache.to_str().unwrap();
    let d = Daemon::attach(&url, &env.sock(), &cache, &[]);
    qemu_io(&d, &["write -P 0xaa 0 1M", "write -P 0xa1 100M 64k"]);

    // Online: the daemon takes it through its control socket.
    let out = ok(&["checkpoint", &url, "a", "--cache-dir", c]);
    assert!(
        out.contains("checkpoint a of") && out.contains("durable"),
        "{out}"
    );
    qemu_io(
        &d,
        &["write -P 0xbb 0 512k", "write -P 0xb2 200M 64k", "flush"],
    );
    qemu_io(&d, &["read -P 0xbb 0 512k"]);
    ok(&["restore", &url, "a", "--cache-dir", c]);
    qemu_io(
        &d,
        &[
            "read -P 0xaa 0 1M",
            "read -P 0xa1 100M 64k",
            "read -P 0 200M 64k",
        ],
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(&["checkpoints", &url, "--json", "--cache-dir", c])).unwrap();
    assert_eq!(list[0]["name"], "a");
    assert!(d.log().contains("restored"), "{}", d.log());
    assert_eq!(d.detach(), 0);

    // Offline: a detached volume takes checkpoints and restores too.
    let out = ok(&["checkpoint", &url, "--cache-dir", c]);
    assert!(out.contains("checkpoint v2 of"), "auto-named: {out}");
    let d = Daemon::attach(&url, &env.sock(), &cache, &[]);
    qemu_io(&d, &["write -P 0xcc 0 1M", "flush"]);
    assert_eq!(d.detach(), 0);
    ok(&["restore", &url, "v2", "--cache-dir", c]);
    // `stats` from a machine with no local state sees the restored map (it
    // reads the replica; segments alone would show the overwritten one).
    let list: serde_json::Value =
        serde_json::from_str(&ok(&["checkpoints", &url, "--json", "--cache-dir", c])).unwrap();
    let nowhere = env.path("nowhere");
    let st: serde_json::Value = serde_json::from_str(&ok(&[
        "stats",
        &url,
        "--json",
        "--cache-dir",
        nowhere.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(st["durable"]["extents"], list[1]["extents"], "{st:#}");

    // A fresh machine: the store alone holds the checkpoints and the restore.
    let d = env.attach_copy_elsewhere("vol");
    qemu_io(&d, &["read -P 0xaa 0 1M", "read -P 0 200M 64k"]);
    assert_eq!(d.detach(), 0);
    let copy = env.url("vol-copy");
    let out = ok(&[
        "checkpoints",
        &copy,
        "--cache-dir",
        env.path("cache-elsewhere").to_str().unwrap(),
    ]);
    assert!(out.contains("a ") && out.contains("v2 "), "{out}");

    // Bad names are refused by name.
    let o = spritedisk(&["restore", &url, "nope", "--cache-dir", c]);
    assert!(
        !o.status.success() && stderr(&o).contains("no checkpoint named \"nope\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn fork_and_gc_through_the_cli() {
    require("qemu-io", "qemu-utils");
    let env = Env::new();
    let url = env.create("parent", "1G");
    let pcache = env.path("pcache");
    let pc = pcache.to_str().unwrap();
    let parent = Daemon::attach(&url, &env.sock(), &pcache, &[]);
    qemu_io(&parent, &["write -P 0xaa 0 1M", "write -P 0xa1 100M 64k"]);
    ok(&["checkpoint", &url, "base", "--cache-dir", pc]);
    qemu_io(&parent, &["write -P 0xbb 0 1M", "flush"]);

    // A fork of the checkpoint, from its own daemon: the checkpoint's
    // content, then its own writes; the parent is unaffected.
    let child_url = env.url("child");
    let ccache = env.path("ccache");
    let out = ok(&[
        "fork",
        &format!("{url}@base"),
        &child_url,
        "--cache-dir",
        ccache.to_str().unwrap(),
    ]);
    assert!(out.contains("no data copied"), "{out}");
    let child = Daemon::attach(&child_url, &env.path("child.sock"), &ccache, &[]);
    qemu_io(&child, &["read -P 0xaa 0 1M", "read -P 0xa1 100M 64k"]);
    qemu_io(&child, &["write -P 0xcc 0 512k", "flush"]);
    qemu_io(&child, &["read -P 0xcc 0 512k", "read -P 0xaa 512k 512k"]);
    qemu_io(&parent, &["read -P 0xbb 0 1M"]);

    // The parent keeps the fork's base, and its gc keeps what the fork reads.
    let o = spritedisk(&["delete-checkpoint", &url, "base", "--cache-dir", pc]);
    assert!(
        !o.status.success() && stderr(&o).contains("base of the fork"),
        "{}",
        stderr(&o)
    );
    let out = ok(&["gc", &url, "--dry-run", "--cache-dir", pc]);
    assert!(out.contains(" would: "), "{out}");
    let out = ok(&["gc", &url, "--cache-dir", pc]);
    assert!(out.contains(" did: "), "{out}");
    qemu_io(&child, &["read -P 0xcc 0 512k", "read -P 0xaa 512k 512k"]);
    assert_eq!(child.detach(), 0);
    assert_eq!(parent.detach(), 0);

    // The fork on a machine with no local state.
    let elsewhere = env.path("child-elsewhere");
    let child = Daemon::attach(&child_url, &env.path("child.sock"), &elsewhere, &[]);
    qemu_io(
        &child,
        &[
            "read -P 0xcc 0 512k",
            "read -P 0xaa 512k 512k",
            "read -P 0xa1 100M 64k",
        ],
    );
    assert_eq!(child.detach(), 0);
    let o = spritedisk(&["fork", &url, &env.url("other")]);
    assert!(
        !o.status.success() && stderr(&o).contains("URL@CHECKPOINT"),
        "{}",
        stderr(&o)
    );
}

/// Every object under `url` (file:// or s3://).
fn objects(url: &str) -> Vec<String> {
    with_store(url, |s| async move {
        s.list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect()
    })
}

/// `spritedisk rm`: refused while attached (naming the holder) and while a
/// fork reads the volume (naming it); removing the fork releases its pin,
/// the parent's checkpoint can then be deleted, and removing the parent
/// leaves nothing: no object, and on file:// no directory.
#[test]
fn rm_removes_a_fork_then_its_parent_and_leaves_nothing() {
    require("qemu-io", "qemu-utils");
    let env = Env::new();
    let url = env.create("parent", "64M");
    let pcache = env.path("pcache");
    let pc = pcache.to_str().unwrap();
    let parent = Daemon::attach(&url, &env.sock(), &pcache, &[]);
    qemu_io(&parent, &["write -P 0xaa 0 1M", "flush"]);
    ok(&["checkpoint", &url, "base", "--cache-dir", pc]);
    let o = spritedisk(&["rm", &url]);
    assert!(
        !o.status.success() && stderr(&o).contains("is attached by host"),
        "rm of an attached volume is refused, naming the holder: {}",
        stderr(&o)
    );
    assert_eq!(parent.detach(), 0);

    let child_url = env.url("child");
    let ccache = env.path("ccache");
    ok(&[
        "fork",
        &format!("{url}@base"),
        &child_url,
        "--cache-dir",
        ccache.to_str().unwrap(),
    ]);
    let o = spritedisk(&["rm", &url]);
    assert!(
        !o.status.success() && stderr(&o).contains(&child_url),
        "rm of a parent names its fork: {}",
        stderr(&o)
    );
    let out = ok(&["rm", &child_url]);
    assert!(
        out.contains(&format!("released its fork pin in {url}")),
        "{out}"
    );
    assert_eq!(objects(&child_url), Vec::<String>::new());

    ok(&["delete-checkpoint", &url, "base", "--cache-dir", pc]);
    let out = ok(&["rm", &url]);
    assert!(out.contains("objects deleted"), "{out}");
    assert_eq!(objects(&url), Vec::<String>::new(), "rm left objects");
    if !url.starts_with("s3://") {
        assert!(
            !env.path("parent").exists(),
            "rm left the volume's directory"
        );
    }
    // The URL is free for a new volume.
    env.create("parent", "64M");
}

/// M11 of the 5bc5be0 review through the CLI: a segment only a checkpoint
/// references is lost; `verify` fails and names the checkpoint (it used
/// to check the live map only and report nothing).
#[test]
fn verify_names_the_checkpoint_a_lost_segment_belongs_to() {
    require("qemu-io", "qemu-utils");
    let env = Env::new();
    let url = env.create("vol", "64M");
    let cache = env.path("cache");
    let cc = cache.to_str().unwrap();
    let d = Daemon::attach(&url, &env.sock(), &cache, &[]);
    qemu_io(&d, &["write -P 0xaa 0 64k", "flush"]);
    ok(&["checkpoint", &url, "before", "--cache-dir", cc]);
    qemu_io(&d, &["write -P 0xbb 0 64k", "flush"]);
    assert_eq!(d.detach(), 0);
    // The first data segment (the one after the first attach's fence)
    // holds 0xaa, which only "before" still maps.
    let key = "segments/00000000000000000065.seg";
    with_store(&url, move |s| async move { s.delete(key).await.unwrap() });
    let o = spritedisk(&["verify", &url, "--cache-dir", cc]);
    assert!(!o.status.success(), "verify must fail: {}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "{key}: missing, but checkpoint \"before\" references it"
        )),
        "{out}"
    );
}
