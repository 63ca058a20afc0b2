# Draws docs/latency-rotations.png from the rotations figure (scripts/figures.sh sets dat and rot).
set terminal pngcairo size 900,420 font "sans,10"
set output "docs/latency-rotations.png"
set title "keyshift sidecar: latency per 100 ms window across live rotations (4,000 calls/s, 8 clients, from each call's scheduled time)"
set xlabel "seconds"
set ylabel "latency (µs)"
set key top left
set yrange [0:*]
times = system("cat ".rot)
do for [t in times] { set arrow from t, graph 0 to t, graph 1 nohead dt 2 lc rgb "#888888" }
plot dat using 1:2 with lines lw 2 title "p50", \
     dat using 1:3 with lines lw 1 title "p99", \
     dat using 1:4 with lines lw 1 dt 3 title "p99.9"
