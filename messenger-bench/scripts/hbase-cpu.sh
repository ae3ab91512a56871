# Sourced by hbase-bench.sh and cluster-hbase.sh (not run on its own).
# hbase_cpu: user+system CPU seconds so far of the HBase JVMs (master with the region
# server, Thrift gateway) whose pids are in $HBASE_PIDS.
hbase_cpu() {
  local t=0 p
  for p in $HBASE_PIDS; do
    t=$(awk -v t="$t" -v hz="$(getconf CLK_TCK)" '{print t + ($14 + $15) / hz}' "/proc/$p/stat")
  done
  echo "$t"
}
