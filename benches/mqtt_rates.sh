#!/usr/bin/env bash
# Side by side: what a plain rumqttc subscriber receives from the broker, and what
# `cityops run --mqtt` ingests, from the same broker and the same publisher
# (`cityops replay --to-mqtt`), in alternating rounds so machine noise hits both alike.
#
#   benches/mqtt_rates.sh QOS [ROUNDS] [FIXTURE] [SPEED] [READINGS_PER_MESSAGE]
#
# Defaults: 5 rounds, the bundled demo, --speed max, 1 reading per message. Prints each
# round and the medians (messages/s, first message to last, and readings/s).
# Needs a release build (`cargo build --release --bin cityops --example plain_subscriber`)
# and a broker on $BROKER (default 127.0.0.1:1883). CITYOPS_ARGS adds options to
# `cityops run` (e.g. "--config tuned.toml"; that config should set `clean_session = true`).
# PUBLISH_ARGS adds options to the publisher, `cityops replay --to-mqtt` (e.g. "--inflight
# 100"; its default window is 1,000 QoS 1 messages ahead of the broker's acks).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
CITYOPS=${CITYOPS:-$target/release/cityops}
PLAIN=${PLAIN:-$target/release/examples/plain_subscriber}
BROKER=${BROKER:-127.0.0.1:1883}
qos=${1:?QoS 0 or 1}
rounds=${2:-5}
fixture=${3:-}
speed=${4:-max}
per_message=${5:-1}
host=${BROKER%:*}
port=${BROKER#*:}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# cityops keeps its session by default; a kept session would collect up to 1,000 messages of
# the plain rounds and deliver them at connect, 1.5 s before the publisher starts, which
# would stretch its first-to-last interval. The benchmark subscribes with a clean session,
# as the plain subscriber does.
session_args="--config $work/clean-session.toml"
printf '[mqtt]\nclean_session = true\nclient_id = "cityops-rates"\n' >"$work/clean-session.toml"
case " ${CITYOPS_ARGS:-} " in *" --config "*) session_args="" ;; esac

rate_of() { grep -oE '[0-9]+ messages/s' "$1" | tail -1 | grep -oE '^[0-9]+' || echo 0; }
received_of() { grep -oE '(received|subscriber:) [0-9]+ messages' "$1" | tail -1 | grep -oE '[0-9]+' || echo 0; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }

for round in $(seq 1 "$rounds"); do
  for who in plain cityops; do
    log="$work/$who.$round.log"
    if [ "$who" = plain ]; then
      "$PLAIN" "$host" "$port" "$qos" >"$log" 2>&1 &
    else
      # shellcheck disable=SC2086
      RUST_LOG=info "$CITYOPS" run --mqtt "mqtt://$BROKER" --qos "$qos" --quiet --no-http --idle-exit 3s $session_args ${CITYOPS_ARGS:-} >"$log" 2>&1 &
    fi
    subscriber=$!
    sleep 1.5
    # shellcheck disable=SC2086
    published=$("$CITYOPS" replay $fixture --to-mqtt "mqtt://$BROKER" --qos "$qos" --speed "$speed" ${PUBLISH_ARGS:-})
    wait "$subscriber" || true
    rate=$(rate_of "$log")
    echo "$rate" >>"$work/$who.rates"
    echo "round $round $who: $(received_of "$log") messages, $rate messages/s ($((rate * per_message)) readings/s); publisher: $published"
  done
done
plain=$(median <"$work/plain.rates")
cityops=$(median <"$work/cityops.rates")
echo "median QoS $qos: plain $plain messages/s, cityops $cityops messages/s ($((cityops * per_message)) readings/s): $(awk -v c="$cityops" -v p="$plain" 'BEGIN {printf "%.0f", p ? 100 * c / p : 0}') % of plain"
