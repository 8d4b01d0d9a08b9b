//! Closing WebSockets cleanly when a shutdown's grace period ends: the registry of open
//! tunnels a shutdown asks to close, and what a tunnel needs to close one with a close frame
//! between two client frames (the engine's tunnels relay the bytes and call these).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What a tunnel and the shutdown path share about one upgraded connection.
#[derive(Debug, Default)]
pub struct ConnState {
    closing: AtomicBool,
    /// Wakes the tunnel when a close is asked for.
    closed: tokio::sync::Notify,
}

impl ConnState {
    /// Whether a close was asked for (shutdown deadline).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Waits until a close is asked for.
    pub async fn wait_closing(&self) {
        loop {
            // Registered before the check, so a close between the two is not missed.
            let n = self.closed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_closing() {
                return;
            }
            n.await;
        }
    }

    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.closed.notify_waiters();
    }
}

/// Upgraded connections that may need a close frame.
#[derive(Default)]
pub struct Registry(Mutex<List>);

/// The registered tunnels; closed ones are swept when the list has doubled since the last
/// sweep, so registering stays O(1) amortised with tens of thousands open.
#[derive(Default)]
struct List {
    tunnels: Vec<Weak<ConnState>>,
    sweep_at: usize,
}

impl Registry {
    /// Registers a tunnel, so a shutdown can ask it to close.
    pub fn register(&self, c: &Arc<ConnState>) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if list.tunnels.len() >= list.sweep_at {
            list.tunnels.retain(|w| w.strong_count() > 0);
            list.sweep_at = (list.tunnels.len() * 2).max(64);
        }
        list.tunnels.push(Arc::downgrade(c));
    }

    /// Asks every open tunnel to close; returns how many were asked.
    pub fn close_all(&self) -> usize {
        let list = std::mem::take(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()).tunnels);
        let mut n = 0;
        for c in list.iter().filter_map(Weak::upgrade) {
            c.close();
            n += 1;
        }
        n
    }
}

/// Follows WebSocket frame boundaries in one direction.
#[derive(Debug, Default)]
pub struct Frames {
    head: [u8; 14],
    have: usize,
    left: u64,
}

impl Frames {
    /// Whether the bytes seen so far end exactly at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Follows `data`, the next bytes of the stream.
    pub fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = (self.left.min(data.len() as u64)) as usize;
                self.left -= n as u64;
                data = &data[n..];
                continue;
            }
            self.head[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if let Some(len) = payload_len(&self.head[..self.have]) {
                self.have = 0;
                self.left = len;
            }
        }
    }
}

/// The payload length once `head` holds a whole frame header.
fn payload_len(head: &[u8]) -> Option<u64> {
    if head.len() < 2 {
        return None;
    }
    let masked = head[1] & 0x80 != 0;
    let len7 = head[1] & 0x7f;
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let need = 2 + ext + if masked { 4 } else { 0 };
    if head.len() < need {
        return None;
    }
    Some(match len7 {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => u64::from_be_bytes(head[2..10].try_into().ok()?),
        n => u64::from(n),
    })
}

/// A masked close frame (FIN, opcode 8, status 1001 "going away"), as a client sends it.
pub fn close_frame() -> [u8; 8] {
    let k = fastrand::u32(..).to_be_bytes();
    [0x88, 0x82, k[0], k[1], k[2], k[3], 0x03 ^ k[0], 0xE9 ^ k[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries() {
        let mut f = Frames::default();
        assert!(f.at_boundary());
        // Masked text "hi": 2 + 4 + 2 bytes, fed byte by byte.
        let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        for (i, b) in frame.iter().enumerate() {
            f.advance(&[*b]);
            assert_eq!(f.at_boundary(), i == frame.len() - 1, "after byte {i}");
        }
        // 16-bit length: 300 bytes of payload, split across reads, then another frame.
        let mut big = vec![0x82, 0xFE, 0x01, 0x2C, 0, 0, 0, 0];
        big.extend(std::iter::repeat_n(7u8, 300));
        big.extend_from_slice(&frame);
        f.advance(&big[..100]);
        assert!(!f.at_boundary());
        f.advance(&big[100..308]);
        assert!(f.at_boundary());
        f.advance(&big[308..]);
        assert!(f.at_boundary());
        // 64-bit length.
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&70_000u64.to_be_bytes());
        huge.extend_from_slice(&[0, 0, 0, 0]);
        f.advance(&huge);
        assert!(!f.at_boundary());
        f.advance(&vec![0u8; 70_000]);
        assert!(f.at_boundary());
    }
}
