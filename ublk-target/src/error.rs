#[derive(Debug, thiserror::Error)]
pub enum UblkTargetError {
    #[error("{0}")]
    DriverMissing(&'static str),
    #[error("ublk {op}: {source}")]
    Ublk {
        op: &'static str,
        #[source]
        source: libublk::UblkError,
    },
    #[error("invalid ublk option: {0}")]
    BadOption(String),
}

impl UblkTargetError {
    pub(crate) fn ublk(op: &'static str) -> impl FnOnce(libublk::UblkError) -> Self {
        move |source| UblkTargetError::Ublk { op, source }
    }
}
