//! The control socket of an attached volume (`CACHE_DIR/control.sock`):
//! `checkpoint`, `checkpoints`, `restore`, `delete-checkpoint` and `gc` reach the
//! daemon that holds the volume through it. One JSON request per line, one
//! JSON reply per line: `{"ok": ...}` or `{"error": "..."}`, after progress
//! lines where a step matters to the caller (`{"taken": ...}` for a
//! checkpoint under `--freeze`). The socket is 0600 and answers only root
//! and the daemon's user (docs/design/0017).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

use spritedisk_volume::{CheckpointRow, Deadline, Volume, VolumeError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const SOCKET: &str = "control.sock";
/// Why a daemon may close a connection unanswered (docs/design/0017).
const PEER_HINT: &str = "a daemon answers only root and its own user: see its log";
/// What a client may send on one connection (review M9): a request is a
/// few hundred bytes; a longer line is cut there and fails to parse.
pub const REQUEST_LINE_BYTES_MAX: u64 = 64 * 1024;

pub fn socket_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join(SOCKET)
}

pub fn row_json(c: &CheckpointRow) -> Value {
    json!({
        "name": c.name,
        "created_unix": c.created_unix,
        "client_bytes_written": c.client_bytes_written,
        "applied_seq": c.applied_seq,
        "extents": c.extents,
        "version": c.version,
        "unique_bytes": c.unique_bytes,
    })
}

pub fn row_from_json(v: &Value) -> Result<CheckpointRow> {
    Ok(CheckpointRow {
        name: v["name"].as_str().unwrap_or_default().to_string(),
        created_unix: v["created_unix"].as_i64().unwrap_or(0),
        client_bytes_written: v["client_bytes_written"].as_u64().unwrap_or(0),
        applied_seq: v["applied_seq"].as_u64().unwrap_or(0),
        extents: v["extents"].as_u64().unwrap_or(0),
        version: v["version"].as_u64().unwrap_or(0),
        unique_bytes: v["unique_bytes"].as_u64().unwrap_or(0),
    })
}

/// Serves the control socket until the returned guard is dropped (detach).
pub fn serve(volume: Volume, cache_dir: &Path) -> Result<ControlServer> {
    let path = socket_path(cache_dir);
    let _ = std::fs::remove_file(&path);
    let listener = spritedisk_nbd::local_socket::bind_private(&path)
        .with_context(|| format!("listening on {}", path.display()))?;
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            if let Err(why) = spritedisk_nbd::local_socket::check_peer(&conn) {
                tracing::warn!("control socket: {why}");
                continue;
            }
            let v = volume.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(v, conn).await {
                    tracing::debug!(error = %e, "control connection");
                }
            });
        }
    });
    Ok(ControlServer { task, path })
}

pub struct ControlServer {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn answer(volume: Volume, conn: UnixStream) -> Result<()> {
    let (rd, mut wr) = conn.into_split();
    let mut rd = BufReader::new(rd.take(REQUEST_LINE_BYTES_MAX));
    let mut line = String::new();
    rd.read_line(&mut line).await?;
    let req: Value = serde_json::from_str(&line)?;
    let name = req["name"].as_str();
    let reply = match (req["op"].as_str(), name) {
        (Some("checkpoint"), name) => match req["not_after_unix_ms"].as_u64() {
            None => volume.checkpoint(name).await.map(|c| row_json(&c)),
            // `checkpoint --freeze`: the map is taken before the moment
            // it thaws the filesystem, or not at all; it thaws as soon as
            // it reads the "taken" line (the metadata upload needs no
            // freeze). A "cancel" line (or hanging up) before that cancels.
            Some(ms) => {
                let deadline = Deadline::at(UNIX_EPOCH + Duration::from_millis(ms));
                let take = volume.take_checkpoint(name, Some(deadline.clone()));
                tokio::pin!(take);
                let mut cancel = String::new();
                let taken = tokio::select! {
                    r = &mut take => r,
                    _ = rd.read_line(&mut cancel) => match deadline.cancel() {
                        true => Err(VolumeError::CheckpointCancelled),
                        false => take.await,
                    },
                };
                match taken {
                    Ok((row, _)) => {
                        let taken = json!({ "taken": row_json(&row) });
                        wr.write_all(format!("{taken}\n").as_bytes()).await?;
                        volume.sync_metadata().await.map(|_| row_json(&row))
                    }
                    Err(e) => Err(e),
                }
            }
        },
        (Some("restore"), Some(name)) => volume.restore(name).await.map(|c| row_json(&c)),
        (Some("delete-checkpoint"), Some(name)) => {
            volume.delete_checkpoint(name).await.map(|_| json!(null))
        }
        (Some("gc"), _) => volume
            .gc(&spritedisk_volume::GcOptions {
                dry_run: req["dry_run"].as_bool().unwrap_or(true),
                compact_below_percent: req["compact_below_percent"].as_u64().unwrap_or(0),
            })
            .await
            .map(|r| serde_json::to_value(r).expect("serializes")),
        (Some("checkpoints"), _) => volume
            .checkpoints()
            .map(|cs| Value::Array(cs.iter().map(row_json).collect())),
        _ => Ok(json!({ "unknown request": req })),
    };
    let out = match reply {
        Ok(v) => json!({ "ok": v }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    wr.write_all(format!("{out}\n").as_bytes()).await?;
    Ok(())
}

/// A request in flight whose daemon may answer with progress lines
/// (`{"taken": …}`) before the final `{"ok": …}` or `{"error": …}`.
pub struct Conversation {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    wr: tokio::net::unix::OwnedWriteHalf,
}

/// One line of a [`Conversation`]: a progress report or the final answer.
pub enum Answer {
    Progress(String, Value),
    Done(Value),
}

/// Sends `req` to the daemon serving `cache_dir`; None when no daemon listens.
pub async fn start(cache_dir: &Path, req: Value) -> Result<Option<Conversation>> {
    let path = socket_path(cache_dir);
    let conn = match UnixStream::connect(&path).await {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "{}: permission denied: the daemon serving this volume runs as another user and \
             answers only root and that user (docs/design/0017)",
            path.display()
        ),
        Err(_) => return Ok(None),
    };
    let (rd, mut wr) = conn.into_split();
    wr.write_all(format!("{req}\n").as_bytes())
        .await
        .with_context(|| {
            format!(
                "{}: the daemon closed the connection at once ({PEER_HINT})",
                path.display()
            )
        })?;
    Ok(Some(Conversation {
        lines: BufReader::new(rd).lines(),
        wr,
    }))
}

impl Conversation {
    /// Asks the daemon to drop the request if it still can; its next line
    /// says whether it did.
    pub async fn cancel(&mut self) -> Result<()> {
        self.wr.write_all(b"cancel\n").await?;
        Ok(())
    }

    /// The next line; an `{"error": …}` line is an error.
    pub async fn next(&mut self) -> Result<Answer> {
        let line = self
            .lines
            .next_line()
            .await
            .map_err(|e| match e.kind() {
                // A daemon that refuses a peer closes before reading.
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                    anyhow::Error::from(e)
                        .context(format!("the daemon closed the connection ({PEER_HINT})"))
                }
                _ => e.into(),
            })?
            .with_context(|| {
                format!("the daemon closed the connection without an answer ({PEER_HINT})")
            })?;
        let v: Value = serde_json::from_str(&line)?;
        let Value::Object(map) = v else {
            bail!("the daemon answered {line:?}");
        };
        match map.into_iter().next() {
            Some((k, v)) if k == "error" => bail!("{}", v.as_str().unwrap_or_default()),
            Some((k, v)) if k == "ok" => Ok(Answer::Done(v)),
            Some((k, v)) => Ok(Answer::Progress(k, v)),
            None => bail!("the daemon answered {line:?}"),
        }
    }
}

/// Sends a request to the daemon serving `cache_dir`; None when no daemon
/// listens there (the volume is detached, or attached elsewhere).
pub async fn call(cache_dir: &Path, req: Value) -> Result<Option<Value>> {
    let Some(mut conv) = start(cache_dir, req).await? else {
        return Ok(None);
    };
    loop {
        if let Answer::Done(v) = conv.next().await? {
            return Ok(Some(v));
        }
    }
}
