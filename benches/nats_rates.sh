#!/usr/bin/env bash
# Readings through NATS JetStream against the file and MQTT paths, in alternating rounds so
# machine noise hits every path alike:
#
#   benches/nats_rates.sh [ROUNDS] [PARTITIONS]
#
# Defaults: 3 rounds, 8 partitions, the bundled demo, the 20 rules of `queries/`. Each round
# runs, one after the other:
#   file     `cityops run --speed max` (the demo replayed from the binary): readings/s
#   mqtt     `cityops run --mqtt` against `cityops replay --to-mqtt` at QoS 1 through the
#            broker on $BROKER (default 127.0.0.1:1883): messages/s, first to last
#   nats-N   N = 1, 2, 3 `cityops run --nats` instances, started first on a stream of
#            their own in a nats-server of the script's own (JetStream, one node;
#            $NATS_SERVER or `nats-server` on PATH); once the partitions are shared out,
#            `cityops replay --to-nats --speed max` publishes the demo while the instances'
#            `/metrics` (cityops_messages_in_total) are polled every 20 ms: messages/s from
#            the first message read to the last of the demo. The instances are then
#            stopped (SIGTERM). Publisher, server and instances share the machine's cores,
#            as publisher, broker and subscriber do on the MQTT path.
# Prints each run and the medians. The demo holds 254,507 messages, 266,640 readings
# (1.048 readings per message).
# Needs a release build (`cargo build --release`); CITYOPS overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
CITYOPS=${CITYOPS:-$target/release/cityops}
NATS_SERVER=${NATS_SERVER:-nats-server}
BROKER=${BROKER:-127.0.0.1:1883}
rounds=${1:-3}
partitions=${2:-8}
work=$(mktemp -d)
trap 'kill "${nats:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$NATS_SERVER" -a 127.0.0.1 -p "$port" -js -sd "$work/jetstream" >"$work/nats.log" 2>&1 &
nats=$!
for _ in $(seq 100); do
  (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
  sleep 0.1
done
url="nats://127.0.0.1:$port"

# N instances on a stream of their own, then the demo published into it: "MESSAGES RATE".
nats_round() { # round, instances
  python3 benches/nats_round.py "$CITYOPS" "$url" "$partitions" "$1" "$2" "$work"
}

for round in $(seq 1 "$rounds"); do
  "$CITYOPS" run --speed max --quiet --no-http --dead-letter "$work/dl.jsonl" \
    --summary-json "$work/summary.json" >/dev/null 2>&1
  rate=$(python3 -c "import json; print(int(json.load(open('$work/summary.json'))['readings_per_second']))")
  echo "$rate" >>"$work/file.rates"
  echo "round $round file: $rate readings/s"

  printf '[mqtt]\nclean_session = true\nclient_id = "cityops-nats-rates"\n' >"$work/mqtt.toml"
  RUST_LOG=info "$CITYOPS" run --mqtt "mqtt://$BROKER" --qos 1 --quiet --no-http --idle-exit 3s \
    --config "$work/mqtt.toml" --dead-letter "$work/dl.jsonl" >"$work/mqtt.log" 2>&1 &
  subscriber=$!
  sleep 1.5
  "$CITYOPS" replay --to-mqtt "mqtt://$BROKER" --qos 1 --speed max >/dev/null
  wait "$subscriber" || true
  rate=$(grep -oE '[0-9]+ messages/s' "$work/mqtt.log" | tail -1 | grep -oE '^[0-9]+' || echo 0)
  echo "$rate" >>"$work/mqtt.rates"
  echo "round $round mqtt: $rate messages/s"

  for n in 1 2 3; do
    read -r messages rate < <(nats_round "$round" "$n")
    echo "$rate" >>"$work/nats-$n.rates"
    echo "round $round nats, $n instance(s): $messages messages read, $rate messages/s"
  done
done
echo "medians: file $(median <"$work/file.rates") readings/s; mqtt $(median <"$work/mqtt.rates") messages/s;" \
  "nats 1 $(median <"$work/nats-1.rates"), 2 $(median <"$work/nats-2.rates"), 3 $(median <"$work/nats-3.rates") messages/s"
