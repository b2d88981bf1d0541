//! A DNS server on 127.0.0.1 (UDP, a port of its own) whose answers a test sets: the real
//! protocol, so that the router's resolver is exercised as against a cluster's DNS.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use parking_lot::Mutex;

#[derive(Default)]
struct Zone {
    /// Lower-case names without the trailing dot, and their addresses.
    names: HashMap<String, Vec<IpAddr>>,
    /// Drop every query (a name server that stopped answering).
    silent: bool,
}

/// A running test DNS server; it stops when dropped.
pub struct TestDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    pub async fn start() -> TestDns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let answers = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let reply = {
                    let zone = answers.lock();
                    if zone.silent {
                        continue;
                    }
                    answer(&zone, &query)
                };
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        TestDns { addr, zone, task }
    }

    /// Where it listens, for `dns_server`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the addresses of `name` (empty: the name exists with no address); others are
    /// NXDOMAIN.
    pub fn set(&self, name: &str, addrs: &[IpAddr]) {
        self.zone.lock().names.insert(
            name.trim_end_matches('.').to_ascii_lowercase(),
            addrs.to_vec(),
        );
    }

    /// Stops answering (queries time out) or starts again.
    pub fn set_silent(&self, silent: bool) {
        self.zone.lock().silent = silent;
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(zone: &Zone, query: &Message) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    let Some(q) = query.queries().first() else {
        reply.set_response_code(ResponseCode::FormErr);
        return reply;
    };
    reply.add_query(q.clone());
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let Some(addrs) = zone.names.get(&name) else {
        reply.set_response_code(ResponseCode::NXDomain);
        return reply;
    };
    for ip in addrs {
        let rdata = match (ip, q.query_type()) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        reply.add_answer(Record::from_rdata(q.name().clone(), 0, rdata));
    }
    reply
}
