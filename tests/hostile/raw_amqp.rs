//! A publisher written frame by frame (AMQP 0-9-1 over a plain socket), for header tables no
//! client library will serialize: lapin's own I/O thread overflows its stack writing a table
//! nested 1,000 deep, so the bytes of such a table are built here by hand, inside out, with
//! no recursion. Publishes one message with confirms and returns once the broker acked it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use lapin::uri::AMQPUri;

/// The properties this publisher can send.
pub struct RawProperties<'a> {
    pub correlation_id: &'a str,
    pub reply_to: &'a str,
    /// A complete field table, already encoded (length prefix included).
    pub headers: Vec<u8>,
}

/// `{"x-nested": {"n": {"n": … {"leaf": true}}}}`, `depth` tables below `x-nested`, encoded.
pub fn nested_table(depth: usize) -> Vec<u8> {
    let mut inner = table_bytes(&[entry("leaf", b't', &[1])]);
    for _ in 1..depth {
        inner = table_bytes(&[entry("n", b'F', &inner)]);
    }
    table_bytes(&[entry("x-nested", b'F', &inner)])
}

fn entry(key: &str, kind: u8, value: &[u8]) -> Vec<u8> {
    let mut e = vec![key.len() as u8];
    e.extend_from_slice(key.as_bytes());
    e.push(kind);
    e.extend_from_slice(value);
    e
}

fn table_bytes(entries: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = entries.concat();
    let mut t = (body.len() as u32).to_be_bytes().to_vec();
    t.extend_from_slice(&body);
    t
}

fn short(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn long(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

fn method(class: u16, id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(args);
    p
}

struct Conn {
    stream: TcpStream,
}

impl Conn {
    fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut frame = vec![kind];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(0xce);
        self.stream.write_all(&frame).expect("write a frame");
    }

    /// The next frame: (type, payload).
    fn read(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 7];
        self.stream
            .read_exact(&mut head)
            .expect("read a frame header");
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        self.stream.read_exact(&mut payload).expect("read a frame");
        payload.pop();
        (head[0], payload)
    }

    /// Reads until the method `(class, id)`; panics on a close.
    fn expect(&mut self, class: u16, id: u16) -> Vec<u8> {
        loop {
            let (kind, payload) = self.read();
            if kind != 1 || payload.len() < 4 {
                continue;
            }
            let got = (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            if got == (class, id) {
                return payload[4..].to_vec();
            }
            assert!(
                !matches!(got, (10, 50) | (20, 40) | (60, 120)),
                "the broker refused: method {got:?} {}",
                String::from_utf8_lossy(&payload)
            );
        }
    }
}

/// Publishes `body` to `queue` with `properties` and waits for the broker's confirm.
pub fn publish(url: &str, queue: &str, body: &[u8], properties: &RawProperties) {
    let uri: AMQPUri = url.parse().expect("AMQP URL");
    let address = format!("{}:{}", uri.authority.host, uri.authority.port);
    let stream = TcpStream::connect(address).expect("connect to the broker");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut c = Conn { stream };
    c.stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .expect("protocol header");
    c.expect(10, 10);
    let user = &uri.authority.userinfo;
    let response = format!("\0{}\0{}", user.username, user.password);
    let mut args = table_bytes(&[]);
    args.extend(short("PLAIN"));
    args.extend(long(response.as_bytes()));
    args.extend(short("en_US"));
    c.send(1, 0, &method(10, 11, &args));
    let tune = c.expect(10, 30);
    let frame_max = u32::from_be_bytes([tune[2], tune[3], tune[4], tune[5]]);
    let mut args = tune[..2].to_vec();
    args.extend_from_slice(&frame_max.to_be_bytes());
    args.extend_from_slice(&0u16.to_be_bytes());
    c.send(1, 0, &method(10, 31, &args));
    let mut args = short(&uri.vhost);
    args.extend(short(""));
    args.push(0);
    c.send(1, 0, &method(10, 40, &args));
    c.expect(10, 41);
    c.send(1, 1, &method(20, 10, &short("")));
    c.expect(20, 11);
    c.send(1, 1, &method(85, 10, &[0]));
    c.expect(85, 11);

    let mut args = 0u16.to_be_bytes().to_vec();
    args.extend(short(""));
    args.extend(short(queue));
    args.push(1); // mandatory
    c.send(1, 1, &method(60, 40, &args));
    // Content header: class, weight, body size, flags, then the properties in flag order.
    let flags: u16 = (1 << 15) | (1 << 13) | (1 << 12) | (1 << 10) | (1 << 9);
    let mut header = 60u16.to_be_bytes().to_vec();
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&(body.len() as u64).to_be_bytes());
    header.extend_from_slice(&flags.to_be_bytes());
    header.extend(short("application/json"));
    header.extend_from_slice(&properties.headers);
    header.push(2);
    header.extend(short(properties.correlation_id));
    header.extend(short(properties.reply_to));
    assert!(
        header.len() + 8 <= frame_max as usize,
        "content header of {} bytes exceeds frame_max {frame_max}",
        header.len()
    );
    c.send(2, 1, &header);
    for chunk in body.chunks(frame_max as usize - 8) {
        c.send(3, 1, chunk);
    }
    c.expect(60, 80);
    let mut args = 200u16.to_be_bytes().to_vec();
    args.extend(short("bye"));
    args.extend_from_slice(&[0, 0, 0, 0]);
    c.send(1, 0, &method(10, 50, &args));
    c.expect(10, 51);
}
