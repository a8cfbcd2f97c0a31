#!/usr/bin/env bash
# What durable state (`--state`) costs, measured as docs/PERFORMANCE.md reports it:
#
#   benches/state.sh replay  [ROUNDS]   the demo replayed at --speed max, state off and on in
#                                       alternating rounds: readings/s and peak RSS, medians
#   benches/state.sh mqtt    [ROUNDS]   the demo published at QoS 1 into a Mosquitto of the
#                                       script's own, state off and on alternating: messages/s
#                                       (INFLIGHT sets the broker's max_inflight_messages, 1000)
#   benches/state.sh recovery [DEVICES] a city of DEVICES devices (default 100,000) reporting
#                                       every INTERVAL (5m) for 55 minutes, with a 1-hour window
#                                       rule per table: checkpoint size and time, then the
#                                       recovery time of a restart (every hourly window open)
#
# Needs a release build (`cargo build --release`); CITYOPS overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
CITYOPS=${CITYOPS:-$target/release/cityops}
work=$(mktemp -d)
trap 'pkill -f "mosquitto -c $work" 2>/dev/null || true; rm -rf "$work"' EXIT
median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }
json_field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval('d'+sys.argv[2]))" "$@"; }

replay() {
  local rounds=${1:-5}
  for round in $(seq 1 "$rounds"); do
    for mode in off on; do
      state_args=()
      [ "$mode" = on ] && state_args=(--state "$work/state-$round")
      /usr/bin/time -f "%M" -o "$work/rss" "$CITYOPS" run --speed max --quiet --no-http \
        --dead-letter "$work/dl.jsonl" --summary-json "$work/summary.json" "${state_args[@]}" >/dev/null 2>&1
      rate=$(json_field "$work/summary.json" "['readings_per_second']" | cut -d. -f1)
      rss=$(( $(cat "$work/rss") / 1024 ))
      echo "$rate" >>"$work/replay-$mode.rates"
      echo "$rss" >>"$work/replay-$mode.rss"
      echo "round $round state $mode: $rate readings/s, peak RSS $rss MiB"
      rm -rf "$work/state-$round"
    done
  done
  off=$(median <"$work/replay-off.rates"); on=$(median <"$work/replay-on.rates")
  echo "median: off $off, on $on readings/s; ratio $(awk -v a="$on" -v b="$off" 'BEGIN {printf "%.2f", a / b}');" \
    "peak RSS off $(median <"$work/replay-off.rss") MiB, on $(median <"$work/replay-on.rss") MiB"
}

mqtt() {
  local rounds=${1:-3}
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages %s\n' \
    "$port" "${INFLIGHT:-1000}" >"$work/mosquitto.conf"
  mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 &
  sleep 0.5
  for round in $(seq 1 "$rounds"); do
    for mode in off on; do
      state_args=()
      [ "$mode" = on ] && state_args=(--state "$work/mqtt-state-$round")
      printf '[mqtt]\nclean_session = true\nclient_id = "cityops-state-bench"\n' >"$work/bench.toml"
      RUST_LOG=info "$CITYOPS" run --mqtt "mqtt://127.0.0.1:$port" --qos 1 --quiet --no-http --idle-exit 3s \
        --config "$work/bench.toml" --dead-letter "$work/dl.jsonl" "${state_args[@]}" >"$work/run.log" 2>&1 &
      subscriber=$!
      sleep 1.5
      "$CITYOPS" replay --to-mqtt "mqtt://127.0.0.1:$port" --qos 1 --speed max >/dev/null
      wait "$subscriber" || true
      rate=$(grep -oE '[0-9]+ messages/s' "$work/run.log" | tail -1 | grep -oE '^[0-9]+' || echo 0)
      received=$(grep -oE 'received [0-9]+ messages' "$work/run.log" | tail -1 | grep -oE '[0-9]+' || echo 0)
      echo "$rate" >>"$work/mqtt-$mode.rates"
      echo "round $round state $mode: $received messages, $rate messages/s"
      rm -rf "$work/mqtt-state-$round"
    done
  done
  off=$(median <"$work/mqtt-off.rates"); on=$(median <"$work/mqtt-on.rates")
  echo "median (broker max_inflight_messages ${INFLIGHT:-1000}): off $off, on $on messages/s;" \
    "ratio $(awk -v a="$on" -v b="$off" 'BEGIN {printf "%.2f", a / b}')"
}

recovery() {
  local devices=${1:-100000}
  local per_kind=$(( devices / 3 ))
  mkdir -p "$work/queries"
  cp -r queries/heating queries/water queries/sensor "$work/queries/"
  cat >"$work/queries/heating/hourly_supply.sql" <<'SQL'
-- description: Hourly mean supply temperature under 40 °C
-- level: blue
SELECT district, device_id, avg(supply_temp_c) AS supply_temp_c
FROM heating
GROUP BY tumble(ts, INTERVAL '1 hour'), district, device_id
HAVING avg(supply_temp_c) < 40
SQL
  cat >"$work/queries/water/hourly_pressure.sql" <<'SQL'
-- description: Hourly mean pressure under 0.16 MPa
-- level: blue
SELECT district, device_id, avg(pressure_mpa) AS pressure_mpa
FROM water
WHERE kind = 'pressure'
GROUP BY tumble(ts, INTERVAL '1 hour'), district, device_id
HAVING avg(pressure_mpa) < 0.16
SQL
  cat >"$work/queries/sensor/hourly_gas.sql" <<'SQL'
-- description: Hourly gas peak above 10 %LEL
-- level: blue
SELECT district, device_id, max(value) AS peak
FROM sensor
WHERE kind = 'gas_lel'
GROUP BY tumble(ts, INTERVAL '1 hour'), district, device_id
HAVING max(value) > 10
SQL
  "$CITYOPS" gen --devices "$per_kind" --interval "${INTERVAL:-5m}" --duration 55m --incidents 0 \
    --out "$work/city.jsonl" --labels "$work/labels.jsonl" >/dev/null
  echo "fixture: $(wc -l <"$work/city.jsonl") messages from $((per_kind * 3)) devices"
  run_on_state() {
    /usr/bin/time -f "%M" -o "$work/rss" "$CITYOPS" run --replay "$work/city.jsonl" --speed max --quiet --no-http \
      --queries "$work/queries" --state "$work/city-state" --dead-letter "$work/dl.jsonl" \
      --summary-json "$work/$1.json" >/dev/null 2>"$work/$1.log"
  }
  /usr/bin/time -f "%M" -o "$work/rss" "$CITYOPS" run --replay "$work/city.jsonl" --speed max --quiet --no-http \
    --queries "$work/queries" --dead-letter "$work/dl.jsonl" --summary-json "$work/off.json" >/dev/null 2>&1
  echo "without state: $(json_field "$work/off.json" "['readings_per_second']" | cut -d. -f1) readings/s," \
    "peak RSS $(( $(cat "$work/rss") / 1024 )) MiB"
  run_on_state first
  echo "first run: $(json_field "$work/first.json" "['readings_per_second']" | cut -d. -f1) readings/s," \
    "peak RSS $(( $(cat "$work/rss") / 1024 )) MiB," \
    "last checkpoint $(json_field "$work/first.json" "['state']['last_checkpoint_bytes']") bytes" \
    "in $(json_field "$work/first.json" "['state']['last_checkpoint_ms']") ms," \
    "log $(json_field "$work/first.json" "['state']['log_bytes']") bytes"
  ls -l "$work/city-state/checkpoints"
  run_on_state restart
  echo "restart: recovery $(json_field "$work/restart.json" "['state']['recovery_ms']") ms" \
    "($(json_field "$work/restart.json" "['state']['refilled_messages']") messages refilled," \
    "$(json_field "$work/restart.json" "['state']['recovered_messages']") replayed), peak RSS $(( $(cat "$work/rss") / 1024 )) MiB"
  grep -E "recover" "$work/restart.log" || true
}

case "${1:-}" in
  replay) replay "${2:-5}" ;;
  mqtt) mqtt "${2:-3}" ;;
  recovery) recovery "${2:-100000}" ;;
  *) echo "usage: $0 replay|mqtt|recovery [N]" >&2; exit 2 ;;
esac
