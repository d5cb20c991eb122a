# scripts/bench.sh: the measurement rows (one JSON object each, slurped) → the results document.
# Ratios are meshgate / best peer; the best peer of a run is the peer (nginx or HAProxy pair)
# with the higher geometric mean of req/s over the connection levels, and the one-line summary
# takes the geometric mean of the per-level ratios against it. The goals compare each level with
# the best peer at that level ("at equal connections"), which may be the other one. The floor
# pair (when the run has it) is a reference, never a peer: the stack alone, against which
# meshgate's own cost shows.

def geomean: if length == 0 or any(. <= 0) then null else (map(log) | add / length | exp) end;
def r2: if . == null then null else (. * 100 | round) / 100 end;
def ratio($a; $b): if $a == null or $b == null or $b == 0 then null else ($a / $b) | r2 end;
def tp($rows; $path; $c): $rows | map(select(.kind == "throughput" and .path == $path and .connections == $c)) | first;

. as $rows
| ["nginx", "haproxy"] as $peers
| ($rows | map(select(.kind == "throughput"))) as $tp
| ($tp | map(.connections) | unique) as $levels
| ($peers | map(. as $p | {peer: $p, g: ([$levels[] as $c | tp($rows; $p; $c).rps] | geomean)})
   | max_by(.g) | .peer) as $best
| [$levels[] as $c | tp($rows; "meshgate"; $c) as $m | tp($rows; $best; $c) as $b
   | ([$peers[] as $p | tp($rows; $p; $c)] | max_by(.rps)) as $l | {
    connections: $c,
    vs: $best,
    rps: ratio($m.rps; $b.rps), p50: ratio($m.p50_ms; $b.p50_ms), p99: ratio($m.p99_ms; $b.p99_ms),
    best_peer_at_this_level: $l.path,
    vs_best_at_this_level: {rps: ratio($m.rps; $l.rps), p99: ratio($m.p99_ms; $l.p99_ms)},
    meshgate_vs_direct_rps: ratio($m.rps; tp($rows; "direct"; $c).rps),
    floor_vs_best_at_this_level_rps: ratio(tp($rows; "floor"; $c).rps; $l.rps),
    meshgate_vs_floor_rps: ratio($m.rps; tp($rows; "floor"; $c).rps)
  }] as $per_level
| ($per_level | map(.rps) | geomean | r2) as $rps_ratio
| ($per_level | map(.p99) | geomean | r2) as $p99_ratio
| ($rows | map(select(.kind == "handshake"))) as $hs
| ($hs | map(select(.target != "meshgate")) | max_by(.handshakes_per_sec)) as $hs_best
| ($hs | map(select(.target == "meshgate")) | first) as $hs_mesh
| ($rows | map(select(.kind == "memory"))) as $mem
| ($mem | map(select(.server == "meshgate" and .connections == 0)) | first | .rss_kb) as $mesh_idle
| ($mem | map(select(.server == "meshgate" and .connections > 0)) | max_by(.connections)) as $mesh_most
| {
    started_at: $at, mode: $mode, commit: $commit,
    machine: {cores: $cores, cpu: $cpu, load_before: $load},
    tools: {wrk: $wrk, nginx: $nginx, haproxy: $haproxy},
    settings: {wrk_duration: $duration, rounds: $rounds, wrk_threads: $threads,
               handshake_duration: $hs, handshake_concurrency: $hsc,
               workers_per_proxy: 1},
    throughput: $tp,
    proxies: ($rows | map(select(.kind == "proxy"))),
    ratios: {best_peer: $best, rps: $rps_ratio, p99: $p99_ratio, per_level: $per_level,
             handshakes: ratio($hs_mesh.handshakes_per_sec; $hs_best.handshakes_per_sec)},
    handshakes: $hs,
    memory: $mem,
    ca_enrollment: $ca,
    goals: ([
      {goal: "meshgate pair req/s >= 1.5x the best peer's at each level",
       value: ($per_level | map(.vs_best_at_this_level.rps) | min),
       met: ($per_level | all(.vs_best_at_this_level.rps != null and .vs_best_at_this_level.rps >= 1.5))},
      {goal: "meshgate pair p99 no worse than the best peer's at each level",
       value: ($per_level | map(.vs_best_at_this_level.p99) | max),
       met: ($per_level | all(.vs_best_at_this_level.p99 != null and .vs_best_at_this_level.p99 <= 1))},
      {goal: "handshakes/s >= the best peer's (\($hs_best.target // "none"))",
       value: ratio($hs_mesh.handshakes_per_sec; $hs_best.handshakes_per_sec),
       met: (ratio($hs_mesh.handshakes_per_sec; $hs_best.handshakes_per_sec) // 0 >= 1)},
      {goal: "gateway idle RSS <= 15 MiB (kB)", value: $mesh_idle, met: ($mesh_idle != null and $mesh_idle <= 15360)},
      {goal: "<= 40 KiB per idle mTLS connection (at \($mesh_most.connections // 0))",
       value: $mesh_most.per_conn_kb, met: ($mesh_most.per_conn_kb != null and $mesh_most.per_conn_kb <= 40)}
    ] + (if $ca == null then [] else [
      {goal: "CA enrollments/s >= 5000 (kept-alive connections; a new connection each: \($ca.enroll_per_sec); the floor server with the same clients: \($ca.floor_enroll_kept_alive_per_sec // "n/a"))",
       value: $ca.enroll_kept_alive_per_sec,
       met: (($ca.enroll_kept_alive_per_sec // 0) >= 5000 and ($ca.errors // 1) == 0)}
    ] end)),
    measurement_seconds: $seconds,
    summary_line: "ratio meshgate/best-peer: rps=\($rps_ratio) p99=\($p99_ratio) (best peer: \($best))"
  }
