//! Device lifecycle: add (or recover) a ublk device sized like the volume,
//! serve it until it is stopped, delete it.

use std::path::Path;
use std::sync::Arc;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::UblkFlags;
use spritedisk_volume::BlockIo;

use crate::queue::run_queue;
use crate::UblkTargetError;

pub const DRIVER_MISSING: &str =
    "ublk driver not loaded: modprobe ublk_drv (Linux >= 6.0 with CONFIG_BLK_DEV_UBLK), or use --nbd SOCKET";
const CONTROL_DEV: &str = "/dev/ublk-control";
/// Largest single request the kernel sends us (also each tag's buffer size).
pub const IO_BUF_BYTES_DEFAULT: u32 = 1 << 20;
/// Largest discard / write-zeroes the kernel sends in one request: 1 GiB in sectors.
const DISCARD_SECTORS_MAX: u32 = 1 << 21;

#[derive(Debug, Clone)]
pub struct UblkOptions {
    pub queues: u16,
    pub depth: u16,
    pub io_buf_bytes: u32,
    /// Re-attach to the existing device with this id after its daemon died
    /// (UBLK_F_USER_RECOVERY), instead of adding a new one.
    pub recover_dev_id: Option<u32>,
}

impl Default for UblkOptions {
    fn default() -> Self {
        UblkOptions {
            queues: std::thread::available_parallelism().map_or(1, |n| n.get() as u16),
            depth: 64,
            io_buf_bytes: IO_BUF_BYTES_DEFAULT,
            recover_dev_id: None,
        }
    }
}

pub fn driver_loaded() -> bool {
    Path::new(CONTROL_DEV).exists()
}

/// Adds (or recovers) the device, calls `on_live(dev_id, "/dev/ublkbN")` once
/// it serves I/O, and serves until [`kill_device`] stops it; then deletes it
/// and returns its id. Blocks the calling thread.
pub fn serve<D: BlockIo>(
    engine: Arc<D>,
    rt: tokio::runtime::Handle,
    opts: &UblkOptions,
    on_live: impl FnOnce(u32, String) + Send + Sync + 'static,
) -> Result<u32, UblkTargetError> {
    if !driver_loaded() {
        return Err(UblkTargetError::DriverMissing(DRIVER_MISSING));
    }
    if opts.queues == 0 || opts.depth == 0 {
        return Err(UblkTargetError::BadOption(
            "queues and queue depth must be at least 1".into(),
        ));
    }
    if engine.block_size() != 4096 {
        return Err(UblkTargetError::BadOption(format!(
            "block size {} is not 4096",
            engine.block_size()
        )));
    }
    let (id, dev_flags) = match opts.recover_dev_id {
        Some(id) => (id as i32, UblkFlags::UBLK_DEV_F_RECOVER_DEV),
        None => (-1, UblkFlags::UBLK_DEV_F_ADD_DEV),
    };
    let ctrl = UblkCtrlBuilder::default()
        .name("spritedisk")
        .id(id)
        .nr_queues(opts.queues)
        .depth(opts.depth)
        .io_buf_bytes(opts.io_buf_bytes)
        // REISSUE: requests the dead daemon had taken are given to the new
        // one instead of failing with EIO. Re-running a write or a discard
        // is harmless here (same data, same blocks), and a filesystem on the
        // device never sees an error from a daemon restart.
        .ctrl_flags(
            (libublk::sys::UBLK_F_USER_RECOVERY | libublk::sys::UBLK_F_USER_RECOVERY_REISSUE)
                as u64,
        )
        .dev_flags(dev_flags)
        .build()
        .map_err(UblkTargetError::ublk(if opts.recover_dev_id.is_some() {
            "recover device"
        } else {
            "add device"
        }))?;
    if opts.recover_dev_id.is_some() {
        // The kernel holds the device's queued I/O until a new daemon ends
        // the recovery (START_DEV does that once the queues are set up).
        ctrl.start_user_recover()
            .map_err(UblkTargetError::ublk("start recovery"))?;
    }
    let size = engine.size_bytes();
    let tgt_init = move |dev: &mut UblkDev| {
        set_params(dev, size);
        Ok(())
    };
    let q_fn = move |qid: u16, dev: &UblkDev| run_queue(qid, dev, engine.clone(), rt.clone());
    ctrl.run_target(tgt_init, q_fn, move |ctrl: &UblkCtrl| {
        on_live(ctrl.dev_info().dev_id, ctrl.get_bdev_path())
    })
    .map_err(UblkTargetError::ublk("run device"))?;
    let dev_id = ctrl.dev_info().dev_id;
    // Stopped: remove it so no /dev/ublkbN or /dev/ublkcN is left behind.
    if let Err(e) = ctrl.del_dev() {
        tracing::debug!(dev_id, error = %e, "delete after stop (already gone?)");
    }
    Ok(dev_id)
}

/// 4 KiB logical blocks (the engine's block size: no read-modify-write
/// anywhere), a volatile write cache with FUA (so the kernel sends FLUSH and
/// FUA, which is when writes become durable), discard and write-zeroes.
fn set_params(dev: &mut UblkDev, size: u64) {
    dev.set_default_params(size);
    let p = &mut dev.tgt.params;
    p.types |= libublk::sys::UBLK_PARAM_TYPE_DISCARD;
    p.basic.attrs = libublk::sys::UBLK_ATTR_VOLATILE_CACHE | libublk::sys::UBLK_ATTR_FUA;
    p.basic.logical_bs_shift = 12;
    p.basic.physical_bs_shift = 12;
    p.basic.io_min_shift = 12;
    p.basic.io_opt_shift = 20;
    p.discard = libublk::sys::ublk_param_discard {
        discard_alignment: 0,
        discard_granularity: 4096,
        max_discard_sectors: DISCARD_SECTORS_MAX,
        max_write_zeroes_sectors: DISCARD_SECTORS_MAX,
        max_discard_segments: 1,
        reserved0: 0,
    };
}

/// Stops device `dev_id` (from any thread or process): its queues end and
/// the daemon serving it returns from [`serve`].
pub fn kill_device(dev_id: u32) -> Result<(), UblkTargetError> {
    let ctrl = UblkCtrl::new_simple(dev_id as i32).map_err(UblkTargetError::ublk("open device"))?;
    ctrl.kill_dev()
        .map_err(UblkTargetError::ublk("stop device"))?;
    Ok(())
}

/// Deletes device `dev_id` whose daemon is gone (after a crash, when the
/// user detaches instead of recovering).
pub fn remove_device(dev_id: u32) -> Result<(), UblkTargetError> {
    let ctrl = UblkCtrl::new_simple(dev_id as i32).map_err(UblkTargetError::ublk("open device"))?;
    ctrl.del_dev()
        .map_err(UblkTargetError::ublk("delete device"))?;
    Ok(())
}
