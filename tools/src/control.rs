//! The control socket of an attached volume (`CACHE_DIR/control.sock`):
//! `checkpoint`, `checkpoints`, `restore`, `delete-checkpoint` and `gc` reach the
//! daemon that holds the volume through it. One JSON request per line, one
//! JSON reply per line: `{"ok": ...}` or `{"error": "..."}`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use spritedisk_volume::{CheckpointRow, Volume};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const SOCKET: &str = "control.sock";

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
    let listener = UnixListener::bind(&path)?;
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
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
    let mut line = String::new();
    BufReader::new(rd).read_line(&mut line).await?;
    let req: Value = serde_json::from_str(&line)?;
    let name = req["name"].as_str();
    let reply = match (req["op"].as_str(), name) {
        (Some("checkpoint"), name) => volume.checkpoint(name).await.map(|c| row_json(&c)),
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

/// Sends a request to the daemon serving `cache_dir`; None when no daemon
/// listens there (the volume is detached, or attached elsewhere).
pub async fn call(cache_dir: &Path, req: Value) -> Result<Option<Value>> {
    let conn = match UnixStream::connect(socket_path(cache_dir)).await {
        Ok(c) => c,
        Err(_) => return Ok(None),
    };
    let (rd, mut wr) = conn.into_split();
    wr.write_all(format!("{req}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(rd).read_line(&mut line).await?;
    let reply: Value = serde_json::from_str(&line)?;
    if let Some(e) = reply["error"].as_str() {
        bail!("{e}");
    }
    Ok(Some(reply["ok"].clone()))
}
