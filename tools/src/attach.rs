//! `spritedisk attach`: open the volume, serve it, flush and exit on SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use spritedisk_nbd::{Limits, NbdServer};
use spritedisk_volume::Volume;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::cli::{default_cache_dir, AttachArgs};

pub async fn attach(args: AttachArgs) -> Result<i32> {
    if args.pool {
        return crate::pool::attach(args).await;
    }
    if args.nbd.is_none() && args.nbd_tcp.is_none() {
        return crate::ublk::attach(args).await;
    }
    let opts = args.engine_options()?;
    let url = args.url.clone();
    let store = args.open_store()?;
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&url));
    let t0 = Instant::now();
    let volume = Volume::open(store, &url, Some(&cache_dir), opts).await?;
    let stats = volume.stats()?;
    tracing::info!(
        url,
        cache_dir = %cache_dir.display(),
        segments = stats.segments,
        extents = stats.extents,
        open_ms = t0.elapsed().as_millis() as u64,
        "volume attached"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = Limits {
        connections_max: args.nbd_max_connections.into(),
        ..Limits::default()
    };
    let server = Arc::new(NbdServer::with_limits(
        Arc::new(volume.clone()),
        String::new(),
        limits,
    ));
    let serving = match (&args.nbd, args.nbd_tcp) {
        (Some(path), _) => {
            let path = path.clone();
            let desc = format!("nbd+unix:///?socket={}", path.display());
            let server = server.clone();
            (
                tokio::spawn(async move { server.serve_unix(&path, stop_rx).await }),
                desc,
            )
        }
        (None, Some(addr)) => {
            let desc = format!("nbd://{addr}");
            let server = server.clone();
            (
                tokio::spawn(async move { server.serve_tcp(addr, stop_rx).await }),
                desc,
            )
        }
        (None, None) => unreachable!("checked above"),
    };
    let (mut task, desc) = serving;
    // Scripts wait for this line: the socket is accepting once it is printed.
    tokio::select! {
        _ = server.listening() => {}
        res = &mut task => return server_stopped(&volume, res).await,
    }
    println!(
        "attached {url} at {desc} (ready in {} ms; {} extents, {} segments)",
        t0.elapsed().as_millis(),
        stats.extents,
        stats.segments
    );
    let _publisher = crate::inspect::publish_stats(volume.clone(), cache_dir.clone());
    let _control = crate::control::serve(volume.clone(), &cache_dir)?;

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: flushing and detaching"),
        _ = int.recv() => tracing::info!("SIGINT: flushing and detaching"),
        res = &mut task => return server_stopped(&volume, res).await,
    }
    let _ = stop_tx.send(true);
    match volume.close().await {
        Ok(()) => {
            let st = volume.stats()?;
            println!(
                "detached {url}: everything written is durable ({} segments, applied up to {})",
                st.segments, st.applied_seq
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: detach could not flush {url}: {e}; unflushed writes since the last successful FLUSH are lost");
            Ok(1)
        }
    }
}

/// The listener ended on its own: that is an error (socket removed, bind
/// failed); what was written is flushed first.
async fn server_stopped(
    volume: &Volume,
    res: Result<Result<(), spritedisk_nbd::NbdError>, tokio::task::JoinError>,
) -> Result<i32> {
    volume
        .close()
        .await
        .context("flushing after the server stopped")?;
    match res {
        Ok(Ok(())) => Ok(0),
        Ok(Err(e)) => Err(e).context("NBD server"),
        Err(e) => Err(e).context("NBD server task"),
    }
}
