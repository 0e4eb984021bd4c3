#!/usr/bin/env bash
# A real two-node Ray cluster on this machine (`ray start --head`, a second `ray start --address`, one CPU each), the
# second node's raylet killed with kill -9 once two cells have finished; then the same matrix on the local executor,
# and the two summaries compared row by row. Usage: bench/ray_two_nodes.sh (from the repository root, .venv set up
# with the ray extra). Output under /tmp/raytn: ray.out (what the user saw), logs/ray.log (Ray's own messages).
set -u
R=/tmp/raytn; rm -rf $R; mkdir -p $R
B=.venv/bin
$B/ray stop --force >/dev/null 2>&1
$B/ray start --head --port=6390 --num-cpus=1 --include-dashboard=false --disable-usage-stats > $R/head.log 2>&1
$B/ray start --address=127.0.0.1:6390 --num-cpus=1 --disable-usage-stats > $R/node2.log 2>&1
ps -eo pid,comm | awk '$2=="raylet"{print $1}' | sort -n > $R/raylets
echo "raylets: $(cat $R/raylets | tr '\n' ' ')"
( time $B/harness matrix run bench/matrices/mini-demo.yaml --executor ray --address 127.0.0.1:6390 --results $R/ray ) > $R/ray.out 2>&1 &
run=$!
until grep -q 'cell 3/' $R/ray.out 2>/dev/null; do sleep 1; done; sleep ${KILL_AFTER:-5}
victim=$(tail -1 $R/raylets)
echo "kill -9 raylet $victim at $(date +%T)"; kill -9 $victim
wait $run
$B/ray stop --force >/dev/null 2>&1
( time $B/harness matrix run bench/matrices/mini-demo.yaml --results $R/local ) > $R/local.out 2>&1
for d in ray local; do $B/harness sql "SELECT run_id, method, arm, seed, round(learn, 6) AS learn, round(forget, 6) AS forget FROM summary ORDER BY run_id" --results $R/$d --format csv > $R/$d.csv; done
cmp $R/ray.csv $R/local.csv && echo "ROWS IDENTICAL" || diff $R/ray.csv $R/local.csv
