//! The client's request body as it arrives: framing, timeouts, the minimum rate, and what
//! a failure of it answers.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::engine::chunked::Chunked;
use crate::engine::codec::Framing;
use crate::engine::{Client, ClientIo};
use crate::proxy::ctx::LocalFailure;

/// Why a request body could not be read.
#[derive(Debug)]
pub(super) enum BodyError {
    /// The client went away or reset.
    Gone,
    /// The client sent nothing for `body_read_timeout`.
    Timeout,
    /// The body fell behind `min_body_rate` by more than the slack.
    TooSlow,
    /// The body's framing is broken.
    Malformed(&'static str),
}

/// The part of the request body still to come from the client.
#[derive(Debug)]
pub(super) struct ClientBody {
    pub(super) framing: Framing,
    pub(super) left: u64,
    pub(super) chunked: Chunked,
    pub(super) done: bool,
    /// Body bytes read so far (data only, without chunk framing).
    pub(super) data: u64,
    /// When the first read of the body began (the clock of `min_body_rate`).
    pub(super) started: Option<tokio::time::Instant>,
}

impl ClientBody {
    pub(super) fn new(framing: Framing) -> Self {
        let (left, done) = match framing {
            Framing::Length(n) => (n, n == 0),
            Framing::Chunked => (0, false),
            Framing::None | Framing::Close => (0, true),
        };
        Self {
            framing,
            left,
            chunked: Chunked::default(),
            done,
            data: 0,
            started: None,
        }
    }

    /// The next piece of the body as the client framed it, `None` at its end.
    pub(super) async fn next<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
    ) -> Result<Option<Bytes>, BodyError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if !client.rbuf.is_empty() {
                match self.framing {
                    Framing::Length(_) => {
                        let n = (self.left.min(client.rbuf.len() as u64)) as usize;
                        self.left -= n as u64;
                        self.data += n as u64;
                        self.done = self.left == 0;
                        return Ok(Some(client.rbuf.split_to(n).freeze()));
                    }
                    Framing::Chunked => {
                        let before = self.chunked.data;
                        let n = self
                            .chunked
                            .scan(&client.rbuf)
                            .map_err(BodyError::Malformed)?;
                        self.data += self.chunked.data - before;
                        self.done = self.chunked.done();
                        if n > 0 {
                            return Ok(Some(client.rbuf.split_to(n).freeze()));
                        }
                    }
                    Framing::None | Framing::Close => {
                        self.done = true;
                        return Ok(None);
                    }
                }
            }
            client.rbuf.reserve(16 * 1024);
            // The wait ends at `body_read_timeout`, or sooner when the body falls behind
            // `min_body_rate`: the bytes read so far must have come within `read_timeout`
            // plus `data / rate` seconds of the start (Apache's `MinRate`), so a trickle of
            // bytes (R.U.D.Y.) cannot hold a connection and a backend for long.
            let limits = client.body_limits;
            let now = tokio::time::Instant::now();
            let started = *self.started.get_or_insert(now);
            // A configured timeout too large for the clock means "no timeout" (about 30 years).
            let mut deadline = now
                .checked_add(limits.read_timeout)
                .unwrap_or_else(|| now + Duration::from_secs(1 << 30));
            let mut too_slow = false;
            if let Some(rate) = limits.min_rate {
                // Checked arithmetic: no byte count or rate can make this panic.
                let allowed = Duration::try_from_secs_f64(self.data as f64 / rate as f64)
                    .ok()
                    .and_then(|d| d.checked_add(limits.read_timeout));
                let due = allowed.and_then(|d| started.checked_add(d));
                if let Some(due) = due.filter(|due| *due < deadline) {
                    deadline = due;
                    too_slow = true;
                }
            }
            match tokio::time::timeout_at(deadline, client.io.read_buf(&mut client.rbuf)).await {
                Err(_) if too_slow => return Err(BodyError::TooSlow),
                Err(_) => return Err(BodyError::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(BodyError::Gone),
                Ok(Ok(_)) => {}
            }
        }
    }
}

pub(super) fn body_failure(e: BodyError) -> LocalFailure {
    match e {
        BodyError::Gone => LocalFailure::new(0, "client_gone", "the client went away".into()),
        BodyError::Timeout => LocalFailure::new(
            408,
            "body_timeout",
            "the request body stopped arriving (body_read_timeout)".into(),
        ),
        BodyError::TooSlow => LocalFailure::new(
            408,
            "body_too_slow",
            "the request body arrived slower than min_body_rate".into(),
        ),
        BodyError::Malformed(why) => {
            LocalFailure::new(400, "bad_request", format!("malformed request body: {why}"))
        }
    }
}
