//! Per-stage throughput in readings per second: decoding gateway payloads, building Arrow
//! batches, assigning rows to windows, and evaluating a planned window rule over a batch.
//! Setup (sessions, plans, payloads) is built once, outside the measured loops.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::physical_plan::common::collect;
use serde_json::json;

use cityops::{
    Batchers, Catalog, Decoder, EngineColumns, EngineConfig, Message, TableBatcher, TopicPattern, WindowClock,
    WindowSpec, compile, parse_rule,
};

const T0: i64 = 1_768_435_200_000;

fn gateway_message(rows: usize) -> Message {
    let payload: Vec<_> = (0..rows)
        .map(|i| {
            json!({"ts": T0 + i as i64 * 1_000, "device_id": format!("room-hd-{i:04}"), "kind": "room",
                   "room_temp_c": 20.0 + (i % 7) as f64 * 0.3, "outdoor_temp_c": -4.5})
        })
        .collect();
    Message {
        at_ms: 0,
        topic: "city/haidian/heating/gw-hd-03".to_string(),
        payload: serde_json::to_vec(&payload).unwrap_or_default().into(),
        recorded_invalid: false,
        arrived_ns: 0,
        ..Message::default()
    }
}

fn batchers(catalog: &Catalog, capacity: usize) -> Batchers {
    Batchers {
        by_table: catalog
            .tables()
            .iter()
            .enumerate()
            .map(|(i, t)| Some(TableBatcher::new(i, Arc::clone(t), capacity)))
            .collect(),
        last_table: None,
    }
}

fn decode(c: &mut Criterion) {
    let catalog = Catalog::builtin();
    let pattern = TopicPattern::parse("city/{district}/{table}/{device_id}").expect("pattern");
    let decoder = Decoder::new(catalog.clone(), pattern, 1 << 20, 86_400_000);
    let msg = gateway_message(100);
    let mut sink = batchers(&catalog, 8192);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(100));
    group.bench_function("gateway_payload_100_readings", |b| {
        b.iter(|| {
            let outcome = decoder.decode(&msg, T0 + 86_400_000, &mut sink, &mut |_| {});
            if let Some(Some(batcher)) = sink.by_table.get_mut(2)
                && batcher.len() >= 8192
            {
                let _ = batcher.flush();
            }
            outcome
        })
    });
    group.finish();
}

fn batch(c: &mut Criterion) {
    let catalog = Catalog::builtin();
    let pattern = TopicPattern::parse("city/{district}/{table}/{device_id}").expect("pattern");
    let decoder = Decoder::new(catalog.clone(), pattern, 1 << 20, 86_400_000);
    let msg = gateway_message(4096);
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(4096));
    group.bench_function("decode_and_flush_4096_rows", |b| {
        let mut sink = batchers(&catalog, 4096);
        b.iter(|| {
            decoder.decode(&msg, T0 + 86_400_000, &mut sink, &mut |_| {});
            sink.by_table[2].as_mut().map(|b| b.flush())
        })
    });
    group.finish();
}

fn window(c: &mut Criterion) {
    let ts: Vec<i64> = (0..8192).map(|i| T0 + i * 50).collect();
    let mut group = c.benchmark_group("window");
    group.throughput(Throughput::Elements(ts.len() as u64));
    group.bench_function("route_8192_rows_tumble_1m", |b| {
        let mut clock = WindowClock::new(WindowSpec::Tumble { size_ms: 60_000 }, 2_000);
        let mut offset = 0;
        b.iter(|| {
            offset += 8192 * 50;
            let shifted: Vec<i64> = ts.iter().map(|t| t + offset).collect();
            clock.route(&shifted)
        })
    });
    group.finish();
}

fn rules(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let catalog = Catalog::builtin();
    let text = "-- level: blue
SELECT district, device_id, avg(room_temp_c) AS avg_room_temp_c FROM heating WHERE kind = 'room'
GROUP BY tumble(ts, INTERVAL '1 hour'), district, device_id HAVING avg(room_temp_c) < 18
";
    let file = parse_rule(Path::new("room_temp_low.sql"), text.to_string()).expect("rule parses");
    let (rule, _) = runtime
        .block_on(compile(&file, &catalog, &EngineConfig::default()))
        .expect("rule compiles");
    let pattern = TopicPattern::parse("city/{district}/{table}/{device_id}").expect("pattern");
    let decoder = Decoder::new(catalog.clone(), pattern, 1 << 20, 86_400_000);
    let mut sink = batchers(&catalog, 8192);
    decoder.decode(&gateway_message(8192), T0 + 86_400_000, &mut sink, &mut |_| {});
    let table_batch = sink.by_table[2]
        .as_mut()
        .map(|b| b.flush())
        .and_then(Result::ok)
        .expect("batch");
    let rows = table_batch.batch.num_rows();
    let window = EngineColumns::Window {
        start: T0,
        end: T0 + 3_600_000,
    };
    // The worker applies the WHERE clause before the plan; the rows that pass are fed.
    let passing = rule.passing(&table_batch.batch).expect("WHERE evaluates");
    let passing: Option<datafusion::arrow::array::UInt32Array> =
        passing.map(|mask| (0..rows as u32).filter(|&i| mask.value(i as usize)).collect());
    let fed = rule
        .input_of(&table_batch.batch, passing.as_ref(), window)
        .expect("fed batch");

    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function("tumble_avg_having_8192_rows", |b| {
        b.iter(|| {
            runtime
                .block_on(async { collect(rule.execute(rule.stream_of(vec![fed.clone()])).expect("executes")).await })
        })
    });
    group.finish();
}

criterion_group!(benches, decode, batch, window, rules);
criterion_main!(benches);
