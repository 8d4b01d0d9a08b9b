//! A real authoritative DNS server for tests, in-process on 127.0.0.1 (UDP and TCP), whose
//! records can be changed while Portico runs, and which can be made to fail (SERVFAIL, no
//! answer at all, or stopped).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the records.
    Normal,
    /// SERVFAIL to everything.
    ServFail,
    /// No answer at all (the client times out).
    Silent,
}

#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), (Vec<RData>, u32)>,
    mode: Option<Mode>,
}

fn key(name: &str) -> String {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    format!("{n}.")
}

/// The server.
pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestDns {
    /// Starts on a free port (UDP and TCP on the same port).
    pub async fn start() -> TestDns {
        // Find a port free for both protocols.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let queries = Arc::new(AtomicUsize::new(0));
        let udp = Arc::new(udp);
        let (z, q, u) = (zone.clone(), queries.clone(), udp.clone());
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = u.recv_from(&mut buf).await else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                if let Some(resp) = answer(&z, &buf[..n]) {
                    let _ = u.send_to(&resp, peer).await;
                }
            }
        });
        let (z, q) = (zone.clone(), queries.clone());
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    continue;
                };
                let (z, q) = (z.clone(), q.clone());
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                        if s.read_exact(&mut msg).await.is_err() {
                            return;
                        }
                        q.fetch_add(1, Ordering::Relaxed);
                        if let Some(resp) = answer(&z, &msg) {
                            let _ = s.write_all(&(resp.len() as u16).to_be_bytes()).await;
                            let _ = s.write_all(&resp).await;
                        }
                    }
                });
            }
        });
        TestDns {
            addr,
            zone,
            queries,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// Sets the addresses of `name` (A for IPv4, AAAA for IPv6); an empty list removes them.
    pub fn set_ips(&self, name: &str, ips: &[IpAddr], ttl: u32) {
        let mut z = self.zone.lock().unwrap();
        let v4: Vec<RData> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v) => Some(RData::A(A(*v))),
                _ => None,
            })
            .collect();
        let v6: Vec<RData> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(v) => Some(RData::AAAA(AAAA(*v))),
                _ => None,
            })
            .collect();
        for (t, v) in [(RecordType::A, v4), (RecordType::AAAA, v6)] {
            if v.is_empty() {
                z.records.remove(&(key(name), t));
            } else {
                z.records.insert((key(name), t), (v, ttl));
            }
        }
    }

    /// Sets the TXT record of `name` (one record, one string).
    pub fn set_txt(&self, name: &str, txt: &str, ttl: u32) {
        let mut z = self.zone.lock().unwrap();
        z.records.insert(
            (key(name), RecordType::TXT),
            (vec![RData::TXT(TXT::new(vec![txt.to_string()]))], ttl),
        );
    }

    /// Removes every record of `name` (it answers NXDOMAIN).
    pub fn remove(&self, name: &str) {
        let k = key(name);
        self.zone
            .lock()
            .unwrap()
            .records
            .retain(|(n, _), _| *n != k);
    }

    /// Changes how the server answers.
    pub fn set_mode(&self, mode: Mode) {
        self.zone.lock().unwrap().mode = Some(mode);
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }

    /// Stops the server (its port then refuses or drops queries).
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(zone: &Mutex<Zone>, query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    if msg.metadata.message_type != MessageType::Query {
        return None;
    }
    let z = zone.lock().unwrap();
    let mut resp = Message::response(msg.metadata.id, OpCode::Query);
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    for q in &msg.queries {
        resp.add_query(q.clone());
    }
    match z.mode.unwrap_or(Mode::Normal) {
        Mode::Silent => return None,
        Mode::ServFail => {
            resp.metadata.response_code = ResponseCode::ServFail;
            return resp.to_vec().ok();
        }
        Mode::Normal => {}
    }
    let q = msg.queries.first()?;
    let name = q.name().to_ascii().to_ascii_lowercase();
    let k = key(&name);
    match z.records.get(&(k.clone(), q.query_type())) {
        Some((rdatas, ttl)) => {
            for rd in rdatas {
                resp.add_answer(Record::from_rdata(
                    Name::from_ascii(&k).ok()?,
                    *ttl,
                    rd.clone(),
                ));
            }
        }
        None => {
            let exists = z.records.keys().any(|(n, _)| *n == k);
            if !exists {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
        }
    }
    resp.to_vec().ok()
}
