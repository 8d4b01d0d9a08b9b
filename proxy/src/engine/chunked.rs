//! A streaming reader of `Transfer-Encoding: chunked` bodies (RFC 9112 section 7.1).
//!
//! Portico forwards chunked bodies as they are, after checking every byte of their framing:
//! the proxy and the next hop must agree on where the message ends. So the state machine
//! accepts only what the RFC allows: hex sizes (at most 15 digits), chunk extensions without
//! control characters, `CRLF` line ends (a bare `CR` or `LF` is an error), data followed by
//! `CRLF`, and a bounded trailer section. It can also decode (keep only the data), for
//! HTTP/1.0 clients that do not understand chunked responses.

/// Longest chunk extension accepted on one chunk line.
const MAX_EXT: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// The state of one chunked body being read.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u32,
    left: u64,
    ext: usize,
    trailers: usize,
    /// Data bytes seen so far (the body's length without its framing).
    pub data: u64,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            left: 0,
            ext: 0,
            trailers: 0,
            data: 0,
        }
    }
}

/// Where a slice of a chunked body lies in its input, as returned by [`Chunked::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input that belong to the body (framing included).
    pub consumed: usize,
    /// Of those, the last complete run of data bytes, as `(start, end)` offsets; used when
    /// decoding. Only one run is reported per call: callers decode by calling again.
    pub data: Option<(usize, usize)>,
}

impl Chunked {
    /// Whether the whole body (last chunk and trailers) has been read.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads framing from `input` until the body ends, the input ends, or a run of data has
    /// been found (so decoding callers can copy it out). `Err` names what is malformed.
    pub fn advance(&mut self, input: &[u8]) -> Result<Step, &'static str> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => break,
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 15 {
                            return Err("chunk size too large");
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                        i += 1;
                    }
                    b';' if self.digits > 0 => {
                        self.state = State::Ext;
                        i += 1;
                    }
                    b' ' | b'\t' if self.digits > 0 => {
                        self.state = State::SizeWs;
                        i += 1;
                    }
                    b'\r' if self.digits > 0 => {
                        self.state = State::SizeLf;
                        i += 1;
                    }
                    _ => return Err("invalid chunk size"),
                },
                State::SizeWs => match b {
                    b' ' | b'\t' => i += 1,
                    b';' => {
                        self.state = State::Ext;
                        i += 1;
                    }
                    _ => return Err("invalid chunk size"),
                },
                State::Ext => match b {
                    b'\r' => {
                        self.state = State::SizeLf;
                        i += 1;
                    }
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {
                        self.ext += 1;
                        if self.ext > MAX_EXT {
                            return Err("chunk extension too long");
                        }
                        i += 1;
                    }
                    _ => return Err("invalid chunk extension"),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err("chunk size line without CRLF");
                    }
                    i += 1;
                    self.ext = 0;
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        self.left = self.size;
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let n = self.left.min((input.len() - i) as u64) as usize;
                    let run = (i, i + n);
                    i += n;
                    self.left -= n as u64;
                    self.data += n as u64;
                    if self.left == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Step {
                        consumed: i,
                        data: Some(run),
                    });
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err("chunk data longer than its size");
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err("chunk data without CRLF");
                    }
                    self.state = State::Size;
                    self.size = 0;
                    self.digits = 0;
                    i += 1;
                }
                State::TrailerStart => match b {
                    b'\r' => {
                        self.state = State::EndLf;
                        i += 1;
                    }
                    // Obsolete line folding and bare line ends are not allowed.
                    b' ' | b'\t' | b'\n' => return Err("invalid trailer"),
                    _ => {
                        self.state = State::Trailer;
                    }
                },
                State::Trailer => match b {
                    b'\r' => {
                        self.state = State::TrailerLf;
                        i += 1;
                    }
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {
                        self.trailers += 1;
                        if self.trailers > MAX_TRAILERS {
                            return Err("trailer section too large");
                        }
                        i += 1;
                    }
                    _ => return Err("invalid trailer"),
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err("trailer without CRLF");
                    }
                    self.state = State::TrailerStart;
                    i += 1;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err("chunked body without final CRLF");
                    }
                    self.state = State::Done;
                    i += 1;
                    break;
                }
            }
        }
        Ok(Step {
            consumed: i,
            data: None,
        })
    }

    /// Checks a whole buffer, returning how many of its bytes belong to the body (the rest
    /// is what follows it on the connection).
    pub fn scan(&mut self, input: &[u8]) -> Result<usize, &'static str> {
        let mut at = 0;
        while at < input.len() && !self.done() {
            let step = self.advance(&input[at..])?;
            if step.consumed == 0 {
                break;
            }
            at += step.consumed;
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(input: &[u8]) -> Result<(usize, u64, bool), &'static str> {
        let mut c = Chunked::default();
        let n = c.scan(input)?;
        Ok((n, c.data, c.done()))
    }

    #[test]
    fn valid_bodies() {
        let body = b"5\r\nhello\r\n6;ext=\"v\"\r\n world\r\n0\r\nx-sum: 1\r\n\r\nGET /next";
        let (n, data, done) = whole(body).unwrap();
        assert!(done);
        assert_eq!(data, 11);
        assert_eq!(&body[n..], b"GET /next");
        assert_eq!(whole(b"0\r\n\r\n").unwrap(), (5, 0, true));
        assert_eq!(whole(b"A \t;x\r\n0123456789\r\n0\r\n\r\n").unwrap().1, 10);
    }

    #[test]
    fn split_at_every_byte() {
        let body = b"5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nt: 1\r\n\r\n";
        for cut in 0..body.len() {
            let mut c = Chunked::default();
            let a = c.scan(&body[..cut]).unwrap();
            assert_eq!(a, cut);
            let b = c.scan(&body[cut..]).unwrap();
            assert_eq!(a + b, body.len(), "cut {cut}");
            assert!(c.done());
            assert_eq!(c.data, 31);
        }
    }

    #[test]
    fn decoding_yields_the_data() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let mut c = Chunked::default();
        let mut out = Vec::new();
        let mut at = 0;
        while !c.done() {
            let step = c.advance(&body[at..]).unwrap();
            if let Some((s, e)) = step.data {
                out.extend_from_slice(&body[at + s..at + e]);
            }
            at += step.consumed;
        }
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn malformed_bodies() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\n",
            b"5\rhello",
            b"-5\r\n",
            b"+5\r\n",
            b"0x5\r\n",
            b"ffffffffffffffff\r\n",
            b"5 x\r\n",
            b"5;\x00\r\n",
            b"5;a\nb\r\n",
            b"0\r\n\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nx: 1\n\r\n",
            b"0\r\n\r\x00",
        ] {
            assert!(whole(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long_ext = format!("1;{}\r\n", "e".repeat(MAX_EXT + 1));
        assert!(whole(long_ext.as_bytes()).is_err());
    }
}
