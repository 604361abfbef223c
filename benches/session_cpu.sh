#!/usr/bin/env bash
# Registry CPU per full session, xlReg/2 against xlReg/3, side by side (docs/performance.md,
# "xlReg/3 against xlReg/2").
#
# Starts one registry per binary given (default: target/release/xlreg), each pinned to core
# 0, then runs the generator (the first binary's `xlreg bench`) pinned to core 1 against
# them in turn: for each round, for each binary, one --protocol 2 run then one --protocol 3
# run. Every run prints one line: round, binary, protocol, sessions/s, p50/p99, registry CPU
# per session, and the load average. At the end: per binary and protocol the median
# registry CPU per session, and per binary the v3/v2 ratio of the medians.
#
#   benches/session_cpu.sh [BINARY...]
#   ROUNDS=3 SESSIONS=5000 CLIENTS=64 benches/session_cpu.sh ./baseline-xlreg target/release/xlreg
#   THREADS=1 benches/session_cpu.sh   # each run also says where the registry's CPU went, by
#                                      # thread group, with thread switches per session
#
# Only ratios measured in one run compare: the machine's load moves the absolute numbers.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SESSIONS=${SESSIONS:-5000}
CLIENTS=${CLIENTS:-64}
CLUSTER_SIZE=${CLUSTER_SIZE:-4}
REGISTRY_CPU=${REGISTRY_CPU:-0}
GENERATOR_CPU=${GENERATOR_CPU:-1}
THREADS=${THREADS:-0}

if [ $# -eq 0 ]; then
    set -- target/release/xlreg
fi
binaries=("$@")
for bin in "${binaries[@]}"; do
    [ -x "$bin" ] || { echo "not an executable: $bin (cargo build --release)" >&2; exit 2; }
done
generator=${binaries[0]}

work=$(mktemp -d /tmp/session-cpu.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Start one registry per binary.
for i in "${!binaries[@]}"; do
    dir=$work/registry-$i
    mkdir -p "$dir"
    taskset -c "$REGISTRY_CPU" "${binaries[$i]}" serve --data-dir "$dir/data" \
        --listen 127.0.0.1:0 --max-connections-per-ip 1024 \
        --quota-registrations-per-ip off --quota-clusters-per-ip off \
        >"$dir/log" 2>&1 &
    pids+=($!)
done
for i in "${!binaries[@]}"; do
    for _ in $(seq 1 100); do
        [ -s "$work/registry-$i/data/regCred.dat" ] && break
        sleep 0.1
    done
    [ -s "$work/registry-$i/data/regCred.dat" ] || {
        echo "registry ${binaries[$i]} did not start:" >&2
        cat "$work/registry-$i/log" >&2
        exit 1
    }
done

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; sessions $SESSIONS, clients $CLIENTS, clusters of $CLUSTER_SIZE"
printf '%-5s %-40s %-5s %10s %8s %8s %12s  %s\n' round binary proto sessions/s p50_ms p99_ms cpu_ms/sess loadavg
results=$work/results
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
    for i in "${!binaries[@]}"; do
        for protocol in 2 3; do
            load=$(cut -d' ' -f1-3 /proc/loadavg)
            out=$(taskset -c "$GENERATOR_CPU" "$generator" bench \
                --regcred "$work/registry-$i/data/regCred.dat" --server-pid "${pids[$i]}" \
                --cleanup-data-dir "$work/registry-$i/data" --protocol "$protocol" \
                --clients "$CLIENTS" --sessions "$SESSIONS" --cluster-size "$CLUSTER_SIZE" 2>&1 |
                grep -E 'sessions/s|^registry threads' | tail -2)
            threads=$(grep '^registry threads' <<<"$out" || true)
            out=$(grep 'sessions/s' <<<"$out" || true)
            rate=$(sed -n 's/.* \([0-9.]*\) sessions\/s.*/\1/p' <<<"$out")
            p50=$(sed -n 's/.*p50 \([0-9.]*\).*/\1/p' <<<"$out")
            p99=$(sed -n 's/.*p99 \([0-9.]*\).*/\1/p' <<<"$out")
            cpu=$(sed -n 's/.*server CPU \([0-9.]*\) ms\/session.*/\1/p' <<<"$out")
            if ! grep -q 'no errors' <<<"$out"; then
                echo "run with errors: $out" >&2
            fi
            printf '%-5s %-40s %-5s %10s %8s %8s %12s  %s\n' "$round" "${binaries[$i]}" "$protocol" \
                "${rate:-?}" "${p50:-?}" "${p99:-?}" "${cpu:-?}" "$load"
            echo "$i $protocol ${cpu:-nan}" >>"$results"
            if [ "$THREADS" = 1 ] && [ -n "$threads" ]; then
                echo "      $threads"
            fi
        done
    done
done

echo
echo "median registry CPU per session (ms):"
for i in "${!binaries[@]}"; do
    median() {
        awk -v i="$i" -v p="$1" '$1 == i && $2 == p { print $3 }' "$results" | sort -g |
            awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
    }
    v2=$(median 2)
    v3=$(median 3)
    ratio=$(awk -v a="$v3" -v b="$v2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "?" }')
    printf '%-40s v2 %s  v3 %s  v3/v2 %s\n' "${binaries[$i]}" "$v2" "$v3" "$ratio"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
