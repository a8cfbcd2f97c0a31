//! The baseline for cityops' MQTT ingest rate: a plain rumqttc subscriber that only counts
//! what the broker delivers (automatic acks, no decoding, no writing). Run it beside
//! `cityops replay --to-mqtt` exactly as `cityops run --mqtt` would be run:
//!
//!     cargo run --release --example plain_subscriber -- 127.0.0.1 1883 1
//!
//! Arguments: host, port, QoS (0 or 1). It ends 3 s after the last message and prints
//! messages, bytes and the rate from the first message to the last.

use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let host = args.get(1).map_or("127.0.0.1", String::as_str);
    let port = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(1883);
    let qos = match args.get(3).map(String::as_str) {
        Some("0") => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    };
    let mut options = MqttOptions::new(format!("plain-{}", std::process::id()), host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = Client::new(options, 100);
    let (mut first, mut last) = (None::<Instant>, Instant::now());
    let (mut messages, mut bytes) = (0u64, 0u64);
    loop {
        if first.is_some() && last.elapsed() >= Duration::from_secs(3) {
            break;
        }
        match connection.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                if let Err(e) = client.try_subscribe("city/#", qos) {
                    eprintln!("subscribe: {e}");
                    return;
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                messages += 1;
                bytes += p.payload.len() as u64;
            }
            Ok(Err(e)) => {
                eprintln!("connection: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            _ => {}
        }
    }
    let seconds = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    println!(
        "plain subscriber: {messages} messages ({bytes} payload bytes) in {seconds:.3} s: {:.0} messages/s",
        messages.saturating_sub(1) as f64 / seconds.max(1e-9)
    );
}
