# table2: the paper's Table 2 on real Xen. Two workspaces of different VOs' shape (one
# 1-vCPU worker each, from vw-staged images) share one Xen host with 2 physical CPUs and
# run the same CPU-bound job at the same time, five runs per case:
#   shared: both VMs on physical CPU 0 (`xl vcpu-pin`), as Xen 2.0 placed every domain
#           by default in the paper's days;
#   pinned: vw's placement pins each to cores no other pinned VM has.
# The job: SHA-256 of JOB_MIB MiB of zeros (coreutils; one thread), timed in the guest.
HOSTS=1 HOST_MEM=3072 DOM0_MEM=768
RUNS=${RUNS:-5}
JOB_MIB=${JOB_MIB:-1024}

prepare() {
  t import vw image import /vwimages/worker.img --name lab/worker:1
}

ip_of() { # deploy text → the guest's private address
  sed -n 's/.*nics=eth0=[^=]*=\([0-9.]*\)\/.*/\1/p' "$1" | head -1
}

guest() { # guest IP cmd...
  ip=$1; shift
  ssh -i /vwlab/lab_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o ConnectTimeout=30 -o LogLevel=ERROR "root@$ip" "$@"
}

# One run: both jobs at once; each guest times its own. Connecting takes seconds under
# emulation, so both start at an agreed instant (guests on one host share Xen's clock);
# the CSV keeps each job's start and end, and the summary how long they overlapped.
run_both() { # case run
  at=$(( $(date +%s) + 20 )) started=""
  for w in a b; do
    guest "$(cat "$OUT/ip-$w")" "while [ \$(date +%s) -lt $at ]; do sleep 0.1; done
      a=\$(date +%s.%N); dd if=/dev/zero bs=1M count=$JOB_MIB 2>/dev/null | sha256sum > /dev/null
      b=\$(date +%s.%N); echo \"\$a \$b\"" > "$OUT/job-$1-$2-$w.txt" 2>&1 &
    started="$started $!"
  done
  # Not a bare `wait`: vwd runs in the background of this shell too.
  wait $started
  for w in a b; do
    awk -v c="$1" -v r="$2" -v w="$w" 'NF == 2 { printf "%s,%s,t2%s,%.3f,%.3f,%.3f\n", c, r, w, $2 - $1, $1, $2 }' \
      "$OUT/job-$1-$2-$w.txt" >> "$OUT/table2.csv"
  done
}

deploy_pair() { # case
  for w in a b; do
    t "deploy-$1-$w" vw deploy --vo lab "/vwlab/workspaces/t2$w-$1.xml" > "$OUT/deploy-$1-$w.txt" 2>&1 || return 1
    ip_of "$OUT/deploy-$1-$w.txt" > "$OUT/ip-$w"
  done
}

undeploy_pair() {
  for w in a b; do vw stop "t2$w" > /dev/null 2>&1; vw unstage "t2$w" > /dev/null 2>&1; done
}

on_head_host() {
  OUT=/vwlab/out/host1
  echo "case,run,cluster,seconds,start,end" > "$OUT/table2.csv"
  deploy_pair shared || { cat "$OUT"/deploy-shared-*.txt; return 1; }
  for w in a b; do xl vcpu-pin "t2$w-worker" all 0; done
  xl vcpu-list > "$OUT/vcpus-shared.txt"
  for r in $(seq "$RUNS"); do run_both shared "$r"; done
  undeploy_pair
  deploy_pair pinned || { cat "$OUT"/deploy-pinned-*.txt; return 1; }
  xl vcpu-list > "$OUT/vcpus-pinned.txt"
  for r in $(seq "$RUNS"); do run_both pinned "$r"; done
  undeploy_pair
  {
    echo "# Table 2 on Xen 4.17 ($(cat /vwlab/accel), nested in QEMU; 1 host, 2 physical CPUs)"
    echo
    echo "SHA-256 of $JOB_MIB MiB in each of two 1-vCPU guests at once, $RUNS runs per case."
    awk -F, 'NR > 1 { k = $1 "," $2; if ($3 == "t2a") { a0[k] = $5; a1[k] = $6 } else { b0[k] = $5; b1[k] = $6 } }
      END { for (k in a0) { lo = a0[k] > b0[k] ? a0[k] : b0[k]; hi = a1[k] < b1[k] ? a1[k] : b1[k]
            len = (a1[k] - a0[k] < b1[k] - b0[k]) ? a1[k] - a0[k] : b1[k] - b0[k]
            o = (hi - lo) / len; if (o < min || min == "") min = o }
            printf "The two jobs of a run overlapped for at least %.0f%% of the shorter one.\n", 100 * (min < 0 ? 0 : min) }' \
      "$OUT/table2.csv"
    echo
    echo "| case | cluster | runs | mean (s) | σ (s) |"
    echo "|---|---|---:|---:|---:|"
    awk -F, 'NR > 1 { k = $1 "|" $3; n[k]++; s[k] += $4; q[k] += $4 * $4 }
      END { for (k in n) { m = s[k] / n[k]; v = q[k] / n[k] - m * m; if (v < 0) v = 0
            split(k, p, "|"); printf "| %s | %s | %d | %.2f | %.2f |\n", p[1], p[2], n[k], m, sqrt(v * n[k] / (n[k] > 1 ? n[k] - 1 : 1)) } }' \
      "$OUT/table2.csv" | sort
    echo
    echo "vCPU placement (xl vcpu-list), shared:"; echo '```'; cat "$OUT/vcpus-shared.txt"; echo '```'
    echo "pinned by vw:"; echo '```'; cat "$OUT/vcpus-pinned.txt"; echo '```'
  } > "$OUT/summary.md"
  [ "$(grep -c ',t2' "$OUT/table2.csv")" = $((RUNS * 4)) ]
}
