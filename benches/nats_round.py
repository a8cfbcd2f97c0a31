"""One NATS round of benches/nats_rates.sh: N `cityops run --nats` instances on a stream of
their own, the demo published into it once they share the partitions, their /metrics polled
until they have read the whole demo. Prints "MESSAGES MESSAGES_PER_SECOND".

    python3 benches/nats_round.py CITYOPS NATS_URL PARTITIONS ROUND INSTANCES WORK_DIR

$CHECKPOINT_INTERVAL, when set, is the instances' `[cluster] checkpoint_interval` (e.g. "0s"
to turn partition checkpoints off, "1s" to store them every second); else the default.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request

DEMO_MESSAGES = 254_507


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(port, name):
    """The sum of a series' values on an instance's /metrics (0 while it does not answer)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def main():
    cityops, url, partitions, round_, n, work = sys.argv[1:]
    partitions, n = int(partitions), int(n)
    tag = f"r{round_}n{n}"
    ports, configs, instances = [free_port() for _ in range(n)], [], []
    for i, port in enumerate(ports):
        config = f"{work}/{tag}-{i}.toml"
        with open(config, "w") as f:
            f.write(
                f'[http]\nbind = "127.0.0.1:{port}"\n[cluster]\npartitions = {partitions}\n'
                f'stream = "BENCH_{tag}"\nsubject = "b{tag}"\n'
                f'lease_bucket = "leases-{tag}"\ndeliveries_bucket = "deliveries-{tag}"\n'
                f'checkpoint_bucket = "checkpoints-{tag}"\n'
            )
            if "CHECKPOINT_INTERVAL" in os.environ:
                f.write(f'checkpoint_interval = "{os.environ["CHECKPOINT_INTERVAL"]}"\n')
        configs.append(config)
        instances.append(
            subprocess.Popen(
                [cityops, "run", "--nats", url, "--instance", f"{tag}-{i}", "--quiet",
                 "--config", config, "--dead-letter", f"{work}/{tag}-{i}-dead.jsonl"],
                stdout=subprocess.DEVNULL,
                stderr=open(f"{work}/{tag}-{i}.log", "w"),
            )
        )
    deadline = time.time() + 90
    while True:
        owned = [metric(p, "cityops_cluster_partitions_owned") for p in ports]
        if sum(owned) == partitions and all(owned):
            break
        if time.time() > deadline:
            sys.exit(f"the partitions were not shared out: {owned}")
        time.sleep(0.1)
    publisher = subprocess.Popen(
        [cityops, "replay", "--to-nats", url, "--speed", "max", "--config", configs[0]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first, total, deadline = None, 0, time.time() + 300
    while total < DEMO_MESSAGES and time.time() < deadline:
        total = sum(metric(p, "cityops_messages_in_total") for p in ports)
        if total and first is None:
            first = time.time()
        time.sleep(0.02)
    last = time.time()
    publisher.wait()
    for instance in instances:
        instance.terminate()
    for instance in instances:
        instance.wait()
    rate = round(total / (last - first)) if first and last > first else 0
    print(int(total), rate)


if __name__ == "__main__":
    main()
