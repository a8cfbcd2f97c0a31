#!/usr/bin/env python3
"""DuckDB over the same JSON Lines fixture that `cityops bench` replays, for docs/PERFORMANCE.md.

A per-device 1-minute tumbling average over every reading of a `cityops gen` fixture
(one reading per message), as a batch query: read, parse, group, aggregate. Prints the
median of several runs in rows/s. DuckDB is a batch engine: no event-time watermark, no
late data, no alert lifecycle, no latency per reading; it is here as the ceiling a columnar
engine reaches on the same bytes and cores.

    pip install duckdb
    cityops gen --devices 100000 --interval 60s --duration 17m --incidents 0 --out city5m.jsonl.zst
    zstd -d city5m.jsonl.zst -o city5m.jsonl
    python3 benches/duckdb_tumble.py city5m.jsonl
"""

import statistics
import sys
import time

import duckdb

QUERY = """
SELECT split_part(topic, '/', 4) AS device_id,
       time_bucket(INTERVAL 1 minute, epoch_ms(payload.ts)) AS window_start,
       avg(coalesce(payload.supply_temp_c, payload.pressure_mpa, payload.value)) AS avg_value,
       count(*) AS readings
FROM read_json('{path}', format = 'newline_delimited', columns = {{
    'at': 'BIGINT', 'topic': 'VARCHAR',
    'payload': 'STRUCT(ts BIGINT, supply_temp_c DOUBLE, pressure_mpa DOUBLE, value DOUBLE)'}})
GROUP BY ALL
"""


def main() -> None:
    path = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    con = duckdb.connect()
    rows = con.execute(f"SELECT count(*) FROM read_json('{path}', format = 'newline_delimited', columns = {{'at': 'BIGINT'}})").fetchone()[0]
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        groups = con.execute(f"SELECT count(*), sum(readings) FROM ({QUERY.format(path=path)})").fetchone()
        elapsed = time.perf_counter() - started
        assert groups[1] == rows, f"aggregated {groups[1]} of {rows} rows"
        rates.append(rows / elapsed)
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    print(f"duckdb {duckdb.__version__}: {rows} rows into {groups[0]} windows; threads {threads}")
    print("rows/s per run: " + ", ".join(f"{r / 1e6:.2f}M" for r in rates))
    print(f"median: {statistics.median(rates) / 1e6:.2f}M rows/s")


if __name__ == "__main__":
    main()
