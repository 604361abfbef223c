#!/bin/bash
# One against three xlreg servers on a 3-member etcd on 127.0.0.1, 64 clients
# (docs/performance.md, "Several servers on etcd"). Usage: ha-bench.sh XLREG_BINARY [SESSIONS]
# Needs etcd, curl, bc and python3; leaves its files in the printed work directory.

BIN=$1; SESSIONS=${2:-2000}
W=$(mktemp -d /tmp/habench.XXXX)
for i in 0 1 2; do
  cp=$((23790+i*10)); pp=$((23791+i*10))
  etcd --name m$i --data-dir $W/etcd$i --listen-client-urls http://127.0.0.1:$cp --advertise-client-urls http://127.0.0.1:$cp \
    --listen-peer-urls http://127.0.0.1:$pp --initial-advertise-peer-urls http://127.0.0.1:$pp \
    --initial-cluster m0=http://127.0.0.1:23791,m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23811 \
    --initial-cluster-state new --log-level error > $W/etcd$i.log 2>&1 &
  echo $! >> $W/pids
done
ETCD=http://127.0.0.1:23790,http://127.0.0.1:23800,http://127.0.0.1:23810
sleep 3
head -c 32 /dev/urandom | base64 > $W/secret; chmod 600 $W/secret
run() { # prefix nservers
  local prefix=$1 n=$2
  for i in $(seq 0 $((n-1))); do
    RUST_LOG=warn $BIN serve --data-dir $W/$prefix-s$i --listen 127.0.0.1:$((24000+i)) --metrics-listen 127.0.0.1:$((24100+i)) \
      --etcd $ETCD --etcd-prefix /$prefix --identity-secret-file $W/secret --max-connections-per-ip 4096 \
      --quota-clusters-per-ip off --quota-clusters-per-node off --quota-registrations-per-ip off > $W/$prefix-s$i.log 2>&1 &
    echo $! > $W/$prefix-s$i.pid
  done
  for i in $(seq 0 $((n-1))); do while [ ! -f $W/$prefix-s$i/regCred.dat ]; do sleep 0.2; done; done
  # wait until regCred lists all n
  while [ $(grep -c TcpEndPoint $W/$prefix-s0/regCred.dat) -lt $n ]; do sleep 0.5; done
  rt() { s=0; for i in $(seq 0 $((n-1))); do v=$(curl -s 127.0.0.1:$((24100+i))/metrics | awk '/^xlreg_etcd_round_trips_total/{print $2}'); s=$(echo "$s + ${v:-0}" | bc); done; echo $s; }
  before=$(rt)
  $BIN bench --regcred $W/$prefix-s0/regCred.dat --clients 64 --sessions $SESSIONS --json > $W/$prefix.json 2>$W/$prefix.err || true
  after=$(rt)
  echo "== $n server(s): etcd round trips $before -> $after"
  python3 -c "import json,sys; r=json.load(open('$W/$prefix.json')); d=$after-$before; print('sessions/s %.0f p50 %.2f p99 %.2f server CPU ms/session %s completed %d errors %s etcd round trips/session %.2f pids %s' % (r['sessions_per_s'], r['latency_ms']['p50'], r['latency_ms']['p99'], r['server_cpu_ms_per_session'], r['completed'], r['errors'], d/max(r['completed'],1), r['server_pids']))"
  for i in $(seq 0 $((n-1))); do kill $(cat $W/$prefix-s$i.pid); done
  sleep 1
}
run one 1
run three 3
for p in $(cat $W/pids); do kill $p; done
echo "work dir $W"
