//! Fixed newstyle option haggling, up to the start of transmission.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::proto::*;
use crate::NbdError;

/// What the handshake offers: one export.
#[derive(Debug, Clone)]
pub(crate) struct Export {
    pub name: String,
    pub size_bytes: u64,
    pub block_size: u32,
}

/// How option haggling ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Enter the transmission phase.
    Transmission,
    /// The client sent NBD_OPT_ABORT (or hung up): close without transmitting.
    Closed,
}

/// Runs the handshake on `stream`. Errors are protocol violations or I/O
/// failures; the caller drops the connection on any of them.
pub(crate) async fn negotiate<S>(stream: &mut S, export: &Export) -> Result<Outcome, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(&encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        .await?;
    stream.flush().await?;

    let client_flags = stream.read_u32().await?;
    if client_flags & !CLIENT_FLAGS_KNOWN != 0 {
        return Err(NbdError::UnknownClientFlags(client_flags));
    }
    // Clients that omit C_FIXED_NEWSTYLE still get fixed newstyle replies
    // (the spec allows it); only NO_ZEROES changes what we send.
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;

    loop {
        let mut hdr = [0u8; OPTION_HEADER_LEN_BYTES];
        match stream.read_exact(&mut hdr).await {
            Ok(_) => {}
            // Hanging up between options is a (rude) way to end haggling.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Outcome::Closed),
            Err(e) => return Err(e.into()),
        }
        let hdr = OptionHeader::decode(&hdr);
        if hdr.magic != IHAVEOPT_MAGIC {
            return Err(NbdError::BadOptionMagic(hdr.magic));
        }
        debug!(option = hdr.option, len = hdr.len, "nbd option");

        if hdr.len > OPTION_DATA_LEN_MAX_BYTES {
            if hdr.option == OPT_EXPORT_NAME {
                // EXPORT_NAME has no error reply: closing is the only answer.
                return Err(NbdError::ExportNameTooLong(hdr.len));
            }
            // Skip the payload without buffering it, so haggling can go on.
            discard(stream, u64::from(hdr.len)).await?;
            send_reply(
                stream,
                hdr.option,
                REP_ERR_TOO_BIG,
                b"option data too large",
            )
            .await?;
            continue;
        }
        let mut data = vec![0u8; hdr.len as usize];
        stream.read_exact(&mut data).await?;

        match hdr.option {
            OPT_EXPORT_NAME => {
                if !name_matches(&data, export) {
                    return Err(NbdError::UnknownExport(
                        String::from_utf8_lossy(&data).into_owned(),
                    ));
                }
                let mut out = Vec::with_capacity(10 + EXPORT_NAME_ZEROES_LEN_BYTES);
                out.extend_from_slice(&export.size_bytes.to_be_bytes());
                out.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0u8; EXPORT_NAME_ZEROES_LEN_BYTES]);
                }
                stream.write_all(&out).await?;
                stream.flush().await?;
                return Ok(Outcome::Transmission);
            }
            OPT_ABORT => {
                // The client may already be gone; a failed ACK is not an error.
                let _ = send_reply(stream, hdr.option, REP_ACK, &[]).await;
                return Ok(Outcome::Closed);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    send_reply(
                        stream,
                        hdr.option,
                        REP_ERR_INVALID,
                        b"NBD_OPT_LIST takes no data",
                    )
                    .await?;
                    continue;
                }
                let mut out = Vec::new();
                let mut server = Vec::with_capacity(4 + export.name.len());
                server.extend_from_slice(&(export.name.len() as u32).to_be_bytes());
                server.extend_from_slice(export.name.as_bytes());
                encode_option_reply(&mut out, hdr.option, REP_SERVER, &server);
                encode_option_reply(&mut out, hdr.option, REP_ACK, &[]);
                stream.write_all(&out).await?;
                stream.flush().await?;
            }
            OPT_INFO | OPT_GO => {
                let Some(req) = InfoRequest::decode(&data) else {
                    send_reply(
                        stream,
                        hdr.option,
                        REP_ERR_INVALID,
                        b"malformed info request",
                    )
                    .await?;
                    continue;
                };
                if !name_matches(&req.name, export) {
                    send_reply(stream, hdr.option, REP_ERR_UNKNOWN, b"no such export").await?;
                    continue;
                }
                stream
                    .write_all(&info_replies(hdr.option, &req, export))
                    .await?;
                stream.flush().await?;
                if hdr.option == OPT_GO {
                    return Ok(Outcome::Transmission);
                }
            }
            // STARTTLS, STRUCTURED_REPLY, META_CONTEXT and anything unknown:
            // we only do plain simple replies.
            _ => {
                send_reply(stream, hdr.option, REP_ERR_UNSUP, b"option not supported").await?;
            }
        }
    }
}

/// The empty name selects the default (our only) export.
fn name_matches(name: &[u8], export: &Export) -> bool {
    name.is_empty() || name == export.name.as_bytes()
}

/// NBD_REP_INFO replies for INFO/GO, then the final ACK. EXPORT and
/// BLOCK_SIZE are always sent: the engine rejects I/O below its block size,
/// so clients must learn it even if they did not ask.
fn info_replies(option: u32, req: &InfoRequest, export: &Export) -> Vec<u8> {
    let mut out = Vec::new();
    encode_option_reply(
        &mut out,
        option,
        REP_INFO,
        &encode_info_export(export.size_bytes, TRANSMISSION_FLAGS),
    );
    let preferred = BLOCK_SIZE_PREFERRED_BYTES.max(export.block_size);
    encode_option_reply(
        &mut out,
        option,
        REP_INFO,
        &encode_info_block_size(export.block_size, preferred, REQUEST_LEN_MAX_BYTES),
    );
    if req.info_types.contains(&INFO_NAME) {
        let mut name = Vec::with_capacity(2 + export.name.len());
        name.extend_from_slice(&INFO_NAME.to_be_bytes());
        name.extend_from_slice(export.name.as_bytes());
        encode_option_reply(&mut out, option, REP_INFO, &name);
    }
    encode_option_reply(&mut out, option, REP_ACK, &[]);
    out
}

async fn send_reply<S>(
    stream: &mut S,
    option: u32,
    reply_type: u32,
    payload: &[u8],
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(OPTION_REPLY_HEADER_LEN_BYTES + payload.len());
    encode_option_reply(&mut out, option, reply_type, payload);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Reads and drops `len` bytes with a fixed-size buffer.
pub(crate) async fn discard<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> std::io::Result<()> {
    let copied = tokio::io::copy(&mut r.take(len), &mut tokio::io::sink()).await?;
    if copied != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}
