# smoke: one Xen host, one guest from a vw-staged image through the xl driver, to ready.
HOSTS=1 HOST_MEM=3072 DOM0_MEM=768

# In dom0 before vwd starts (it owns the store afterwards): import the image.
prepare() {
  t import vw image import /vwimages/worker.img --name lab/worker:1
}

on_head_host() {
  OUT=/vwlab/out/host1
  t deploy vw deploy --vo lab /vwlab/workspaces/smoke.xml > "$OUT/deploy.txt" 2>&1
  rc=$?
  cat "$OUT/deploy.txt"
  xl list > "$OUT/xl-list.txt" 2>&1
  vw status > "$OUT/status.txt" 2>&1
  {
    echo "# smoke on $(cat /vwlab/accel) Xen"
    echo
    echo '```'
    cat "$OUT/deploy.txt"
    echo '```'
  } > "$OUT/summary.md"
  [ $rc = 0 ] || return $rc
  t stop vw stop smoke && t unstage vw unstage smoke
}
